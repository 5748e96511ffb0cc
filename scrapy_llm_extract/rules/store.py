"""Persistence of learned rules: one SQLite file in ``LLM_EXTRACT_RULES_DIR``.

The rule book keeps a template's state in memory while it is used and writes
it back whenever a model answer changed it, so a crawl that dies keeps what it
learned up to its last answer. Several processes may share a rules dir (a
crawl and a cron collector): each save merges with what is stored, as shared
rules do (:func:`merge_template`), so none undoes another's retirement. A page spooled
for the Batch API travels with its row (see RuleBook.remember); this store only
notes which rows' answers were learned, so a row delivered again after a kill
does not count twice in the committee.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

FILENAME = "rules.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS templates (
    site TEXT NOT NULL, template TEXT NOT NULL, state TEXT NOT NULL,
    PRIMARY KEY (site, template));
CREATE TABLE IF NOT EXISTS learned_rows (
    row_id TEXT PRIMARY KEY, learned_at REAL NOT NULL);
"""
#: How long a learned row is remembered: far beyond a batch's 24 h and a collection's retries.
LEARNED_ROWS_DAYS = 30


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
    #: The first page the model answered, to show which pages the template hash stands for.
    example_url: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> TemplateState:
        """The state ``text`` holds; keys a later version added are ignored, so machines of
        two versions can share one store's rules."""
        data = json.loads(text)
        rules = {
            name: {key: RuleState(**_known(RuleState, state)) for key, state in keys.items()}
            for name, keys in data.pop("rules").items()
        }
        return cls(rules=rules, **_known(cls, data))


def _known(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    return {key: value for key, value in data.items() if key in names}


def merge_rule(local: RuleState, other: RuleState) -> RuleState:
    """The record with more disagreements, then more agreements (ties: the local one)."""
    return max((local, other), key=lambda rule: (rule.disagreements, rule.agreements))


def merge_template(local: TemplateState, other: TemplateState) -> TemplateState:
    rules: dict[str, dict[str, RuleState]] = {}
    for name in local.rules.keys() | other.rules.keys():
        mine, theirs = local.rules.get(name, {}), other.rules.get(name, {})
        rules[name] = {
            key: merge_rule(mine[key], theirs[key])
            if key in mine and key in theirs
            else mine.get(key) or theirs[key]
            for key in mine.keys() | theirs.keys()
        }
    shapes = {
        name: list(dict.fromkeys([*local.shapes.get(name, []), *other.shapes.get(name, [])]))
        for name in local.shapes.keys() | other.shapes.keys()
    }
    return TemplateState(
        rules=rules,
        shapes=shapes,
        model_pages=max(local.model_pages, other.model_pages),
        # The lower count keeps the higher audit rate of the two.
        answered_since_change=min(local.answered_since_change, other.answered_since_change),
        example_url=local.example_url or other.example_url,
    )


def _promoted(state: TemplateState) -> set[tuple[str, str]]:
    return {
        (name, key) for name, rules in state.rules.items() for key, r in rules.items() if r.promoted
    }


class RuleStore:
    """Templates and learned rows in ``directory``/rules.sqlite3 (None: in memory only)."""

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
        self._pruned = False

    def load(self, site: str, template: str) -> TemplateState | None:
        row = self._db.execute(
            "SELECT state FROM templates WHERE site = ? AND template = ?", (site, template)
        ).fetchone()
        return None if row is None else TemplateState.from_json(row[0])

    def save(self, site: str, template: str, state: TemplateState) -> TemplateState:
        """Write ``state`` merged with what another process wrote meanwhile (a collector
        beside a crawl); the merged state, for the caller to go on with."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            stored = self.load(site, template)
            merged = state if stored is None else merge_template(state, stored)
            if _promoted(merged) == _promoted(state):  # our own counts: the audit decays on
                merged.answered_since_change = state.answered_since_change
            self._db.execute(
                "INSERT OR REPLACE INTO templates (site, template, state) VALUES (?, ?, ?)",
                (site, template, merged.to_json()),
            )
        return merged

    def templates(self) -> Iterator[tuple[str, str, TemplateState]]:
        for site, template, state in self._db.execute(
            "SELECT site, template, state FROM templates ORDER BY site, template"
        ):
            yield site, template, TemplateState.from_json(state)

    def first_learning(self, row_id: str) -> bool:
        """Note that the answer of spooled row ``row_id`` is learned; False if it was before."""
        now = time.time()
        with self._db:
            if not self._pruned:
                self._db.execute(
                    "DELETE FROM learned_rows WHERE learned_at < ?",
                    (now - LEARNED_ROWS_DAYS * 86400,),
                )
                self._pruned = True
            cursor = self._db.execute(
                "INSERT OR IGNORE INTO learned_rows (row_id, learned_at) VALUES (?, ?)",
                (row_id, now),
            )
        return cursor.rowcount == 1

    def close(self) -> None:
        self._db.close()
