"""Learned rules per site and template, audited by the model (``LLM_EXTRACT_RULES``).

Plain modules, no Scrapy: :mod:`.values` (comparison and shapes),
:mod:`.kinds` (what rules read on a page, the template fingerprint),
:mod:`.store` (persistence), :mod:`.book` (learning, committee, audit),
:mod:`.shared` (sharing through an s3:// spool's store).
"""

from .book import Learned, RuleBook, Verdict

__all__ = ["Learned", "RuleBook", "Verdict"]
