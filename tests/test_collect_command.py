"""``scrapy collect-batches`` as users run it: a subprocess in a temporary Scrapy project."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.collect_helpers import feed, product, spool

ROOT = Path(__file__).resolve().parents[1]

PIPELINES = '''
import json, os, signal

class Record:
    """Writes each item it sees to RECORD; with KILL_AFTER=n, SIGKILLs itself at item n+1."""

    def __init__(self):
        self.count = 0

    def process_item(self, item):
        if self.count == int(os.environ.get("KILL_AFTER", "-1")):
            os.kill(os.getpid(), signal.SIGKILL)
        self.count += 1
        line = json.dumps({"url": item["url"], "class": type(item).__name__}) + "\\n"
        with open(os.environ["RECORD"], "a") as f:
            f.write(line)
        return item
'''


def make_project(tmp_path: Path, emulator) -> tuple[Path, dict]:
    project = tmp_path / "project"
    project.mkdir()
    (project / "scrapy.cfg").write_text("[settings]\ndefault = projsettings\n")
    (project / "projpipes.py").write_text(PIPELINES)
    settings = {
        "LLM_EXTRACT_SPOOL_DIR": str(tmp_path / "spool"),
        "LLM_EXTRACT_EMULATOR_DIR": str(emulator.path),
    }
    lines = [f"{name} = {value!r}" for name, value in settings.items()]
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


def test_killed_mid_collection_then_rerun_delivers_every_row_once_to_the_feed(tmp_path, emulator):
    project, settings = make_project(tmp_path, emulator)
    run = spool(settings, [product(n) for n in range(30)])
    record = str(tmp_path / "record.jsonl")

    code, _, err = finish(
        scrapy(project, "collect-batches", "-O", "first.jsonl", RECORD=record, KILL_AFTER="10")
    )
    assert code == -signal.SIGKILL, err
    assert len(feed(Path(record))) == 10

    code, _, err = finish(scrapy(project, "collect-batches", "-O", "second.jsonl", RECORD=record))
    assert code == 0, err
    # The killed pass never stored its feed: its 10 rows are delivered again, nothing else.
    seen = [row["url"] for row in feed(Path(record))]
    expected = sorted(f"http://shop.test/product/{n}" for n in range(30))
    assert sorted(seen[10:]) == expected
    second = feed(project / "second.jsonl")
    assert sorted(item["url"] for item in second) == expected
    assert all(item["title"] for item in second)
    assert "'llm_extract/collect/rows/delivered': 30" in err
    assert json.loads((run.path / "manifest.json").read_text())["collected_at"]

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
