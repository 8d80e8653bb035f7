"""The change clock, and reads served from memory when memory is provably current.

Every worker process keeps small caches of what reads need (an account record, a repo's
HEAD, blocks). Blocks never change, so a cached block is always right; an account record
or a HEAD can change in any process. To know without touching the disk whether they did,
every process maps one small file, `tmp/CHANGES`, shared: whoever changes a HEAD or an
account record writes a fresh random stamp into it (after the change, before the change
is acknowledged). A cache entry remembers the stamp read just before its own disk read;
while the mapped stamp is still that one, nothing it depends on has changed since.

The file holds one stamp per kind of thing cached (`ACCOUNTS`, `HEADS`): a commit, many
a second, moves only the HEADs' stamp, so the account records that every authenticated
request reads stay served from memory across commits (one stamp for both made every
request after a write read account.json again, in a worker thread).

A stamp is random rather than a counter, so two processes ticking at once need no lock:
each leaves a value no cache entry holds (a torn read is likewise one no entry holds).

`cached_only()` marks a read that runs on the event loop: inside it, any store read that
would need the disk raises `WouldBlock` instead, and the caller runs the read again in a
thread. So a hot read costs no thread hop, and a cold one never blocks the loop.
"""

from __future__ import annotations

import contextlib
import contextvars
import mmap
import os
from collections.abc import Iterator
from pathlib import Path

STAMP_SIZE = 16
# The slots of the file, one stamp each: what each kind of cached read depends on.
ACCOUNTS = 0  # account records (account.json)
HEADS = 1  # repo HEADs
SLOTS = 2

_CACHED_ONLY: contextvars.ContextVar[bool] = contextvars.ContextVar("cached_only",
                                                                    default=False)


class WouldBlock(Exception):
    """A read inside `cached_only()` needed the disk."""


@contextlib.contextmanager
def cached_only() -> Iterator[None]:
    """Within this block, store reads answer from memory or raise `WouldBlock`."""
    token = _CACHED_ONLY.set(True)
    try:
        yield
    finally:
        _CACHED_ONLY.reset(token)


def need_disk() -> None:
    """Called by a store read before it touches the disk: refuses inside `cached_only`."""
    if _CACHED_ONLY.get():
        raise WouldBlock


class ChangeClock:
    """The mapped stamp file of one data dir."""

    def __init__(self, path: Path) -> None:
        self._map: mmap.mmap | None = None
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:  # a read-only data dir (a backup being verified): no caching
            return
        try:
            if os.fstat(fd).st_size < STAMP_SIZE * SLOTS:
                os.ftruncate(fd, STAMP_SIZE * SLOTS)
            self._map = mmap.mmap(fd, STAMP_SIZE * SLOTS)
        except OSError:
            self._map = None
        finally:
            os.close(fd)

    def stamp(self, slot: int) -> bytes | None:
        """The current stamp of `slot` (a memory read, no system call); None when
        unmapped, which no cache entry ever matches."""
        m = self._map
        start = slot * STAMP_SIZE
        return None if m is None else m[start:start + STAMP_SIZE]

    def tick(self, slot: int | None = None) -> None:
        """Say that what `slot`'s cached reads depend on has just changed (None: every
        slot)."""
        m = self._map
        if m is None:
            return
        for i in range(SLOTS) if slot is None else (slot,):
            m[i * STAMP_SIZE:(i + 1) * STAMP_SIZE] = os.urandom(STAMP_SIZE)
