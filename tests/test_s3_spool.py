"""An s3:// spool end to end: ``scrapy crawl`` on several "machines" (own staging folders)
publishes to a real S3 server (SeaweedFS on loopback), ``scrapy collect-batches`` on others
leases, collects and writes back. The key cases run on the local spool too."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from scrapy.utils.defer import deferred_f_from_coro_f

from scrapy_llm_extract.lease import LEASE_NAME
from tests.test_store import open_test_store
from tests.tiny_project import crawl

RECORD_MODULE = '''
import json, os, signal

import scrapy

from tiny.items import Product


class RowProduct(Product):
    llm_extract_row_id = scrapy.Field()


def take_over_leases():
    """What another collector does to a stalled one's leases: replace them."""
    from scrapy.utils.project import get_project_settings
    from scrapy_llm_extract.config import Config
    from scrapy_llm_extract.publish import open_store

    store = open_store(Config.from_settings(get_project_settings()))
    for key in store.list():
        if key.endswith("/lease.json"):
            store.put(key, json.dumps({"owner": "another collector", "ttl": 300}).encode())
    store.close()


class TakeOverAtTheEnd:
    """Another collector takes the leases over once the replay has ended, before the
    command's last write-back."""

    @classmethod
    def from_crawler(cls, crawler):
        from scrapy import signals

        crawler.signals.connect(take_over_leases, signal=signals.engine_stopped)
        return cls()


class Record:
    """Appends each item's row id to RECORD; with KILL_AFTER=n (STOP_AFTER=n), SIGKILLs
    (SIGSTOPs) itself at item n+1; with TAKE_OVER_AT=n, another collector takes its
    leases over at item n+1."""

    def __init__(self):
        self.count = 0

    def process_item(self, item):
        if self.count == int(os.environ.get("TAKE_OVER_AT", "-1")):
            take_over_leases()
        if self.count == int(os.environ.get("KILL_AFTER", "-1")):
            os.kill(os.getpid(), signal.SIGKILL)
        if self.count == int(os.environ.get("STOP_AFTER", "-1")):
            os.kill(os.getpid(), signal.SIGSTOP)  # a collector stalled (GC, swap, VM paused)
        self.count += 1
        with open(os.environ["RECORD"], "a") as f:
            f.write(json.dumps({"id": item.get("llm_extract_row_id")}) + "\\n")
        return item
