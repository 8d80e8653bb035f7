"""A content-addressed block store: one file per block, named by its CID.

`blocks/<xx>/<cid>` where `xx` is the CID's last two characters (256 shards, uniform over
the hash, like git's `objects/ab/`).

A new block is written in place, created with O_EXCL: a file that exists is already right
(or, after a crash, is rewritten by recovery), so writes are idempotent, and there is no
temporary file to rename. That is safe because a block file is only ever created after the
write-ahead record that carries the same bytes is durable (the repo journal or the firehose
event): a crash that leaves a block file short also leaves the record that recovery (and
the next writer's roll-forward) replays with `overwrite`, which does go through a temporary
file and a rename. Until its commit moves HEAD nothing reachable names a block being
written, so readers that start from HEAD never see one in part; a reader of arbitrary CIDs
(`getBlocks`) uses `get_checked`.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path

from cbrrr import CID

from ..repo.codec import cid_for, cid_str
from .files import read_whole, write_all, write_file


class _BlockCache:
    """A bounded LRU of small block bytes, shared by every repo in the process. Reads
    run in worker threads, so every operation holds a lock: an LRU update is several
    dict operations, and a racing eviction would otherwise raise KeyError."""

    def __init__(self, max_bytes: int, max_block: int = 16384) -> None:
        self.max_bytes = max_bytes
        self.max_block = max_block
        self.size = 0
        self.items: OrderedDict[bytes, bytes] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key: bytes) -> bytes | None:
        with self.lock:
            data = self.items.get(key)
            if data is not None:
                self.items.move_to_end(key)
            return data

    def drop(self, key: bytes) -> None:
        with self.lock:
            data = self.items.pop(key, None)
            if data is not None:
                self.size -= len(data)

    def put(self, key: bytes, data: bytes) -> None:
        if len(data) > self.max_block:
            return
        with self.lock:
            if key in self.items:
                return
            self.items[key] = data
            self.size += len(data)
            self._evict()

    def _evict(self) -> None:
        """Drop the least recently used blocks until the cache fits (lock held)."""
        while self.size > self.max_bytes and self.items:
            _k, old = self.items.popitem(last=False)
            self.size -= len(old)


_CACHE = _BlockCache(16 * 1024 * 1024)


def size_block_cache(max_bytes: int) -> None:
    """How many bytes of blocks this process caches (`PDS_CACHE_MB`). In memory a small
    block costs about 150 bytes more than its length (its key, the LRU's links)."""
    with _CACHE.lock:
        _CACHE.max_bytes = max_bytes
        _CACHE._evict()


def shard_path(root: Path, cid: str) -> Path:
    """Where the object named `cid` lives under `root`."""
    return root / cid[-2:] / cid


_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL


class BlockStore:
    """Blocks of one account, under `root`, staged through `tmp`."""

    def __init__(self, root: Path, tmp: Path) -> None:
        self.root = root
        self.tmp = tmp
        self._prefix = str(root) + os.sep  # paths as strings: blocks are the hot path

    def _path(self, cid: CID) -> str:
        name = cid_str(cid)
        return f"{self._prefix}{name[-2:]}/{name}"

    def path(self, cid: CID) -> Path:
        return Path(self._path(cid))

    def get(self, cid: CID) -> bytes:
        """A block's bytes; KeyError when absent. Small blocks are cached per process: a
        block never changes, so a cached one is always right."""
        data = _CACHE.get(cid.cid_bytes)
        if data is None:
            data = self.read(cid)
            _CACHE.put(cid.cid_bytes, data)
        return data

    def read(self, cid: CID) -> bytes:
        """A block's bytes from its file, bypassing the cache (for whole-repo walks that
        would only evict what other reads need); KeyError when absent."""
        try:
            return read_whole(self._path(cid))
        except FileNotFoundError:
            raise KeyError(cid) from None

    def get_checked(self, cid: CID) -> bytes:
        """A block's bytes, hashed against its CID: for readers of arbitrary CIDs, which
        may name a block whose commit is still being written (KeyError until it is)."""
        data = _CACHE.get(cid.cid_bytes)
        if data is None:
            data = self.read(cid)
            if cid_for(data) != cid:
                raise KeyError(cid)
            _CACHE.put(cid.cid_bytes, data)
        return data

    def has(self, cid: CID) -> bool:
        return os.path.exists(self._path(cid))

    def put_many(self, blocks: Iterable[tuple[CID, bytes]], overwrite: bool = False) -> int:
        """Write blocks that are not there yet, without fsync: the caller's write-ahead
        record already holds them (see the module docstring). With `overwrite` (recovery)
        every block is replaced atomically, mending any a crash left short. Returns how
        many files were written."""
        written = 0
        for cid, data in blocks:
            path = self._path(cid)
            if overwrite:
                self._replace(path, data)
                _CACHE.drop(cid.cid_bytes)  # in case a short copy was read before
                written += 1
            elif self._create(path, data):
                written += 1
        return written

    def _create(self, path: str, data: bytes) -> bool:
        try:
            fd = os.open(path, _NEW, 0o644)
        except FileExistsError:
            return False
        except FileNotFoundError:  # a new shard directory
            os.makedirs(os.path.dirname(path), exist_ok=True)
            try:
                fd = os.open(path, _NEW, 0o644)
            except FileExistsError:
                return False
        try:
            write_all(fd, data)
        finally:
            os.close(fd)
        return True

    def _replace(self, path: str, data: bytes) -> None:
        try:
            write_file(path, data, self.tmp, durable=False)
        except FileNotFoundError:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            write_file(path, data, self.tmp, durable=False)

    def delete(self, cid: CID) -> None:
        try:
            os.unlink(self._path(cid))
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
