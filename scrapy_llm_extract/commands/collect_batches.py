"""``scrapy collect-batches``: bring Batch API results back into the project's item flow.

Scrapy imports every entry-point command on every invocation (even ``scrapy
version``), so this module imports nothing heavy at module level: the
collector, the OpenAI SDK and the package's settings load inside ``run()``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from scrapy.commands import BaseRunSpiderCommand
from scrapy.exceptions import UsageError
from scrapy.utils.project import inside_project

if TYPE_CHECKING:
    import argparse


class Command(BaseRunSpiderCommand):
    # Not enforced by Scrapy for entry-point commands: run() checks inside_project() itself.
    requires_project = True

    def syntax(self) -> str:
        return "[options]"

    def short_desc(self) -> str:
        return "Submit, poll and collect Batch API results into the project's pipelines and feeds"

    def long_desc(self) -> str:
        return (
            "Submit pending spool files, poll their batches and send every extracted item"
            " through ITEM_PIPELINES and FEEDS, as a crawl would. Failed rows are resubmitted"
            " up to LLM_EXTRACT_MAX_ATTEMPTS, then written to failures.jsonl in the run folder."
        )

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        super().add_options(parser)
        parser.add_argument(
            "--wait", action="store_true", help="poll until every batch is final, then exit"
        )
        parser.add_argument(
            "--poll-interval",
            type=float,
            default=60.0,
            metavar="SECONDS",
            help="seconds between two polls with --wait (default: 60)",
        )
        parser.add_argument("--run", metavar="RUN_ID", help="only this run")
        parser.add_argument(
            "--status",
            action="store_true",
            help="print a table of runs and batches and change nothing",
        )
        parser.add_argument(
            "--cancel", action="store_true", help="cancel the batches in flight (with --run: its)"
        )
        parser.add_argument(
            "--deadline",
            type=float,
            metavar="HOURS",
            help="cancel batches older than HOURS and extract their unfinished rows in real time",
        )
        parser.add_argument(
            "--escalate-model",
            metavar="MODEL",
            help="resubmit failed rows with this model instead of the original one",
        )

    def process_options(self, args: list[str], opts: argparse.Namespace) -> None:
        super().process_options(args, opts)
        if opts.poll_interval <= 0:
            raise UsageError("--poll-interval must be a positive number of seconds")
        if opts.deadline is not None and opts.deadline < 0:
            raise UsageError("--deadline must be a number of hours, 0 or more")
        if opts.status and opts.cancel:
            raise UsageError("--status changes nothing: use it without --cancel")

    def run(self, args: list[str], opts: argparse.Namespace) -> None:
        if not inside_project():
            raise UsageError(
                "scrapy collect-batches runs inside a Scrapy project (a folder with"
                " scrapy.cfg): its settings say where the spool is and which pipelines and"
                " feeds receive the items.",
                print_help=False,
            )
        if args:
            raise UsageError(f"unexpected arguments: {' '.join(args)}")
        from ..collect import CollectOptions, cancel_batches, collect, status_table

        assert self.settings is not None
        options = CollectOptions(
            run_id=opts.run,
            wait=opts.wait,
            poll_interval=opts.poll_interval,
            deadline_hours=opts.deadline,
            escalate_model=opts.escalate_model,
        )
        if opts.status:
            print(status_table(self.settings, options))
            return
        if opts.cancel:
            cancel_batches(self.settings, options)
            return
        assert self.crawler_process is not None
        self.exitcode = collect(self.crawler_process, options)
