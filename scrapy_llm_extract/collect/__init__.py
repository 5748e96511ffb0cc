"""Collect Batch API results: submit what waits, poll, join, retry, and replay the items.

The core of ``scrapy collect-batches``, usable without the command, split
along the states it owns: :mod:`.polling` (submission and polling),
:mod:`.ledger` (the one place that knows each row's state), :mod:`.collector`
(joining results with the spool and settling rows), :mod:`.replay` (the
crawl that delivers the items to the project's pipelines and feeds) and
:mod:`.status` (``--status``, ``--cancel``).
"""

from .collector import CollectOptions, Collector, RunSummary, summary_table
from .replay import collect, replay_spider
from .status import UnknownRun, cancel_batches, select_runs, status_table

__all__ = [
    "CollectOptions",
    "Collector",
    "RunSummary",
    "UnknownRun",
    "cancel_batches",
    "collect",
    "replay_spider",
    "select_runs",
    "status_table",
    "summary_table",
]
