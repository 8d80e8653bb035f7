"""A per-repository write-ahead journal.

A commit is durable once its new blocks are appended to the repo's journal and flushed
(one fdatasync, not one per block). The block files and HEAD are then written without
fsync; a checkpoint later flushes them and empties the journal. After a crash, the
entries are replayed.

The journal is one append-only file, `journal.log`, of entries

    magic "PJ1\\n" | payload length (u32 LE) | CRC-32 of the payload (u32 LE) | payload

where the payload is the rev, a newline, and a CAR whose root is the commit. Appending to
one file creates and deletes no inode per commit. An entry cut short by a crash was never
acknowledged; reading skips anything that is not a whole entry with the right CRC and
looks for the next magic, so an acknowledged entry is found even behind a torn one.

Entries of the older layout (`journal/<rev>.car`, one file each) are still read and
removed, for data dirs written by earlier versions.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

from cbrrr import CID

from ..repo.car import car_bytes, read_car_blocks
from ..repo.codec import InvalidData
from .files import fsync_dir, libc, write_all
from .layout import JOURNAL as LOG
from .layout import JOURNAL_LEGACY as LEGACY_DIR

MAGIC = b"PJ1\n"
_HEAD = struct.Struct("<4sII")


def syncfs(path: Path) -> None:
    """Flush every dirty file of the filesystem holding `path` (one call, not one per
    file); falls back to a global sync where syncfs is missing."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if getattr(libc, "syncfs", None) is None or libc.syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


Entry = tuple[str, CID, dict[CID, bytes]]


class Journal:
    """The journal of the repository in directory `root`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = str(root / LOG)
        self.legacy = root / LEGACY_DIR

    def append(self, rev: str, commit: CID, blocks: dict[CID, bytes]) -> None:
        """Durably record a commit's blocks before anything else of it is written."""
        payload = rev.encode() + b"\n" + car_bytes([commit], blocks.items())
        entry = _HEAD.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
            created = False
        except FileNotFoundError:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            created = True
        try:
            write_all(fd, entry)
            os.fdatasync(fd)
        finally:
            os.close(fd)
        if created:  # the new file's name must survive a crash too
            fsync_dir(self.root)

    def pending(self) -> bool:
        """True when there are entries a checkpoint has not yet covered."""
        try:
            if os.stat(self.path).st_size > 0:
                return True
        except FileNotFoundError:
            pass
        return self.legacy.is_dir() and any(n.endswith(".car") for n in os.listdir(self.legacy))

    def entries(self) -> Iterator[Entry]:
        """Every whole entry, oldest first: (rev, commit CID, blocks)."""
        yield from self._legacy_entries()
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return
        pos = 0
        while (pos := data.find(MAGIC, pos)) >= 0:
            entry = _parse(data, pos)
            if entry is None:
                pos += 1  # torn or not an entry after all: look for the next one
                continue
            size, parsed = entry
            if parsed is not None:
                yield parsed
            pos += size

    def revs(self) -> list[str]:
        """Revs of the entries (for tests and checks)."""
        return [rev for rev, _cid, _blocks in self.entries()]

    def clear(self) -> None:
        """Drop every entry: their contents are durable elsewhere (after a checkpoint)."""
        try:
            os.truncate(self.path, 0)
        except FileNotFoundError:
            pass
        if self.legacy.is_dir():
            for name in os.listdir(self.legacy):
                os.unlink(self.legacy / name)
            fsync_dir(self.legacy)

    def _legacy_entries(self) -> Iterator[Entry]:
        if not self.legacy.is_dir():
            return
        for name in sorted(os.listdir(self.legacy)):
            if not name.endswith(".car"):
                continue
            try:
                with open(self.legacy / name, "rb") as f:
                    root, blocks = read_car_blocks(f.read())
            except (OSError, InvalidData, ValueError):
                continue  # torn: its commit was never acknowledged
            if root is not None and root in blocks:
                yield name[:-4], root, blocks


def _parse(data: bytes, pos: int) -> tuple[int, Entry | None] | None:
    """The entry at `pos`: (its size, the entry or None when its CAR is unusable); None
    when no whole entry with a matching CRC starts there."""
    if pos + _HEAD.size > len(data):
        return None
    _magic, length, crc = _HEAD.unpack_from(data, pos)
    start = pos + _HEAD.size
    payload = data[start:start + length]
    if len(payload) != length or zlib.crc32(payload) != crc:
        return None
    rev, nl, car = payload.partition(b"\n")
    try:
        root, blocks = read_car_blocks(car)
        rev_s = rev.decode("ascii")
    except (InvalidData, ValueError):
        return _HEAD.size + length, None
    if not nl or root is None or root not in blocks:
        return _HEAD.size + length, None
    return _HEAD.size + length, (rev_s, root, blocks)
