"""Browse the example shop: ``python -m shopdemo.shop [PORT]`` from example_project/."""

from __future__ import annotations

import logging
import sys

from .server import ShopServer

logging.basicConfig(level=logging.INFO, format="%(message)s")
ShopServer(port=int(sys.argv[1]) if len(sys.argv) > 1 else 8000).run()
