"""``scrapy collect-batches`` down the paths the main tests leave out, run as users run it.

Each test drives the command in a subprocess on a small project in ``tmp_path``
(or ``status_table``), against the emulator, and checks outcomes only: items in
the feed, rows in ``failures.jsonl`` with their kind, files and batches on the
API side, the status table, the manifest's batch record.

Two answers of the real API have no emulator switch: a failed ``DELETE`` of a
file, and a ``batches.create`` answered with a batch that has already failed
validation. :class:`ApiFront` serves the emulator on loopback HTTP with them.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
from scrapy.settings import Settings

from scrapy_llm_extract.collect import CollectOptions, status_table
from scrapy_llm_extract.emulator import Emulator, EmulatorRequest, emulator_transport
from scrapy_llm_extract.spool import Run
from tests.collect_helpers import Product, feed, product, spool
from tests.conftest import product_page

ROOT = Path(__file__).resolve().parents[1]
#: collect.py reads result files in slices of this many bytes (its DOWNLOAD_SLICE).
DOWNLOAD_SLICE = 1 << 20


@dataclass
class Project:
    """A Scrapy project whose pipelines are the extraction pipeline alone; the feed is
    given on the command line (``-O items.jsonl``), as users would."""

    path: Path
    settings: dict[str, Any]

    @classmethod
    def create(cls, tmp_path: Path, **settings: Any) -> Project:
        path = tmp_path / "project"
        path.mkdir()
        (path / "scrapy.cfg").write_text("[settings]\ndefault = projsettings\n")
        settings = {
            "LLM_EXTRACT_SPOOL_DIR": str(tmp_path / "spool"),
            "ITEM_PIPELINES": {"scrapy_llm_extract.LLMExtractPipeline": 100},
            "LOG_LEVEL": "INFO",
            **settings,
        }
        lines = [f"{name} = {value!r}" for name, value in settings.items()]
        (path / "projsettings.py").write_text("\n".join(lines) + "\n")
        return cls(path, settings)

    def spool(self, items: list[Any]) -> Run:
        return spool(self.settings, items)

    def collect(
        self, *args: str, feed: str = "items.jsonl", **env: str
    ) -> subprocess.CompletedProcess[str]:
        """``scrapy collect-batches ARGS -O FEED``, to its end (``env``: more variables)."""
        return self.scrapy("collect-batches", *args, "-O", feed, **env)

    def scrapy(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return self.python("-m", "scrapy", *args, **env)

    def python(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        """The project's Python (``python ARGS``) in the project folder, to its end."""
        paths = [str(self.path), str(ROOT), os.environ.get("PYTHONPATH", "")]
        environ = {**os.environ, **env, "PYTHONPATH": os.pathsep.join(filter(None, paths))}
        environ.pop("SCRAPY_SETTINGS_MODULE", None)
        return subprocess.run(
            [sys.executable, *args],
            cwd=self.path,
            env=environ,
            capture_output=True,
            text=True,
            timeout=180,
        )

    def items(self, name: str = "items.jsonl") -> list[dict[str, Any]]:
        return feed(self.path / name)


def urls(numbers: Any) -> list[str]:
    return sorted(f"http://shop.test/product/{n}" for n in numbers)


def delivered(project: Project, name: str = "items.jsonl") -> list[str]:
    return sorted(item["url"] for item in project.items(name))


def failures(run: Run) -> list[dict[str, Any]]:
    return feed(run.path / "failures.jsonl")


def manifest(run: Run) -> dict[str, Any]:
    return Run.open(run.path).manifest.data


def api(state_dir: Path) -> openai.OpenAI:
    """The API side as the SDK sees it: the emulator's files and batches."""
    return openai.OpenAI(
        api_key="sk-test",
        base_url="http://emulator.invalid/v1",
        max_retries=0,
        http_client=httpx2.Client(transport=emulator_transport(state_dir)),
    )


def remote_files(state_dir: Path) -> set[str]:
    with api(state_dir) as client:
        return {file.id for file in client.files.list()}


def remote_batches(state_dir: Path) -> list[Any]:
    """Every batch, newest first (the API's order)."""
    with api(state_dir) as client:
        return list(client.batches.list(limit=100))


