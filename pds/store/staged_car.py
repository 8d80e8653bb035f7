"""A CAR received into the data dir's `tmp/` (importRepo's body), read back by offset.

The body is written as it arrives (never held whole in memory) to
`tmp/import-<pid>-<random>`, refused past a size limit; `index` then reads it once
(`repo.repo_import.index_car`) and `get` reads single blocks at their offsets. The file
is removed when the import is done or refused (`close`), and by start-up's clean-up when
its process was killed.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

from cbrrr import CID

from ..repo.repo_import import CarIndex, index_car
from .files import discard, ensure_dir, write_all


class CarTooLarge(Exception):
    """The CAR is over the import size limit."""


class StagedCar:
    """One CAR being received or read (see the module docstring)."""

    def __init__(self, tmp: Path, limit: int | None) -> None:
        ensure_dir(tmp)
        self.path = tmp / f"import-{os.getpid()}-{secrets.token_hex(8)}"
        self.limit = limit
        self.size = 0
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        self.index: CarIndex | None = None

    def write(self, chunk: bytes) -> None:
        """Append received bytes; CarTooLarge past the limit (nothing more is written)."""
        self.size += len(chunk)
        if self.limit is not None and self.size > self.limit:
            raise CarTooLarge()
        write_all(self.fd, chunk)

    def read_index(self) -> CarIndex:
        """Index the received CAR (InvalidData when it is not a good one)."""
        with open(self.path, "rb") as f:
            self.index = index_car(f)
        return self.index

    def get(self, cid: CID) -> bytes:
        """A block of the CAR; KeyError when it has none of that CID."""
        assert self.index is not None, "read_index first"
        offset, length = self.index.spans[cid]
        data = os.pread(self.fd, length, offset)
        if len(data) != length:
            raise KeyError(cid)
        return data

    def blocks(self, cids: list[CID]) -> Iterator[tuple[CID, bytes]]:
        """(cid, bytes) of the given blocks, read one at a time."""
        for cid in cids:
            yield cid, self.get(cid)

    def close(self) -> None:
        """Remove the file (whatever became of the import)."""
        discard(self.fd, self.path)
        self.fd = -1
