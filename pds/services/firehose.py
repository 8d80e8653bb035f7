"""The firehose: sequencing events into the log, and delivery.

Writing: `Sequencer` is every server repo's write-ahead record. A `#commit` event holds
every new block of its commit, so writing it (one fsync) makes the commit durable; the
block files and HEAD follow without fsync. Rolling logged commits forward (recovery, the
redo of a dead writer's commit) and checkpoints are the store's (pds/store/recovery.py).

Delivery: a worker with subscribers watches `seq/` (inotify, read on its event loop).
When seq/HEAD moves, the worker's `Broadcaster` reads the new events once (in a thread)
and offers the stored bytes to every live subscriber's bounded queue; a subscriber whose
queue is full gets `ConsumerTooSlow` and is closed. A worker without subscribers holds
no watch, so a commit costs it nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from ..repo import events as ev
from ..store.dirwatch import DirWatch
from ..store.files import read_file, write_file
from ..store.layout import LAST_WRITE, SEQ_HEAD
from ..store.recovery import LogWriteAhead
from ..store.repo import CommitResult, Repo, RepoError
from ..store.seqlog import EventLog
from .threads import blocking

log = logging.getLogger("pds.firehose")
T = TypeVar("T")

QUEUE_LIMIT = 500        # frames buffered per live subscriber before ConsumerTooSlow
RING = 2048              # recent frames kept in memory per worker
CRAWL_QUIET = 20 * 60    # a write after this much quiet re-announces us to relays


class TooBig(RepoError):
    """A commit too large for one firehose event."""


class Sequencer(LogWriteAhead):
    """Sequences events into the log; the server's write-ahead record for commits (whose
    roll-forward, `redo`, is the store's)."""

    def __init__(self, ctx: Any) -> None:
        super().__init__(EventLog(ctx.data.seq, ctx.data.tmp))
        self.ctx = ctx

    # --- WriteAhead -----------------------------------------------------------------------

    def check(self, result: CommitResult) -> None:
        if len(result.ops) > ev.MAX_OPS:
            raise TooBig(f"Too many writes in one commit (max {ev.MAX_OPS})")
        size = sum(len(b) + 40 for b in result.blocks.values())
        size += sum(len(b) + 40 for c, b in result.proof.items() if c not in result.blocks)
        if size > ev.MAX_BLOCKS_BYTES:
            raise TooBig(f"Commit is too large for the firehose ({size} bytes of blocks, "
                         f"max {ev.MAX_BLOCKS_BYTES})")

    def log(self, repo: Repo, result: CommitResult) -> bool:
        acct = self.ctx.accounts.get(repo.did)
        if acct is None or acct.get("status") is not None:
            # No #commit for inactive accounts (an import before activation): the repo's
            # own journal keeps it durable, and #sync announces the state on activation.
            return False
        self.commit(result)
        return True

    # --- events -------------------------------------------------------------------------

    def commit(self, result: CommitResult) -> int:
        return self.log_event(lambda seq: ev.frame("#commit", ev.commit_payload(seq, result)))

    def identity(self, did: str) -> int:
        acct = self.ctx.accounts.get(did)
        handle = acct["handle"] if acct else None
        return self.log_event(lambda seq: ev.frame("#identity",
                                                   ev.identity_payload(seq, did, handle)))

    def account(self, did: str, deleted: bool = False) -> int:
        acct = self.ctx.accounts.get(did)
        status = "deleted" if deleted or acct is None else acct.get("status")
        return self.log_event(lambda seq: ev.frame("#account",
                                                   ev.account_payload(seq, did, status)))

    def sync(self, did: str) -> int | None:
        repo = self.ctx.repo(did)
        head = repo.head()
        if head is None:
            return None
        block = repo.blocks.get(head.cid)
        return self.log_event(lambda seq: ev.frame(
            "#sync", ev.sync_payload(seq, did, head.cid, block, head.rev)))

    def log_event(self, make_frame: Callable[[int], bytes]) -> int:
        return self.seqlog.append(make_frame)


# --- delivery -------------------------------------------------------------------------------


class _End:
    """Queued last: the sender closes the WebSocket with `code` (None: the client left)."""

    def __init__(self, code: int | None) -> None:
        self.code = code


