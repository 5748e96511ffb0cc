"""Fixtures shared by the crawl tests: a product site on 127.0.0.1 and an emulator state dir."""

from __future__ import annotations

import html
import json
import os
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from scrapy_llm_extract.emulator import CONFIG_FILE, EmulatorConfig, recorded_requests

#: The shared product corpus (81 real pages with known values): beside the repository in CI
#: (../shared/corpus), elsewhere with PRODUCT_CORPUS_DIR. A clone without it still
#: passes: its corpus tests are skipped and counted in the summary, except under CI=true.
CORPUS = Path(
    os.environ.get("PRODUCT_CORPUS_DIR")
    or Path(__file__).resolve().parents[1].parent / "shared" / "corpus"
)
CORPUS_MISSING = f"product corpus not found at {CORPUS} (set PRODUCT_CORPUS_DIR)"


def corpus_present() -> bool:
    return (CORPUS / "products" / "truth.json").is_file()


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


@pytest.fixture(scope="session")
def corpus() -> Path:
    """The corpus folder; skips the test without it, and fails it in CI, which has it."""
    if corpus_present():
        return CORPUS
    if _in_ci():
        pytest.fail(f"CI=true and {CORPUS_MISSING}: CI must not lose the corpus checks.")
    pytest.skip(CORPUS_MISSING)


def pytest_report_header() -> str:
    if corpus_present():
        found = "found"
    else:
        found = "NOT FOUND: corpus tests " + ("fail (CI=true)" if _in_ci() else "are skipped")
    return f"product corpus: {CORPUS} ({found})"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    skipped = [
        report
        for report in terminalreporter.stats.get("skipped", [])
        if CORPUS_MISSING in str(report.longrepr)
    ]
    if skipped:
        terminalreporter.write_line(
            f"{len(skipped)} corpus test(s) left out: {CORPUS_MISSING}.", yellow=True
        )


def product_page(
    n: int,
    *,
    title: str | None = None,
    price: float | None = None,
    currency: str = "EUR",
    text: str = "",
) -> str:
    """A product page with JSON-LD, Open Graph and visible text; ``text`` is added to the body."""
    title = title or f"Product {n}"
    price = price if price is not None else round(10 + n * 1.25, 2)
    ld = {
        "@context": "https://schema.org",
        "@type": "Product",
        "name": title,
        "sku": f"SKU-{n}",
        "offers": {"@type": "Offer", "price": str(price), "priceCurrency": currency},
    }
    return (
        "<!doctype html><html><head>"
        f"<title>{html.escape(title)}</title>"
        f'<meta property="og:title" content="{html.escape(title)}">'
        f'<script type="application/ld+json">{json.dumps(ld)}</script>'
        "</head><body>"
        f"<h1>{html.escape(title)}</h1><p>Price {price} {currency}</p>"
        f"<p>{html.escape(text)}</p>"
        "</body></html>"
    )


class LocalSite:
    """Pages by path; ``/product/<n>`` is generated unless added. Counts hits per path."""

    def __init__(self) -> None:
        self.pages: dict[str, str] = {}
        self.hits: Counter[str] = Counter()
        self._lock = threading.Lock()
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with site._lock:
                    site.hits[self.path] += 1
                page = site.page(self.path)
                if page is None:
                    self.send_error(404)
                    return
                body = page.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def page(self, path: str) -> str | None:
        if path in self.pages:
            return self.pages[path]
        prefix = "/product/"
        if path.startswith(prefix) and path[len(prefix) :].isdigit():
            return product_page(int(path[len(prefix) :]))
        return None

    def add(self, path: str, page: str) -> str:
        """Serve ``page`` at ``path``; return its URL."""
        self.pages[path] = page
        return self.url(path)

    def url(self, path: str) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}{path}"

    def __enter__(self) -> LocalSite:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def local_site():
    with LocalSite() as site:
        yield site


class EmulatorDir:
    """An emulator state folder: point LLM_EXTRACT_EMULATOR_DIR at ``path``.

    ``configure()`` writes the faults to its config.json, which the emulator
    re-reads on change (and restarts its fault counters).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)

    def configure(self, **config: Any) -> None:
        EmulatorConfig.from_dict(config)  # fail here on a misspelt key, not in the crawl
        (self.path / CONFIG_FILE).write_text(json.dumps(config))

    def requests(self) -> list[bytes]:
        """Chat-completions request bodies received, byte for byte, oldest first."""
        return recorded_requests(self.path)


@pytest.fixture
def emulator(tmp_path):
    return EmulatorDir(tmp_path / "emulator")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A SeaweedFS S3 server on 127.0.0.1 for the session; fails (never skips) without `weed`."""
    from tests.s3_server import start_server

    try:
        server = start_server(tmp_path_factory.mktemp("seaweedfs"))
    except RuntimeError as exc:
        pytest.fail(str(exc))
    yield server
    server.stop()


@pytest.fixture
def s3_spool(s3_server: Any, request: pytest.FixtureRequest) -> str:
    """A fresh s3://bucket/prefix spool URI for one test."""
    from tests.s3_server import BUCKET

    return f"s3://{BUCKET}/{request.node.name.replace('[', '-').replace(']', '')}-{os.getpid()}"


@pytest.fixture(params=["local", "s3"])
def spool_backend(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    """Settings that put the spool on each backend: none for the local folder of the
    test's settings, an s3:// spool on the test server with its staging folder."""
    if request.param == "local":
        return {}
    server = request.getfixturevalue("s3_server")
    return {
        **server.settings(request.getfixturevalue("s3_spool")),
        "LLM_EXTRACT_SPOOL_STAGING_DIR": str(tmp_path / "staging"),
    }
