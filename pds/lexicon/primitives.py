"""Checkers of the lexicon's primitive types: boolean, integer, string (lengths, graphemes,
formats), bytes, cid-link, blob, unknown.

Each `compile_X(defn, mode)` returns a `Check`: `check(value, path, blobs)` returns None
or raises `LexiconError` with the reference's message (`<path> must be a string`...).
Values come in one of two forms (`mode`): "value" (a decoded record: CIDs are `CID`,
bytes are `bytes`) or "json" (an XRPC body: `{"$link": ...}`, `{"$bytes": ...}`).
A blob whose lexicon sets `accept` or `maxSize` is added to `blobs` as a `BlobRule`, so
the caller can check the stored blob's real type and size too.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import re
from collections.abc import Callable
from typing import Any, NamedTuple

from cbrrr import CID

from ..repo.string_formats import is_valid_cid, is_valid_datetime, is_valid_language, is_valid_uri
from ..repo.syntax import (
    is_valid_at_identifier,
    is_valid_at_uri,
    is_valid_did,
    is_valid_handle,
    is_valid_nsid,
    is_valid_record_key,
    is_valid_tid,
)


class LexiconError(ValueError):
    """A value does not fit its lexicon; the message names the field's path and the rule."""


class BlobRule(NamedTuple):
    """A blob a lexicon constrains: where it is, which blob, what it may be."""

    path: str
    cid: CID | str
    accept: tuple[str, ...] | None
    max_size: int | None


Check = Callable[[Any, str, list], None]

_GRAPHEME: Any = None  # `regex`'s \X, compiled on first use

# ISO 8601 forms the reference's lexicon validator takes besides atproto's strict
# datetime (it is lenient: a date alone, no seconds, no time zone, a +hhmm offset).
_ISO_DATETIME = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})"
    r"(?:T[0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]{1,20})?)?(?:Z|[+-][0-9]{2}:?[0-9]{2})?)?")


def is_lenient_datetime(s: str) -> bool:
    """A datetime as the reference's lexicons accept it (`isDatetimeStringLenient`)."""
    if is_valid_datetime(s):
        return True
    m = _ISO_DATETIME.fullmatch(s) if len(s) <= 64 else None
    if m is None:
        return False
    try:
        datetime.date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
    except ValueError:
        return False
    return True


# The reference's messages for the string formats (its validators/formats.ts).
FORMATS: dict[str, tuple[Callable[[str], bool], str]] = {
    "datetime": (is_lenient_datetime,
                 "must be an valid atproto datetime (both RFC-3339 and ISO-8601)"),
    "uri": (is_valid_uri, "must be a uri"),
    "at-uri": (is_valid_at_uri, "must be a valid at-uri"),
    "did": (is_valid_did, "must be a valid did"),
    "handle": (is_valid_handle, "must be a valid handle"),
    "at-identifier": (is_valid_at_identifier, "must be a valid did or a handle"),
    "nsid": (is_valid_nsid, "must be a valid nsid"),
    "cid": (is_valid_cid, "must be a cid string"),
    "language": (is_valid_language, "must be a well-formed BCP 47 language tag"),
    "tid": (is_valid_tid, "must be a valid TID"),
    "record-key": (is_valid_record_key, "must be a valid Record Key"),
}


def graphemes(s: str) -> int:
    """How many extended grapheme clusters (Unicode's user-perceived characters, UAX
    #29, as the reference counts them) `s` holds. `regex` implements them in C; it is
    imported only when a string is long enough to need counting (1.7 MB a process)."""
    global _GRAPHEME
    if _GRAPHEME is None:
        import regex  # type: ignore[import-untyped]
        _GRAPHEME = regex.compile(r"\X")
    return sum(1 for _ in _GRAPHEME.finditer(s))


def _num(d: dict, key: str) -> int | None:
    v = d.get(key)
    return v if type(v) is int else None


def compile_boolean(d: dict, mode: str) -> Check:
    const = d.get("const")

    def check(v: Any, path: str, blobs: list) -> None:
        if type(v) is not bool:
            raise LexiconError(f"{path} must be a boolean")
        if type(const) is bool and v is not const:
            raise LexiconError(f"{path} must be {str(const).lower()}")
    return check


def compile_integer(d: dict, mode: str) -> Check:
    const, lo, hi = _num(d, "const"), _num(d, "minimum"), _num(d, "maximum")
    enum = d.get("enum") if isinstance(d.get("enum"), list) else None

    def check(v: Any, path: str, blobs: list) -> None:
        if type(v) is not int:
            raise LexiconError(f"{path} must be an integer")
        if const is not None and v != const:
            raise LexiconError(f"{path} must be {const}")
        if enum is not None and v not in enum:
            raise LexiconError(f"{path} must be one of ({'|'.join(map(str, enum))})")
        if hi is not None and v > hi:
            raise LexiconError(f"{path} can not be greater than {hi}")
        if lo is not None and v < lo:
            raise LexiconError(f"{path} can not be less than {lo}")
    return check


