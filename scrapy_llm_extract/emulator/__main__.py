"""``python -m scrapy_llm_extract.emulator --port PORT --state-dir DIR [--config FILE]``.

Prints the base URL (``http://127.0.0.1:PORT/v1``) on stdout once it accepts
connections, then serves until interrupted.
"""

from __future__ import annotations

import argparse
import logging

from .server import EmulatorServer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m scrapy_llm_extract.emulator",
        description="OpenAI-compatible emulator (not a language model) on 127.0.0.1.",
    )
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    parser.add_argument("--state-dir", required=True, help="folder for files and batches")
    parser.add_argument(
        "--config", help="JSON config, re-read on change (default: <state-dir>/config.json)"
    )
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper())
    server = EmulatorServer(args.state_dir, args.config, port=args.port)
    print(server.base_url, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
