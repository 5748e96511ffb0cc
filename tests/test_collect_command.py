"""``scrapy collect-batches`` as users run it: a subprocess in a temporary Scrapy project."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from scrapy_llm_extract.spool import Run
from tests.collect_helpers import feed, product, spool, stored_run, urls

ROOT = Path(__file__).resolve().parents[1]

PIPELINES = '''
import json, os, signal

from itemadapter import ItemAdapter

class Record:
    """Writes each item it sees to RECORD; with KILL_AFTER=n, SIGKILLs itself at item n+1;
    with SIGNAL=INT|TERM and SIGNAL_AFTER=n, sends itself that signal after item n;
    with ASDICT=1, returns a new dict as many pipelines do."""

    def __init__(self):
        self.count = 0

    def process_item(self, item):
        if self.count == int(os.environ.get("KILL_AFTER", "-1")):
            os.kill(os.getpid(), signal.SIGKILL)
        self.count += 1
        line = json.dumps({"url": item["url"], "class": type(item).__name__}) + "\\n"
        with open(os.environ["RECORD"], "a") as f:
            f.write(line)
        if self.count == int(os.environ.get("SIGNAL_AFTER", "-1")):
            os.kill(os.getpid(), getattr(signal, "SIG" + os.environ["SIGNAL"]))
        return ItemAdapter(item).asdict() if os.environ.get("ASDICT") else item
'''


def make_project(tmp_path: Path, emulator, **backend: object) -> tuple[Path, dict]:
    project = tmp_path / "project"
    project.mkdir()
    (project / "scrapy.cfg").write_text("[settings]\ndefault = projsettings\n")
    (project / "projpipes.py").write_text(PIPELINES)
    settings = {
        "LLM_EXTRACT_SPOOL_DIR": str(tmp_path / "spool"),
        "LLM_EXTRACT_EMULATOR_DIR": str(emulator.path),
        **backend,
    }
    lines = ["import os", *(f"{name} = {value!r}" for name, value in settings.items())]
    lines.append("CONCURRENT_ITEMS = int(os.environ.get('CONCURRENT_ITEMS', 100))")
    lines.append("LLM_EXTRACT_LEASE_TTL = float(os.environ.get('LEASE_TTL', 300))")
    lines.append("LLM_EXTRACT_MAX_ATTEMPTS = int(os.environ.get('MAX_ATTEMPTS', 3))")
    lines.append(
        "ITEM_PIPELINES = {'scrapy_llm_extract.LLMExtractPipeline': 100, 'projpipes.Record': 200}"
    )
    (project / "projsettings.py").write_text("\n".join(lines) + "\n")
    return project, settings


def scrapy(project: Path, *args: str, **env: str) -> subprocess.Popen:
    paths = [str(project), str(ROOT), os.environ.get("PYTHONPATH", "")]
    environ = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, paths)), **env}
    environ.pop("SCRAPY_SETTINGS_MODULE", None)
    return subprocess.Popen(
        [sys.executable, "-m", "scrapy", *args],
        cwd=project,
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=120)
    return process.returncode, out, err


def batches(settings: dict, run: Run) -> list[tuple[str, dict]]:
    """The run's files and their manifest entries, as the spool holds them now."""
    return list(stored_run(settings, run).manifest.files.items())


