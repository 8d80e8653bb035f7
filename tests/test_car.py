"""CAR v1 writing and reading, cross-checked against an independent header encoding."""

from __future__ import annotations

import hashlib
import io
from typing import Any

import dag_cbor
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multiformats import CID as OracleCID

from pds.repo import car
from pds.repo.car import car_bytes, read_car, read_car_blocks, write_car
from pds.repo.codec import CID, InvalidData, cid_for, encode, raw_cid_for

# --- helpers --------------------------------------------------------------------------


class TinyReads(io.BytesIO):
    """A stream that never hands back more than 7 bytes per read."""

    def read(self, n: int | None = -1) -> bytes:
        return super().read(7 if n is None or n < 0 else min(n, 7))


def _uvarint(n: int) -> bytes:
    """Unsigned LEB128, written independently of car.varint."""
    out = []
    while True:
        low = n & 0x7F
        n >>= 7
        if n:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _oracle_header(roots: list[CID]) -> bytes:
    h = dag_cbor.encode(
        {"roots": [OracleCID.decode(bytes(c.cid_bytes)) for c in roots], "version": 1}
    )
    return _uvarint(len(h)) + h


def _raw_header(h: bytes) -> bytes:
    return _uvarint(len(h)) + h


def _section(cid_bytes: bytes, data: bytes) -> bytes:
    return _uvarint(len(cid_bytes) + len(data)) + cid_bytes + data


def _oracle_car(roots: list[CID], blocks: list[tuple[CID, bytes]]) -> bytes:
    return _oracle_header(roots) + b"".join(_section(bytes(c.cid_bytes), d) for c, d in blocks)


def _read_all(src: Any, verify: bool = True) -> tuple[list[CID], list[tuple[CID, bytes]]]:
    roots, it = read_car(src, verify=verify)
    return roots, list(it)


def _sources(data: bytes) -> list[Any]:
    return [data, bytearray(data), memoryview(data), io.BytesIO(data), TinyReads(data)]


def _block(value: Any) -> tuple[CID, bytes]:
    data = encode(value)
    return cid_for(data), data


def _raw(data: bytes) -> tuple[CID, bytes]:
    return raw_cid_for(data), data


# --- strategies -----------------------------------------------------------------------

_leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.text(max_size=16)
    | st.binary(max_size=16)
    | st.binary(max_size=8).map(cid_for)
)
_keys = st.text(max_size=6).filter(lambda k: not k.startswith("$"))
_values = st.recursive(
    _leaves,
    lambda c: st.lists(c, max_size=4) | st.dictionaries(_keys, c, max_size=4),
    max_leaves=12,
)
_blocks = st.lists(
    st.one_of(_values.map(_block), st.binary(max_size=300).map(_raw)),
    max_size=12,
)


@st.composite
def _cars(draw: st.DrawFn) -> tuple[list[CID], list[tuple[CID, bytes]]]:
    blocks = draw(_blocks)
    pool = [c for c, _ in blocks] + [cid_for(b"elsewhere")]
    roots = draw(st.lists(st.sampled_from(pool), max_size=3))
    return roots, blocks


_SETTINGS = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


# --- round trips -----------------------------------------------------------------------


@_SETTINGS
@given(_cars())
def test_round_trip(car_case: tuple[list[CID], list[tuple[CID, bytes]]]) -> None:
    roots, blocks = car_case
    data = car_bytes(roots, blocks)
    assert data == _oracle_car(roots, blocks)
    assert b"".join(write_car(roots, iter(blocks))) == data
    for src in _sources(data):
        got_roots, got_blocks = _read_all(src)
        assert got_roots == roots
        assert got_blocks == blocks
        assert all(type(d) is bytes for _, d in got_blocks)


@_SETTINGS
@given(_cars())
def test_read_car_blocks(car_case: tuple[list[CID], list[tuple[CID, bytes]]]) -> None:
    roots, blocks = car_case
    root, by_cid = read_car_blocks(TinyReads(car_bytes(roots, blocks)))
    assert root == (roots[0] if roots else None)
    assert by_cid == dict(blocks)


def test_large_car_crosses_chunk_boundaries() -> None:
    blocks = [_raw(bytes([i]) * 5000) for i in range(40)]  # ~200 KB, several 64 KB chunks
    blocks.append(_raw(b"\xab" * 100_000))  # one section larger than a stream chunk
    blocks += [_block({"i": i, "pad": "x" * 3000}) for i in range(30)]
    roots = [blocks[-1][0]]
    chunks = list(write_car(roots, blocks))
    assert len(chunks) > 2
    data = b"".join(chunks)
    assert data == _oracle_car(roots, blocks)
    for src in _sources(data):
        assert _read_all(src) == (roots, blocks)


