"""DAG-CBOR, CIDs and the atproto JSON form, on cbrrr.

The atproto data model is DAG-CBOR without floats. cbrrr already refuses non-canonical
input (unsorted or duplicate keys, non-minimal integers, indefinite lengths, tags other
than 42, trailing bytes); this module adds what atproto asks beyond that: no floats,
`$type` a non-empty string, well-formed blob refs, and blessed CIDs where the protocol
demands them.

Values in their Python form use `CID` for links and `bytes` for byte strings. The JSON
form uses `{"$link": ...}` and `{"$bytes": ...}`.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from typing import Any

import cbrrr
from cbrrr import CID

__all__ = [
    "CID",
    "InvalidData",
    "BlobRef",
    "encode",
    "decode",
    "decode_json",
    "cid_for",
    "raw_cid_for",
    "parse_cid",
    "parse_cid_bytes",
    "json_to_value",
    "value_to_json",
    "json_to_cbor",
    "cbor_to_json",
    "find_blob_refs",
    "check_value",
]

DAG_CBOR = 0x71
RAW = 0x55
_DAG_CBOR_PREFIX = b"\x01\x71\x12\x20"
_RAW_PREFIX = b"\x01\x55\x12\x20"
_INT_MAX = 2**63 - 1
_INT_MIN = -(2**63)
_MAX_DEPTH = 128


class InvalidData(ValueError):
    """Input that is not valid atproto data (bad CBOR, floats, malformed links...)."""


def encode(value: Any) -> bytes:
    """Encode a Python value (CIDs as `CID`, bytes as `bytes`) to canonical DAG-CBOR.

    Floats and non-string map keys are refused, as atproto has neither.
    """
    check_value(value)
    try:
        return cbrrr.encode_dag_cbor(value)
    except (TypeError, ValueError) as e:
        raise InvalidData(f"cannot encode as DAG-CBOR: {e}") from e


def encode_trusted(value: Any) -> bytes:
    """Encode a value this program built itself (no float check); the hot path."""
    return cbrrr.encode_dag_cbor(value)


def decode(data: bytes) -> Any:
    """Decode strict DAG-CBOR to Python values; refuses floats and non-canonical bytes."""
    try:
        value = cbrrr.decode_dag_cbor(data)
    except (ValueError, TypeError) as e:
        raise InvalidData(f"invalid DAG-CBOR: {e}") from e
    check_value(value)
    return value


def decode_json(data: bytes) -> Any:
    """Decode strict DAG-CBOR straight to the atproto JSON form (`$link`, `$bytes`)."""
    return value_to_json(decode(data))


_CID_TEXT: dict[bytes, str] = {}
_CID_TEXT_MAX = 65536  # entries, ~200 bytes each; `size_cid_text_cache` changes it


def size_cid_text_cache(entries: int) -> None:
    """How many CID texts `cid_str` keeps in this process (`PDS_CACHE_MB`)."""
    global _CID_TEXT_MAX
    _CID_TEXT_MAX = max(1, entries)
    if len(_CID_TEXT) > _CID_TEXT_MAX:
        _CID_TEXT.clear()


# base32 (RFC 4648, lower case) ten bits at a time: the 36 bytes of a sha2-256 CID, padded
# with 4 zero bytes, are 32 groups of ten bits; the text is the first 58 characters.
_B32_PAIRS = [a + b for a in "abcdefghijklmnopqrstuvwxyz234567"
              for b in "abcdefghijklmnopqrstuvwxyz234567"]
_B32_SHIFTS = tuple(range(310, -1, -10))


def _b32_cid36(b: bytes) -> str:
    n = int.from_bytes(b, "big") << 32
    return "b" + "".join([_B32_PAIRS[(n >> s) & 1023] for s in _B32_SHIFTS])[:58]


def cid_str(cid: CID) -> str:
    """A CID's base32 text, cached: cbrrr's conversion is pure Python and slower than
    this one for the usual 36-byte CIDs, and CIDs recur (block paths, JSON answers)."""
    b = cid.cid_bytes
    text = _CID_TEXT.get(b)
    if text is None:
        text = _b32_cid36(b) if len(b) == 36 else cid.encode()
        if len(_CID_TEXT) >= _CID_TEXT_MAX:
            _CID_TEXT.clear()
        _CID_TEXT[b] = text
    return text


def cid_for(data: bytes) -> CID:
    """The CIDv1 (dag-cbor, sha2-256) of encoded bytes."""
    return CID(_DAG_CBOR_PREFIX + hashlib.sha256(data).digest())


def raw_cid_for(data: bytes) -> CID:
    """The CIDv1 (raw, sha2-256) of blob bytes."""
    return CID(_RAW_PREFIX + hashlib.sha256(data).digest())


def is_blessed(cid: CID, codec: int | None = None) -> bool:
    """True for CIDv1 + sha2-256 with the dag-cbor or raw codec (or the one given)."""
    b = cid.cid_bytes
    if len(b) != 36:
        return False
    if b.startswith(_DAG_CBOR_PREFIX):
        return codec in (None, DAG_CBOR)
    if b.startswith(_RAW_PREFIX):
        return codec in (None, RAW)
    return False


def parse_cid(text: str, codec: int | None = None) -> CID:
    """Parse a CID string from a client; only blessed base32 CIDv1 sha2-256 forms pass."""
    if not isinstance(text, str) or not text.startswith("b") or len(text) != 59:
        raise InvalidData(f"not a CID: {text!r}")
    try:
        cid = CID.decode(text)
    except (ValueError, TypeError) as e:
        raise InvalidData(f"not a CID: {text!r}") from e
    if not is_blessed(cid, codec) or cid.encode() != text:
        raise InvalidData(f"unsupported CID: {text!r}")
    return cid


def parse_cid_bytes(data: bytes) -> CID:
    """A CID from its binary form (as in CAR files), checked to be well-formed."""
    try:
        return cbrrr.StrictCID(bytes(data))
    except ValueError as e:
        raise InvalidData(f"invalid CID bytes: {e}") from e


def check_value(value: Any, depth: int = 0) -> None:
    """Refuse what the atproto data model lacks: floats, odd types, out-of-range ints."""
    if depth > _MAX_DEPTH:
        raise InvalidData("value nested too deeply")
    t = type(value)
    if t is dict:
        for k, v in value.items():
            if type(k) is not str:
                raise InvalidData("map keys must be strings")
            check_value(v, depth + 1)
        if "$type" in value:
            _check_type_field(value["$type"])
    elif t is list:
        for v in value:
            check_value(v, depth + 1)
    elif t is int:
        if not _INT_MIN <= value <= _INT_MAX:
            raise InvalidData("integer out of 64-bit range")
    elif t is float:
        raise InvalidData("floats are not allowed in atproto data")
    elif isinstance(value, CID):
        _check_cid(value)
    elif t in (str, bytes, bool) or value is None:
        return
    else:
        raise InvalidData(f"unsupported type {t.__name__}")


def _check_cid(cid: CID) -> None:
    """Refuse a link whose bytes are not a well-formed binary CID (cbrrr does not check)."""
    b = cid.cid_bytes
    if len(b) == 36 and (b.startswith(_DAG_CBOR_PREFIX) or b.startswith(_RAW_PREFIX)):
        return
    try:
        cbrrr.StrictCID(bytes(b))
    except (ValueError, TypeError) as e:
        raise InvalidData(f"malformed CID in link: {e}") from e


def _check_type_field(t: Any) -> None:
    if not isinstance(t, str) or not t:
        raise InvalidData("$type must be a non-empty string")


# --- atproto JSON <-> Python values -------------------------------------------------


def json_to_value(obj: Any, depth: int = 0) -> Any:
    """Convert parsed atproto JSON to Python data-model values, validating it.

    `$link` objects become `CID`, `$bytes` objects become `bytes`; integral floats (JSON
    has one number type) become ints, other floats are refused; blob objects are checked.
    """
    if depth > _MAX_DEPTH:
        raise InvalidData("value nested too deeply")
    t = type(obj)
    if t is dict:
        if "$link" in obj:
            return _json_link(obj)
        if "$bytes" in obj:
            return _json_bytes(obj)
        out = {}
        for k, v in obj.items():
            if type(k) is not str:
                raise InvalidData("map keys must be strings")
            out[k] = json_to_value(v, depth + 1)
        if "$type" in out:
            _check_type_field(out["$type"])
            if out["$type"] == "blob":
                BlobRef.from_value(out)
        return out
    if t is list:
        return [json_to_value(v, depth + 1) for v in obj]
    if t is float:
        if obj != obj or obj in (float("inf"), float("-inf")) or not obj.is_integer():
            raise InvalidData("floats are not allowed in atproto data")
        obj = int(obj)
        t = int
    if t is int:
        if not _INT_MIN <= obj <= _INT_MAX:
            raise InvalidData("integer out of 64-bit range")
        return obj
    if t is str or t is bool or obj is None:
        return obj
    raise InvalidData(f"unsupported JSON type {t.__name__}")


def _json_link(obj: dict) -> CID:
    if len(obj) != 1:
        raise InvalidData("$link must be the only key of its object")
    text = obj["$link"]
    if not isinstance(text, str):
        raise InvalidData("$link must be a string")
    try:
        cid = CID.decode(text)
        cbrrr.StrictCID(cid.cid_bytes)
    except (ValueError, TypeError) as e:
        raise InvalidData(f"invalid $link: {text!r}") from e
    return cid


def _json_bytes(obj: dict) -> bytes:
    if len(obj) != 1:
        raise InvalidData("$bytes must be the only key of its object")
    text = obj["$bytes"]
    if not isinstance(text, str):
        raise InvalidData("$bytes must be a string")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except ValueError as e:
        raise InvalidData("invalid base64 in $bytes") from e


def value_to_json(value: Any) -> Any:
    """Convert Python data-model values to atproto JSON (`$link`, unpadded `$bytes`)."""
    t = type(value)
    if t is dict:
        return {k: value_to_json(v) for k, v in value.items()}
    if t is list:
        return [value_to_json(v) for v in value]
    if isinstance(value, CID):
        return {"$link": value.encode()}
    if t is bytes:
        return {"$bytes": base64.b64encode(value).decode().rstrip("=")}
    return value


def json_to_cbor(obj: Any) -> bytes:
    """Validate atproto JSON and encode it as canonical DAG-CBOR."""
    return cbrrr.encode_dag_cbor(json_to_value(obj))


def cbor_to_json(data: bytes) -> Any:
    """Decode DAG-CBOR to atproto JSON (alias of `decode_json`)."""
    return decode_json(data)


# --- blob refs ----------------------------------------------------------------------


class BlobRef:
    """A reference to a blob inside a record: raw CID, MIME type and size."""

    __slots__ = ("cid", "mime_type", "size")

    def __init__(self, cid: CID, mime_type: str, size: int | None) -> None:
        self.cid = cid
        self.mime_type = mime_type
        self.size = size

    @classmethod
    def from_value(cls, v: dict) -> BlobRef:
        """Read a blob object (`$type: blob`, or the legacy `{cid, mimeType}`) in value form."""
        if v.get("$type") == "blob":
            ref, mime, size = v.get("ref"), v.get("mimeType"), v.get("size")
            if not isinstance(ref, CID):
                raise InvalidData("blob ref must be a link")
            if not isinstance(mime, str) or not mime:
                raise InvalidData("blob mimeType must be a non-empty string")
            if type(size) is not int or size < 0:
                raise InvalidData("blob size must be a non-negative integer")
            return cls(ref, mime, size)
        # Legacy form: read, never written.
        cid_text, mime = v.get("cid"), v.get("mimeType")
        if not isinstance(cid_text, str) or not isinstance(mime, str):
            raise InvalidData("malformed legacy blob")
        try:
            return cls(CID.decode(cid_text), mime, None)
        except ValueError as e:
            raise InvalidData("malformed legacy blob CID") from e

    def to_value(self) -> dict:
        """The canonical (`$type: blob`) value form."""
        return {"$type": "blob", "ref": self.cid, "mimeType": self.mime_type, "size": self.size}

    def to_json(self) -> dict:
        """The canonical atproto JSON form."""
        return value_to_json(self.to_value())


def find_blob_refs(value: Any, depth: int = 0) -> Iterator[BlobRef]:
    """Every blob ref inside a record value (Python form), the legacy form included."""
    if depth > _MAX_DEPTH:
        return
    t = type(value)
    if t is dict:
        if value.get("$type") == "blob":
            yield BlobRef.from_value(value)
            return
        if (
            len(value) == 2
            and isinstance(value.get("cid"), str)
            and isinstance(value.get("mimeType"), str)
        ):
            yield BlobRef.from_value(value)
            return
        for v in value.values():
            yield from find_blob_refs(v, depth + 1)
    elif t is list:
        for v in value:
            yield from find_blob_refs(v, depth + 1)