@dataclass
class ApiFront:
    """The emulator behind a loopback HTTP server of the test's, with two real-API answers the
    emulator has no switch for (set them at any time; requests are recorded):

    - ``delete_status``: answer every ``DELETE /v1/files/{id}`` with this error status;
    - ``create_answers_current``: answer ``POST /v1/batches`` with the batch as a read right
      after creation shows it (the emulator answers "validating" whatever follows; the real
      API may answer "failed" at once);
    - ``refuse_key_on``: answer this ``(method, path)`` with OpenAI's 401, which quotes the
      key of the request's Authorization header (whole, and masked as OpenAI masks it);
    - ``refuse_create``: answer every ``POST /v1/batches`` with OpenAI's 400 (the creation
      refused, as for a metadata value the API rejects);
    - ``refuse_cancel``: answer ``POST /v1/batches/{id}/cancel`` of this batch with a 400.
    """

    state_dir: Path
    delete_status: int | None = None
    create_answers_current: bool = False
    refuse_key_on: tuple[str, str] | None = None
    refuse_create: bool = False
    refuse_cancel: str | None = None
    requests: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.emulator = Emulator(self.state_dir)
        front = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                request = EmulatorRequest(
                    method=self.command,
                    path=self.path.split("?")[0],
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=body,
                )
                status, headers, content = front.answer(request)
                self.send_response(status)
                for name, value in {**headers, "content-length": str(len(content))}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(content)

            do_GET = do_POST = do_DELETE = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def answer(self, request: EmulatorRequest) -> tuple[int, dict[str, str], bytes]:
        self.requests.append((request.method, request.path))
        if request.method == "DELETE" and self.delete_status is not None:
            error = {"error": {"message": "Emulated delete failure", "type": "server_error"}}
            return (
                self.delete_status,
                {"content-type": "application/json"},
                json.dumps(error).encode(),
            )
        if self.refuse_create and (request.method, request.path.rstrip("/")) == (
            "POST",
            "/v1/batches",
        ):
            error = {"error": {"message": "Emulated refusal", "type": "invalid_request_error"}}
            return 400, {"content-type": "application/json"}, json.dumps(error).encode()
        if (request.method, request.path) == ("POST", f"/v1/batches/{self.refuse_cancel}/cancel"):
            error = {"error": {"message": "Emulated refusal", "type": "invalid_request_error"}}
            return 400, {"content-type": "application/json"}, json.dumps(error).encode()
        if (request.method, request.path.rstrip("/")) == self.refuse_key_on:
            key = request.headers.get("authorization", "").removeprefix("Bearer ")
            message = (
                f"Incorrect API key provided: {key[:8]}{'*' * 20}{key[-4:]}. You can find your"
                f" API key at https://platform.openai.com/account/api-keys. (sent: {key})"
            )
            error = {"error": {"message": message, "type": "invalid_request_error"}}
            return 401, {"content-type": "application/json"}, json.dumps(error).encode()
        response = self.emulator.handle(request)
        if (
            self.create_answers_current
            and request.method == "POST"
            and request.path.rstrip("/") == "/v1/batches"
            and response.status == 200
        ):
            created = json.loads(response.body)  # type: ignore[arg-type]
            response = self.emulator.handle(
                EmulatorRequest("GET", f"/v1/batches/{created['id']}", headers=request.headers)
            )
        body = response.body if isinstance(response.body, bytes) else b"".join(response.body)
        return response.status, response.headers, body

    def __enter__(self) -> ApiFront:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def parse_table(table: str) -> list[dict[str, str]]:
    """The rows of a left-aligned text table, as {header: cell}."""
    header, *lines = table.splitlines()
    names = [name for name in header.split("  ") if name.strip()]
    starts = []
    for name in names:
        starts.append(header.index(name.strip(), starts[-1] + 1 if starts else 0))
    bounds = list(zip(starts, [*starts[1:], None], strict=True))
    return [
        {name.strip(): line[a:b].strip() for name, (a, b) in zip(names, bounds, strict=True)}
        for line in lines
    ]


