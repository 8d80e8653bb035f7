"""Per-process services, built once in each worker after the fork."""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Any

from ..config import Settings
from ..repo.signing_keys import PrivateKey, load_private_key
from ..store.accounts import AccountStore
from ..store.caches import size_caches
from ..store.files import read_file, try_flock
from ..store.layout import BLOB_GC_LOCK, PRUNE_LOCK, SNAPSHOT_LOCK, DataDir
from ..store.repo import Repo
from .threads import blocking

if TYPE_CHECKING:
    import httpx

    from .proxy import Proxy

SNAPSHOT_MAX_AGE = 300.0  # seconds an export snapshot may lag a changing repo
# The checkpoint (a syncfs, then CHECKPOINT moved) runs every CHECKPOINT_EVERY_S, and
# sooner once a worker has committed CHECKPOINT_AFTER commits since its last one: each
# commit logs ~20 metadata blocks in an ext4 journal, and a journal filled faster than
# the checkpoints write those blocks home makes the kernel checkpoint it itself, one
# transaction at a time, with a device flush for each: every other commit paid a second
# flush at ~400 writes/s with a 64 MB journal (bench/README.md).
CHECKPOINT_EVERY_S = 2.0
CHECKPOINT_AFTER = 200


class AppContext:
    """Everything a handler reaches through `call.ctx`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        size_caches(settings.cache_mb)
        self.data = DataDir(settings.data_dir)
        self.accounts = AccountStore(self.data)
        self._repos: dict[str, tuple[str | None, Repo]] = {}
        self._keys: dict[str, tuple[str | None, PrivateKey]] = {}
        from .auth import Auth
        from .firehose import Broadcaster, Crawlers, Sequencer
        from .identity import Identity
        from .lifecycle import Lifecycle
        from .mailer import Mailer
        self.auth = Auth(self)
        from .oauth import OAuth
        self.oauth = OAuth(self)
        self.identity = Identity(self)
        self.lifecycle = Lifecycle(self)
        self.events = Sequencer(self)
        self.broadcaster = Broadcaster(self)
        self.crawlers = Crawlers(self)
        self.mailer = Mailer(self)
        self.loop: Any = None
        self._checkpoint_due: Any = None  # an asyncio.Event, once the loop runs
        self._commits = 0  # since this worker's last checkpoint

    @cached_property
    def http(self) -> httpx.AsyncClient:
        """Outbound HTTP (PLC, relays, handle resolution); created in the worker's loop.
        httpx is imported here, at the first outbound request, not with the app: a
        worker that never makes one (most, with did:web accounts and no relays) is
        spared its ~2.5 MB (bench/README.md, Memory). `fetch.http_errors()` catches its
        errors without importing it."""
        import httpx
        return httpx.AsyncClient(timeout=10.0, follow_redirects=False,
                                 headers={"User-Agent": "pds (python)"})

    @cached_property
    def proxy(self) -> Proxy:
        """Forwarding of the methods this PDS does not serve (`services.proxy.Proxy`)."""
        from .proxy import Proxy
        return Proxy(self)

    # The key and repo caches hold what they cached with the account's `generation` (a
    # random id per account life): an account deleted and made again (moving back in)
    # by another worker gets a new key, which a stale entry here must never stand for.

    def _life(self, did: str) -> str | None:
        rec = self.accounts.get(did)
        return None if rec is None else str(rec.get("generation"))

    def cached_signing_key(self, did: str) -> PrivateKey | None:
        """An account's signing key if this process has read it already and the account
        record it was read for is current in memory (no I/O)."""
        hit = self._keys.get(did)
        rec = self.accounts.peek(did)
        if hit is None or rec is None or hit[0] != str(rec.get("generation")):
            return None
        return hit[1]

    def signing_key(self, did: str) -> PrivateKey:
        """The repo signing key of an account hosted here; its absence is damage."""
        key = self.local_signing_key(did)
        if key is None:
            raise RuntimeError(f"the signing key of {did} is missing")
        return key

    def local_signing_key(self, did: str) -> PrivateKey | None:
        """The repo signing key of an account hosted here, or None."""
        life = self._life(did)
        hit = self._keys.get(did)
        if hit is not None and hit[0] == life:
            return hit[1]
        try:
            data = read_file(self.data.signing_key(did))
        except ValueError:
            return None
        if data is None:
            return None
        key = load_private_key(data)
        self._keys[did] = (life, key)
        return key

    def repo(self, did: str) -> Repo:
        """The repository of a hosted account (cached: its node cache survives requests)."""
        life = self._life(did)
        hit = self._repos.get(did)
        if hit is None or hit[0] != life:
            repo = Repo(self.data.account(did), self.data.tmp, did, self.local_signing_key(did),
                        wal=self.events, clock=self.data.clock)
            hit = self._repos[did] = (life, repo)
        return hit[1]

    def after_commit(self, result: Any) -> None:
        """After a commit (its #commit event is already in the log): wake the relays if
        this write ends a quiet spell. Called from a worker thread."""
        if self.crawlers.on_write() and self.loop is not None:
            self.loop.call_soon_threadsafe(
                lambda: self.loop.create_task(self.crawlers.announce()))
        self._commits += 1  # a lost count between two threads only delays a checkpoint
        if self._commits >= CHECKPOINT_AFTER and self._checkpoint_due is not None:
            self._commits = 0
            self.loop.call_soon_threadsafe(self._checkpoint_due.set)

    async def startup(self) -> None:
        """In each worker, once its event loop runs: firehose delivery and checkpoints."""
        import asyncio
        self.loop = asyncio.get_running_loop()
        self.broadcaster.start()
        self._checkpointer = self.loop.create_task(self._checkpoint_loop())
        self._mail_sender = self.loop.create_task(self.mailer.run())

    async def _checkpoint_loop(self) -> None:
        import asyncio
        import contextlib
        import logging
        import time

        from ..store.recovery import checkpoint
        retention = self.settings.firehose_retention_hours * 3600
        self._checkpoint_due = due = asyncio.Event()
        start = time.monotonic()
        # When each other task is next due, and its period (seconds): blob collection and
        # pruning every ~10 minutes, export snapshots every minute.
        schedule = {self.collect_blobs: [start + 2, 600.0], self.prune: [start + 4, 600.0],
                    self.refresh_snapshots: [start + 30, 60.0]}
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(due.wait(), CHECKPOINT_EVERY_S)
            due.clear()
            self._commits = 0
            try:
                await blocking(checkpoint, self.data, retention)
                now = time.monotonic()
                for task, when in schedule.items():
                    if now >= when[0]:
                        when[0] = now + when[1]
                        await blocking(task)
            except Exception:  # noqa: BLE001 - try again next round
                logging.getLogger("pds").exception("maintenance failed")

    def collect_blobs(self) -> int:
        """Remove unreferenced uploads past their grace period (one worker at a time)."""
        from ..store.blobs import BlobStore
        with try_flock(self.data.tmp / BLOB_GC_LOCK) as held:
            if not held:
                return 0
            removed = 0
            for did in self.accounts.list_dids():
                store = BlobStore(self.data.blobs(did), self.data.tmp)
                # Under the repo lock: a commit adding a reference can't race the removal.
                with self.repo(did).lock():
                    removed += store.gc()
            return removed

    def prune(self) -> int:
        """Remove refresh sessions that can no longer be used, rate-limit counters
        whose window is over and expired OAuth state (one worker at a time); returns how
        many files went."""
        from .sessions import prune_sessions
        with try_flock(self.data.tmp / PRUNE_LOCK) as held:
            if not held:
                return 0
            return prune_sessions(self) + self.auth.limiter.prune() + self.oauth.prune()

    def refresh_snapshots(self, max_age: float = SNAPSHOT_MAX_AGE) -> int:
        """Bring export snapshots older than `max_age` seconds up to their repo's HEAD (one
        worker at a time), so that a whole-repo export copies at most a few minutes of
        changes rather than walking block files. Returns how many were rewritten."""
        import logging

        with try_flock(self.data.tmp / SNAPSHOT_LOCK) as held:
            if not held:
                return 0
            done = 0
            for did in self.accounts.list_dids():
                try:
                    done += self.repo(did).refresh_snapshot(max_age)
                except Exception:  # noqa: BLE001 - one damaged repo must not stop the rest
                    logging.getLogger("pds").exception("export snapshot of %s failed", did)
            return done

    async def shutdown(self) -> None:
        for name in ("_checkpointer", "_mail_sender"):
            task = getattr(self, name, None)
            if task is not None:
                task.cancel()
        await self.broadcaster.stop()
        if "proxy" in self.__dict__:
            await self.proxy.close()

    def forget(self, did: str) -> None:
        """Drop cached state of an account (deleted, or its key changed)."""
        self._repos.pop(did, None)
        self._keys.pop(did, None)
