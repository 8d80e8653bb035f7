"""The firehose event log: `seq/<shard>/<seq>` files holding exact frame bytes.

    seq/LOCK                  flock: seq allocation, one writer at a time
    seq/HEAD                  the highest seq written (a hint; the files are the truth)
    seq/CHECKPOINT            events up to here have their repo writes flushed to disk
    seq/FLOOR                 "<floor> <head then>", one line per restore (see below)
    seq/<seq // 100000>/<seq> one event (16-digit, zero-padded names sort in seq order)

An event is fsynced (file and directory) before its seq is published in HEAD, so no
reader ever sees a seq whose event could still vanish. Gaps are possible (a crash
between allocation and write); reordering is not.

The floor: seq is the previous one + 1, but never below the floor. A restored data dir
(restored.py) has lost the events emitted after its backup was taken, and relays drop a
host whose seq goes back, so a restore raises the floor above every seq emitted before
(to the current time in microseconds), and the next event jumps there. FLOOR is written
durably before any event above the last one, and `append` reads it under the seq lock:
the jump holds across restarts and kill -9, with nothing kept outside the data dir.
Each line also records the head when it was raised: seqs between the two were never
emitted by this data dir's history (backup.py refuses a backup that holds some).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from .files import (
    create_files,
    ensure_dir,
    flock,
    fsync_dir,
    read_file,
    replace_in_place,
    write_file,
)
from .layout import CHECKPOINT, CHECKPOINT_LOCK, SEQ_FLOOR, SEQ_HEAD, SEQ_HEAD_SPARE, SEQ_LOCK

SHARD = 100_000
# Consumers hold seq as an int64, JavaScript ones as a double: keep it exactly representable
# (a floor in microseconds of Unix time stays below this until the year 2255).
MAX_SEQ = 2**53 - 1
# Missing seqs in a row after which a range read stops trying numbers one by one and lists
# the shard directories for the next event (a floor's jump, pruned events).
_SKIP_AFTER = 8
# Missing seqs in a row that a prune passes by number before it lists directories.
_PRUNE_PROBES = 4096
# Per seq/ directory (path and inode: a data dir made again at the same path is another
# log): the lowest seq that may still exist after this process's last prune there (seqs
# only rise, so every event below it is gone for good).
_prune_from: dict[tuple[str, int], int] = {}


class _Queued:
    """An event waiting in `EventLog.append`: its frame maker, then its seq or error."""

    __slots__ = ("make_frame", "seq", "error", "done", "wake")

    def __init__(self, make_frame: Callable[[int], bytes]) -> None:
        self.make_frame = make_frame
        self.seq = 0
        self.error: BaseException | None = None
        self.done = False
        # Held from the start; released once to wake the waiting thread (done, or lead).
        self.wake = threading.Lock()
        self.wake.acquire()


class EventLog:
    """The seq/ directory."""

    def __init__(self, root: Path, tmp: Path) -> None:
        self.root = root
        self.tmp = tmp
        # The append path works on strings: pathlib's joins cost more than the syscalls.
        self._dir = str(root)
        self._lock_file = os.path.join(self._dir, SEQ_LOCK)
        self._head_file = os.path.join(self._dir, SEQ_HEAD)
        self._head_spare = os.path.join(self._dir, SEQ_HEAD_SPARE)
        self._ready = False         # seq/ exists (it is never removed under a server)
        self._shard_seen = -1       # the last shard directory known to exist
        # FLOOR rises only through raise_floor, which runs on a data dir no server runs
        # on (restored.py) or through this object: read once, then kept.
        self._floor: int | None = None
        # Group commit (`append`): events waiting to be written, and whether a thread
        # of this process is writing (the others queue behind it).
        self._queue: list[_Queued] = []
        self._queue_lock = threading.Lock()
        self._writing = False

    def path(self, seq: int) -> Path:
        return Path(self._file(seq))

    def _file(self, seq: int) -> str:
        return f"{self._dir}/{seq // SHARD:08d}/{seq:016d}"

    def lock(self) -> contextlib.AbstractContextManager[int]:
        """The seq-allocation lock (one event written at a time, across processes)."""
        return flock(self._lock_file)

    @property
    def checkpoint_lock(self) -> Path:
        """flock: one worker at a time advances the checkpoint."""
        return self.root / CHECKPOINT_LOCK

    # --- writing ------------------------------------------------------------------------

    def append(self, make_frame: Callable[[int], bytes]) -> int:
        """Allocate the next seq, write its frame durably, publish it; returns the seq.

        Group commit: threads of this process that append while another one is writing
        wait their turn with their frame makers queued, and the next writer takes every
        queued one in a single hold of the seq lock: frames made and written in queue
        order, each file fsynced, HEAD moved once past them all. Under concurrent writes
        one journal commit then carries several events instead of one each (the seq
        lock, held across the fsync, is what concurrent writers queue on)."""
        if not self._ready:
            ensure_dir(self.root)
            self._ready = True
        mine = _Queued(make_frame)
        with self._queue_lock:
            self._queue.append(mine)
            lead = not self._writing
            self._writing = True
        if not lead:
            mine.wake.acquire()  # released once written, or to make this thread lead
        if not mine.done:
            self._lead()
        if mine.error is not None:
            raise mine.error
        return mine.seq

    def _lead(self) -> None:
        """As the one writer of this process: write what is queued, then hand the lead to
        the first event queued since (its thread wakes to write the next batch), or stand
        down. Each waiting thread sleeps on its own lock, so a batch's threads all wake
        at once, and a batch is never waiting on the previous one's threads."""
        try:
            self._write_queued()
        finally:
            with self._queue_lock:
                if self._queue:
                    self._queue[0].wake.release()
                else:
                    self._writing = False

    def _write_queued(self) -> None:
        """As the writer: take the seq lock, then every queued event (those queued while
        the lock was awaited too), and write them. Errors are handed to the events they
        stop, never raised here: each thread raises its own."""
        batch: list[_Queued] = []
        try:
            with self.lock():
                batch = self._take_queue()
                head = seq = self._head_locked()
                files = []
                for q in batch:
                    try:
                        if seq + 1 > MAX_SEQ:
                            raise ValueError(f"seq {seq + 1} is past {MAX_SEQ}, beyond what "
                                             "consumers read")
                        data = q.make_frame(seq + 1)
                    except Exception as e:  # this event only; no seq is used up
                        q.error = e
                        continue
                    seq += 1
                    q.seq = seq
                    self._ensure_shard(seq // SHARD)
                    files.append((self._file(seq), data))
                if seq > head:
                    create_files(files, self.tmp, self._remake_shard)
                    replace_in_place(self._head_file, self._head_spare, str(seq).encode(),
                                     self.tmp)
        except BaseException as e:
            if not batch:  # the seq lock failed: so does every queued event, ours too
                batch = self._take_queue()
            for q in batch:
                if q.error is None:
                    q.error, q.seq = e, 0
        finally:
            for q in batch:
                q.done = True
                q.wake.release()

    def _take_queue(self) -> list[_Queued]:
        with self._queue_lock:
            batch, self._queue = self._queue, []
        return batch

    def _remake_shard(self, path: str) -> None:
        """A shard directory pruned away since it was last seen: make it again."""
        self._shard_seen = -1
        self._ensure_shard(int(os.path.basename(path)))

    def _ensure_shard(self, shard: int) -> None:
        """Create the shard directory (durably) unless it is known to exist."""
        if shard == self._shard_seen:
            return
        d = f"{self._dir}/{shard:08d}"
        if not os.path.isdir(d):
            os.mkdir(d)
            fsync_dir(self._dir)
        self._shard_seen = shard

    def _head_locked(self, cached_floor: bool = True) -> int:
        data = read_file(self._head_file)
        head = max(int(data) if data else 0, self.floor(cached=cached_floor) - 1)
        # HEAD is written after the event: after a crash the files may be ahead of it.
        while os.path.exists(self._file(head + 1)):
            head += 1
        return head

    # --- the floor ------------------------------------------------------------------------

    def floors(self) -> list[tuple[int, int]]:
        """(floor, head when it was raised) per raise, oldest first: seqs strictly between
        the two were never emitted here."""
        out = []
        for line in (read_file(self.root / SEQ_FLOOR) or b"").decode().splitlines():
            parts = line.split()
            if len(parts) == 2 and all(p.isdigit() for p in parts):
                out.append((int(parts[0]), int(parts[1])))
        return out

    def floor(self, cached: bool = False) -> int:
        """The lowest seq the next event may take (0: none set); `cached`: as this object
        last read or raised it."""
        if not cached or self._floor is None:
            self._floor = max((f for f, _ in self.floors()), default=0)
        return self._floor

    def raise_floor(self, floor: int) -> int:
        """Make every later event's seq at least `floor` (or above the last event, if that
        is higher); returns the floor in force. The floor is durable before this returns,
        so before any event above it; HEAD then says floor - 1 (a consumer whose cursor
        is anywhere below the floor is not "in the future")."""
        ensure_dir(self.root)
        with self.lock():
            head = self._head_locked(cached_floor=False)
            floor = max(floor, head + 1)
            if floor > MAX_SEQ:
                raise ValueError(f"seq floor {floor} is past {MAX_SEQ}")
            old = read_file(self.root / SEQ_FLOOR) or b""
            if old and not old.endswith(b"\n"):
                old += b"\n"
            write_file(self.root / SEQ_FLOOR, old + f"{floor} {head}\n".encode(), self.tmp,
                       durable=True)
            write_file(self.root / SEQ_HEAD, str(floor - 1).encode(), self.tmp, durable=True)
            self._floor = floor
            return floor

    # --- reading ------------------------------------------------------------------------

    def head(self) -> int:
        """The highest published seq (0 when empty)."""
        data = read_file(self.root / SEQ_HEAD)
        return int(data) if data else 0

    def read(self, seq: int) -> bytes | None:
        return read_file(self.path(seq))

    def shards(self) -> list[int]:
        try:
            return sorted(int(n) for n in os.listdir(self.root) if n.isdigit())
        except FileNotFoundError:
            return []

    def seqs(self, after: int = 0, upto: int | None = None) -> Iterator[int]:
        """Existing seqs in (after, upto], ascending, found by listing shard directories."""
        for shard in self.shards():
            if (shard + 1) * SHARD <= after + 1 or (upto is not None and shard * SHARD > upto):
                continue
            names = sorted(os.listdir(self.root / f"{shard:08d}"))
            for name in names:
                if not name.isdigit():
                    continue
                seq = int(name)
                if seq > after and (upto is None or seq <= upto):
                    yield seq

    def read_range(self, after: int, upto: int,
                   limit: int | None = None) -> tuple[list[tuple[int, bytes]], int]:
        """Events with after < seq <= upto, ascending, at most `limit` of them; and the seq
        up to which the range has been read (`upto`, or the last event's when `limit` cut
        it short)."""
        out: list[tuple[int, bytes]] = []
        for seq, data in self._by_number(after, upto):
            out.append((seq, data))
            if limit is not None and len(out) >= limit:
                return out, seq
        return out, upto

    def _by_number(self, after: int, upto: int) -> Iterator[tuple[int, bytes]]:
        """(seq, frame) with after < seq <= upto, ascending. Events are dense, so they are
        read by number, but a run of missing seqs (a floor's jump, which may span 10^15
        numbers; pruned events) is crossed by listing the shard directories for the next
        event."""
        seq, misses = after + 1, 0
        while seq <= upto:
            data = self.read(seq)
            if data is not None:
                yield seq, data
                seq, misses = seq + 1, 0
                continue
            misses += 1
            seq += 1
            if misses >= _SKIP_AFTER:
                nxt = next(self.seqs(seq - 1, upto), None)
                if nxt is None:
                    return
                seq, misses = nxt, 0

    def events(self, after: int = 0, upto: int | None = None) -> Iterator[tuple[int, bytes]]:
        """(seq, frame) with after < seq <= upto, ascending; gaps skipped. Up to a known
        seq they are read by number (a checkpoint every two seconds must not list a shard
        of 100k events to find none); without one, every file there is listed."""
        if upto is not None:
            yield from self._by_number(after, upto)
            return
        for seq in self.seqs(after, upto):
            data = self.read(seq)
            if data is not None:
                yield seq, data

    def oldest(self) -> int | None:
        return next(self.seqs(), None)

    # --- checkpoint and pruning ------------------------------------------------------------

    def checkpoint(self) -> int:
        data = read_file(self.root / CHECKPOINT)
        return int(data) if data else 0

    def set_checkpoint(self, seq: int) -> None:
        write_file(self.root / CHECKPOINT, str(seq).encode(), self.tmp, durable=True)

    def prune(self, older_than: float, keep_after: int) -> int:
        """Delete events whose file is older than `older_than` (epoch seconds) and whose
        seq is at most `keep_after`, oldest first; returns how many.

        Runs every few seconds, idle or not, so it starts where the last prune of this
        log stopped (remembered per process) and goes by number, stopping at the first
        event it keeps: a round with nothing to prune looks at one file, where listing a
        shard of 100k events took ~75 ms. Missing seqs are passed by number too (events
        the other worker pruned since: ~2 us each), a long run of them (a floor's jump)
        by listing, as in `read_range`."""
        try:
            key = (self._dir, os.stat(self._dir).st_ino)
        except FileNotFoundError:
            return 0
        seq = _prune_from.get(key)
        if seq is None:
            seq = self.oldest()
            if seq is None:
                return 0
        removed, misses, first_shard = 0, 0, seq // SHARD
        while seq <= keep_after:
            try:
                if os.stat(self._file(seq)).st_mtime >= older_than:
                    break
                os.unlink(self._file(seq))
                removed += 1
            except FileNotFoundError:
                misses += 1
                if misses >= _PRUNE_PROBES:
                    nxt = next(self.seqs(seq, keep_after), None)
                    if nxt is None:
                        seq = keep_after + 1
                        break
                    seq, misses = nxt, 0
                    continue
            else:
                misses = 0
            seq += 1
        _prune_from[key] = seq
        if seq // SHARD > first_shard:
            self._drop_empty_shards(min(seq // SHARD, self.head() // SHARD))
        return removed

    def _drop_empty_shards(self, below: int) -> None:
        """Remove the shard directories below `below` that pruning emptied (never the
        head's: its writer remembers it exists)."""
        for shard in self.shards():
            if shard < below:
                with contextlib.suppress(OSError):  # not empty after all
                    os.rmdir(f"{self._dir}/{shard:08d}")