def fronted_project(tmp_path: Path, front: ApiFront, **settings: Any) -> Project:
    return Project.create(
        tmp_path,
        LLM_EXTRACT_BASE_URL=front.base_url,
        LLM_EXTRACT_API_KEY="sk-test-front",
        **settings,
    )


# A dead crawl's run ---------------------------------------------------------------------------

DIE_MID_SPOOL = """
import os, signal, sys
from itemadapter import ItemAdapter
from scrapy_llm_extract.extraction import Preparer
from scrapy_llm_extract.items import item_record
from scrapy_llm_extract.spool import Spool
from tests.collect_helpers import product
from tests.helpers import make_config

config = make_config(**{settings!r})
preparer = Preparer(config)
writer = Spool(config, spider="shop")
for n in range({count}):
    one = product(n)
    writer.add(preparer.prepare(ItemAdapter(one)), item_record(one, config))
# Killed while writing the next row: half a sidecar line, and no request line.
part = sorted(writer.run.path.glob("items-*.jsonl"))[-1]
with open(part, "ab") as f:
    f.write(b'{{"custom_id":"torn-by-the-kill","url":"http://shop.test/product/torn')
print(writer.run.path, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def spool_then_die(project: Project, count: int) -> Run:
    """A crawl process that spools ``count`` items and is SIGKILLed mid-row: its run folder."""
    script = DIE_MID_SPOOL.format(settings=project.settings, count=count)
    process = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert process.returncode == -signal.SIGKILL, process.stderr
    return Run.open(Path(process.stdout.strip()))


def test_a_dead_crawls_run_is_recovered_and_every_spooled_row_delivered(tmp_path, emulator):
    # 3 rows a file: two sealed files, and a third left as .part by the kill.
    project = Project.create(
        tmp_path, LLM_EXTRACT_EMULATOR_DIR=str(emulator.path), LLM_EXTRACT_BATCH_MAX_REQUESTS=3
    )
    run = spool_then_die(project, 7)
    assert not run.manifest.closed and not run.is_live()
    assert list(run.path.glob("*.part"))

    done = project.collect()
    assert done.returncode == 0, done.stderr
    assert delivered(project) == urls(range(7))
    assert all(item["title"] for item in project.items())
    assert failures(run) == []
    data = manifest(run)
    assert data["closed_at"] and data["collected_at"]
    assert not list(run.path.glob("*.part"))
    assert len(remote_batches(emulator.path)) == 3


DIE_BETWEEN_SIDECAR_AND_REQUEST = """
import os, signal
from itemadapter import ItemAdapter
from scrapy_llm_extract import spool
from scrapy_llm_extract.extraction import Preparer
from scrapy_llm_extract.items import item_record
from tests.collect_helpers import product
from tests.helpers import make_config

config = make_config(**{settings!r})
preparer = Preparer(config)
writer = spool.Spool(config, spider="shop")
for n in range({count}):
    one = product(n)
    writer.add(preparer.prepare(ItemAdapter(one)), item_record(one, config))
print(writer.run.path, flush=True)
write_all = spool._write_all

def killed_before_the_request_line(fd, data):
    if fd == writer.current._requests_fd:
        os.kill(os.getpid(), signal.SIGKILL)
    write_all(fd, data)