'''

ROW_PRODUCT = (
    "__import__('tiny.record').record.RowProduct(url=f'{response.url}#{n}', html=response.text)"
)
ITEMS = 4


def project_settings(s3_server: Any, spool: str) -> str:
    """The crawl and collect settings of the test project (its staging folder from $STAGING)."""
    settings = dict(s3_server.settings(spool)) if spool.startswith("s3://") else {}
    settings["LLM_EXTRACT_SPOOL_DIR"] = spool
    lines = [f"{name} = {value!r}" for name, value in settings.items()]
    lines += [
        "import os",
        "LLM_EXTRACT_SPOOL_STAGING_DIR = os.environ['STAGING']",
        "LLM_EXTRACT_LEASE_TTL = float(os.environ.get('LEASE_TTL', 300))",
        "LLM_EXTRACT_SPOOL_PUBLISH_ROWS = 3",
        "ITEM_PIPELINES = {'tiny.record.Record': 900}",
        "LLM_EXTRACT_PASS_PENDING = bool(os.environ.get('PASS_PENDING'))",
        "EXTENSIONS = {'tiny.record.TakeOverAtTheEnd': 0} if os.environ.get('TAKE_OVER_AT_END')"
        " else {}",
    ]
    return "\n".join(lines) + "\n"


def environment(tmp_path: Path, machine: str, **extra: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "SCRAPY_"))}
    staging = {"STAGING": str(tmp_path / machine), "RECORD": str(tmp_path / f"{machine}.record")}
    return {**clean, **staging, **extra}


def first_crawl(tmp_path: Path, s3_server: Any, spool: str, machine: str = "machine-a") -> Path:
    """Write the project, crawl ITEMS items on ``machine`` (batches submitted at close)."""
    (tmp_path / "project" / "tiny").mkdir(parents=True)
    (tmp_path / "project" / "tiny" / "record.py").write_text(RECORD_MODULE)
    result = crawl(
        tmp_path,
        project_settings(s3_server, spool),
        item=ROW_PRODUCT,
        items=ITEMS,
        env={k: v for k, v in environment(tmp_path, machine).items() if k in ("STAGING", "RECORD")},
    )
    assert result.returncode == 0, result.stderr
    return tmp_path / "project"


def scrapy(project: Path, machine: str, *args: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "scrapy", *args],
        cwd=project,
        env=environment(project.parent, machine, **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def collect_batches(project: Path, machine: str, *args: str, **env: str) -> subprocess.Popen:
    return scrapy(project, machine, "collect-batches", *args, **env)


def finish(process: subprocess.Popen) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=300)
    return process.returncode, out, err


def records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(params=["local", "s3"])
def spool(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Both backends: a local spool folder, and an s3:// spool on the test server."""
    if request.param == "local":
        return str(tmp_path / "shared-spool")
    return str(request.getfixturevalue("s3_spool"))


@pytest.fixture
def s3_server_or_none(request: pytest.FixtureRequest, spool: str) -> Any:
    return request.getfixturevalue("s3_server") if spool.startswith("s3://") else None


def test_crawl_on_one_machine_collect_on_another(
    tmp_path: Path, spool: str, s3_server_or_none: Any
) -> None:
    """Every row delivered once with its stable id; the run ends collected, on both backends."""
    project = first_crawl(tmp_path, s3_server_or_none, spool)
    code, _, err = finish(collect_batches(project, "machine-d", "--wait", "--poll-interval", "0.2"))
    assert code == 0, err
    delivered = records(tmp_path / "machine-d.record")
    assert len({row["id"] for row in delivered}) == len(delivered) == ITEMS
    assert all(delivered)
    code, out, err = finish(collect_batches(project, "machine-e", "--status"))
    assert code == 0, err
    assert "collected" in out
    # Collected: a second collector finds nothing to deliver.
    code, _, err = finish(collect_batches(project, "machine-e"))
    assert code == 0, err
    assert records(tmp_path / "machine-e.record") == []
    if not spool.startswith("s3://"):
        return
    assert list((tmp_path / "machine-a" / "crawl").iterdir()) == []  # published, then removed
    store = open_test_store(s3_server_or_none, spool)
    keys = store.list()
    (run_id,) = {key.split("/")[0] for key in keys}
    # ITEMS rows in files of at most LLM_EXTRACT_SPOOL_PUBLISH_ROWS = 3 rows
    assert f"{run_id}/requests-0002.jsonl" in keys and f"{run_id}/items-0002.jsonl" in keys
    assert f"{run_id}/collect.sqlite" in keys  # the ledger travels with the run
    assert f"{run_id}/{LEASE_NAME}" not in keys  # released
    manifest = store.get(f"{run_id}/manifest.json")
    assert manifest is not None and json.loads(manifest.body)["collected_at"]
    store.close()


def test_three_crawl_machines_two_collectors_each_run_collected_once(
    tmp_path: Path, s3_server: Any, s3_spool: str
) -> None:
    project = first_crawl(tmp_path, s3_server, s3_spool, "machine-a")
    crawls = [scrapy(project, machine, "crawl", "pages") for machine in ("machine-b", "machine-c")]
    for process in crawls:
        code, _, err = finish(process)
        assert code == 0, err
    collectors = [
        collect_batches(project, machine, "--wait", "--poll-interval", "0.2")
        for machine in ("machine-d", "machine-e")
    ]
    results = [finish(process) for process in collectors]
    assert [code for code, _, _ in results] == [0, 0], results[0][2] + results[1][2]
    rows = records(tmp_path / "machine-d.record") + records(tmp_path / "machine-e.record")
    assert len({row["id"] for row in rows}) == len(rows) == 3 * ITEMS  # every item, once
    leased = [
        {
            line.split("Leased run ")[1].split()[0]
            for line in err.splitlines()
            if "Leased run" in line
        }
        for _, _, err in results
    ]
    assert len(leased[0] | leased[1]) == 3 and not leased[0] & leased[1]  # each run by one


def test_a_collector_killed_mid_run_is_taken_over_once_its_lease_expires(
    tmp_path: Path, s3_server: Any, s3_spool: str
) -> None:
    project = first_crawl(tmp_path, s3_server, s3_spool)
    killed = collect_batches(
        project, "machine-d", "--wait", "--poll-interval", "0.2", KILL_AFTER="2", LEASE_TTL="1"
    )
    code, _, err = finish(killed)
    assert code == -signal.SIGKILL, err
    assert len(records(tmp_path / "machine-d.record")) == 2
    # Its lease stays until it expires: a collector meanwhile skips the run, then takes it over.
    for _ in range(600):
        code, _, err = finish(
            collect_batches(project, "machine-e", "--wait", "--poll-interval", "0.2")
        )
        assert code == 0, err
        if "Took over" in err:
            break
        assert "another collector holds its lease" in err
    else:
        pytest.fail("the killed collector's lease never expired")
    rows = records(tmp_path / "machine-e.record")
    assert len({row["id"] for row in rows}) == len(rows) == ITEMS  # all of them: at least once
    assert {row["id"] for row in records(tmp_path / "machine-d.record")} <= {
        row["id"] for row in rows
    }


def stopped(process: subprocess.Popen) -> bool:
    with open(f"/proc/{process.pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "T"


def test_a_stalled_collector_whose_lease_was_taken_over_stops_and_writes_nothing_back(
    tmp_path: Path, s3_server: Any, s3_spool: str
) -> None:
    project = first_crawl(tmp_path, s3_server, s3_spool)
    log = tmp_path / "stalled.log"
    with open(log, "w") as out:  # not a pipe: a full pipe would block it before it stalls
        stalled = subprocess.Popen(
            [sys.executable, "-m", "scrapy", "collect-batches", "--wait", "--poll-interval", "0.2"],
            cwd=project,
            env=environment(tmp_path, "machine-d", STOP_AFTER="1", LEASE_TTL="1"),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        for _ in range(3000):  # until it stalls at its second item (bounded: 150 s)
            if stopped(stalled):
                break
            with contextlib.suppress(subprocess.TimeoutExpired):
                stalled.wait(timeout=0.05)
        assert stopped(stalled), "the collector never reached its first item"
        for _ in range(600):  # until its lease has expired and another collector takes it over
            code, _, err = finish(
                collect_batches(project, "machine-e", "--wait", "--poll-interval", "0.2")
            )
            assert code == 0, err
            if "Took over" in err:
                break
        else:
            pytest.fail("the stalled collector's lease never expired")
        store = open_test_store(s3_server, s3_spool)
        (run_id,) = {key.split("/")[0] for key in store.list()}
        before = store.get(f"{run_id}/manifest.json")
        assert before is not None and json.loads(before.body)["collected_at"]
    finally:
        stalled.send_signal(signal.SIGCONT)
    code = stalled.wait(timeout=300)
    err = log.read_text()
    assert code == 1, err
    assert f"Lost the lease on run {run_id}" in err
    assert "'llm_extract/collect/leases_lost': 1" in err
    after = store.get(f"{run_id}/manifest.json")
    assert after is not None and after.etag == before.etag  # nothing written back
    store.close()


def test_a_write_back_that_finds_the_lease_taken_over_counts_it_and_stops_at_once(
    tmp_path: Path, s3_server: Any, s3_spool: str
) -> None:
    from tests.conftest import EmulatorDir

    project = first_crawl(tmp_path, s3_server, s3_spool)  # two files, submitted at close
    # The first look at the first file's batch shows no results yet: its rows wait for a
    # second pass, which the write-back at the end of the first one must prevent.
    EmulatorDir(tmp_path / "emulator").configure(late_result_files_first=1)
    code, _, err = finish(
        collect_batches(project, "machine-d", "--wait", "--poll-interval", "0.2", TAKE_OVER_AT="0")
    )
    assert code == 1, err
    assert "Lost the lease on run" in err
    assert "'llm_extract/collect/leases_lost': 1" in err
    assert len(records(tmp_path / "machine-d.record")) == 1  # the second file's row only


def test_a_lease_lost_at_the_last_write_back_exits_1_without_a_traceback(
    tmp_path: Path, s3_server: Any, s3_spool: str
) -> None:
    project = first_crawl(tmp_path, s3_server, s3_spool)
    code, _, err = finish(collect_batches(project, "machine-d", TAKE_OVER_AT_END="1"))
    assert code == 1, err
    assert "Lost the lease on run" in err
    assert "Traceback" not in err and "never awaited" not in err
    assert len(records(tmp_path / "machine-d.record")) == ITEMS


def test_a_run_that_could_not_be_published_is_published_by_the_next_crawl_on_the_machine(
    tmp_path: Path, s3_server: Any, s3_spool: str, emulator: Any
) -> None:
    """The store unreachable at close: counted, kept in staging, published by the next crawl."""
    from itemadapter import ItemAdapter
    from scrapy.statscollectors import MemoryStatsCollector
    from scrapy.utils.test import get_crawler

    from scrapy_llm_extract.extraction import Preparer
    from scrapy_llm_extract.items import item_record
    from scrapy_llm_extract.spool import Spool, list_runs
    from tests.collect_helpers import product, settings
    from tests.helpers import make_config
    from tests.s3_server import free_ports

    def crawl_items(settings: dict[str, Any], numbers: range, stats: Any = None) -> str:
        config = make_config(**settings)
        preparer = Preparer(config)
        writer = Spool(config, spider="shop", stats=stats)
        for n in numbers:
            item = product(n)
            writer.add(preparer.prepare(ItemAdapter(item)), item_record(item, config))
        writer.close()
        assert writer.run is not None
        return writer.run.run_id

    (closed_port,) = free_ports(1)
    staged = {
        **settings(tmp_path, emulator),
        **s3_server.settings(s3_spool),
        "LLM_EXTRACT_SPOOL_STAGING_DIR": str(tmp_path / "staging"),
    }
    down = {**staged, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{closed_port}"}
    stats = MemoryStatsCollector(get_crawler())
    first = crawl_items(down, range(3), stats)
    assert stats.get_value("llm_extract/spool/publish_failed") == 2  # sealed, then closed
    assert [run.run_id for run in list_runs(tmp_path / "staging" / "crawl")] == [first]
    store = open_test_store(s3_server, s3_spool)
    assert store.list() == []
    second = crawl_items(staged, range(3, 5))  # the next crawl on this machine
    assert list_runs(tmp_path / "staging" / "crawl") == []
    for run_id, rows in ((first, 3), (second, 2)):
        manifest = store.get(f"{run_id}/manifest.json")
        assert manifest is not None
        data = json.loads(manifest.body)
        assert data["closed_at"]
        (entry,) = data["files"].values()
        assert entry["rows"] == rows
        requests = store.get(f"{run_id}/requests-0001.jsonl")
        assert requests is not None and requests.body.count(b"\n") == rows
    store.close()


def test_a_crawl_machine_lost_mid_crawl_costs_only_its_unpublished_rows(
    tmp_path: Path, s3_server: Any, s3_spool: str
) -> None:
    project = first_crawl(tmp_path, s3_server, s3_spool)
    # Spooled items pass on (PASS_PENDING) to Record, which kills the crawl at the 4th: the
    # first 3 rows were sealed and published when the 4th was spooled.
    code, _, err = finish(
        scrapy(project, "lost", "crawl", "pages", PASS_PENDING="1", KILL_AFTER="3")
    )
    assert code == -signal.SIGKILL, err
    store = open_test_store(s3_server, s3_spool)
    unclosed = [
        key.split("/")[0]
        for key in store.list()
        if key.endswith("/manifest.json") and not json.loads(store.get(key).body)["closed_at"]  # type: ignore[union-attr]
    ]
    assert len(unclosed) == 1
    (lost,) = unclosed
    code, out, err = finish(collect_batches(project, "machine-d", "--status"))
    assert code == 0, err
    assert f"{lost}: its crawl on " in out
    code, _, err = finish(collect_batches(project, "machine-d", "--wait", "--poll-interval", "0.2"))
    assert code == 0, err
    assert len(records(tmp_path / "machine-d.record")) == ITEMS  # the closed run only
    code, _, err = finish(
        collect_batches(project, "machine-e", "--run", lost, "--wait", "--poll-interval", "0.2")
    )
    assert code == 0, err
    assert "was never closed by its crawl" in err
    delivered = records(tmp_path / "machine-e.record")
    assert len({row["id"] for row in delivered}) == len(delivered) == 3
    manifest = store.get(f"{lost}/manifest.json")
    assert manifest is not None and json.loads(manifest.body)["collected_at"]
    store.close()


@deferred_f_from_coro_f
async def test_a_write_back_that_fails_is_counted_and_its_rows_stay_pending(
    tmp_path: Path, s3_server: Any, s3_spool: str, emulator: Any
) -> None:
    """The store refuses the writes (the lease still renews): each failed checkpoint is
    counted in the stats the crawl dumps, the command's last write-back fails (exit 1), and
    the next collector delivers every row."""
    from dataclasses import replace

    from scrapy.utils.test import get_crawler

    from scrapy_llm_extract.collect import CollectOptions, replay_spider
    from scrapy_llm_extract.collect.remote import StoreCollection
    from scrapy_llm_extract.store import S3Store
    from tests.collect_helpers import collect, feed, product, settings, spool, stored_run, urls
    from tests.helpers import make_config
    from tests.s3_server import free_ports

    conf = {
        **settings(tmp_path, emulator),
        **s3_server.settings(s3_spool),
        "LLM_EXTRACT_SPOOL_STAGING_DIR": str(tmp_path / "staging"),
    }
    run = spool(conf, [product(n) for n in range(3)])
    config = make_config(**conf)
    assert config.spool_store is not None and config.s3 is not None
    remote = StoreCollection(config, CollectOptions())
    working = remote.claim()
    reachable = remote.store
    (closed_port,) = free_ports(1)
    remote.store = S3Store(
        config.spool_store, replace(config.s3, endpoint_url=f"http://127.0.0.1:{closed_port}")
    )
    try:
        crawler = get_crawler(
            replay_spider(remote.options), {**conf, "LLM_EXTRACT_SPOOL_DIR": str(working)}
        )
        await crawler.crawl_async()
        # After the submissions, and once the ledgers closed (before the stats are dumped).
        assert crawler.stats.get_value("llm_extract/collect/writeback_failed") == 2
        assert not remote.push()  # the command's last write-back: exit code 1
    finally:
        remote.store.close()
        remote.store = reachable
        remote.close()
    assert not stored_run(conf, run).manifest.data.get("collected_at")
    (tmp_path / "out.jsonl").unlink()
    second = await collect(conf)
    assert second.spider.collector.exit_code == 0
    assert sorted(item["url"] for item in feed(tmp_path / "out.jsonl")) == urls(range(3))
    assert stored_run(conf, run).manifest.data["collected_at"]


def test_a_live_collectors_working_copy_is_left_alone_by_the_next_one_on_the_machine(
    tmp_path: Path, s3_server: Any, s3_spool: str
) -> None:
    from scrapy_llm_extract.collect import CollectOptions
    from scrapy_llm_extract.collect.remote import StoreCollection
    from tests.helpers import make_config

    config = make_config(
        **s3_server.settings(s3_spool), LLM_EXTRACT_SPOOL_STAGING_DIR=str(tmp_path / "staging")
    )
    live = StoreCollection(config, CollectOptions())
    try:
        StoreCollection(config, CollectOptions()).close()
        assert live.workdir.is_dir()
    finally:
        live.close()
    assert list((tmp_path / "staging" / "collect").glob("work-*")) == []
