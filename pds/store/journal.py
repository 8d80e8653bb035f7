"""A per-repository write-ahead journal.

A commit is durable once one file holding all its new blocks is fsynced (one fsync, not
one per block). The block files and HEAD are then written without fsync; a checkpoint
later flushes them and drops the journal entries. After a crash, entries are replayed.

Each entry is `journal/<rev>.car`: a CAR whose root is the commit.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path

from cbrrr import CID

from ..repo.car import car_bytes, read_car_blocks
from .files import fsync_dir, write_file

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def syncfs(path: Path) -> None:
    """Flush every dirty file of the filesystem holding `path` (one call, not one per
    file); falls back to a global sync where syncfs is missing."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if getattr(_libc, "syncfs", None) is None or _libc.syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


class Journal:
    """The journal directory of one repository."""

    def __init__(self, root: Path, tmp: Path) -> None:
        self.root = root
        self.tmp = tmp

    def append(self, rev: str, commit: CID, blocks: dict[CID, bytes]) -> None:
        """Durably record a commit's blocks before anything else of it is written."""
        data = car_bytes([commit], blocks.items())
        try:
            write_file(self.root / f"{rev}.car", data, self.tmp, durable=True)
        except FileNotFoundError:
            self.root.mkdir(parents=True, exist_ok=True)
            fsync_dir(self.root.parent)
            write_file(self.root / f"{rev}.car", data, self.tmp, durable=True)

    def revs(self) -> list[str]:
        """Revs with entries, oldest first (TIDs sort as strings)."""
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return []
        return sorted(n[:-4] for n in names if n.endswith(".car"))

    def read(self, rev: str) -> tuple[CID, dict[CID, bytes]] | None:
        """An entry's commit CID and blocks; None when it is torn (never acknowledged)."""
        try:
            with open(self.root / f"{rev}.car", "rb") as f:
                root, blocks = read_car_blocks(f.read())
        except (OSError, ValueError):
            return None
        if root is None or root not in blocks:
            return None
        return root, blocks

    def drop(self, revs: list[str]) -> None:
        """Remove entries whose contents are durable elsewhere."""
        for rev in revs:
            try:
                os.unlink(self.root / f"{rev}.car")
            except FileNotFoundError:
                pass
        if revs:
            fsync_dir(self.root)