spool._write_all = killed_before_the_request_line
one = product({count})
writer.add(preparer.prepare(ItemAdapter(one)), item_record(one, config))
"""


def test_a_row_whose_request_line_the_kill_cut_off_is_reported_failed_not_lost(tmp_path, emulator):
    # Killed between a row's two writes: its sidecar row is whole, its request row never was.
    project = Project.create(tmp_path, LLM_EXTRACT_EMULATOR_DIR=str(emulator.path))
    script = DIE_BETWEEN_SIDECAR_AND_REQUEST.format(settings=project.settings, count=4)
    process = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert process.returncode == -signal.SIGKILL, process.stderr
    run = Run.open(Path(process.stdout.strip()))
    (sidecar,) = run.path.glob("items-*.jsonl")
    assert len(sidecar.read_bytes().splitlines()) == 5

    done = project.collect()
    assert done.returncode == 1, done.stderr
    assert delivered(project) == urls(range(4))
    (failed,) = failures(run)
    assert failed["url"] == "http://shop.test/product/4"
    assert "never spooled whole" in failed["message"]
    assert manifest(run)["collected_at"]
    table = status_table(Settings(project.settings), CollectOptions())
    (counts,) = parse_table(table.split("\n\n")[0])
    assert (counts["spooled"], counts["delivered"], counts["failed"]) == ("5", "4", "1")
    assert (counts["dropped"], counts["pending"]) == ("0", "0")
    assert len(manifest(run)["files"]) == 1  # no empty resubmission file


# Batches that fail validation -----------------------------------------------------------------


def test_a_file_refused_max_attempts_times_reports_its_rows_and_the_run_finishes(
    tmp_path, emulator
):
    emulator.configure(fail_batches="model_not_found")
    project = Project.create(
        tmp_path, LLM_EXTRACT_EMULATOR_DIR=str(emulator.path), LLM_EXTRACT_MAX_ATTEMPTS=2
    )
    run = project.spool([product(n) for n in range(3)])

    project.collect("--wait", "--poll-interval", "0.01")
    assert project.items() == []
    reported = failures(run)
    assert sorted(row["url"] for row in reported) == urls(range(3))
    assert {row["kind"] for row in reported} == {"batch_failed"}
    assert all("model_not_found" in row["message"] for row in reported)
    batches = remote_batches(emulator.path)
    assert [batch.status for batch in batches] == ["failed", "failed"]
    (entry,) = manifest(run)["files"].values()
    assert len(entry["failed_batches"]) == 2
    assert {failed["batch_id"] for failed in entry["failed_batches"]} == {b.id for b in batches}
    assert all("model_not_found" in failed["reason"] for failed in entry["failed_batches"])
    assert manifest(run)["collected_at"]


def test_a_batch_failed_at_creation_is_never_polled_and_its_rows_are_reported(tmp_path, emulator):
    emulator.configure(fail_batches="model_not_found")
    with ApiFront(emulator.path, create_answers_current=True) as front:
        project = fronted_project(tmp_path, front, LLM_EXTRACT_MAX_ATTEMPTS=1)
        run = project.spool([product(n) for n in range(3)])
        project.collect()
    (batch,) = remote_batches(emulator.path)
    assert batch.status == "failed"
    assert ("GET", f"/v1/batches/{batch.id}") not in front.requests
    (entry,) = manifest(run)["files"].values()
    assert [failed["batch_id"] for failed in entry["failed_batches"]] == [batch.id]
    reported = failures(run)
    assert sorted(row["url"] for row in reported) == urls(range(3))
    assert {row["kind"] for row in reported} == {"batch_failed"}
    assert all("model_not_found" in row["message"] for row in reported)
    assert project.items() == []
    assert manifest(run)["collected_at"]


def test_a_refused_batch_creation_reuses_its_upload_and_leaves_none_on_the_api(tmp_path, emulator):
    with ApiFront(emulator.path, refuse_create=True) as front:
        project = fronted_project(tmp_path, front)
        run = project.spool([product(n) for n in range(3)])
        uploads = lambda: front.requests.count(("POST", "/v1/files"))  # noqa: E731

        once = project.collect()  # one pass: the upload stays recorded for the next one
        assert once.returncode == 1, once.stderr
        (entry,) = manifest(run)["files"].values()
        assert remote_files(emulator.path) == {entry["file_id"]}
        assert uploads() == 1

        given_up = project.collect("--wait", "--poll-interval", "0.01")
        assert given_up.returncode == 1, given_up.stderr
        assert front.requests.count(("POST", "/v1/batches")) == 4
        assert uploads() == 1  # before: one upload per poll, each left on the API
        assert stat(given_up, "uploads/reused") == 3
        assert stat(given_up, "uploads/released") == 1
        assert "given up on; the next submission uploads it again" in given_up.stderr
        assert remote_files(emulator.path) == set()
        assert manifest(run)["files_to_delete"] == []

        front.refuse_create = False
        done = project.collect()
        assert done.returncode == 0, done.stderr
        assert delivered(project) == urls(range(3))
        assert uploads() == 2
        assert remote_files(emulator.path) == set()


def test_an_upload_the_api_no_longer_has_is_uploaded_again(tmp_path, emulator):
    with ApiFront(emulator.path, refuse_create=True) as front:
        project = fronted_project(tmp_path, front)
        run = project.spool([product(n) for n in range(3)])
        assert project.collect().returncode == 1
        (entry,) = manifest(run)["files"].values()
        with api(emulator.path) as client:
            client.files.delete(entry["file_id"])  # expired after 30 days, or deleted by hand
        front.refuse_create = False
        done = project.collect()
    assert done.returncode == 0, done.stderr
    assert f"The upload {entry['file_id']} of requests-0001.jsonl" in done.stderr
    assert delivered(project) == urls(range(3))
    assert remote_files(emulator.path) == set()


#: collect-batches, SIGKILLed right after it wrote and sealed a resubmission file, before it
#: settled the rows it carries in their source file.
KILLED_BEFORE_SETTLING = """
import os, signal, sys
from scrapy.cmdline import execute
from scrapy_llm_extract.collect.ledger import Ledger