def test_killed_mid_collection_then_rerun_delivers_every_row_once_to_the_feed(
    tmp_path, emulator, spool_backend
):
    project, settings = make_project(tmp_path, emulator, **spool_backend)
    run = spool(settings, [product(n) for n in range(30)])
    record = str(tmp_path / "record.jsonl")

    code, _, err = finish(
        scrapy(
            project,
            "collect-batches",
            "-O",
            "first.jsonl",
            RECORD=record,
            KILL_AFTER="10",
            LEASE_TTL="2",
        )
    )
    assert code == -signal.SIGKILL, err
    assert len(feed(Path(record))) == 10
    # Its submissions were saved at once (on a store: written back), never submitted again.
    submitted = {name: entry.get("batch_id") for name, entry in batches(settings, run)}
    assert submitted and all(submitted.values())

    # On a store the killed collector's lease outlives it: reruns skip the run until it expires.
    for _ in range(600):
        code, _, err = finish(
            scrapy(project, "collect-batches", "-O", "second.jsonl", RECORD=record)
        )
        assert code == 0, err
        if "another collector holds its lease" not in err:
            break
    # The killed pass never stored its feed: its 10 rows are delivered again, nothing else.
    seen = [row["url"] for row in feed(Path(record))]
    expected = sorted(f"http://shop.test/product/{n}" for n in range(30))
    assert sorted(seen[10:]) == expected
    second = feed(project / "second.jsonl")
    assert sorted(item["url"] for item in second) == expected
    assert all(item["title"] for item in second)
    assert "'llm_extract/collect/rows/delivered': 30" in err
    assert stored_run(settings, run).manifest.data["collected_at"]
    assert {name: entry.get("batch_id") for name, entry in batches(settings, run)} == submitted
    if spool_backend:  # the killed collector's working copy was removed by the next one
        assert list((tmp_path / "staging" / "collect").glob("work-*")) == []

    code, _, err = finish(scrapy(project, "collect-batches", "-O", "third.jsonl", RECORD=record))
    assert code == 0, err
    assert len(feed(Path(record))) == 40  # collected: nothing more


def test_two_collector_processes_share_the_runs(tmp_path, emulator):
    project, settings = make_project(tmp_path, emulator)
    for r in range(4):
        spool(settings, [product(10 * r + n) for n in range(5)])
    record = str(tmp_path / "record.jsonl")
    processes = [
        scrapy(project, "collect-batches", "-o", f"out{i}.jsonl", RECORD=record) for i in range(2)
    ]
    results = [finish(process) for process in processes]
    assert [code for code, _, _ in results] == [0, 0], results[0][2] + results[1][2]
    urls = [item["url"] for i in range(2) for item in feed(project / f"out{i}.jsonl")]
    expected = sorted(f"http://shop.test/product/{10 * r + n}" for r in range(4) for n in range(5))
    assert sorted(urls) == expected
    assert sorted(row["url"] for row in feed(Path(record))) == expected


def test_status_prints_the_runs_and_outside_a_project_the_command_refuses(tmp_path, emulator):
    project, settings = make_project(tmp_path, emulator)
    run = spool(settings, [product(n) for n in range(2)])
    code, out, err = finish(scrapy(project, "collect-batches", "--status"))
    assert code == 0, err
    assert run.run_id in out
    assert "pending" in out

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code, _, err = finish(scrapy(elsewhere, "collect-batches"))
    assert code == 2
    assert "inside a Scrapy project" in err
    code, out, _ = finish(scrapy(elsewhere, "version"))
    assert code == 0


@pytest.mark.parametrize("name", ["INT", "TERM"])
def test_a_signal_stops_the_replay_at_once_and_the_rest_is_delivered_next_time(
    tmp_path, emulator, name
):
    project, settings = make_project(tmp_path, emulator)
    run = spool(settings, [product(n) for n in range(60)])
    record = str(tmp_path / "record.jsonl")
    env = {"RECORD": record, "SIGNAL": name, "SIGNAL_AFTER": "5", "CONCURRENT_ITEMS": "1"}
    code, _, err = finish(scrapy(project, "collect-batches", "-o", "first.jsonl", **env))
    first = [item["url"] for item in feed(project / "first.jsonl")]
    assert 5 <= len(first) < 60, err
    assert len(feed(Path(record))) == len(first)  # stopped: nothing more went in
    assert not json.loads((run.path / "manifest.json").read_text()).get("collected_at")

    code, _, err = finish(scrapy(project, "collect-batches", "-o", "second.jsonl", RECORD=record))
    assert code == 0, err
    second = [item["url"] for item in feed(project / "second.jsonl")]
    assert sorted(first + second) == urls(range(60))  # each row once: the feed was stored


