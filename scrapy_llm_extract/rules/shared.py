"""Learned rules shared through the spool's object store (an s3:// LLM_EXTRACT_SPOOL_DIR).

Each machine learns in its own LLM_EXTRACT_RULES_DIR; the store holds one JSON
object with every template's state. :meth:`SharedRules.load` merges the store's
copy into the local one before a crawl or collection; :meth:`SharedRules.publish`
merges again and writes the result back with ``If-Match`` on the etag it read, so
a machine that published in between is merged, never overwritten (on a 412: read,
merge, retry, up to ``ATTEMPTS`` times).

The merge is :func:`.store.merge_template`: a retirement on one machine is never
undone by another machine's promotion of the same rule.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from ..store import PreconditionFailed
from .store import RuleStore, TemplateState, merge_template

if TYPE_CHECKING:
    from pathlib import Path

    from ..store import S3Store

KEY = "rules/learned.json"
ATTEMPTS = 5


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
