"""Run the example end to end: ``python3 example_project/demo.py``.

Needs only Python 3.11+. Creates a virtualenv (``.venv`` at the repository
root unless ``--venv``), installs the package into it when it is not there
yet, then, in example_project/:

1. ``scrapy crawl products -O output/realtime.jsonl``: urgent items come out
   extracted in real time; the rest is spooled and submitted to the Batch API
   when the spider closes;
2. ``scrapy collect-batches --wait -O output/batch.jsonl``: waits for the
   batches, merges their results and exports the items through the project's
   pipelines and feeds;

and prints where the items are, with a summary. With ``--rules`` it crawls the
shop twice with learned rules on (``LLM_EXTRACT_RULES``, experimental) instead,
collects what went to the Batch API, and says how many pages each crawl
answered without the model. Each command's full log goes to
``output/<command>.log``; the terminal shows the package's own lines and any
warning or error, and the summary last. It runs offline against the
bundled emulator: OPENAI_API_KEY is removed from the commands' environment
unless ``--openai`` is given (then the batch part can take up to 24 hours and
costs money). Standard library only: it runs before the virtualenv exists.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parent
REPOSITORY = PROJECT.parent
REALTIME_FEED = Path("output", "realtime.jsonl")
BATCH_FEED = Path("output", "batch.jsonl")
CRAWL_LOG = Path("output", "crawl.log")
COLLECT_LOG = Path("output", "collect-batches.log")
EXTRACTED = ("title", "price", "currency", "sku", "brand", "availability")
#: The package's requires-python.
MINIMUM_PYTHON = (3, 11)
RULES_SETTINGS = ["-s", "LLM_EXTRACT_RULES=True", "-s", "LLM_EXTRACT_RULES_REALTIME_PAGES=5"]
#: A rules stat in Scrapy's stats dump: 'llm_extract/rules/answered': 23,
RULES_STAT = re.compile(r"'llm_extract/rules/([\w/]+)': ([\d.e-]+)")
#: The start of a log record: "2026-01-01 12:00:00 [logger] LEVEL: message".
RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[(?P<logger>[^\]]+)\] (?P<level>[A-Z]+): ")


def venv_python(venv: Path) -> Path:
    scripts = "Scripts" if os.name == "nt" else "bin"
    return venv / scripts / ("python.exe" if os.name == "nt" else "python")


def run(command: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> None:
    print("$", " ".join(command), flush=True)
    subprocess.run(command, cwd=cwd, env=env, check=True)


def notable(log: str) -> list[str]:
    """What a user wants from a command's log: the package's own records and any warning or
    error, each with its continuation lines (tables), without the timestamp."""
    kept: list[str] = []
    keep = False
    for line in log.splitlines():
        record = RECORD.match(line)
        if record:
            keep = record["logger"].startswith("scrapy_llm_extract") or record["level"] in (
                "WARNING",
                "ERROR",
                "CRITICAL",
            )
            if keep:
                kept.append(line[record.start("logger") - 1 :])
        elif keep:
            kept[-1] += "\n" + line
    return kept


def scrapy_command(python: str, args: list[str], log: Path, env: dict[str, str]) -> None:
    """Run ``scrapy *args`` in the project with its log in ``log``; show the notable lines.

    A failure shows the end of the log and ends the demo with the command's exit status.
    """
    print("$ scrapy", " ".join(args), f"   (log: {log})", flush=True)
    (PROJECT / log).parent.mkdir(parents=True, exist_ok=True)
    logging = ["-s", f"LOG_FILE={log}", "-s", "LOG_FILE_APPEND=False"]
    result = subprocess.run([python, "-m", "scrapy", *args, *logging], cwd=PROJECT, env=env)
    text = (PROJECT / log).read_text(encoding="utf-8", errors="replace")
    for record in notable(text):
        print("  " + record.replace("\n", "\n  "), file=sys.stderr, flush=True)
    if result.returncode != 0:
        print("\n".join(text.splitlines()[-40:]), file=sys.stderr)
        print(f"scrapy {args[0]} failed (exit {result.returncode}); full log: {PROJECT / log}")
        sys.exit(result.returncode)


def is_installed(python: Path) -> bool:
    """Whether the package and its dependencies import in ``python``'s environment.

    Probed from a folder other than the repository's, whose package folder would
    import from the current directory without anything installed.
    """
    probe = subprocess.run(
        [str(python), "-c", "import scrapy, scrapy_llm_extract"],
        cwd=python.parent,
        capture_output=True,
        check=False,
    )
    return probe.returncode == 0


def python_version(python: Path) -> tuple[int, int] | None:
    """The (major, minor) version of ``python``; None if it does not run."""
    probe = subprocess.run(
        [str(python), "-c", "import sys; print(*sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=False,
    )
    numbers = probe.stdout.split()
    if probe.returncode != 0 or len(numbers) != 2 or not all(n.isdigit() for n in numbers):
        return None
    return int(numbers[0]), int(numbers[1])


def ensure_installed(venv: Path) -> Path:
    """The virtualenv's python, with scrapy-llm-extract installed in it.

    Exits with one line saying what to do when the venv cannot be used or set up: a venv
    left by an older Python or a failed install would otherwise fail every later run.
    """
    python = venv_python(venv)
    needed = ".".join(map(str, MINIMUM_PYTHON))
    try:
        if not python.exists():
            run([sys.executable, "-m", "venv", str(venv)])
        version = python_version(python)
        if version is None or version < MINIMUM_PYTHON:
            made = (
                "a Python that does not run" if version is None else "Python {}.{}".format(*version)
            )
            sys.exit(
                f"{venv} was made with {made}, and scrapy-llm-extract needs {needed}+: delete"
                " it and run the demo again, or pass --venv PATH to use another one."
            )
        if not is_installed(python):
            run([str(python), "-m", "pip", "install", "--quiet", "-e", str(REPOSITORY)])
    except subprocess.CalledProcessError as exc:
        sys.exit(
            f"Setting up {venv} failed ({Path(exc.cmd[0]).name} {' '.join(exc.cmd[1:3])}:"
            f" exit {exc.returncode}, its messages are above). Installing needs the network or"
            f" a package index pip can reach; fix that, delete {venv} if it is half-made, and"
            " run the demo again."
        )
    return python


def read_feed(path: Path) -> list[dict[str, object]]:
    with path.open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


def summarise(project: Path) -> None:
    realtime = read_feed(project / REALTIME_FEED)
    batch = read_feed(project / BATCH_FEED)
    items = realtime + batch
    print()
    print(f"{len(items)} products extracted:")
    print(f"  {len(realtime):3d} in real time  -> {project / REALTIME_FEED}")
    print(f"  {len(batch):3d} by batch      -> {project / BATCH_FEED}")
    print(
        "Fields filled:",
        ", ".join(
            f"{name} {sum(item.get(name) is not None for item in items)}/{len(items)}"
            for name in EXTRACTED
        ),
    )
    failed = [item for item in items if item.get("llm_extract_error")]
    if failed:
        print(f"{len(failed)} item(s) carry llm_extract_error, e.g. {failed[0]['url']}")
    if items:
        print("For example:", json.dumps(items[0], ensure_ascii=False))
    print(
        "Offline, the emulator copies values from structured data only: pages with only"
        " visible text keep null fields, and titles may be the page's <title>, shop name"
        " included. Set OPENAI_API_KEY and run with --openai to use a real model."
    )


def rules_stats(log: Path) -> dict[str, float]:
    text = (PROJECT / log).read_text(encoding="utf-8", errors="replace")
    return {match[1]: float(match[2]) for match in RULES_STAT.finditer(text)}


def crawl_with_rules(python: str, env: dict[str, str]) -> None:
    """Two crawls of the same shop with learned rules, then collection of their batch pages."""
    logs = [Path("output", f"rules-crawl-{n}.log") for n in (1, 2)]
    for n, log in enumerate(logs, 1):
        feed = ["-O", str(Path("output", f"rules-{n}.jsonl"))]
        scrapy_command(python, ["crawl", "products", *feed, *RULES_SETTINGS], log, env)
    collect = ["collect-batches", "--wait", "-O", str(Path("output", "rules-batch.jsonl"))]
    scrapy_command(python, collect, Path("output", "rules-collect-batches.log"), env)
    print()
    print("Learned rules (LLM_EXTRACT_RULES), two crawls of the same 48 pages:")
    for n, log in enumerate(logs, 1):
        stats = rules_stats(log)
        answered = int(stats.get("answered", 0))
        print(
            f"  crawl {n}: {answered} answered by rules, {int(stats.get('model', 0))} by the"
            f" model ({int(stats.get('learning_realtime', 0))} sent real time to learn their"
            f" template, {int(stats.get('audited', 0))} audits); saved"
            f" ${stats.get('saved_usd', 0):.6f} against the model alone"
        )
    print(
        "Rules are promoted after 5 agreeing model answers per template and audited at 50 %"
        " decaying to 5 %: the more pages a template has, the larger the share they answer."
        " List them: python -m scrapy_llm_extract.rules .scrapy/llm_extract_rules"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--venv", type=Path, default=REPOSITORY / ".venv", help="virtualenv to use or create"
    )
    parser.add_argument(
        "--openai", action="store_true", help="keep OPENAI_API_KEY: call OpenAI for real"
    )
    parser.add_argument(
        "--rules", action="store_true", help="crawl twice with learned rules (experimental)"
    )
    args = parser.parse_args()
    if sys.version_info < MINIMUM_PYTHON:
        sys.exit(
            f"The demo needs Python {'.'.join(map(str, MINIMUM_PYTHON))}+, and {sys.executable}"
            f" is {'.'.join(map(str, sys.version_info[:3]))}: run it with python3.11 or newer."
        )
    if args.openai and not os.environ.get("OPENAI_API_KEY", "").strip():
        sys.exit(
            "--openai calls OpenAI with the OPENAI_API_KEY of the environment, and it is not"
            " set: export it first, or leave out --openai to run offline."
        )
    python = str(ensure_installed(args.venv))
    env = dict(os.environ)
    if not args.openai:
        env.pop("OPENAI_API_KEY", None)
    if args.rules:
        crawl_with_rules(python, env)
        return
    scrapy_command(python, ["crawl", "products", "-O", str(REALTIME_FEED)], CRAWL_LOG, env)
    collect = ["collect-batches", "--wait", "-O", str(BATCH_FEED)]
    scrapy_command(python, collect, COLLECT_LOG, env)
    summarise(PROJECT)


if __name__ == "__main__":
    main()