def test_a_dict_returning_pipeline_neither_hangs_nor_duplicates_beyond_the_killed_pass(
    tmp_path, emulator
):
    project, settings = make_project(tmp_path, emulator)
    spool(settings, [product(n) for n in range(30)])
    record = str(tmp_path / "record.jsonl")
    env = {"RECORD": record, "ASDICT": "1"}
    code, _, _ = finish(scrapy(project, "collect-batches", "-o", "a.jsonl", KILL_AFTER="10", **env))
    assert code == -signal.SIGKILL
    code, _, err = finish(scrapy(project, "collect-batches", "-O", "b.jsonl", **env))
    assert code == 0, err
    delivered = feed(project / "b.jsonl")
    assert sorted(item["url"] for item in delivered) == urls(range(30))
    assert len({item["llm_extract_row_id"] for item in delivered}) == 30
    code, _, err = finish(scrapy(project, "collect-batches", "-O", "c.jsonl", **env))
    assert code == 0, err
    assert feed(project / "c.jsonl") == []
    assert len(feed(Path(record))) == 10 + 30


def test_rows_failing_for_good_exit_1_with_a_warning_naming_failures_jsonl(tmp_path, emulator):
    project, settings = make_project(tmp_path, emulator)
    run = spool(settings, [product(1), product(2, "[[emulator:refusal]]")])
    record = str(tmp_path / "record.jsonl")
    code, _, err = finish(
        scrapy(project, "collect-batches", "-o", "out.jsonl", RECORD=record, MAX_ATTEMPTS="1")
    )
    assert code == 1, err
    assert f"WARNING: 1 row(s) failed for good; reasons and items are in {run.path}" in err
    assert [item["url"] for item in feed(project / "out.jsonl")] == urls([1])


def test_an_unknown_run_is_a_usage_error_listing_the_runs(tmp_path, emulator):
    project, settings = make_project(tmp_path, emulator)
    runs = [spool(settings, [product(n)]) for n in range(2)]
    for extra in ([], ["--status"], ["--cancel"]):
        code, out, err = finish(scrapy(project, "collect-batches", "--run", "nope", *extra))
        assert code == 2, err
        assert "No spool run 'nope'" in err
        assert all(run.run_id in err for run in runs)
    code, out, err = finish(scrapy(project, "collect-batches", "--status", "--run", runs[1].run_id))
    assert code == 0, err
    assert runs[1].run_id in out
    assert runs[0].run_id not in out


def test_an_escalation_model_chat_completions_cannot_reach_is_a_usage_error(tmp_path, emulator):
    project, _ = make_project(tmp_path, emulator)
    code, _, err = finish(scrapy(project, "collect-batches", "--escalate-model", "gpt-5-pro"))
    assert code == 2, err
    assert "--escalate-model: gpt-5-pro is served by OpenAI's Responses API only" in err


def test_not_a_number_is_refused_as_a_deadline_or_poll_interval(tmp_path, emulator):
    """ "nan" was taken: --deadline nan never cancelled anything, --poll-interval nan crashed
    the wait loop after the first pass."""
    project, _ = make_project(tmp_path, emulator)
    for option, value, message in (
        ("--deadline", "nan", "--deadline must be a number of hours"),
        ("--poll-interval", "nan", "--poll-interval must be a positive number"),
        ("--poll-interval", "inf", "--poll-interval must be a positive number"),
    ):
        code, _, err = finish(scrapy(project, "collect-batches", "--wait", option, value))
        assert code == 2, err
        assert message in err


def test_help_offers_no_spider_arguments(tmp_path, emulator):
    project, _ = make_project(tmp_path, emulator)
    code, out, err = finish(scrapy(project, "collect-batches", "-h"))
    assert code == 0, err
    assert "-O FILE" in out
    assert "-a NAME=VALUE" not in out
    assert "(with --run: its)" not in out