def killed(self, action, state):
    os.kill(os.getpid(), signal.SIGKILL)

Ledger.settle_pending = killed
sys.argv = ["scrapy", "collect-batches", "-O", "items.jsonl"]
execute()
"""


def test_rows_written_to_a_resubmission_before_a_kill_are_submitted_once(tmp_path, emulator):
    emulator.configure(row_error_every=3)  # the third row fails once, then its retry passes
    project = Project.create(tmp_path, LLM_EXTRACT_EMULATOR_DIR=str(emulator.path))
    run = project.spool([product(n) for n in range(3)])
    killed = project.python("-c", KILLED_BEFORE_SETTLING)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert manifest(run)["files"]["requests-0002.jsonl"]["resubmits"] == "requests-0001.jsonl"

    done = project.collect()
    assert done.returncode == 0, done.stderr
    assert delivered(project) == urls(range(3))
    assert stat(done, "rows/resubmission_recovered") == 1
    assert list(manifest(run)["files"]) == ["requests-0001.jsonl", "requests-0002.jsonl"]
    assert sorted(batch.request_counts.total for batch in remote_batches(emulator.path)) == [1, 3]


# Remote files ---------------------------------------------------------------------------------


def test_collected_runs_leave_no_file_on_the_api_unless_asked_to_keep_them(tmp_path, emulator):
    # Row 3 fails (an error file besides the output file); one attempt, so no resubmission.
    emulator.configure(row_error_every=3)
    project = Project.create(
        tmp_path, LLM_EXTRACT_EMULATOR_DIR=str(emulator.path), LLM_EXTRACT_MAX_ATTEMPTS=1
    )
    run = project.spool([product(n) for n in range(3)])
    project.collect()
    assert len(project.items()) == 2
    assert [row["kind"] for row in failures(run)] == ["api_error"]
    assert manifest(run)["collected_at"]
    assert remote_files(emulator.path) == set()


def test_keep_remote_files_keeps_input_output_and_error_files(tmp_path, emulator):
    emulator.configure(row_error_every=3)
    project = Project.create(
        tmp_path,
        LLM_EXTRACT_EMULATOR_DIR=str(emulator.path),
        LLM_EXTRACT_MAX_ATTEMPTS=1,
        LLM_EXTRACT_KEEP_REMOTE_FILES=True,
    )
    run = project.spool([product(n) for n in range(3)])
    project.collect()
    assert len(project.items()) == 2
    assert manifest(run)["collected_at"]
    (batch,) = remote_batches(emulator.path)
    (entry,) = manifest(run)["files"].values()
    kept = {entry["file_id"], batch.output_file_id, batch.error_file_id}
    assert None not in kept
    assert remote_files(emulator.path) == kept


def stat(process: subprocess.CompletedProcess[str], name: str) -> int | None:
    """A stat of a command's closing stats dump (None: not set)."""
    found = re.search(rf"'llm_extract/collect/{re.escape(name)}': (\d+)", process.stderr)
    return int(found.group(1)) if found else None


