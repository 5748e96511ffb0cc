"""The crawl side of an s3:// spool: publish sealed files from the local staging folder.

Appends stay local and fast (the ordinary spool, in the staging folder); what
is sealed is copied to the store, each object in one PUT, the sidecar before
its requests file and both before the manifest that lists them, so a reader
of the store never sees a partial object nor a manifest naming a missing
file. The store's copy of an unclosed run belongs to its crawl: collectors
take only closed runs. Once a run is closed and published, its staging
folder is deleted; a run whose crawl died is sealed and closed by the next
crawl on the same machine (:func:`~.spool.claim_dead_runs`, as for a local
spool) and published then, as is a closed run whose publication failed.
"""

from __future__ import annotations

import logging
import shutil
from typing import TYPE_CHECKING

from .manifest import MANIFEST_NAME, OPEN
from .spool import Run, list_runs, sidecar_name
from .store import S3Store

if TYPE_CHECKING:
    from pathlib import Path

    from scrapy.statscollectors import StatsCollector

    from .config import Config

logger = logging.getLogger(__name__)


def open_store(config: Config) -> S3Store:
    assert config.spool_store is not None and config.s3 is not None
    return S3Store(config.spool_store, config.s3)


class Publisher:
    """Copies the crawl's sealed spool files and manifests to the store."""

    def __init__(self, store: S3Store, stats: StatsCollector | None = None) -> None:
        self.store = store
        self.stats = stats
        self._published: set[tuple[str, str]] = set()

    def publish(self, run: Run) -> bool:
        """Upload the run's sealed files not yet uploaded, then its manifest; False on failure
        (logged and counted: the files stay in the staging folder and are published later)."""
        try:
            for name, entry in run.manifest.files.items():
                if entry["status"] == OPEN or (run.run_id, name) in self._published:
                    continue
                for file_name in (sidecar_name(name), name):
                    self._upload(run, file_name)
                self._published.add((run.run_id, name))
            self._upload(run, MANIFEST_NAME)
        except Exception as exc:  # botocore raises many kinds; none may stop the crawl
            logger.error(
                "Could not publish spool run %s to %s (%s: %s); its files stay in %s and are"
                " published when a crawl of this project next closes on this machine.",
                run.run_id,
                self.store.uri,
                type(exc).__name__,
                exc,
                run.path,
            )
            self._inc("llm_extract/spool/publish_failed")
            return False
        return True

    def publish_closed(self, staging: Path) -> None:
        """Publish every closed run of the staging folder, then delete its local copy."""
        for run in list_runs(staging):
            if not run.manifest.closed or not run.try_lock():
                continue  # still being written, or another process publishes it
            try:
                run.reload()
                if self.publish(run):
                    shutil.rmtree(run.path)
                    self._inc("llm_extract/spool/runs_published")
                    logger.info("Published spool run %s to %s", run.run_id, self.store.uri)
            finally:
                run.unlock()

    def _upload(self, run: Run, file_name: str) -> None:
        with open(run.path / file_name, "rb") as f:  # streamed: a file may be 200 MB
            self.store.put(f"{run.run_id}/{file_name}", f)

    def _inc(self, key: str) -> None:
        if self.stats is not None:
            self.stats.inc_value(key)
