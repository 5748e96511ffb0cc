"""The rule book: learn rules from model answers, answer pages by committee, audit.

Per site and template, every rule that reproduced the model's answer for a
field is a candidate; ``min_pages`` answers in a row promote it. A page is
answered without the model only when every field of the schema has promoted
rules and, for each field, all of them agree. Otherwise it goes to the model,
and its answer teaches the book. A field the model answers null is learned
like any value: a rule that matched nothing on such a page has learned that
"nothing" means null, and an ``absent`` rule stands for "this template never
states the field".

Audit and alarms send a rule-answerable page to the model anyway: a random
share (``audit_start`` right after a promotion or retirement, halving every
``AUDIT_HALF_LIFE`` rule-answered pages down to ``audit_floor``), and every
page where promoted rules disagree, one matches nothing, or a value's shape
(length, digits, currency) was never seen in the model's answers.

Tolerance to a noisy model: a promoted rule the model contradicts becomes
*suspect* (the field goes to the model); the next model answer either agrees
with it, which clears it (the model was wrong), or contradicts it again, which
retires it: it goes back to being a candidate that needs ``min_pages`` fresh
answers in a row. So a rule is retired only when two model answers in a row
say it is wrong, and no rule answers between the first doubt and the verdict.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .kinds import DELIMITED, PageView, delimited_keys, observe, read_delimited
from .store import RuleState, RuleStore, TemplateState
from .values import MISSING, canonical, scalar_field, shape, typed

ABSENT = "absent"
#: A delimited rule on a stored page whose raw text was not kept: neither agrees nor not.
UNREAD = object()
AUDIT_HALF_LIFE = 20

# Why a page went to the model (Verdict.reason).
ANSWERED = "answered"
UNKNOWN = "unknown"  # some field has no promoted rule yet (or a suspect one)
AUDIT = "audit"
ALARM_DISAGREE = "disagree"
ALARM_MISSING = "missing"
ALARM_SHAPE = "shape"
ALARMS = (ALARM_DISAGREE, ALARM_MISSING, ALARM_SHAPE)


@dataclass
class Verdict:
    """What the rules say about one page: its fields, or why the model must answer it."""

    view: PageView
    reason: str
    fields: dict[str, Any] | None = None
    #: The rule keys that answered each field (for LLM_EXTRACT_SOURCE_INFO_FIELD).
    sources: dict[str, list[str]] = field(default_factory=dict)
    #: Field whose alarm rang.
    alarm_field: str | None = None

    @property
    def answered(self) -> bool:
        return self.fields is not None


@dataclass
class Learned:
    """What one model answer changed: counts for the stats."""

    promoted: int = 0
    retired: int = 0
    disagreements: int = 0


class RuleBook:
    """Learned rules of every site and template, persisted in ``directory``."""

    def __init__(
        self,
        directory: Path | None,
        *,
        min_pages: int = 5,
        audit_start: float = 0.5,
        audit_floor: float = 0.05,
        rng: random.Random | None = None,
    ) -> None:
        self.store = RuleStore(directory)
        self.min_pages = min_pages
        self.audit_start = audit_start
        self.audit_floor = audit_floor
        self.rng = rng or random.Random()
        self._templates: dict[tuple[str, str], TemplateState] = {}

    def view(self, source: str | bytes, url: str | None) -> PageView:
        return observe(source, url)

    def template(self, view: PageView) -> TemplateState:
        key = (view.site, view.template)
        if key not in self._templates:
            self._templates[key] = self.store.load(*key) or TemplateState()
        return self._templates[key]

    # Answering.

    def answer(self, view: PageView, schema: Mapping[str, Any]) -> Verdict:
        """The page's fields by the rules, or why it must go to the model."""
        state = self.template(view)
        properties: Mapping[str, Any] = schema.get("properties") or {}
        fields: dict[str, Any] = {}
        sources: dict[str, list[str]] = {}
        for name, prop in properties.items():
            rules = state.rules.get(name, {})
            active = {k: r for k, r in rules.items() if r.promoted and not r.suspect}
            if not scalar_field(prop) or not active or any(r.suspect for r in rules.values()):
                return Verdict(view, UNKNOWN)
            keys = set()
            value: Any = MISSING
            for key, rule in sorted(active.items()):
                raw = _read(view, key)
                raw = MISSING if raw is UNREAD else raw
                if raw is MISSING and not rule.absent_ok:
                    return Verdict(view, ALARM_MISSING, alarm_field=name)
                typed_value = typed(None if raw is MISSING else raw, prop)
                if typed_value is MISSING:
                    return Verdict(view, ALARM_SHAPE, alarm_field=name)
                keys.add(canonical(typed_value))
                value = typed_value if value is MISSING else value
            if len(keys) > 1 or (keys == {None} and _value_seen(view, rules)):
                return Verdict(view, ALARM_DISAGREE, alarm_field=name)
            if shape(value) not in state.shapes.get(name, ()):
                return Verdict(view, ALARM_SHAPE, alarm_field=name)
            fields[name] = value
            sources[name] = sorted(active)
        if not fields:
            return Verdict(view, UNKNOWN)
        if self.rng.random() < self.audit_rate(state):
            return Verdict(view, AUDIT)
        state.answered_since_change += 1
        return Verdict(view, ANSWERED, fields, sources)

    def audit_rate(self, state: TemplateState) -> float:
        decayed = self.audit_start * 0.5 ** (state.answered_since_change / AUDIT_HALF_LIFE)
        return max(self.audit_floor, decayed)

    # Learning.

    def learn(self, view: PageView, answer: Mapping[str, Any]) -> Learned:
        """Teach the book the model's answer for this page."""
        state = self.template(view)
        state.model_pages += 1
        state.example_url = state.example_url or view.url
        learned = Learned()
        for name, value in answer.items():
            expected = canonical(value)
            if isinstance(value, dict | list):
                continue
            rules = state.rules.setdefault(name, {})
            shapes = state.shapes.setdefault(name, [])
            if (profile := shape(value)) not in shapes:
                shapes.append(profile)
            field_disagreed = False
            for key in list(rules):
                rule = rules[key]
                raw = _read(view, key)
                if raw is UNREAD:
                    continue
                if raw is MISSING:
                    agrees = expected is None
                    rule.absent_ok = rule.absent_ok or agrees
                else:
                    agrees = canonical(raw) == expected
                if agrees:
                    self._agreed(rule, learned)
                    continue
                field_disagreed = field_disagreed or rule.promoted
                self._disagreed(rule, learned)
            learned.disagreements += field_disagreed
            for key in self._new_candidates(view, value, expected, rules):
                rules[key] = RuleState(absent_ok=key == ABSENT)
                self._agreed(rules[key], learned)
        if learned.promoted or learned.retired:
            state.answered_since_change = 0
        self._templates[(view.site, view.template)] = self.store.save(
            view.site, view.template, state
        )
        return learned

    def learn_page(
        self, source: str | bytes, url: str | None, answer: Mapping[str, Any]
    ) -> Learned:
        """Learn from a page and its model answer in one call."""
        return self.learn(observe(source, url), answer)

    def _agreed(self, rule: RuleState, learned: Learned) -> None:
        rule.streak += 1
        rule.agreements += 1
        if rule.suspect:
            rule.suspect = False  # the model contradicted it once, and now agrees: noise
        elif not rule.promoted and rule.streak >= self.min_pages:
            rule.promoted = True
            learned.promoted += 1

    def _disagreed(self, rule: RuleState, learned: Learned) -> None:
        """Count a contradiction. The rule is kept, with its count, not forgotten: shared
        rules merge by disagreements, so a machine's stale copy cannot bring it back."""
        rule.streak = 0
        rule.disagreements += 1
        if rule.suspect:
            rule.suspect = rule.promoted = False
            learned.retired += 1  # a candidate again: it must be learned afresh
        elif rule.promoted:
            rule.suspect = True

    def _new_candidates(
        self, view: PageView, value: Any, expected: Any, rules: dict[str, RuleState]
    ) -> list[str]:
        if expected is None:
            return [] if ABSENT in rules else [ABSENT]
        keys = [k for k in view.values if k not in rules and view.canonical(k) == expected]
        # Delimited rules, the most brittle kind, only for a field no other kind can read
        # (a rule the model just contradicted reads nothing right).
        named = keys or any(
            not k.startswith(DELIMITED) and k != ABSENT and (r.streak or r.promoted)
            for k, r in rules.items()
        )
        if not named and view.source is not None and isinstance(value, str | int | float):
            keys += [
                key
                for key in dict.fromkeys(delimited_keys(view.source, str(value)))
                if key not in rules
                and (raw := _read(view, key)) is not MISSING
                and canonical(raw) == expected
            ]
        return keys

    # Batch answers: learn from a page seen at crawl time, answered at collection.

    def remember(self, view: PageView) -> dict[str, Any]:
        """What a spooled page's row keeps, to learn from its batch answer wherever it is
        collected: the values rules read (its raw text is not kept, so the values of the
        template's delimited rules are read now)."""
        kept = PageView(view.site, view.template, dict(view.values), url=view.url)
        for rules in self.template(view).rules.values():
            for key in rules:
                if key.startswith(DELIMITED) and (value := _read(view, key)) is not MISSING:
                    kept.values[key] = value
        return kept.to_dict()

    def learn_collected(
        self, row_id: str, page: Mapping[str, Any], answer: Mapping[str, Any]
    ) -> Learned | None:
        """Learn from the batch answer of a page kept by :meth:`remember`, once per row
        (None: learned before, as when a row is delivered again after a kill)."""
        if not self.store.first_learning(row_id):
            return None
        return self.learn(PageView.from_dict(page), answer)

    def close(self) -> None:
        for (site, template), state in self._templates.items():
            self.store.save(site, template, state)
        self.store.close()


def _value_seen(view: PageView, rules: Mapping[str, RuleState]) -> bool:
    """Whether a candidate that read the model's last answers right reads a value here.

    Every rule but ``absent`` was found on a page where the model gave a value, so when
    one that still agrees reads a value on a page the committee calls null, the field is
    not absent here (a sale price that only some pages show)."""
    return any(
        key != ABSENT
        and not rule.promoted
        and rule.streak
        and _read(view, key) not in (MISSING, UNREAD)
        for key, rule in rules.items()
    )


def _read(view: PageView, key: str) -> Any:
    if key == ABSENT:
        return None
    if key in view.values or not key.startswith(DELIMITED):
        return view.values.get(key, MISSING)
    if view.source is None:
        return UNREAD
    value = read_delimited(view.source, key)
    return MISSING if value is None else value