def test_duplicates_and_any_order_tolerated() -> None:
    a, b = _block({"a": 1}), _raw(b"b")
    blocks = [b, a, b, a, a]
    assert _read_all(car_bytes([a[0]], blocks)) == ([a[0]], blocks)


def test_empty_raw_block() -> None:
    blk = _raw(b"")
    assert _read_all(car_bytes([blk[0]], [blk])) == ([blk[0]], [blk])


# --- header, against an independent encoding --------------------------------------------


@pytest.mark.parametrize("n_roots", [0, 1, 2, 5])
def test_header_matches_oracle(n_roots: int) -> None:
    roots = [cid_for(bytes([i])) for i in range(n_roots)]
    assert car.header(roots) == _oracle_header(roots)
    assert car_bytes(roots, []) == _oracle_header(roots)
    assert _read_all(_oracle_header(roots)) == (roots, [])


def test_header_with_raw_root_matches_oracle() -> None:
    roots = [raw_cid_for(b"blob"), cid_for(b"x")]
    assert car.header(roots) == _oracle_header(roots)


def test_varint_matches_oracle() -> None:
    for n in [0, 1, 127, 128, 255, 300, 16383, 16384, 2**21, 2**35 + 7, 2**63 - 1]:
        assert car.varint(n) == _uvarint(n)


# --- rejection ---------------------------------------------------------------------------


def test_mismatched_block_rejected_only_when_verifying() -> None:
    cid, _ = _block({"real": True})
    bad = encode({"real": False})
    data = car_bytes([cid], [_block({"ok": 1}), (cid, bad)])
    for src in _sources(data):
        with pytest.raises(InvalidData):
            _read_all(src)
    for src in _sources(data):
        roots, blocks = _read_all(src, verify=False)
        assert roots == [cid] and blocks[1] == (cid, bad)


def test_raw_block_mismatch_rejected() -> None:
    data = car_bytes([], [(raw_cid_for(b"one"), b"two")])
    with pytest.raises(InvalidData):
        _read_all(data)
    assert _read_all(data, verify=False)[1] == [(raw_cid_for(b"one"), b"two")]


def test_non_sha256_block_rejected_when_verifying() -> None:
    payload = b"some bytes"
    sha512 = OracleCID("base32", 1, "raw", ("sha2-512", hashlib.sha512(payload).digest()))
    cid = CID(bytes(sha512))
    data = _oracle_header([]) + _section(bytes(sha512), payload)
    with pytest.raises(InvalidData):
        _read_all(data)
    assert _read_all(data, verify=False) == ([], [(cid, payload)])


def test_truncation_rejected_everywhere_but_section_boundaries() -> None:
    blocks = [_block({"a": "x" * 40}), _raw(b"y" * 30), _block([1, 2, 3])]
    roots = [blocks[0][0]]
    data = car_bytes(roots, blocks)
    boundaries = {len(car.header(roots))}
    end = len(car.header(roots))
    for c, d in blocks:
        end += len(car.block(c, d))
        boundaries.add(end)
    assert end == len(data)
    for cut in range(len(data)):
        prefix = data[:cut]
        if cut in boundaries:
            got_roots, got = _read_all(prefix)
            assert got_roots == roots and got == blocks[: len(got)]
            continue
        for src in (prefix, TinyReads(prefix)):
            with pytest.raises(InvalidData):
                _read_all(src)
            with pytest.raises(InvalidData):
                _read_all(prefix, verify=False)


