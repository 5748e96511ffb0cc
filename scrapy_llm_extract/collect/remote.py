"""collect-batches on an s3:// spool: lease runs, work on a local copy, write back.

The collector itself works on local run folders (:mod:`.collector`), so on a
store this module brings it a working copy: it lists the runs in the store,
claims each closed, uncollected run of the project with a lease
(:mod:`..lease`), downloads its objects (ledger ``collect.sqlite`` included:
the index travels with the run, so a collector on another machine finishes
a run one started), renews the leases from a thread while the pass works,
and at each checkpoint of the collector (submissions made, pass ended,
ledgers closed: ``CollectOptions.save_progress``) uploads what changed: new
and changed files first, the ledger as a consistent SQLite snapshot, then the
manifest with ``If-Match`` on the etag it last wrote. A kill then costs only
the work since the last checkpoint. A lease lost meanwhile
(the collector stalled past the TTL and another took over), whether the
renewer or a write-back finds it, takes one path: counted, the replay stopped,
and nothing more of that run written back: its rows stay pending for the new
holder, at least once as always.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import sqlite3
import tempfile
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from ..lease import LEASE_NAME, Lease, Leases
from ..manifest import MANIFEST_NAME
from ..publish import open_store
from ..rules.shared import SharedRules
from ..spool import LOCK_NAME, Run
from ..store import PreconditionFailed
from .ledger import LEDGER_NAME

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..config import Config
    from .collector import CollectOptions

logger = logging.getLogger("scrapy_llm_extract.collect")

#: Files of a working copy that never go back to the store (SQLite's side files are in the
#: ledger's snapshot).
LOCAL_ONLY = (LOCK_NAME, LEASE_NAME)
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")
#: Working copies are ``<staging>/collect/work-*``, each locked by its collector.
WORK_PREFIX = "work-"
IN_USE_NAME = ".in-use"
#: Why a lease was lost (``{ttl}``: LLM_EXTRACT_LEASE_TTL).
TAKEN_OVER = (
    "another collector took it over after this one stopped renewing it for"
    " LLM_EXTRACT_LEASE_TTL ({ttl:.0f} s)"
)
MANIFEST_CHANGED = (
    "its manifest in the store changed since this collector read it (another collector"
    " took the run over, or its crawl is still publishing it)"
)


class LeaseTakenOver(PreconditionFailed):
    """A renewal right before a write-back found the lease in another collector's hands."""


@dataclass
class Claimed:
    lease: Lease
    #: What was downloaded: file name -> (etag, size, mtime_ns of the local copy).
    fetched: dict[str, tuple[str, int, int]] = field(default_factory=dict)