def test_a_failed_delete_is_counted_remembered_and_retried_by_the_next_collection(
    tmp_path, emulator
):
    with ApiFront(emulator.path, delete_status=500) as front:
        project = fronted_project(tmp_path, front, LLM_EXTRACT_MAX_RETRIES=0)
        run = project.spool([product(n) for n in range(4)])
        done = project.collect()
        assert done.returncode == 0, done.stderr
        assert delivered(project) == urls(range(4))
        assert failures(run) == []
        assert manifest(run)["collected_at"]
        (batch,) = remote_batches(emulator.path)
        (entry,) = manifest(run)["files"].values()
        leaked = {entry["file_id"], batch.output_file_id}
        assert remote_files(emulator.path) == leaked
        assert set(manifest(run)["files_to_delete"]) == leaked
        assert stat(done, "remote_files/delete_failed") == 2
        assert "the next scrapy collect-batches deletes it" in done.stderr

        front.delete_status = None
        again = project.collect(feed="again.jsonl")
        assert again.returncode == 0, again.stderr
        assert project.items("again.jsonl") == []
        assert remote_files(emulator.path) == set()
        assert manifest(run)["files_to_delete"] == []
        assert stat(again, "remote_files/deleted") == 2
        assert stat(again, "remote_files/delete_failed") is None


# Key hygiene ----------------------------------------------------------------------------------

#: A key as read from a mounted secret file: with its trailing newline.
SECRET_KEY = "sk-hygiene0123456789abcdefSECRET\n"


@pytest.mark.parametrize("refused", ["/v1/files", "/v1/batches"])
def test_the_api_key_is_in_no_manifest_log_stat_or_failure_when_the_api_quotes_it(
    tmp_path, emulator, refused
):
    with ApiFront(emulator.path, refuse_key_on=("POST", refused)) as front:
        project = Project.create(
            tmp_path, LLM_EXTRACT_BASE_URL=front.base_url, LLM_EXTRACT_MAX_ATTEMPTS=1
        )
        run = project.spool([product(n) for n in range(3)])
        done = project.collect("--wait", "--poll-interval", "0.01", OPENAI_API_KEY=SECRET_KEY)
    # The key reached the API stripped (the 401 came back, not an illegal header error) ...
    assert ("POST", refused) in front.requests
    assert done.returncode == 1, done.stderr
    (entry,) = manifest(run)["files"].values()
    assert "Incorrect API key provided: [API key]" in entry["reason"]
    # ... and neither it nor OpenAI's masked form of it is written anywhere.
    secret = SECRET_KEY.strip().removeprefix("sk-")
    written = [done.stdout, done.stderr] + [
        path.read_text(errors="replace") for path in run.path.iterdir() if path.is_file()
    ]
    assert "Incorrect API key provided" in done.stderr
    for text in written:
        assert secret[:5] not in text
        assert secret[-4:] not in text


# --cancel and --run ---------------------------------------------------------------------------


def test_cancel_with_run_cancels_that_runs_batches_whose_rows_then_fail(tmp_path, emulator):
    emulator.configure(in_progress_seconds=3600)
    project = Project.create(tmp_path, LLM_EXTRACT_EMULATOR_DIR=str(emulator.path))
    first = project.spool([product(n) for n in range(3)])
    second = project.spool([product(n) for n in range(3, 5)])
    project.collect()  # submits both runs
    assert [batch.status for batch in remote_batches(emulator.path)] == ["in_progress"] * 2

    cancelled = project.scrapy("collect-batches", "--cancel", "--run", first.run_id)
    assert cancelled.returncode == 0, cancelled.stderr
    status = {batch.id: batch.status for batch in remote_batches(emulator.path)}
    first_batch = next(iter(manifest(first)["files"].values()))["batch_id"]
    second_batch = next(iter(manifest(second)["files"].values()))["batch_id"]
    assert status == {first_batch: "cancelled", second_batch: "in_progress"}

    project.collect("--run", first.run_id)
    assert project.items() == []
    reported = failures(first)
    assert sorted(row["url"] for row in reported) == urls(range(3))
    assert {row["kind"] for row in reported} == {"batch_cancelled"}
    assert manifest(first)["collected_at"]
    assert failures(second) == []
    assert not manifest(second).get("collected_at")
    assert [entry["status"] for entry in manifest(second)["files"].values()] == ["submitted"]