_CID0 = cid_for(b"root")
_ROOT = OracleCID.decode(bytes(_CID0.cid_bytes))
_BAD_HEADERS = {
    "version-2": dag_cbor.encode({"roots": [_ROOT], "version": 2}),
    "version-0": dag_cbor.encode({"roots": [_ROOT], "version": 0}),
    "version-string": dag_cbor.encode({"roots": [_ROOT], "version": "1"}),
    "version-true": dag_cbor.encode({"roots": [_ROOT], "version": True}),
    "version-missing": dag_cbor.encode({"roots": [_ROOT]}),
    "roots-missing": dag_cbor.encode({"version": 1}),
    "roots-null": dag_cbor.encode({"roots": None, "version": 1}),
    "roots-not-list": dag_cbor.encode({"roots": _ROOT, "version": 1}),
    "roots-strings": dag_cbor.encode({"roots": [str(_ROOT)], "version": 1}),
    "roots-bytes": dag_cbor.encode({"roots": [bytes(_ROOT)], "version": 1}),
    "not-a-map": dag_cbor.encode([[_ROOT], 1]),
    "empty-map": b"\xa0",
    "float-version": b"\xa2eroots\x80gversion\xfb\x3f\xf0\x00\x00\x00\x00\x00\x00",
    "unsorted-keys": b"\xa2gversion\x01eroots\x80",
    "non-minimal-version": b"\xa2eroots\x80gversion\x18\x01",
    "trailing-byte-in-header": dag_cbor.encode({"roots": [], "version": 1}) + b"\x00",
    "malformed-root-cid": b"\xa2eroots\x81\xd8\x2a\x44\x00abcgversion\x01",
    "garbage": b"\xff\xff\xff",
}


@pytest.mark.parametrize("h", list(_BAD_HEADERS.values()), ids=list(_BAD_HEADERS))
def test_bad_header_rejected(h: bytes) -> None:
    blk = _raw(b"x")
    data = _raw_header(h) + _section(bytes(blk[0].cid_bytes), blk[1])
    for src in (data, TinyReads(data)):
        with pytest.raises(InvalidData):
            read_car(src)


_GOOD_HEADER = dag_cbor.encode({"roots": [_ROOT], "version": 1})
_BLK = _raw(b"payload")
_BLK_BODY = bytes(_BLK[0].cid_bytes) + _BLK[1]
_BAD_FRAMING = {
    "empty-input": b"",
    "zero-header-length": b"\x00" + _GOOD_HEADER,
    "header-length-too-long": _uvarint(len(_GOOD_HEADER) + 5) + _GOOD_HEADER,
    "header-length-huge": _uvarint(car.MAX_HEADER + 1) + _GOOD_HEADER,
    "non-minimal-header-varint": bytes([0x80 | len(_GOOD_HEADER), 0x00]) + _GOOD_HEADER,
    "header-varint-truncated": b"\x80",
    "zero-length-section": _raw_header(_GOOD_HEADER) + b"\x00",
    "zero-length-section-then-block": _raw_header(_GOOD_HEADER)
    + b"\x00"
    + _section(bytes(_BLK[0].cid_bytes), _BLK[1]),
    "non-minimal-section-varint": _raw_header(_GOOD_HEADER)
    + bytes([0x80 | len(_BLK_BODY), 0x00])
    + _BLK_BODY,
    "non-minimal-section-varint-3": _raw_header(_GOOD_HEADER)
    + bytes([0x80 | len(_BLK_BODY), 0x80, 0x00])
    + _BLK_BODY,
    "section-varint-too-long": _raw_header(_GOOD_HEADER) + b"\xff" * 11 + b"\x01",
    "section-varint-truncated": _raw_header(_GOOD_HEADER) + b"\x81",
    "section-too-large": _raw_header(_GOOD_HEADER) + _uvarint(car.MAX_BLOCK + 1) + _BLK_BODY,
    "section-shorter-than-cid": _raw_header(_GOOD_HEADER) + _section(_BLK_BODY[:20], b""),
    "section-cid-only-prefix": _raw_header(_GOOD_HEADER) + _section(b"\x01\x55\x12", b""),
    "section-cidv0": _raw_header(_GOOD_HEADER)
    + _section(b"\x12\x20" + hashlib.sha256(b"x").digest(), b"x"),
    "section-cid-version-2": _raw_header(_GOOD_HEADER) + _section(b"\x02" + _BLK_BODY[1:], b""),
    "section-truncated": _raw_header(_GOOD_HEADER) + _uvarint(len(_BLK_BODY) + 1) + _BLK_BODY,
}


@pytest.mark.parametrize("data", list(_BAD_FRAMING.values()), ids=list(_BAD_FRAMING))
@pytest.mark.parametrize("verify", [True, False])
def test_bad_framing_rejected(data: bytes, verify: bool) -> None:
    for src in (data, io.BytesIO(data), TinyReads(data)):
        with pytest.raises(InvalidData):
            _read_all(src, verify=verify)


def test_good_framing_control() -> None:
    """The pieces the framing cases are built from do parse when assembled correctly."""
    data = _raw_header(_GOOD_HEADER) + _section(bytes(_BLK[0].cid_bytes), _BLK[1])
    assert _read_all(data) == ([_CID0], [_BLK])