def _string_lengths(d: dict) -> Callable[[str, str], None] | None:
    """The length and grapheme rules of a string, or None when it has none."""
    min_len, max_len = _num(d, "minLength"), _num(d, "maxLength")
    min_g, max_g = _num(d, "minGraphemes"), _num(d, "maxGraphemes")
    if min_len is None and max_len is None and min_g is None and max_g is None:
        return None

    def lengths(v: str, path: str) -> None:
        n = len(v)
        # UTF-8 takes 1 to 4 bytes a code point: count bytes only when that could matter.
        if (max_len is not None and n * 4 > max_len) or (min_len is not None and n < min_len):
            size = len(v.encode("utf-8", "surrogatepass"))
            if max_len is not None and size > max_len:
                raise LexiconError(f"{path} must not be longer than {max_len} characters")
            if min_len is not None and size < min_len:
                raise LexiconError(f"{path} must not be shorter than {min_len} characters")
        # A grapheme is at least one code point: count them only when that could matter.
        if (max_g is not None and n > max_g) or (min_g is not None):
            if min_g is not None and n < min_g:
                raise LexiconError(f"{path} must not be shorter than {min_g} graphemes")
            count = graphemes(v)
            if max_g is not None and count > max_g:
                raise LexiconError(f"{path} must not be longer than {max_g} graphemes")
            if min_g is not None and count < min_g:
                raise LexiconError(f"{path} must not be shorter than {min_g} graphemes")
    return lengths


def compile_string(d: dict, mode: str) -> Check:
    const = d.get("const") if isinstance(d.get("const"), str) else None
    enum = frozenset(d["enum"]) if isinstance(d.get("enum"), list) else None
    enum_text = "|".join(d["enum"]) if enum is not None else ""
    lengths = _string_lengths(d)
    fmt = FORMATS.get(d.get("format") or "")

    def check(v: Any, path: str, blobs: list) -> None:
        if type(v) is not str:
            raise LexiconError(f"{path} must be a string")
        if const is not None and v != const:
            raise LexiconError(f"{path} must be {const}")
        if enum is not None and v not in enum:
            raise LexiconError(f"{path} must be one of ({enum_text})")
        if lengths is not None:
            lengths(v, path)
        if fmt is not None and not fmt[0](v):
            raise LexiconError(f"{path} {fmt[1]}")
    return check


def _json_bytes(v: Any) -> bytes | None:
    """The bytes of a JSON `{"$bytes": base64}`, or None when it is not one."""
    if type(v) is not dict or len(v) != 1 or type(v.get("$bytes")) is not str:
        return None
    text = v["$bytes"]
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None


def compile_bytes(d: dict, mode: str) -> Check:
    lo, hi = _num(d, "minLength"), _num(d, "maxLength")

    def check(v: Any, path: str, blobs: list) -> None:
        data = v if type(v) is bytes else (_json_bytes(v) if mode == "json" else None)
        if data is None:
            raise LexiconError(f"{path} must be a byte array")
        if hi is not None and len(data) > hi:
            raise LexiconError(f"{path} must not be larger than {hi} bytes")
        if lo is not None and len(data) < lo:
            raise LexiconError(f"{path} must not be smaller than {lo} bytes")
    return check


def _link(v: Any, mode: str) -> CID | str | None:
    """A link's CID (a `CID`, or the text of JSON `{"$link": cid}`), or None."""
    if isinstance(v, CID):
        return v
    if mode == "json" and type(v) is dict and len(v) == 1 and type(v.get("$link")) is str:
        return v["$link"] if is_valid_cid(v["$link"]) else None
    return None


def compile_cid_link(d: dict, mode: str) -> Check:
    def check(v: Any, path: str, blobs: list) -> None:
        if _link(v, mode) is None:
            raise LexiconError(f"{path} must be a CID")
    return check


def compile_unknown(d: dict, mode: str) -> Check:
    def check(v: Any, path: str, blobs: list) -> None:
        # An object, not a bare value, array, bytes, link or blob (the lexicon spec).
        if type(v) is not dict or v.get("$type") == "blob" or (
                mode == "json" and (_json_bytes(v) is not None or _link(v, mode))):
            raise LexiconError(f"{path} must be an object")
    return check


def mime_accepted(mime: str, accept: tuple[str, ...]) -> bool:
    """Whether a MIME type fits one of a blob's `accept` patterns (`image/*`, `*/*`)."""
    mime = mime.lower()
    for pattern in accept:
        p = pattern.lower()
        if p in ("*/*", "*", mime) or (p.endswith("/*") and mime.startswith(p[:-1])):
            return True
    return False


def compile_blob(d: dict, mode: str) -> Check:
    accept = tuple(d["accept"]) if isinstance(d.get("accept"), list) else None
    max_size = _num(d, "maxSize")

    def check(v: Any, path: str, blobs: list) -> None:
        cid = _link(v.get("ref"), mode) if type(v) is dict and v.get("$type") == "blob" else None
        mime, size = (v.get("mimeType"), v.get("size")) if cid is not None else (None, None)
        if cid is None or type(mime) is not str or not mime or type(size) is not int \
                or size < 0:
            raise LexiconError(f"{path} should be a blob ref")
        check_blob(path, mime, size, accept, max_size)
        if accept is not None or max_size is not None:
            blobs.append(BlobRule(path, cid, accept, max_size))
    return check


def check_blob(path: str, mime: str, size: int, accept: tuple[str, ...] | None,
               max_size: int | None) -> None:
    """A blob's MIME type and size against its lexicon's `accept` and `maxSize`."""
    if max_size is not None and size > max_size:
        raise LexiconError(f"{path} blob is {size} bytes; it must not be larger than "
                           f"{max_size} bytes")
    if accept is not None and not mime_accepted(mime, accept):
        raise LexiconError(f"{path} blob has type {mime}; it must be one of "
                           f"({'|'.join(accept)})")


PRIMITIVES: dict[str, Callable[[dict, str], Check]] = {
    "boolean": compile_boolean, "integer": compile_integer, "string": compile_string,
    "bytes": compile_bytes, "cid-link": compile_cid_link, "unknown": compile_unknown,
    "blob": compile_blob,
}
