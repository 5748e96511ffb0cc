"""The README agrees with the code: settings reference, setting names, CI command.

The settings reference is generated from ``config.SETTINGS`` (types from the
``Config`` annotations). After changing a setting, regenerate it with
``python tests/test_readme.py``.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

from scrapy_llm_extract.config import SETTINGS, Config

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
CI_SCRIPT = ROOT / ".ci" / "run"
START = (
    "<!-- settings-reference:start (generated from scrapy_llm_extract.config.SETTINGS by"
    " `python tests/test_readme.py`; do not edit by hand) -->"
)
END = "<!-- settings-reference:end -->"
#: Defaults longer than this go below the table instead of into a cell.
CELL_LIMIT = 40
#: Config annotation -> how the README names the setting's type.
TYPE_WORDS = {
    "dict[str, Any]": "dict",
    "Mapping[str, Mapping[str, float]]": "dict",
    "Router": "callable or import path",
    "Path": "path",
}


def setting_type(name: str) -> str:
    annotation = str(Config.__annotations__[name.removeprefix("LLM_EXTRACT_").lower()])
    return " or ".join(TYPE_WORDS.get(part, part) for part in annotation.split(" | "))


def default_literal(value: Any) -> str:
    """The default as Python source, with digit groups for big numbers."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10_000:
        return f"{value:_}"
    return repr(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def settings_reference() -> str:
    rows = ["| Setting | Type | Default | Description |", "|---|---|---|---|"]
    long_defaults = []
    for name, setting in SETTINGS.items():
        literal = default_literal(setting.default)
        if len(literal) > CELL_LIMIT:
            long_defaults.append((name, setting.default))
            default = "see below"
        else:
            default = f"`{_cell(literal)}`"
        rows.append(f"| `{name}` | {setting_type(name)} | {default} | {_cell(setting.doc)} |")
    parts = ["\n".join(rows)]
    parts += [f"Default of `{name}`:\n\n```\n{value}\n```" for name, value in long_defaults]
    return "\n\n".join(parts)


def _readme_block(text: str) -> str:
    assert START in text and END in text, "README.md lost its settings-reference markers"
    return text.split(START, 1)[1].split(END, 1)[0]


def _render_into(text: str) -> str:
    block = _readme_block(text)
    return text.replace(f"{START}{block}{END}", f"{START}\n{settings_reference()}\n{END}")


def test_settings_reference_is_generated_from_settings() -> None:
    text = README.read_text(encoding="utf-8")
    assert _readme_block(text).strip() == settings_reference(), (
        "README settings reference is stale: run `python tests/test_readme.py`"
    )


def test_every_setting_is_documented_with_its_default() -> None:
    text = README.read_text(encoding="utf-8")
    rows = {
        match.group(1): line
        for line in text.splitlines()
        if (match := re.match(r"\| `(LLM_EXTRACT_\w+)` \|", line))
    }
    for name, setting in SETTINGS.items():
        literal = default_literal(setting.default)
        assert name in rows, f"{name} has no row in the README's settings reference"
        if len(literal) <= CELL_LIMIT:
            assert f"`{_cell(literal)}`" in rows[name], f"{name}: default {literal} missing"
        else:
            assert str(setting.default) in text, f"{name}: long default missing"


def test_readme_names_no_setting_the_code_lacks() -> None:
    named = set(re.findall(r"LLM_EXTRACT_[A-Z0-9_]*[A-Z0-9]", README.read_text(encoding="utf-8")))
    assert named - set(SETTINGS) == set()


def _steps(command: str) -> list[list[str]]:
    """The commands of a ``&&`` chain, without pip's --quiet (noise, not behaviour)."""
    return [
        [word for word in shlex.split(step) if word != "--quiet"] for step in command.split("&&")
    ]


def test_readme_test_command_is_what_ci_runs() -> None:
    first_block = README.read_text(encoding="utf-8").split("```sh\n", 1)[1].split("```", 1)[0]
    (command,) = [line for line in first_block.splitlines() if "pytest" in line]
    ci_commands = [
        step
        for line in CI_SCRIPT.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
        for step in _steps(line)
    ]
    for step in _steps(command):
        assert step in ci_commands, f"{shlex.join(step)!r} is in the README but not in .ci/run"


if __name__ == "__main__":
    README.write_text(_render_into(README.read_text(encoding="utf-8")), encoding="utf-8")