def test_a_cancel_that_cannot_go_through_exits_1_and_keeps_the_cancels_that_did(tmp_path, emulator):
    """A refused cancel raised out of the command: the cancels before it in the same run were
    never recorded, so collection resubmitted the rows the user had cancelled. A run another
    process held was skipped with a warning and exit 0."""
    emulator.configure(in_progress_seconds=3600)
    with ApiFront(emulator.path) as front:
        project = fronted_project(tmp_path, front, LLM_EXTRACT_BATCH_MAX_REQUESTS=2)
        run = project.spool([product(n) for n in range(4)])  # two files
        held = project.spool([product(n) for n in range(10, 12)])
        project.collect()  # submits the three files
        first, second = (entry["batch_id"] for entry in manifest(run)["files"].values())
        front.refuse_cancel = second
        Run.open(held.path).try_lock()  # another process holds it

        refused = project.scrapy("collect-batches", "--cancel")
        assert refused.returncode == 1, refused.stderr
        assert f"Not cancelling run {held.run_id}: another process" in refused.stderr
        assert f"Could not cancel batch {second} (requests-0002.jsonl of {run.run_id})" in (
            refused.stderr
        )
        assert "Traceback" not in refused.stderr
        files = manifest(run)["files"]
        assert files["requests-0001.jsonl"].get("user_cancelled")
        assert not files["requests-0002.jsonl"].get("user_cancelled")
        assert {b.id: b.status for b in remote_batches(emulator.path)}[first] == "cancelled"


def test_run_collects_only_that_run(tmp_path, emulator):
    project = Project.create(tmp_path, LLM_EXTRACT_EMULATOR_DIR=str(emulator.path))
    first = project.spool([product(n) for n in range(3)])
    second = project.spool([product(n) for n in range(3, 6)])
    done = project.collect("--run", second.run_id)
    assert done.returncode == 0, done.stderr
    assert delivered(project) == urls(range(3, 6))
    assert manifest(second)["collected_at"]
    assert not manifest(first).get("collected_at")
    assert [entry["status"] for entry in manifest(first)["files"].values()] == ["pending"]
    assert len(remote_batches(emulator.path)) == 1


BUGGY_PIPELINE = """
import os

from itemadapter import ItemAdapter


class Buggy:
    def process_item(self, item):
        if ItemAdapter(item)["url"] == os.environ.get("BUGGY_URL"):
            raise RuntimeError("bug in the project's pipeline")
        return item
"""

KILLED_AFTER_FORGETTING = """
import os, signal
from scrapy.cmdline import execute
from scrapy_llm_extract.collect.ledger import Ledger

forget = Ledger.forget_item_errors

def forget_then_die(self):
    forget(self)
    os.kill(os.getpid(), signal.SIGKILL)

Ledger.forget_item_errors = forget_then_die
execute(["scrapy", "collect-batches", "--retry-failed", "-O", "items.jsonl"])
"""


def test_retry_failed_killed_half_way_is_taken_up_by_the_next_retry_failed(tmp_path, emulator):
    """Killed after the ledger forgot the pipeline's failures, before the run was reopened:
    the rows were pending in a run marked collected, which no later pass looked at again."""
    project = Project.create(
        tmp_path,
        LLM_EXTRACT_EMULATOR_DIR=str(emulator.path),
        ITEM_PIPELINES={"scrapy_llm_extract.LLMExtractPipeline": 100, "buggy.Buggy": 150},
    )
    (project.path / "buggy.py").write_text(BUGGY_PIPELINE)
    run = project.spool([product(n) for n in range(3)])
    first = project.collect(BUGGY_URL="http://shop.test/product/2")
    assert first.returncode == 1, first.stderr
    assert manifest(run)["collected_at"]

    killed = project.python("-c", KILLED_AFTER_FORGETTING)
    assert killed.returncode == -signal.SIGKILL, killed.stderr

    retried = project.collect("--retry-failed")
    assert retried.returncode == 0, retried.stderr
    assert delivered(project) == urls([2])
    assert failures(run) == []
    assert manifest(run)["collected_at"]


