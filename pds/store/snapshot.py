"""Export snapshots: a repository's whole CAR kept as one file, for fast exports.

Reading one file per block caps a whole-repository export at 10-25 MB/s (an open, a read
and a close for every record); streaming one file runs at page-cache speed. The snapshot,
`accounts/<did>/export.car`, is

    [CAR: header, commit, then the MST in pre-order with each node's records after it]
    [index: for every MST node, its CID and the offset and length of its subtree's span]
    [trailer: CAR length, index length, magic]

In that order every subtree's blocks are contiguous, so the snapshot of a newer commit is
built from the old one by walking the new tree and copying the span of each subtree the
old one already has: the work follows what changed, not the repository's size.

It is derived data, like git's packs beside the loose objects it never replaces: written
under a temporary name, fsynced and renamed (a reader sees a whole one or none), named by
the commit in its CAR header, and safe to delete (the next export rebuilds it from the
block files).
"""

from __future__ import annotations

import bisect
import os
import secrets
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

from cbrrr import CID

from ..repo import car
from ..repo.codec import InvalidData
from ..repo.mst_node import NodeLoader, Ref
from .files import discard, write_all

MAGIC = b"PDSXCAR1"
_TRAILER = struct.Struct("<QQ8s")
_ENTRY = struct.Struct("<36sQQ")  # node CID (sha2-256, 36 bytes), span offset, span length
_FLUSH = 1 << 20
CHUNK = 1 << 20


class Snapshot:
    """An open snapshot file (the descriptor keeps it readable even if a newer one
    replaces it meanwhile). Close it, or use it as a context manager."""

    def __init__(self, fd: int, car_len: int, index_len: int, root: CID) -> None:
        self.fd = fd
        self.car_len = car_len
        self.index_len = index_len
        self.root = root

    @classmethod
    def open(cls, path: Path) -> Snapshot | None:
        """The snapshot at `path`, or None when there is none or it is not one."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            size = os.fstat(fd).st_size
            if size < _TRAILER.size:
                raise ValueError("short")
            car_len, index_len, magic = _TRAILER.unpack(
                os.pread(fd, _TRAILER.size, size - _TRAILER.size))
            if magic != MAGIC or car_len + index_len + _TRAILER.size != size:
                raise ValueError("not a snapshot")
            if index_len % _ENTRY.size:
                raise ValueError("bad index")
            root = _car_root(os.pread(fd, min(car_len, car.MAX_HEADER + 10), 0))
        except (ValueError, InvalidData, OSError):
            os.close(fd)
            return None
        return cls(fd, car_len, index_len, root)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Snapshot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def chunks(self, size: int = CHUNK) -> Iterator[bytes]:
        """The CAR's bytes, in chunks of `size`; closes the snapshot at the end."""
        try:
            pos = 0
            while pos < self.car_len:
                data = os.pread(self.fd, min(size, self.car_len - pos), pos)
                if not data:
                    raise OSError(f"snapshot ended at {pos} of {self.car_len} bytes")
                pos += len(data)
                yield data
        finally:
            self.close()

    def index(self) -> _Index:
        """The node spans, in file order."""
        data = os.pread(self.fd, self.index_len, self.car_len)
        if len(data) != self.index_len:
            raise OSError("short snapshot index")
        return _Index(list(_ENTRY.iter_unpack(data)))


class _Index:
    """Node spans in file (pre-)order: (CID bytes, offset, length)."""

    def __init__(self, entries: list[tuple[bytes, int, int]]) -> None:
        self.entries = entries
        self.offsets = [e[1] for e in entries]
        self.by_cid = {e[0]: i for i, e in enumerate(entries)}

    def subtree(self, i: int) -> list[tuple[bytes, int, int]]:
        """Entry i and every entry inside its span (its subtree's nodes)."""
        _cid, off, length = self.entries[i]
        end = bisect.bisect_left(self.offsets, off + length, lo=i + 1)
        return self.entries[i:end]


def _car_root(head: bytes) -> CID:
    """The first root of a CAR from its first bytes (the header)."""
    roots, _blocks = car.read_car(head)
    if not roots:
        raise ValueError("CAR header without a root")
    return roots[0]


class _Writer:
    """Buffered writes to the new snapshot, with kernel-side copies from the old one."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = bytearray()
        self.pos = 0  # logical end: what is written plus what is buffered

    def add(self, data: bytes) -> None:
        self.buf += data
        self.pos += len(data)
        if len(self.buf) >= _FLUSH:
            self.flush()

    def flush(self) -> None:
        data = bytes(self.buf)
        self.buf.clear()
        write_all(self.fd, data)

    def copy(self, src: int, offset: int, length: int) -> None:
        self.flush()
        done = 0
        while done < length:
            try:
                n = os.copy_file_range(src, self.fd, length - done, offset + done)
            except OSError:  # not supported here: copy through memory
                n = 0
            if n <= 0:
                data = os.pread(src, min(length - done, _FLUSH), offset + done)
                if not data:
                    raise OSError("old snapshot ended early")
                write_all(self.fd, data)
                n = len(data)
            done += n
        self.pos += length


def build(path: Path, tmp: Path, commit_cid: CID, commit_block: bytes, data: Ref,
          loader: NodeLoader, get_block: Callable[[CID], bytes],
          old: Snapshot | None = None) -> Snapshot:
    """Write the snapshot of commit `commit_cid` (whose tree root is `data`) at `path`,
    copying unchanged subtrees from `old`, and return it open."""
    old_index = old.index() if old is not None else None
    tmp_path = os.path.join(tmp, f".snap.{os.getpid()}.{secrets.token_hex(8)}")
    fd = os.open(tmp_path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        w = _Writer(fd)
        w.add(car.header([commit_cid]))
        w.add(car.block(commit_cid, commit_block))
        entries: list[list] = []
        if data is not None:
            _emit(w, data, loader, get_block, old, old_index, entries)
        car_len = w.pos
        for cid_b, off, length in entries:
            w.add(_ENTRY.pack(cid_b, off, length))
        index_len = w.pos - car_len
        w.add(_TRAILER.pack(car_len, index_len, MAGIC))
        w.flush()
        os.fdatasync(fd)
        os.rename(tmp_path, path)
    except BaseException:
        discard(fd, tmp_path)
        raise
    return Snapshot(fd, car_len, index_len, commit_cid)


def _emit(w: _Writer, ref: Ref, loader: NodeLoader, get_block: Callable[[CID], bytes],
          old: Snapshot | None, old_index: _Index | None, entries: list[list]) -> None:
    """Write the subtree at `ref` in export order, recording every node's span."""
    cid_b = ref.cid_bytes if isinstance(ref, CID) else None
    i = old_index.by_cid.get(cid_b) if old_index is not None and cid_b else None
    if i is not None and old is not None and old_index is not None:
        # Unchanged since the old snapshot: copy its span, and its nodes' spans shifted.
        inner = old_index.subtree(i)
        shift = w.pos - inner[0][1]
        w.copy(old.fd, inner[0][1], inner[0][2])
        entries.extend([c, off + shift, length] for c, off, length in inner)
        return
    node = loader.load(ref)
    entry = None
    if len(node.cid.cid_bytes) == 36:
        entry = [node.cid.cid_bytes, w.pos, 0]
        entries.append(entry)
    start = w.pos
    w.add(car.block(node.cid, node.serialised))
    for val in node.vals:
        w.add(car.block(val, get_block(val)))
    for sub in node.subs:
        if sub is not None:
            _emit(w, sub, loader, get_block, old, old_index, entries)
    if entry is not None:
        entry[2] = w.pos - start
