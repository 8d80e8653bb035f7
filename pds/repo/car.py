"""CAR v1: the repository export and sync format.

`varint(len(header)) header` then, per block, `varint(len(cid)+len(data)) cid data`, with
the header the DAG-CBOR map `{roots: [cid], version: 1}`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from typing import BinaryIO

from cbrrr import CID

from .codec import InvalidData, decode, encode_trusted

MAX_HEADER = 1 << 16
MAX_BLOCK = 8 << 20  # generous: records are <= 1 MB, nodes are small


def varint(n: int) -> bytes:
    """Unsigned LEB128."""
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def header(roots: list[CID]) -> bytes:
    """The length-prefixed CAR header."""
    h = encode_trusted({"roots": roots, "version": 1})
    return varint(len(h)) + h


def block(cid: CID, data: bytes) -> bytes:
    """One length-prefixed CAR section."""
    cb = cid.cid_bytes
    return varint(len(cb) + len(data)) + cb + data


def write_car(roots: list[CID], blocks: Iterable[tuple[CID, bytes]]) -> Iterator[bytes]:
    """Stream a CAR as chunks of bytes, coalescing small sections."""
    buf = bytearray(header(roots))
    for cid, data in blocks:
        buf += block(cid, data)
        if len(buf) >= 65536:
            yield bytes(buf)
            buf.clear()
    if buf:
        yield bytes(buf)


def car_bytes(roots: list[CID], blocks: Iterable[tuple[CID, bytes]]) -> bytes:
    """A whole CAR in memory (for small slices: firehose events, proofs)."""
    return b"".join(write_car(roots, blocks))


class _Reader:
    """A byte source over either an in-memory buffer or a binary stream."""

    def __init__(self, src: bytes | bytearray | memoryview | BinaryIO) -> None:
        if isinstance(src, bytes | bytearray | memoryview):
            self.buf = memoryview(src)
            self.stream = None
        else:
            self.buf = memoryview(b"")
            self.stream = src
        self.pos = 0

    def _fill(self, n: int) -> bool:
        """Make at least n bytes available from pos; False at a clean end of input."""
        while len(self.buf) - self.pos < n:
            if self.stream is None:
                return False
            chunk = self.stream.read(max(n, 1 << 16))
            if not chunk:
                return False
            self.buf = memoryview(bytes(self.buf[self.pos :]) + chunk)
            self.pos = 0
        return True

    def varint(self) -> int | None:
        """Read a varint; None at the end of input."""
        n = shift = 0
        first = True
        while True:
            if not self._fill(1):
                if first:
                    return None
                raise InvalidData("truncated varint in CAR")
            b = self.buf[self.pos]
            self.pos += 1
            n |= (b & 0x7F) << shift
            if not b & 0x80:
                if shift and not b:
                    raise InvalidData("non-minimal varint in CAR")
                return n
            shift += 7
            first = False
            if shift > 63:
                raise InvalidData("varint too long in CAR")

    def take(self, n: int) -> memoryview:
        if not self._fill(n):
            raise InvalidData("truncated CAR section")
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out


def _cid_len(section: memoryview) -> int:
    """Length of the binary CIDv1 at the start of a section."""
    if section[:1] != b"\x01":
        raise InvalidData("CAR block CID is not CIDv1")
    pos = 1
    for _ in range(3):  # codec, hash function, digest length
        n = shift = 0
        while True:
            if pos >= len(section):
                raise InvalidData("truncated CID in CAR")
            b = section[pos]
            pos += 1
            n |= (b & 0x7F) << shift
            if not b & 0x80:
                break
            shift += 7
    if pos + n > len(section):
        raise InvalidData("truncated CID in CAR")
    return pos + n


def read_car(
    src: bytes | BinaryIO, verify: bool = True
) -> tuple[list[CID], Iterator[tuple[CID, bytes]]]:
    """Parse a CAR: its roots and an iterator of (cid, bytes).

    With `verify`, every block must be sha2-256 and hash to its CID; anything else is
    refused, so a reader never stores a block under a name it does not have.
    """
    r = _Reader(src)
    hlen = r.varint()
    if hlen is None or not 0 < hlen <= MAX_HEADER:
        raise InvalidData("bad CAR header length")
    try:
        hdr = decode(bytes(r.take(hlen)))
    except ValueError as e:
        raise InvalidData(f"bad CAR header: {e}") from e
    if (
        type(hdr) is not dict
        or type(hdr.get("version")) is not int
        or hdr["version"] != 1
        or type(hdr.get("roots")) is not list
    ):
        raise InvalidData("CAR header must be {roots, version: 1}")
    roots = hdr["roots"]
    if not all(isinstance(c, CID) for c in roots):
        raise InvalidData("CAR roots must be links")

    def blocks() -> Iterator[tuple[CID, bytes]]:
        while True:
            n = r.varint()
            if n is None:
                return
            if not 0 < n <= MAX_BLOCK:
                raise InvalidData("bad CAR section length")
            section = r.take(n)
            clen = _cid_len(section)
            cid = CID(bytes(section[:clen]))
            data = bytes(section[clen:])
            if verify:
                cb = cid.cid_bytes
                if cb[2:4] != b"\x12\x20" or len(cb) != 36:
                    raise InvalidData("CAR block is not sha2-256")
                if hashlib.sha256(data).digest() != cb[4:]:
                    raise InvalidData(f"CAR block does not match its CID {cid.encode()}")
            yield cid, data

    return roots, blocks()


def read_car_blocks(
    src: bytes | BinaryIO, verify: bool = True
) -> tuple[CID | None, dict[CID, bytes]]:
    """A whole CAR into memory: (first root or None, blocks by CID)."""
    roots, it = read_car(src, verify)
    return (roots[0] if roots else None), dict(it)