# A result line across download slices -----------------------------------------------------------


def test_result_lines_across_download_slices_are_joined_whole(tmp_path, emulator):
    # Emoji come back as 12-byte \\ud83d\\ude00 escapes: each result row is ~14 kB, the output
    # file ~1.3 MB, so at least one line crosses the first slice boundary.
    big = "\U0001f600" * 600
    pages = [
        Product(
            url=f"http://shop.test/product/{n}",
            html=product_page(n, title=f"{n} {big}", currency=big),
        )
        for n in range(90)
    ]
    project = Project.create(
        tmp_path,
        LLM_EXTRACT_EMULATOR_DIR=str(emulator.path),
        LLM_EXTRACT_MAX_OUTPUT_TOKENS=4096,
        LLM_EXTRACT_KEEP_REMOTE_FILES=True,
    )
    run = project.spool(pages)
    done = project.collect()
    assert done.returncode == 0, done.stderr

    (batch,) = remote_batches(emulator.path)
    with api(emulator.path) as client:
        content = client.files.content(batch.output_file_id).content
    assert len(content) > DOWNLOAD_SLICE
    assert content.rfind(b"\n", 0, DOWNLOAD_SLICE) < DOWNLOAD_SLICE - 1
    (name,) = manifest(run)["files"]
    url_of = {row["custom_id"]: row["url"] for row in run.iter_sidecar(name)}
    answered = {}
    for line in content.splitlines():
        row = json.loads(line)
        message = row["response"]["body"]["choices"][0]["message"]["content"]
        answered[url_of[row["custom_id"]]] = json.loads(message)
    items = project.items()
    assert sorted(item["url"] for item in items) == sorted(answered)
    for item in items:
        assert item["title"] == answered[item["url"]]["title"]
        assert item["currency"] == answered[item["url"]]["currency"]
    assert failures(run) == []


# The status table's batches ---------------------------------------------------------------------


def test_status_table_shows_each_submitted_files_batch_and_changes_nothing(tmp_path, emulator):
    # The result files of finished batches stay hidden: the collector leaves them submitted.
    emulator.configure(late_result_files_first=1000)
    project = Project.create(tmp_path, LLM_EXTRACT_EMULATOR_DIR=str(emulator.path))
    finished = project.spool([product(n) for n in range(3)])
    project.collect()
    emulator.configure(late_result_files_first=1000, in_progress_seconds=3600)
    running = project.spool([product(n) for n in range(3, 5)])
    project.collect()
    pending = project.spool([product(5)])
    before = {
        run.run_id: (run.path / "manifest.json").read_bytes()
        for run in (finished, running, pending)
    }

    table = status_table(Settings(project.settings), CollectOptions())
    # Where each run's rows stand comes first, then a table of files and their batches.
    run_counts, files = table.split("\n\n")
    assert {row["run"] for row in parse_table(run_counts)} == {
        run.run_id for run in (finished, running, pending)
    }
    rows = {row["run"]: row for row in parse_table(files)}
    with api(emulator.path) as client:
        batch = client.batches.retrieve(
            manifest(finished)["files"]["requests-0001.jsonl"]["batch_id"]
        )
    assert batch.status == "completed" and batch.usage.output_tokens
    done = rows[finished.run_id]
    assert "completed" in done["status"]
    assert (done["rows"], done["done"], done["failed"]) == ("3", "3", "0")
    assert done["tokens"] == f"{batch.usage.input_tokens}+{batch.usage.output_tokens}"
    assert float(done["cost $"]) > 0
    busy = rows[running.run_id]
    assert "in_progress" in busy["status"]
    assert (busy["rows"], busy["done"], busy["failed"]) == ("2", "0", "0")
    assert rows[pending.run_id]["status"] == "pending"
    assert {
        run.run_id: (run.path / "manifest.json").read_bytes()
        for run in (finished, running, pending)
    } == before
