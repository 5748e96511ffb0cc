"""Persistence of learned rules: one SQLite file in ``LLM_EXTRACT_RULES_DIR``.

The rule book keeps a template's state in memory while it is used and writes
it back whenever a model answer changed it, so a crawl that dies keeps what it
learned up to its last answer. One process writes a rules dir at a time (the
last writer wins a template); several readers are fine (WAL). Pages spooled
for the Batch API while their template is still being learned wait here, as
the values rules read on them, until their answer is collected.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

FILENAME = "rules.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS templates (
    site TEXT NOT NULL, template TEXT NOT NULL, state TEXT NOT NULL,
    PRIMARY KEY (site, template));
CREATE TABLE IF NOT EXISTS pending (
    url TEXT PRIMARY KEY, view TEXT NOT NULL);
"""


@dataclass
class RuleState:
    """How one rule did against the model's answers for one field of one template."""

    #: Model answers reproduced in a row (promotion needs ``min_pages``).
    streak: int = 0
    agreements: int = 0
    disagreements: int = 0
    promoted: bool = False
    #: A promoted rule the model just contradicted: the next model answer confirms or clears it.
    suspect: bool = False
    #: The rule matched nothing where the model answered null: matching nothing means null.
    absent_ok: bool = False


@dataclass
class TemplateState:
    """The rules and value shapes of one site's template."""

    rules: dict[str, dict[str, RuleState]] = field(default_factory=dict)
    shapes: dict[str, list[str]] = field(default_factory=dict)
    model_pages: int = 0
    #: Pages rules answered since the last promotion or retirement (drives the audit rate).
    answered_since_change: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> TemplateState:
        data = json.loads(text)
        rules = {
            name: {key: RuleState(**state) for key, state in keys.items()}
            for name, keys in data.pop("rules").items()
        }
        return cls(rules=rules, **data)


class RuleStore:
    """Templates and pending pages in ``directory``/rules.sqlite3 (None: in memory only)."""

    def __init__(self, directory: Path | None) -> None:
        if directory is None:
            target = ":memory:"
        else:
            directory.mkdir(parents=True, exist_ok=True)
            target = str(directory / FILENAME)
        self.path = target
        self._db = sqlite3.connect(target)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def load(self, site: str, template: str) -> TemplateState | None:
        row = self._db.execute(
            "SELECT state FROM templates WHERE site = ? AND template = ?", (site, template)
        ).fetchone()
        return None if row is None else TemplateState.from_json(row[0])

    def save(self, site: str, template: str, state: TemplateState) -> None:
        with self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO templates (site, template, state) VALUES (?, ?, ?)",
                (site, template, state.to_json()),
            )

    def templates(self) -> Iterator[tuple[str, str, TemplateState]]:
        for site, template, state in self._db.execute(
            "SELECT site, template, state FROM templates ORDER BY site, template"
        ):
            yield site, template, TemplateState.from_json(state)

    def put_pending(self, url: str, view: str) -> None:
        with self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO pending (url, view) VALUES (?, ?)", (url, view)
            )

    def take_pending(self, url: str) -> str | None:
        with self._db:
            row = self._db.execute("SELECT view FROM pending WHERE url = ?", (url,)).fetchone()
            if row is not None:
                self._db.execute("DELETE FROM pending WHERE url = ?", (url,))
        return None if row is None else str(row[0])

    def close(self) -> None:
        self._db.close()
