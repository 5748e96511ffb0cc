"""Serve the generated shop on a loopback port from a background thread.

The spider starts it when the crawl starts and stops it when the spider
closes, so ``scrapy crawl products`` needs nothing else running and goes
through Scrapy's real HTTP downloader (robots.txt, redirects, compression
and all) without touching the network. Port 0 lets the OS pick a free port,
so parallel crawls (and tests) never collide.
"""

from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .pages import render

logger = logging.getLogger(__name__)


class _ShopHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        page = render(parts.path, parse_qs(parts.query))
        status, content_type, body = (
            (200, *page) if page else (404, "text/plain; charset=utf-8", "Not found\n")
        )
        data = body.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("shop: " + format, *args)


class ShopServer:
    """The shop at ``http://127.0.0.1:<free port>``, until :meth:`stop`."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._httpd = ThreadingHTTPServer((host, port), _ShopHandler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="shop-server", daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> str:
        self._thread.start()
        logger.info("Serving the example shop at %s", self.url)
        return self.url

    def run(self) -> None:
        """Serve in the calling thread until interrupted (for browsing the shop)."""
        logger.info("Serving the example shop at %s (Ctrl+C stops)", self.url)
        try:
            self._httpd.serve_forever()
        except KeyboardInterrupt:
            self._httpd.server_close()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()
