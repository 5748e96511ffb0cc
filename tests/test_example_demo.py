"""The README's first command, ``python3 example_project/demo.py``, in the test's own venv.

``--venv`` points at the running interpreter's environment, where the package
is already installed, so the demo neither creates a venv nor installs (no
network); everything after that is what a new user sees.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parent.parent / "example_project"
README = EXAMPLE.parent / "README.md"


def test_readme_starts_with_the_demo_command() -> None:
    first_block = README.read_text(encoding="utf-8").split("```sh\n", 1)[1]
    assert first_block.splitlines()[0] == "python3 example_project/demo.py"


def run_demo(tmp_path: Path, *args: str) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """``demo.py`` on a copy of the example project, in this venv, with a key it must not use."""
    project = Path(
        shutil.copytree(
            EXAMPLE,
            tmp_path / "example_project",
            ignore=shutil.ignore_patterns(".scrapy", "output", "__pycache__"),
        )
    )
    env = {**os.environ, "OPENAI_API_KEY": "sk-must-not-be-used"}
    result = subprocess.run(
        [sys.executable, str(project / "demo.py"), "--venv", sys.prefix, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return project, result


def test_demo_crawls_collects_and_says_where_the_items_are(tmp_path: Path) -> None:
    project, result = run_demo(tmp_path)
    assert result.returncode == 0, result.stderr[-5000:]
    out = result.stdout
    assert "48 products extracted:" in out
    assert re.search(rf"\b5 in real time +-> {re.escape(str(project / 'output'))}", out)
    assert re.search(rf"\b43 by batch +-> {re.escape(str(project / 'output'))}", out)
    assert "pip install" not in out and "-m venv" not in out
    # The demo removed the key: the emulator answered, and said so.
    assert "OFFLINE: LLM_EXTRACT_EMULATOR_DIR is set" in result.stderr
    # The terminal reads like a product: the package's lines, then the summary last; Scrapy's
    # own log (settings, middlewares, stats) is in the files the demo names.
    assert len(result.stderr.splitlines()) <= 20, result.stderr
    assert "Dumping Scrapy stats" not in result.stderr
    assert "[scrapy_llm_extract.extension] INFO: Batch spool " in result.stderr
    assert out.rstrip().splitlines()[-1].startswith("Offline, the emulator copies values")
    for log in ("crawl.log", "collect-batches.log"):
        assert f"(log: output/{log})" in out
        assert "Dumping Scrapy stats" in (project / "output" / log).read_text()


def test_an_empty_venv_is_not_taken_for_an_install(tmp_path: Path, monkeypatch) -> None:
    """Run from the repository root, as the README says, the package folder imports from the
    current directory; the demo must still see that the venv lacks the install."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    monkeypatch.chdir(EXAMPLE.parent)
    monkeypatch.syspath_prepend(str(EXAMPLE))
    import demo  # the example's own script, imported for its helpers

    assert not demo.is_installed(demo.venv_python(venv))
    assert demo.is_installed(Path(sys.executable))