class Subscriber:
    """One WebSocket consumer: a bounded queue of frames and a sender draining it."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.queue: asyncio.Queue[bytes | _End] = asyncio.Queue(maxsize=QUEUE_LIMIT + 1)
        self.closing = False

    def end(self, code: int | None) -> None:
        """Stop sending: what is queued is dropped, then the sender closes with `code`."""
        self.closing = True
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(_End(code))

    def offer(self, data: bytes) -> None:
        if self.closing:
            return
        if self.queue.qsize() >= QUEUE_LIMIT:
            # Too slow: what is queued is dropped, the error goes out next, then close.
            self.closing = True
            while not self.queue.empty():
                self.queue.get_nowait()
            self.queue.put_nowait(ev.error_frame("ConsumerTooSlow",
                                                 "Stream consumer too slow"))
            return
        self.queue.put_nowait(data)


class Broadcaster:
    """Per worker: while it has subscribers, watches seq/, reads each new event once and
    fans it out. A worker with none holds no watch and does nothing per commit."""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        self.log = EventLog(ctx.data.seq, ctx.data.tmp)
        self.last = 0  # the seq delivered up to; valid while `ready` is set
        self.ring: deque[tuple[int, bytes]] = deque(maxlen=RING)
        self.live: set[Subscriber] = set()
        self.subs: set[Subscriber] = set()  # live and replaying
        self.stopping = False
        self.wake = asyncio.Event()
        self.ready = asyncio.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.watch: DirWatch | None = None
        self.reader: ThreadPoolExecutor | None = None
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        """In the worker's event loop, at start-up. The watch waits for a subscriber."""
        self.loop = asyncio.get_running_loop()

    async def attach(self, sub: Subscriber) -> None:
        """A subscriber arrives; the first one starts the watch. Returns once `last` is
        current (the watch was set up before HEAD was read: nothing after it is missed)."""
        self.subs.add(sub)
        if self.task is None:
            self.loop = asyncio.get_running_loop()
            # Its own thread for the reads: in the shared pool they would queue behind
            # this worker's commits (each waiting on locks and fsync) under a write load.
            self.reader = ThreadPoolExecutor(1, thread_name_prefix="firehose")
            self._open_watch()
            self.task = self.loop.create_task(self._run())
        await self.ready.wait()

    def detach(self, sub: Subscriber) -> None:
        """A subscriber has gone; after the last one the watch stops."""
        self.subs.discard(sub)
        self.live.discard(sub)
        if not self.subs:
            self._close()

    def _open_watch(self) -> None:
        assert self.loop is not None
        # On the loop: two system calls on a directory the kernel has cached (made
        # first in a data dir that has logged nothing yet), once per first subscriber.
        try:
            try:
                self.watch = DirWatch(self.log.root)
            except FileNotFoundError:
                self.log.root.mkdir(parents=True, exist_ok=True)
                self.watch = DirWatch(self.log.root)
        except OSError as e:  # inotify limits reached: the once-a-second look remains
            log.warning("no inotify watch on %s (%s): polling it", self.log.root, e)
            self.watch = None
            return
        self.loop.add_reader(self.watch.fileno(), self._readable)

    def _close(self) -> None:
        if self.watch is not None:
            if self.loop is not None:
                self.loop.remove_reader(self.watch.fileno())
            self.watch.close()
            self.watch = None
        if self.task is not None:
            self.task.cancel()
            self.task = None
        if self.reader is not None:
            self.reader.shutdown(wait=False)
            self.reader = None
        self.ready.clear()
        self.ring.clear()  # stale from here on: the next first subscriber starts afresh

    def _readable(self) -> None:
        # On the loop: draining the inotify queue is a read from memory, not the disk.
        # Only a new seq/HEAD (replaced by an exchange or a rename, after its event) is
        # news; the spare it swaps with is not.
        assert self.watch is not None
        names = self.watch.read()
        if names is None or SEQ_HEAD in names:
            self.wake.set()

    def shutdown(self) -> None:
        """The worker is stopping (SIGTERM): every subscriber is closed with 1001 (going
        away) now, not when the graceful timeout runs out."""
        self.stopping = True
        for sub in list(self.subs):
            sub.end(1001)

    async def stop(self) -> None:
        self.shutdown()
        # Let the senders finish their closing handshakes (briefly).
        deadline = time.monotonic() + 2.0
        while self.subs and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        self._close()

    async def _run(self) -> None:
        while True:
            try:
                self.last = await self._in_reader(self.log.head)
                break
            except Exception:  # noqa: BLE001 - subscribers wait until HEAD reads
                log.exception("firehose: reading seq/HEAD failed")
                await asyncio.sleep(1.0)
        self.ready.set()
        while True:
            # inotify is the signal; a look at HEAD every second is the safety net.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.wake.wait(), 1.0)
            self.wake.clear()
            try:
                await self.pump()
            except Exception:  # noqa: BLE001 - keep delivering after a bad read
                log.exception("firehose pump failed")

    async def pump(self) -> None:
        """Deliver the events published since `last` (read in a thread: HEAD and the
        event files are disk reads, however small)."""
        start = self.last
        head, frames = await self._in_reader(self._read_new, start)
        # No await from here on: registration and fan-out can't interleave.
        if self.last != start or head <= start:
            return
        for seq, data in frames:
            self.ring.append((seq, data))
            for sub in list(self.live):
                sub.offer(data)
        self.last = head

    async def _in_reader(self, fn: Callable[..., T], *args: Any) -> T:
        assert self.loop is not None and self.reader is not None
        return await self.loop.run_in_executor(self.reader, fn, *args)

    def _read_new(self, after: int) -> tuple[int, list[tuple[int, bytes]]]:
        head = self.log.head()
        if head <= after:
            return head, []
        return head, self.log.read_range(after, head)[0]

    def recent(self, after: int) -> list[tuple[int, bytes]] | None:
        """Frames after `after` from memory, or None if the ring doesn't reach back."""
        if not self.ring:
            return None if after < self.last else []
        if self.ring[0][0] > after + 1:
            return None
        return [(s, d) for s, d in self.ring if s > after]


