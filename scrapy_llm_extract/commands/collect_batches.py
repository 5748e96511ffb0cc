"""``scrapy collect-batches``: bring Batch API results back into the project's item flow.

Scrapy imports every entry-point command on every invocation (even ``scrapy
version``), so this module imports nothing heavy at module level: the
collector, the OpenAI SDK and the package's settings load inside ``run()``.

Exit codes: 0 every row delivered, or pending by design (batches still
running); 1 a row failed for good, a pipeline or feed failed, or a file or
run stayed stuck; 2 a usage error (such as an unknown ``--run``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from scrapy.commands import ScrapyCommand
from scrapy.exceptions import UsageError
from scrapy.utils.conf import feed_process_params_from_cli
from scrapy.utils.project import inside_project

if TYPE_CHECKING:
    import argparse

    from ..collect import CollectOptions


class Command(ScrapyCommand):
    # Not enforced by Scrapy for entry-point commands: run() checks inside_project() itself.
    requires_project = True
    requires_crawler_process = True

    def syntax(self) -> str:
        return "[options]"

    def short_desc(self) -> str:
        return "Submit, poll and collect Batch API results into the project's pipelines and feeds"

    def long_desc(self) -> str:
        return (
            "Submit pending spool files, poll their batches and send every extracted item"
            " through ITEM_PIPELINES and FEEDS, as a crawl would. Failed rows are resubmitted"
            " up to LLM_EXTRACT_MAX_ATTEMPTS, then written to failures.jsonl in the run folder."
            " Exit code: 0 all delivered or still running, 1 failures or stuck files, 2 usage."
        )

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        super().add_options(parser)
        parser.add_argument(
            "-o",
            "--output",
            metavar="FILE",
            action="append",
            help="append the collected items to FILE (FILE:FORMAT to choose the format)",
        )
        parser.add_argument(
            "-O",
            "--overwrite-output",
            metavar="FILE",
            action="append",
            help="write the collected items to FILE, overwriting it",
        )
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
            "--cancel",
            action="store_true",
            help="cancel the batches in flight (of every run, or of the --run given)",
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
        parser.add_argument(
            "--retry-failed",
            action="store_true",
            help="deliver again the rows a project pipeline raised on (once it is fixed)",
        )
        parser.add_argument(
            "--all-projects",
            action="store_true",
            help="also collect runs spooled by other projects (other BOT_NAME) in this spool",
        )

    def process_options(self, args: list[str], opts: argparse.Namespace) -> None:
        super().process_options(args, opts)
        if opts.output or opts.overwrite_output:
            assert self.settings is not None
            feeds = feed_process_params_from_cli(
                self.settings, opts.output, overwrite_output=opts.overwrite_output
            )
            self.settings.set("FEEDS", feeds, priority="cmdline")
        # "nan" parses as a float and compares False with everything: refused by name.
        if not (0 < opts.poll_interval < math.inf):
            raise UsageError("--poll-interval must be a positive number of seconds")
        if opts.deadline is not None and not (0 <= opts.deadline < math.inf):
            raise UsageError("--deadline must be a number of hours, 0 or more")
        if opts.status and opts.cancel:
            raise UsageError("--status changes nothing: use it without --cancel")
        if opts.escalate_model:
            from ..models import chat_completions_problem

            if problem := chat_completions_problem(opts.escalate_model):
                raise UsageError(f"--escalate-model: {problem}")

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
        from ..collect import CollectOptions
        from ..config import Config

        assert self.settings is not None
        config = Config.from_settings(self.settings)
        options = CollectOptions(
            run_id=opts.run,
            wait=opts.wait,
            poll_interval=opts.poll_interval,
            deadline_hours=opts.deadline,
            escalate_model=opts.escalate_model,
            all_projects=opts.all_projects,
            retry_failed=opts.retry_failed,
        )
        if config.spool_store:  # s3:// spool: work on a local copy of the runs leased
            from ..collect.remote import StoreCollection

            remote = StoreCollection(config, options)
            options = remote.options  # they write the runs back at each checkpoint
            try:
                working = remote.snapshot() if opts.status else remote.claim()
                self.settings.set("LLM_EXTRACT_SPOOL_DIR", str(working), priority="cmdline")
                if opts.status:
                    print(remote.status_header())
                else:
                    remote.keep_leases(on_lost=self._stop_crawl)
                self._run(opts, options)
                if not opts.status and not remote.push():
                    self.exitcode = 1
            finally:
                remote.close()
        else:
            self._run(opts, options)

    def _run(self, opts: argparse.Namespace, options: CollectOptions) -> None:
        from ..collect import UnknownRun, cancel_batches, collect, select_runs, status_table
        from ..config import Config

        assert self.settings is not None
        try:
            select_runs(Config.from_settings(self.settings), options)
        except UnknownRun as exc:
            raise UsageError(str(exc), print_help=False) from None
        if opts.status:
            print(status_table(self.settings, options))
            return
        if opts.cancel:
            self.exitcode = 1 if cancel_batches(self.settings, options)[1] else 0
            return
        assert self.crawler_process is not None
        self.exitcode = collect(self.crawler_process, options)

    def _stop_crawl(self) -> None:
        """A lease was lost (found by the renewing thread or by a write-back): count it and
        stop the replay, in the reactor's thread (at once when called from it: a write-back
        at the last checkpoint comes before the stats are dumped)."""
        from scrapy.utils.defer import deferred_from_coro
        from twisted.internet import reactor
        from twisted.python.threadable import isInIOThread

        process = self.crawler_process
        assert process is not None

        def stop() -> None:
            for crawler in process.crawlers:
                if crawler.stats is not None:
                    crawler.stats.inc_value("llm_extract/collect/leases_lost")
            # A coroutine on AsyncCrawlerProcess (the default): it must be scheduled.
            deferred_from_coro(process.stop())  # type: ignore[attr-defined]

        if not isInIOThread():
            reactor.callFromThread(stop)  # type: ignore[attr-defined]
        elif reactor.running:  # type: ignore[attr-defined]
            stop()
        # else the last write-back, after the crawl: its stats are dumped, and the exit is 1