class StoreCollection:
    """The runs of an s3:// spool this collector works on, in a local working copy."""

    def __init__(self, config: Config, options: CollectOptions) -> None:
        assert config.spool_staging_dir is not None
        self.config = config
        #: The options to collect with: they write the runs back at each checkpoint.
        self.options = replace(options, save_progress=self.save_progress)
        self.store = open_store(config)
        self.leases = Leases(self.store, config.lease_ttl)
        base = config.spool_staging_dir / "collect"
        base.mkdir(parents=True, exist_ok=True)
        with open(base / IN_USE_NAME, "a") as creating:  # no removal while one is made
            fcntl.flock(creating, fcntl.LOCK_EX)
            self.workdir = Path(tempfile.mkdtemp(prefix=WORK_PREFIX, dir=base))
            # Held until close(): the kernel drops it when this process dies, however it dies.
            self._in_use = open(self.workdir / IN_USE_NAME, "w")
            fcntl.flock(self._in_use, fcntl.LOCK_EX)
            _remove_leftovers(base)
        self.claimed: dict[str, Claimed] = {}
        self.lost: set[str] = set()
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        self._notes: list[str] = []
        self._locked: list[Run] = []
        self._on_lost: Callable[[], None] = lambda: None
        #: Renewals from the thread and before each write-back must not race on the etag.
        self._lease_lock = threading.Lock()

    # Listing -----------------------------------------------------------------------------

    def run_ids(self) -> list[str]:
        """Every run in the store with a published manifest."""
        suffix = "/" + MANIFEST_NAME
        return [key.removesuffix(suffix) for key in self.store.list() if key.endswith(suffix)]

    def _wanted(self, manifest: dict[str, object]) -> bool:
        if self.options.run_id and manifest.get("run_id") != self.options.run_id:
            return False
        if not self.options.all_projects and manifest.get("project") != self.config.project:
            return False
        if manifest.get("closed_at") is None and not self.options.run_id:
            return False  # its crawl is still publishing it, or its machine is gone (--run)
        return self.options.retry_failed or not manifest.get("collected_at")

    # Working copies -----------------------------------------------------------------------

    def snapshot(self) -> Path:
        """Every run's manifest and ledger, read only (``--status``). A run that a crawl is
        still writing or a collector holds is locked in the copy, so it shows as locked."""
        self._notes = []
        for run_id in self.run_ids():
            if self.options.run_id and run_id != self.options.run_id:
                continue
            self._fetch(run_id, (MANIFEST_NAME, LEDGER_NAME))
            run = Run.open(self.workdir / run_id)
            state = self.leases.state(f"{run_id}/{LEASE_NAME}")
            if state is not None and not state.expired:
                self._notes.append(f"{run_id}: collecting, leased by {state.owner}")
            elif not run.manifest.closed:
                host = run.manifest.data.get("host")
                self._notes.append(
                    f"{run_id}: its crawl on {host} has not closed it: running, or it died"
                    f" (the next crawl of this spider on {host} recovers it)"
                )
            else:
                continue
            self._hold(run)
        return self.workdir

    def _hold(self, run: Run) -> None:
        """Lock the working copy of a run this collector must not take (released at close)."""
        run.try_lock()
        self._locked.append(run)

    def _crawl_running_here(self, manifest: dict[str, object]) -> bool:
        """An unclosed run whose crawl runs on this machine, holding its staging copy's lock.
        (A crawl on another machine gives no such sign: see the README.)"""
        if manifest.get("closed_at") is not None or manifest.get("host") != os.uname().nodename:
            return False
        staged = self.config.spool_dir / str(manifest.get("run_id"))
        return (staged / MANIFEST_NAME).is_file() and Run.open(staged).is_live()

    def status_header(self) -> str:
        lines = [f"Spool {self.store.uri}:", *(f"  {note}" for note in self._notes)]
        return "\n".join(lines) + "\n"

    def claim(self) -> Path:
        """Lease and download the runs to collect, and the rules other machines learned
        (LLM_EXTRACT_RULES); the working copy's folder."""
        if self.config.rules:
            self._share_rules("load")
        for run_id in self.run_ids():
            stored = self.store.get(f"{run_id}/{MANIFEST_NAME}")
            if stored is None or not self._wanted(json.loads(stored.body)):
                continue
            if self._crawl_running_here(json.loads(stored.body)):
                self._fetch(run_id, (MANIFEST_NAME,))  # the collector refuses it, locked
                self._hold(Run.open(self.workdir / run_id))
                continue
            lease = self.leases.claim(f"{run_id}/{LEASE_NAME}")
            if lease is None:
                logger.info("Skipping run %s: another collector holds its lease.", run_id)
                continue
            if json.loads(stored.body).get("closed_at") is None:
                logger.warning(
                    "Run %s was never closed by its crawl: collecting the files it published,"
                    " as --run asks (its unpublished rows are lost with its machine).",
                    run_id,
                )
            try:
                claimed = Claimed(lease, self._fetch(run_id))
            except BaseException:
                self.leases.release(lease)
                raise
            self.claimed[run_id] = claimed
            logger.info("Leased run %s from %s", run_id, self.store.uri)
        return self.workdir

    def _fetch(self, run_id: str, only: tuple[str, ...] = ()) -> dict[str, tuple[str, int, int]]:
        folder = self.workdir / run_id
        folder.mkdir(exist_ok=True)
        fetched = {}
        for key in self.store.list(run_id + "/"):
            name = key[len(run_id) + 1 :]
            if "/" in name or name in LOCAL_ONLY or (only and name not in only):
                continue
            stored = self.store.get(key)
            if stored is None:
                continue
            path = folder / name
            path.write_bytes(stored.body)
            stat = path.stat()
            fetched[name] = (stored.etag, stat.st_size, stat.st_mtime_ns)
        return fetched

    # Leases while working ---------------------------------------------------------------

    def keep_leases(self, on_lost: Callable[[], None]) -> None:
        """Renew the leases every third of the TTL from a thread; call ``on_lost`` (from that
        thread or the caller's) once per run lost, by a renewal or a write-back."""
        self._on_lost = on_lost

        def renew() -> None:
            while not self._stop.wait(self.config.lease_ttl / 3):
                for run_id, claimed in list(self.claimed.items()):
                    if run_id in self.lost:
                        continue
                    try:
                        with self._lease_lock:
                            kept = self.leases.renew(claimed.lease)
                    except Exception as exc:  # the store unreachable: try again next time
                        logger.warning("Could not renew the lease on run %s: %s", run_id, exc)
                        continue
                    if not kept:
                        self._lose(run_id, TAKEN_OVER)

        self._renewer = threading.Thread(target=renew, name="lease-renewer", daemon=True)
        self._renewer.start()

    def _lose(self, run_id: str, why: str) -> None:
        """The one path of a lost run, whoever finds it: nothing more of it is written back,
        and ``on_lost`` counts it and stops the replay."""
        with self._lease_lock:
            if run_id in self.lost:
                return
            self.lost.add(run_id)
        logger.error(
            "Lost the lease on run %s: %s. Stopping; nothing more of this run is written back,"
            " its rows stay pending for the new holder.",
            run_id,
            why.format(ttl=self.config.lease_ttl),
        )
        self._on_lost()

    # Writing back -------------------------------------------------------------------------

    def push(self) -> bool:
        """The last write-back: False if a run could not be written back (lost lease,
        manifest changed, store error: logged)."""
        pushed = not self.save_progress() and not self.lost
        return (self._share_rules("publish") if self.config.rules else True) and pushed

    def _share_rules(self, step: str) -> bool:
        """Load or publish the learned rules through the store; False on failure (logged)."""
        shared = SharedRules(self.store, self.config.rules_dir)
        try:
            shared.load() if step == "load" else shared.publish()
        except Exception as exc:  # botocore raises many kinds
            logger.error(
                "Could not %s the learned rules of %s with %s (%s: %s); this collection"
                " learns from and into %s only, until a later run publishes them.",
                step,
                self.config.rules_dir,
                self.store.uri,
                type(exc).__name__,
                exc,
                self.config.rules_dir,
            )
            return False
        return True

    def save_progress(self) -> int:
        """Upload what changed in each leased run, the manifest last; the number of runs
        that could not be written back for a store error (logged; a lost lease is counted
        as such, in ``leases_lost``)."""
        failed = 0
        for run_id, claimed in self.claimed.items():
            if run_id in self.lost:
                continue
            try:
                self._push_run(run_id, claimed)
            except LeaseTakenOver:
                self._lose(run_id, TAKEN_OVER)
            except PreconditionFailed:  # the manifest's If-Match
                self._lose(run_id, MANIFEST_CHANGED)
            except Exception as exc:
                logger.error(
                    "Could not write run %s back to %s (%s: %s); retried at the next"
                    " checkpoint. What is not written back stays pending in the store: run"
                    " scrapy collect-batches again once the store is reachable.",
                    run_id,
                    self.store.uri,
                    type(exc).__name__,
                    exc,
                )
                failed += 1
        return failed

    def _push_run(self, run_id: str, claimed: Claimed) -> None:
        folder = self.workdir / run_id
        with self._lease_lock:
            if not self.leases.renew(claimed.lease):  # still ours, right before writing
                raise LeaseTakenOver(run_id)
        names = sorted(
            path.name
            for path in folder.iterdir()
            if path.is_file()
            and not path.name.startswith(".")
            and path.name not in LOCAL_ONLY
            and not path.name.endswith(SQLITE_SIDE_FILES)
        )
        for name in [*(n for n in names if n != MANIFEST_NAME), MANIFEST_NAME]:
            signature = _signature(folder / name)
            before = claimed.fetched.get(name)
            if before is not None and before[1:] == signature:
                continue
            key = f"{run_id}/{name}"
            if name == MANIFEST_NAME:
                body = (folder / name).read_bytes()
                manifest_etag = before[0] if before else ""
                etag = self.store.put(key, body, if_match=manifest_etag)
            elif name == LEDGER_NAME:
                etag = self.store.put(key, _snapshot(folder / name))
            else:
                with open(folder / name, "rb") as body_file:
                    etag = self.store.put(key, body_file)
            claimed.fetched[name] = (etag, *signature)

    def close(self) -> None:
        """Stop renewing, release the leases, delete the working copy."""
        self._stop.set()
        for run in self._locked:
            run.unlock()
        if self._renewer is not None:
            self._renewer.join()
        for run_id, claimed in self.claimed.items():
            if run_id in self.lost:
                continue
            try:
                self.leases.release(claimed.lease)
            except Exception as exc:
                logger.warning(
                    "Could not release the lease on run %s (%s); it expires in %.0f s.",
                    run_id,
                    exc,
                    self.config.lease_ttl,
                )
        self.store.close()
        shutil.rmtree(self.workdir, ignore_errors=True)
        self._in_use.close()