async def _watch_disconnect(ws: Any, sub: Subscriber) -> None:
    """Subscribers send nothing we use, but reading is how a disconnect is noticed: a
    sender idle on its queue would otherwise hold the connection until the next event."""
    while True:
        try:
            await ws.receive_data()
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - a disconnect, or a text message (ignored)
            if ws.closed:
                break
    sub.end(None)


async def serve_subscriber(ctx: Any, ws: Any, cursor: int | None) -> None:
    """com.atproto.sync.subscribeRepos over an accepted WebSocket."""
    bc: Broadcaster = ctx.broadcaster
    sub = Subscriber(ws)
    if bc.stopping:
        await ws.close(1001)
        return
    watcher = asyncio.ensure_future(_watch_disconnect(ws, sub))
    try:
        await bc.attach(sub)
        await _serve(bc, sub, cursor)
    finally:
        watcher.cancel()
        bc.detach(sub)


def _cursor_facts(log_: EventLog, cursor: int) -> tuple[int, int | None]:
    """The log's head, and its oldest seq when `cursor` may be older than the log (None
    when not). While the event at or after the cursor is there, the cursor can't be
    older: `oldest` is skipped (it lists and sorts a shard, ~70 ms at 100k events)."""
    head = log_.head()
    if cursor > head or log_.path(cursor).exists() or log_.path(cursor + 1).exists():
        return head, None
    return head, log_.oldest()


async def _serve(bc: Broadcaster, sub: Subscriber, cursor: int | None) -> None:
    ws, log_ = sub.ws, bc.log
    if cursor is not None:
        head, oldest = await blocking(_cursor_facts, log_, cursor)
        if cursor > head:
            await ws.send_data(ev.error_frame("FutureCursor", "Cursor in the future."))
            await ws.close(1000)
            return
        pos = cursor
        if oldest is not None and cursor + 1 < oldest:
            await ws.send_data(ev.info_frame("OutdatedCursor",
                                             "Requested cursor exceeded limit. "
                                             "Possibly missing events"))
            pos = oldest - 1
        # Replay from memory or disk until level with the broadcaster, then go live with
        # no await in between: no gap, no duplicate at the switch.
        while pos < bc.last and not sub.closing:
            target = bc.last
            frames = bc.recent(pos)
            if frames is None:
                # By seq number, not `log_.events` (which lists and sorts the whole shard
                # directory, up to 100k names, for every chunk); 2000 events at a time,
                # and a restore's jump in seq is crossed in one step.
                frames, end = await blocking(log_.read_range, pos, target, 2000)
            else:
                end = target
            assert frames is not None
            for seq, data in frames:
                if seq > end or sub.closing:
                    break
                await ws.send_data(data)
            pos = end
    bc.live.add(sub)
    while True:
        item = await sub.queue.get()
        if isinstance(item, _End):
            if item.code is not None:
                await ws.close(item.code)
            return
        await ws.send_data(item)
        if sub.closing and sub.queue.empty():
            await ws.close(1008)  # that was ConsumerTooSlow
            return


# --- crawlers ---------------------------------------------------------------------------


class Crawlers:
    """Announce this PDS to relays (requestCrawl): at start-up, and on the first write
    after a quiet spell. Asynchronous: a write never waits for a relay."""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        self.path = ctx.data.seq / LAST_WRITE
        self.checked = 0.0

    def on_write(self) -> bool:
        """Note a write; True when it ends a quiet spell (the caller then announces)."""
        if not self.ctx.settings.crawlers:
            return False
        now = time.time()
        # Workers share the last-write time through a file; look at it at most once a
        # minute per worker, so a busy PDS pays nothing per write.
        if now - self.checked < 60:
            return False
        self.checked = now
        data = read_file(self.path)
        last = float(data) if data else 0.0
        write_file(self.path, str(now).encode(), self.ctx.data.tmp, durable=False)
        return now - last > CRAWL_QUIET

    async def announce(self) -> None:
        for crawler in self.ctx.settings.crawlers:
            url = crawler.rstrip("/") + "/xrpc/com.atproto.sync.requestCrawl"
            try:
                await self.ctx.http.post(url, json={"hostname": self.ctx.settings.host_only},
                                         timeout=10)
            except Exception as e:  # noqa: BLE001 - a relay being down is not our error
                log.warning("requestCrawl to %s failed: %s", crawler, e)
