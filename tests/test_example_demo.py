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

import pytest

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


def test_an_older_python_is_told_what_the_demo_needs_before_anything_is_made(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLE))
    import demo

    venv = tmp_path / "venv"
    monkeypatch.setattr(sys, "argv", ["demo.py", "--venv", str(venv)])
    monkeypatch.setattr(sys, "version_info", (3, 10, 13, "final", 0))
    with pytest.raises(SystemExit) as stop:
        demo.main()
    assert str(stop.value).startswith("The demo needs Python 3.11+, and ")
    assert str(stop.value).endswith(" is 3.10.13: run it with python3.11 or newer.")
    assert not venv.exists()


def test_a_venv_left_by_an_older_python_is_named_instead_of_failing_every_run(
    tmp_path: Path, monkeypatch
) -> None:
    """A first run with python3.10 used to leave a 3.10 .venv that every later run reused."""
    monkeypatch.syspath_prepend(str(EXAMPLE))
    import demo

    venv = tmp_path / "venv"
    python = demo.venv_python(venv)
    python.parent.mkdir(parents=True)
    python.write_text("#!/bin/sh\necho 3 10\n")  # what `python -c ...` prints on Python 3.10
    python.chmod(0o755)
    with pytest.raises(SystemExit) as stop:
        demo.ensure_installed(venv)
    assert str(stop.value) == (
        f"{venv} was made with Python 3.10, and scrapy-llm-extract needs 3.11+: delete it and"
        " run the demo again, or pass --venv PATH to use another one."
    )


def test_an_install_that_fails_ends_the_demo_with_what_to_do(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": "", "PIP_CONFIG_FILE": os.devnull}
    result = subprocess.run(
        [sys.executable, str(EXAMPLE / "demo.py"), "--venv", str(venv)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.rstrip().splitlines()[-1] == (
        f"Setting up {venv} failed (python -m pip: exit 1, its messages are above). Installing"
        " needs the network or a package index pip can reach; fix that, delete"
        f" {venv} if it is half-made, and run the demo again."
    )


def test_openai_without_a_key_says_so_instead_of_running_offline(
    tmp_path: Path, monkeypatch
) -> None:
    """Without a key, the project falls back to the emulator: --openai would silently not
    call OpenAI."""
    monkeypatch.syspath_prepend(str(EXAMPLE))
    import demo

    venv = tmp_path / "venv"
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setattr(sys, "argv", ["demo.py", "--openai", "--venv", str(venv)])
    with pytest.raises(SystemExit) as stop:
        demo.main()
    assert str(stop.value) == (
        "--openai calls OpenAI with the OPENAI_API_KEY of the environment, and it is not set:"
        " export it first, or leave out --openai to run offline."
    )
    assert not venv.exists()