def _signature(path: Path) -> tuple[int, int]:
    """Size and mtime of a file, its SQLite write-ahead log included: changed when either is."""
    stat = path.stat()
    wal = path.with_name(path.name + "-wal")
    if wal.exists():
        extra = wal.stat()
        return stat.st_size + extra.st_size, max(stat.st_mtime_ns, extra.st_mtime_ns)
    return stat.st_size, stat.st_mtime_ns


def _snapshot(path: Path) -> bytes:
    """The ledger as one consistent database file, while the collector may still write it."""
    with tempfile.TemporaryDirectory(dir=path.parent.parent) as folder:
        copy = Path(folder) / path.name
        source = sqlite3.connect(path)
        target = sqlite3.connect(copy)
        try:
            source.backup(target)
        finally:
            target.close()
            source.close()
        return copy.read_bytes()


def _remove_leftovers(base: Path) -> None:
    """Delete the working copies of collectors that were killed: nothing in them counts
    (what a collector wrote back is in the store, the rest is pending there)."""
    for folder in base.glob(WORK_PREFIX + "*"):
        try:
            with open(folder / IN_USE_NAME, "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                shutil.rmtree(folder)
        except BlockingIOError:
            continue  # a live collector's
        except OSError as exc:
            logger.warning("Could not remove the leftover working copy %s: %s", folder, exc)
            continue
        logger.info("Removed %s, the working copy of a collector that was killed.", folder)
