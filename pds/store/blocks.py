"""A content-addressed block store: one file per block, named by its CID.

`blocks/<xx>/<cid>` where `xx` is the CID's last two characters (256 shards, uniform over
the hash, like git's `objects/ab/`). A file that exists is already right, so writes are
idempotent; a block is written under a temporary name and renamed, so a reader never sees
part of one.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path

from cbrrr import CID

from ..repo.codec import cid_str
from .files import write_file


class _BlockCache:
    """A bounded LRU of small block bytes, shared by every repo in the process."""

    def __init__(self, max_bytes: int, max_block: int = 16384) -> None:
        self.max_bytes = max_bytes
        self.max_block = max_block
        self.size = 0
        self.items: OrderedDict[bytes, bytes] = OrderedDict()

    def get(self, key: bytes) -> bytes | None:
        data = self.items.get(key)
        if data is not None:
            self.items.move_to_end(key)
        return data

    def put(self, key: bytes, data: bytes) -> None:
        if len(data) > self.max_block or key in self.items:
            return
        self.items[key] = data
        self.size += len(data)
        while self.size > self.max_bytes:
            _k, old = self.items.popitem(last=False)
            self.size -= len(old)


_CACHE = _BlockCache(16 * 1024 * 1024)


def shard_path(root: Path, cid: str) -> Path:
    """Where the object named `cid` lives under `root`."""
    return root / cid[-2:] / cid


class BlockStore:
    """Blocks of one account, under `root`, staged through `tmp`."""

    def __init__(self, root: Path, tmp: Path) -> None:
        self.root = root
        self.tmp = tmp

    def path(self, cid: CID) -> Path:
        return shard_path(self.root, cid_str(cid))

    def get(self, cid: CID) -> bytes:
        """A block's bytes; KeyError when absent. Small blocks are cached per process: a
        block never changes, so a cached one is always right."""
        data = _CACHE.get(cid.cid_bytes)
        if data is not None:
            return data
        try:
            with open(self.path(cid), "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise KeyError(cid) from None
        _CACHE.put(cid.cid_bytes, data)
        return data

    def has(self, cid: CID) -> bool:
        return self.path(cid).exists()

    def put_many(self, blocks: Iterable[tuple[CID, bytes]], overwrite: bool = False) -> list[Path]:
        """Write blocks that are not there yet (all of them with `overwrite`), without
        fsync: the caller's journal makes them durable. Returns the paths written."""
        written = []
        for cid, data in blocks:
            path = self.path(cid)
            if not overwrite and path.exists():
                continue
            try:
                write_file(path, data, self.tmp, durable=False)
            except FileNotFoundError:
                path.parent.mkdir(parents=True, exist_ok=True)
                write_file(path, data, self.tmp, durable=False)
            written.append(path)
        return written

    def delete(self, cid: CID) -> None:
        try:
            os.unlink(self.path(cid))
        except FileNotFoundError:
            pass

    def iter_cids(self) -> Iterable[str]:
        """Every stored block's CID string (for offline checks)."""
        if not self.root.is_dir():
            return
        for shard in sorted(os.listdir(self.root)):
            d = self.root / shard
            if d.is_dir():
                yield from sorted(os.listdir(d))
