"""The firehose event log: `seq/<shard>/<seq>` files holding exact frame bytes.

    seq/LOCK                  flock: seq allocation, one writer at a time
    seq/HEAD                  the highest seq written (a hint; the files are the truth)
    seq/CHECKPOINT            events up to here have their repo writes flushed to disk
    seq/<seq // 100000>/<seq> one event (16-digit, zero-padded names sort in seq order)

An event is fsynced (file and directory) before its seq is published in HEAD, so no
reader ever sees a seq whose event could still vanish. Gaps are possible (a crash
between allocation and write); reordering is not.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

from .files import ensure_dir, flock, fsync_dir, read_file, replace_in_place, write_file
from .layout import CHECKPOINT, CHECKPOINT_LOCK, SEQ_HEAD, SEQ_HEAD_SPARE, SEQ_LOCK

SHARD = 100_000


class EventLog:
    """The seq/ directory."""

    def __init__(self, root: Path, tmp: Path) -> None:
        self.root = root
        self.tmp = tmp

    def path(self, seq: int) -> Path:
        return self.root / f"{seq // SHARD:08d}" / f"{seq:016d}"

    def lock(self):
        return flock(self.root / SEQ_LOCK)

    @property
    def checkpoint_lock(self) -> Path:
        """flock: one worker at a time advances the checkpoint."""
        return self.root / CHECKPOINT_LOCK

    # --- writing ------------------------------------------------------------------------

    def append(self, make_frame: Callable[[int], bytes]) -> int:
        """Allocate the next seq, write its frame durably, publish it; returns the seq."""
        ensure_dir(self.root)
        with self.lock():
            seq = self._head_locked() + 1
            data = make_frame(seq)
            path = self.path(seq)
            if not path.parent.exists():
                path.parent.mkdir()
                fsync_dir(self.root)
            write_file(path, data, self.tmp, durable=True)
            replace_in_place(str(self.root / SEQ_HEAD), str(self.root / SEQ_HEAD_SPARE),
                             str(seq).encode(), self.tmp)
            return seq

    def _head_locked(self) -> int:
        data = read_file(self.root / SEQ_HEAD)
        head = int(data) if data else 0
        # HEAD is written after the event: after a crash the files may be ahead of it.
        while self.path(head + 1).exists():
            head += 1
        return head

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

    def events(self, after: int = 0, upto: int | None = None) -> Iterator[tuple[int, bytes]]:
        """(seq, frame) with after < seq <= upto, ascending; gaps skipped."""
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
        seq is at most `keep_after`; returns how many."""
        removed = 0
        for shard in self.shards():
            d = self.root / f"{shard:08d}"
            names = sorted(n for n in os.listdir(d) if n.isdigit())
            for name in names:
                seq = int(name)
                if seq > keep_after:
                    return removed
                p = d / name
                try:
                    if p.stat().st_mtime >= older_than:
                        return removed
                    os.unlink(p)
                    removed += 1
                except FileNotFoundError:
                    continue
            if not any(n.isdigit() for n in os.listdir(d)) and shard != self.head() // SHARD:
                try:
                    d.rmdir()
                except OSError:
                    pass
        return removed
