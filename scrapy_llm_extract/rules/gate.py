"""The pipeline's side of learned rules: consult before the model, learn after it, count.

Kept apart from the pipeline so the pipeline only asks "do the rules answer
this item?" and says "the model answered it". Stats, under
``llm_extract/rules/``: ``answered`` (pages the rules answered), ``model``
(pages that went to the model while rules were on, audits and alarms included),
``audited``, ``alarm/<disagree|missing|shape>``, ``disagreements``,
``promoted``, ``retired``, ``source_info_unset`` (items whose class lacks
LLM_EXTRACT_SOURCE_INFO_FIELD), ``failed/<step>`` (``load``/``publish``: the rules shared
through an s3:// spool's store, see :mod:`.shared`), ``learning_realtime``
(batch pages sent real time to learn their template) and ``saved_usd``: what the
rule-answered pages would have cost the model on their route (prompt tokens as
counted, output as the answer's JSON), None when the model's price is unknown.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections import Counter
from typing import TYPE_CHECKING, Any

from ..config import ConfigError
from ..items import set_field
from ..models import add_costs, cost_usd, model_info, rounded_usd
from ..router import BATCH, REALTIME
from ..tokens import count_tokens
from .book import ALARMS, ANSWERED, AUDIT, UNKNOWN, Learned, RuleBook, Verdict
from .shared import SharedRules
from .store import FILENAME

if TYPE_CHECKING:
    from collections.abc import Mapping

    from itemadapter import ItemAdapter
    from scrapy.statscollectors import StatsCollector

    from ..config import Config
    from ..extraction import Prepared

logger = logging.getLogger(__name__)

STATS_PREFIX = "llm_extract/rules"
MODEL = "model"
#: The sidecar key of a spooled page's values (see RulesGate.spooled).
PAGE_KEY = "rules_page"


def rule_book(config: Config) -> RuleBook:
    """The rule book the settings describe (the call collection uses too)."""
    return RuleBook(
        config.rules_dir,
        min_pages=config.rules_min_pages,
        audit_start=config.rules_audit_start,
        audit_floor=config.rules_audit_rate,
    )


class RulesGate:
    """Answers items by learned rules when it can; learns from the model when it cannot.

    With LLM_EXTRACT_RULES off it has no rule book and does nothing: every verdict is None.
    """

    def __init__(self, config: Config, stats: StatsCollector) -> None:
        self.config = config
        self.stats = stats
        try:
            self.book = rule_book(config) if config.rules else None
        except (OSError, sqlite3.Error) as exc:
            damaged = type(exc) is sqlite3.DatabaseError  # "file is not a database"
            fix = (
                f"move the damaged {config.rules_dir}/{FILENAME} away (rules are then learned"
                " afresh)"
                if damaged
                else "point it at a writable folder"
            )
            raise ConfigError(
                f"LLM_EXTRACT_RULES_DIR {config.rules_dir} cannot hold the learned rules ({exc}):"
                f" {fix}, or set LLM_EXTRACT_RULES = False."
            ) from None
        self.shared = self._load_shared()
        self._model = model_info(config.model, config.prices)
        self._saved: float | None = 0.0
        self._learning_realtime: Counter[tuple[str, str]] = Counter()
        self._no_source_info: set[type] = set()

    def consult(self, adapter: ItemAdapter, prepared: Prepared, route: str) -> Verdict | None:
        """The rules' verdict on an item: its fields, or why the model must answer it.

        None when rules are off, or failed on it: the model answers it and nothing is learned.
        """
        if self.book is None:
            return None
        try:
            view = self.book.view(adapter[self.config.source_field], prepared.url)
            verdict = self.book.answer(view, prepared.schema.schema)
        except Exception:  # a page the rules cannot read must still reach the model
            self._failed("consult", prepared.url)
            return None
        if verdict.fields is not None:
            self._inc(ANSWERED)
            self._count_saving(prepared, verdict.fields, batch=route == BATCH)
            self._mark(adapter, verdict.sources)
            return verdict
        self._inc(MODEL)
        if verdict.reason == AUDIT:
            self._inc("audited")
        elif verdict.reason in ALARMS:
            self._inc(f"alarm/{verdict.reason}")
            logger.debug(
                "Rules for %s raised a %s alarm on %s; the model answers it.",
                prepared.url,
                verdict.reason,
                verdict.alarm_field,
            )
        return verdict

    def route(self, verdict: Verdict | None, route: str) -> str:
        """The route of a page the rules did not answer.

        A batch page of a template the rules do not know yet goes real time, up to
        LLM_EXTRACT_RULES_REALTIME_PAGES per template and crawl, so that this crawl learns
        the template instead of the next one (at the real-time price, twice batch).
        """
        if verdict is None or route != BATCH or verdict.reason != UNKNOWN:
            return route
        template = (verdict.view.site, verdict.view.template)
        if self._learning_realtime[template] >= self.config.rules_realtime_pages:
            return route
        self._learning_realtime[template] += 1
        self._inc("learning_realtime")
        return REALTIME

    def learn(self, adapter: ItemAdapter, verdict: Verdict | None, fields: dict[str, Any]) -> None:
        """A real-time model answer: learn from it at once."""
        if verdict is None or self.book is None:
            return
        self._mark(adapter, dict.fromkeys(fields, MODEL))
        try:
            learned = self.book.learn(verdict.view, fields)
        except Exception:  # the item is extracted: a lesson lost must not cost it
            self._failed("learn", verdict.view.site)
            return
        self.count(learned, verdict.view.site)

    def spooled(self, verdict: Verdict | None) -> dict[str, Any]:
        """A page going to the Batch API: what its spool row keeps to learn from its answer.

        The page travels with its row (``rules_page`` in the sidecar), so any machine that
        collects the run learns from it, and a resubmitted row keeps it.
        """
        if verdict is None or self.book is None:
            return {}
        try:
            return {PAGE_KEY: self.book.remember(verdict.view)}
        except Exception:  # the row is spooled all the same; only its lesson is lost
            self._failed("remember", verdict.view.site, "its batch answer teaches nothing")
            return {}

    def collected(
        self, adapter: ItemAdapter, record: Mapping[str, Any], fields: dict[str, Any]
    ) -> None:
        """A batch answer merged by collection: learn from the page its row kept."""
        if self.book is None:
            return
        self._mark(adapter, dict.fromkeys(fields, MODEL))
        page = record.get(PAGE_KEY)
        if page is None:  # spooled with LLM_EXTRACT_RULES off
            return
        try:
            learned = self.book.learn_collected(str(record["custom_id"]), page, fields)
        except Exception:  # the item is extracted: a lesson lost must not cost it
            self._failed("learn", str(record.get("url")))
            return
        if learned is not None:
            self.count(learned, str(page.get("site")))

    def count(self, learned: Learned, site: str) -> None:
        for name in ("promoted", "retired", "disagreements"):
            if value := getattr(learned, name):
                self._inc(name, value)
        if learned.retired:
            logger.info(
                "The model contradicted %d learned rule(s) of %s twice in a row: retired; that"
                " template's pages go to the model until rules are learned again"
                " (llm_extract/rules/retired).",
                learned.retired,
                site,
            )

    def close(self) -> None:
        if self.book is None:
            return
        try:
            self.book.close()
        except (OSError, sqlite3.Error):
            self._failed("close", str(self.config.rules_dir))
        if self.shared is not None:
            try:
                self.shared.publish()
            except Exception:  # botocore raises many kinds; the next crawl publishes them
                self._failed(
                    "publish", self.shared.store.uri, "they stay local until the next crawl"
                )
            self.shared.store.close()

    def _load_shared(self) -> SharedRules | None:
        """With an s3:// spool, the rules other machines published, merged into ours."""
        if self.book is None or not self.config.spool_store:
            return None
        from ..publish import open_store

        shared = SharedRules(open_store(self.config), self.config.rules_dir)
        try:
            shared.load()
        except Exception:  # botocore raises many kinds; rules go on from what is local
            self._failed("load", shared.store.uri, "this crawl uses its local rules only")
        return shared

    def _failed(
        self,
        step: str,
        subject: str | None,
        consequence: str = "the model answers as if LLM_EXTRACT_RULES were off",
    ) -> None:
        """Count a failure of the rules; the item goes on by the model, never lost."""
        self._inc(f"failed/{step}")
        logger.error(
            "Learned rules failed to %s (%s); %s (llm_extract/rules/failed/%s)."
            " Check LLM_EXTRACT_RULES_DIR %s.",
            step,
            subject,
            consequence,
            step,
            self.config.rules_dir,
            exc_info=True,
        )

    def _count_saving(self, prepared: Prepared, fields: dict[str, Any], *, batch: bool) -> None:
        output = count_tokens(json.dumps(fields, ensure_ascii=False), self.config.model)
        cost = cost_usd(self._model, prepared.request.prompt_tokens, output, batch=batch)
        self._saved = add_costs(self._saved, cost)
        self.stats.set_value(f"{STATS_PREFIX}/saved_usd", rounded_usd(self._saved))

    def _mark(self, adapter: ItemAdapter, sources: dict[str, Any]) -> None:
        name = self.config.source_info_field
        if not name or set_field(adapter, name, sources):
            return
        self._inc("source_info_unset")
        cls = type(adapter.item)
        if cls not in self._no_source_info:
            self._no_source_info.add(cls)
            logger.warning(
                "%s has no field %r (LLM_EXTRACT_SOURCE_INFO_FIELD): add it to the item class"
                " to see which values came from rules (llm_extract/rules/source_info_unset).",
                cls.__name__,
                name,
            )

    def _inc(self, name: str, count: int = 1) -> None:
        self.stats.inc_value(f"{STATS_PREFIX}/{name}", count)
