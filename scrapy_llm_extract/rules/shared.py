"""Learned rules shared through the spool's object store (an s3:// LLM_EXTRACT_SPOOL_DIR).

Each machine learns in its own LLM_EXTRACT_RULES_DIR; the store holds one JSON
object with every template's state. :meth:`SharedRules.load` merges the store's
copy into the local one before a crawl or collection; :meth:`SharedRules.publish`
merges again and writes the result back with ``If-Match`` on the etag it read, so
a machine that published in between is merged, never overwritten (on a 412: read,
merge, retry, up to ``ATTEMPTS`` times).

The merge keeps the committee's guarantees: per rule, the record that saw more
disagreements wins, then the one with more agreements, so a retirement on one
machine is never undone by another machine's promotion of the same rule.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from ..store import PreconditionFailed
from .store import RuleState, RuleStore, TemplateState

if TYPE_CHECKING:
    from pathlib import Path

    from ..store import S3Store

KEY = "rules/learned.json"
ATTEMPTS = 5


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
    )


class SharedRules:
    """The rules of ``directory`` (a RuleStore's folder) kept in step with ``store``."""

    def __init__(self, store: S3Store, directory: Path) -> None:
        self.store = store
        self.directory = directory

    def load(self) -> None:
        """Merge the store's rules into the local rules dir."""
        stored = self.store.get(KEY)
        if stored is not None:
            self._merge_into_local(stored.body)

    def publish(self) -> None:
        """Merge the store's rules into the local ones and write the result back, without
        overwriting what another machine published meanwhile."""
        for _ in range(ATTEMPTS):
            stored = self.store.get(KEY)
            body = self._merge_into_local(stored.body if stored else None)
            try:
                if stored is None:
                    self.store.put(KEY, body, if_none_match=True)
                else:
                    self.store.put(KEY, body, if_match=stored.etag)
                return
            except PreconditionFailed:
                continue  # another machine published first: merge theirs too
        raise PreconditionFailed(KEY)

    def _merge_into_local(self, body: bytes | None) -> bytes:
        """Merge ``body`` (the store's JSON) into the local rules; all of them, as JSON."""
        local = RuleStore(self.directory)
        try:
            for entry in json.loads(body)["templates"] if body else []:
                other = TemplateState.from_json(json.dumps(entry["state"]))
                mine = local.load(entry["site"], entry["template"])
                merged = other if mine is None else merge_template(mine, other)
                local.save(entry["site"], entry["template"], merged)
            templates: list[dict[str, Any]] = [
                {"site": site, "template": template, "state": asdict(state)}
                for site, template, state in local.templates()
            ]
        finally:
            local.close()
        return json.dumps({"templates": templates}, separators=(",", ":")).encode()
