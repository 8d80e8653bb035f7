"""Syntax checks for the atproto string formats.

Every format has a pair of functions: ``is_valid_X(s) -> bool`` for cheap
branching and ``ensure_valid_X(s) -> None`` which raises :class:`InvalidSyntax`
with a readable reason. Both share one private ``_X_error`` helper that returns
the reason (or ``None``), so the two can never disagree.

The rules follow the atproto specs (``specs/did``, ``specs/handle``,
``specs/nsid``, ``specs/record-key``, ``specs/tid``, ``specs/at-uri-scheme``,
``specs/lexicon`` string formats) and are pinned down by the interop vectors
in ``atproto-interop-tests/syntax``. Everything here is pure: no I/O, no DNS.

These run on every request, so all regexes are compiled once at import time
and matched with ``fullmatch`` (``$`` would let a trailing ``\\n`` through).
"""

from __future__ import annotations

import re
from collections.abc import Callable

__all__ = [
    "DISALLOWED_HANDLE_TLDS",
    "InvalidSyntax",
    "ensure_valid_at_identifier",
    "ensure_valid_at_uri",
    "ensure_valid_cid",
    "ensure_valid_datetime",
    "ensure_valid_did",
    "ensure_valid_handle",
    "ensure_valid_language",
    "ensure_valid_nsid",
    "ensure_valid_record_key",
    "ensure_valid_tid",
    "ensure_valid_uri",
    "is_disallowed_handle_tld",
    "is_valid_at_identifier",
    "is_valid_at_uri",
    "is_valid_cid",
    "is_valid_datetime",
    "is_valid_did",
    "is_valid_handle",
    "is_valid_language",
    "is_valid_nsid",
    "is_valid_record_key",
    "is_valid_tid",
    "is_valid_uri",
    "normalize_handle",
    "split_record_path",
]


class InvalidSyntax(ValueError):
    """A string does not match the atproto syntax it was checked against."""


def _show(s: str) -> str:
    """Quote a (possibly huge, hostile) input for an error message."""
    if len(s) > 64:
        return repr(s[:64]) + f"... ({len(s)} chars)"
    return repr(s)


# --------------------------------------------------------------------------
# DID
# --------------------------------------------------------------------------

# Method is lowercase letters only; the method-specific id may contain ':' and
# percent signs but may not end in either (specs/did).
_DID_RE = re.compile(r"did:[a-z]+:[a-zA-Z0-9._:%-]*[a-zA-Z0-9._-]")
_DID_MAX = 2048  # 2 KB hard cap from specs/did


def _did_error(s: str) -> str | None:
    if not isinstance(s, str):
        return "DID must be a string"
    if len(s) > _DID_MAX:
        return f"DID is too long ({len(s)} chars, max {_DID_MAX})"
    if not s.startswith("did:"):
        return f"DID must start with 'did:': {_show(s)}"
    if _DID_RE.fullmatch(s) is None:
        return f"invalid DID syntax: {_show(s)}"
    return None


# --------------------------------------------------------------------------
# Handle
# --------------------------------------------------------------------------

# Hostname rules (RFC 1035/1123 as profiled by specs/handle): at least two
# labels of 1-63 ASCII alnum/hyphen chars, no leading/trailing hyphen, and the
# last label (TLD) must start with a letter so that IP addresses never parse.
_HANDLE_RE = re.compile(
    r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?\.)+"
    r"[a-zA-Z](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?"
)
_HANDLE_MAX = 253

#: TLDs that are syntactically fine but must not be registered as handles.
#: ``.test`` is deliberately absent: it is what dev/test PDS deployments use.
DISALLOWED_HANDLE_TLDS: frozenset[str] = frozenset(
    {"alt", "arpa", "example", "internal", "invalid", "local", "localhost", "onion"}
)


def _handle_error(s: str) -> str | None:
    if not isinstance(s, str):
        return "handle must be a string"
    if len(s) > _HANDLE_MAX:
        return f"handle is too long ({len(s)} chars, max {_HANDLE_MAX})"
    if _HANDLE_RE.fullmatch(s) is None:
        return f"invalid handle syntax: {_show(s)}"
    return None


def normalize_handle(s: str) -> str:
    """Return the canonical (lowercase) form of a handle.

    Handles are case-insensitive; store and compare only the normalized form.
    No validation is done here; call :func:`ensure_valid_handle` as well.
    """
    return s.lower()


def is_disallowed_handle_tld(handle: str) -> bool:
    """True if the handle ends in a reserved TLD (``.local``, ``.onion``, ...).

    Such handles pass the syntax check but a PDS must refuse to assign them.
    ``.test`` is allowed.
    """
    return handle.rpartition(".")[2].lower() in DISALLOWED_HANDLE_TLDS


# --------------------------------------------------------------------------
# NSID
# --------------------------------------------------------------------------

# Reversed domain authority (first label starts with a letter, the rest are
# hostname labels) followed by a name segment of letters/digits that starts
# with a letter. At least three segments in total.
_NSID_RE = re.compile(
    r"[a-zA-Z](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?"
    r"(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)+"
    r"\.[a-zA-Z][a-zA-Z0-9]{0,62}"
)
# 253 (domain) + 1 + 63 (name). The interop vectors accept an authority longer
# than 253 chars as long as the whole NSID fits, so only the total is capped.
_NSID_MAX = 317


def _nsid_error(s: str) -> str | None:
    if not isinstance(s, str):
        return "NSID must be a string"
    if len(s) > _NSID_MAX:
        return f"NSID is too long ({len(s)} chars, max {_NSID_MAX})"
    if _NSID_RE.fullmatch(s) is None:
        return f"invalid NSID syntax: {_show(s)}"
    return None


# --------------------------------------------------------------------------
# Record key
# --------------------------------------------------------------------------

_RKEY_RE = re.compile(r"[a-zA-Z0-9_~.:-]{1,512}")


def _record_key_error(s: str) -> str | None:
    if not isinstance(s, str):
        return "record key must be a string"
    if s == "." or s == "..":
        # They would be path traversal in any filesystem/URL mapping.
        return f"record key may not be {s!r}"
    if _RKEY_RE.fullmatch(s) is None:
        if not 1 <= len(s) <= 512:
            return f"record key must be 1-512 chars (got {len(s)})"
        return f"invalid record key syntax: {_show(s)}"
    return None


# --------------------------------------------------------------------------
# TID
# --------------------------------------------------------------------------

# 13 chars of base32-sortable; the first char is limited so the value fits in
# 64 bits (specs/tid).
_TID_RE = re.compile(r"[234567abcdefghij][234567abcdefghijklmnopqrstuvwxyz]{12}")


def _tid_error(s: str) -> str | None:
    if not isinstance(s, str):
        return "TID must be a string"
    if len(s) != 13:
        return f"TID must be 13 chars (got {len(s)})"
    if _TID_RE.fullmatch(s) is None:
        return f"invalid TID syntax: {_show(s)}"
    return None


# --------------------------------------------------------------------------
# AT identifier (DID or handle)
# --------------------------------------------------------------------------


def _at_identifier_error(s: str) -> str | None:
    if not isinstance(s, str):
        return "AT identifier must be a string"
    if s.startswith("did:"):
        return _did_error(s)
    if _handle_error(s) is None:
        return None
    return f"not a valid DID or handle: {_show(s)}"


# --------------------------------------------------------------------------
# AT URI (the restricted form used by Lexicon ``at-uri``)
# --------------------------------------------------------------------------

_AT_URI_MAX = 8 * 1024


def _at_uri_error(s: str) -> str | None:
    # Lexicon use allows only at://AUTHORITY[/COLLECTION[/RKEY]]; query and
    # fragment parts are "not yet supported" (specs/at-uri-scheme), so any
    # '?' or '#' fails the component checks below.
    if not isinstance(s, str):
        return "AT URI must be a string"
    if len(s) > _AT_URI_MAX:
        return f"AT URI is too long ({len(s)} chars, max {_AT_URI_MAX})"
    if not s.startswith("at://"):
        return f"AT URI must start with 'at://': {_show(s)}"
    parts = s[5:].split("/")
    if len(parts) > 3:
        return f"AT URI path has too many segments: {_show(s)}"
    if _at_identifier_error(parts[0]) is not None:
        return f"AT URI authority is not a valid DID or handle: {_show(s)}"
    if len(parts) >= 2 and _nsid_error(parts[1]) is not None:
        return f"AT URI collection is not a valid NSID: {_show(s)}"
    if len(parts) == 3 and _record_key_error(parts[2]) is not None:
        return f"AT URI record key is not valid: {_show(s)}"
    return None


# --------------------------------------------------------------------------
# CID (string-level only; no multibase/multihash decoding)
# --------------------------------------------------------------------------

_CID_RE = re.compile(r"[a-zA-Z0-9+=]{8,256}")


def _cid_error(s: str) -> str | None:
    if not isinstance(s, str):
        return "CID must be a string"
    if _CID_RE.fullmatch(s) is None:
        return f"invalid CID syntax: {_show(s)}"
    # Every CIDv0 (bare base58btc sha2-256 multihash) starts with "Qm", and no
    # multibase-prefixed CIDv1 can start with 'Q'; atproto forbids CIDv0.
    if s.startswith("Qm"):
        return f"CIDv0 is not allowed: {_show(s)}"
    return None


# --------------------------------------------------------------------------
# Datetime
# --------------------------------------------------------------------------

# RFC 3339 profile from the Lexicon ``datetime`` format: uppercase 'T' and
# 'Z', seconds required, optional fraction, mandatory offset of form +HH:MM.
_DATETIME_RE = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})"
    r"T([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.[0-9]{1,20})?"
    r"(?:Z|([+-])([0-9]{2}):([0-9]{2}))"
)
_DATETIME_MAX = 64
_DAYS_IN_MONTH = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _is_leap(year: int) -> bool:
    # Proleptic Gregorian, so year 0 (allowed by the vectors) is a leap year.
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def _datetime_error(s: str) -> str | None:
    if not isinstance(s, str):
        return "datetime must be a string"
    if len(s) > _DATETIME_MAX:
        return f"datetime is too long ({len(s)} chars, max {_DATETIME_MAX})"
    m = _DATETIME_RE.fullmatch(s)
    if m is None:
        return f"invalid datetime syntax (want e.g. 1985-04-12T23:20:50.123Z): {_show(s)}"
    year, month, day, hour, minute, second = (int(g) for g in m.group(1, 2, 3, 4, 5, 6))
    sign, off_h, off_m = m.group(7, 8, 9)
    if sign == "-" and off_h == "00" and off_m == "00":
        # RFC 3339 uses -00:00 for "offset unknown"; atproto wants it explicit.
        return f"datetime offset -00:00 is not allowed: {_show(s)}"
    # The regex only checks digit counts; now check it names a real instant.
    if not 1 <= month <= 12:
        return f"datetime month out of range: {_show(s)}"
    dim = 29 if month == 2 and _is_leap(year) else _DAYS_IN_MONTH[month - 1]
    if not 1 <= day <= dim:
        return f"datetime day out of range: {_show(s)}"
    # No leap second (:60): neither the JS nor the Go reference parser takes it.
    if hour > 23 or minute > 59 or second > 59:
        return f"datetime time of day out of range: {_show(s)}"
    offset = 0
    if sign is not None:
        oh, om = int(off_h), int(off_m)
        if oh > 23 or om > 59:
            return f"datetime offset out of range: {_show(s)}"
        offset = (oh * 60 + om) * 60 * (1 if sign == "+" else -1)
    # Offsets are < 24h, so only 0000-01-01 can normalize to before year 0.
    if year == 0 and month == 1 and day == 1:
        if hour * 3600 + minute * 60 + second - offset < 0:
            return f"datetime normalizes to before year 0: {_show(s)}"
    return None


# --------------------------------------------------------------------------
# Language (BCP-47)
# --------------------------------------------------------------------------

# RFC 5646 section 2.1 ABNF, tightened as the interop vectors require: the
# primary language subtag must be 2-3 lowercase letters (so "JA" and the
# reserved 4-letter / 5-8-letter forms are rejected). Private use ("x-...")
# keeps RFC case-insensitivity for its singleton, as the vectors expect.
_LANGTAG_RE = re.compile(
    r"[a-z]{2,3}(?:-[a-zA-Z]{3}){0,3}"  # language + up to 3 extlang
    r"(?:-[a-zA-Z]{4})?"  # script
    r"(?:-(?:[a-zA-Z]{2}|[0-9]{3}))?"  # region
    r"(?:-(?:[a-zA-Z0-9]{5,8}|[0-9][a-zA-Z0-9]{3}))*"  # variants
    r"(?:-[0-9a-wyzA-WYZ](?:-[a-zA-Z0-9]{2,8})+)*"  # extensions
    r"(?:-[xX](?:-[a-zA-Z0-9]{1,8})+)?"  # private use
)
_PRIVATEUSE_RE = re.compile(r"[xX](?:-[a-zA-Z0-9]{1,8})+")
# RFC 5646 section 2.2.8: these do not fit the langtag production (or are
# registered as whole tags); matched exactly as registered.
_GRANDFATHERED = frozenset(
    {
        "en-GB-oed", "i-ami", "i-bnn", "i-default", "i-enochian", "i-hak",
        "i-klingon", "i-lux", "i-mingo", "i-navajo", "i-pwn", "i-tao", "i-tay",
        "i-tsu", "sgn-BE-FR", "sgn-BE-NL", "sgn-CH-DE",
        "art-lojban", "cel-gaulish", "no-bok", "no-nyn", "zh-guoyu", "zh-hakka",
        "zh-min", "zh-min-nan", "zh-xiang",
    }
)  # fmt: skip


def _is_variant(subtag: str) -> bool:
    # Within the part before the first singleton, lengths tell subtags apart:
    # extlang 3 alpha, script 4 alpha, region 2 alpha / 3 digit, variant 5-8
    # alnum or 4 starting with a digit.
    n = len(subtag)
    return n >= 5 or (n == 4 and subtag[0].isdigit())


def _language_error(s: str) -> str | None:
    if not isinstance(s, str):
        return "language must be a string"
    if s in _GRANDFATHERED or _PRIVATEUSE_RE.fullmatch(s) is not None:
        return None
    if _LANGTAG_RE.fullmatch(s) is None:
        return f"invalid BCP-47 language tag: {_show(s)}"
    # Well-formed; now the RFC 5646 section 2.2.5/2.2.6 validity rules: no
    # variant and no extension singleton may repeat (case-insensitively).
    subtags = s.lower().split("-")
    variants: set[str] = set()
    singletons: set[str] = set()
    in_extensions = False
    for sub in subtags[1:]:
        if len(sub) == 1:
            if sub == "x":
                break  # anything goes inside private use
            if sub in singletons:
                return f"duplicate extension singleton {sub!r} in language tag: {_show(s)}"
            singletons.add(sub)
            in_extensions = True
        elif not in_extensions and _is_variant(sub):
            if sub in variants:
                return f"duplicate variant {sub!r} in language tag: {_show(s)}"
            variants.add(sub)
    return None


# --------------------------------------------------------------------------
# Generic URI
# --------------------------------------------------------------------------

# RFC 3986 scheme, a colon, then a non-empty remainder with no whitespace that
# does not start with a '/' right after an optional "//" (so "http:" and
# "//example.com" fail). Kept lenient on the remainder, like the reference.
_URI_RE = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*:(?://)?[^\s/][^\s]*")
_URI_MAX = 8 * 1024


def _uri_error(s: str) -> str | None:
    if not isinstance(s, str):
        return "URI must be a string"
    size = len(s) if s.isascii() else len(s.encode("utf-8"))
    if size > _URI_MAX:
        return f"URI is too long ({size} bytes, max {_URI_MAX})"
    if _URI_RE.fullmatch(s) is None:
        return f"invalid URI syntax: {_show(s)}"
    return None


# --------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------


def _ensure(check: Callable[[str], str | None], s: str) -> None:
    err = check(s)
    if err is not None:
        raise InvalidSyntax(err)


def is_valid_did(s: str) -> bool:
    """True if ``s`` is a syntactically valid DID (any method)."""
    return _did_error(s) is None


def ensure_valid_did(s: str) -> None:
    """Raise :class:`InvalidSyntax` unless ``s`` is a valid DID."""
    _ensure(_did_error, s)


def is_valid_handle(s: str) -> bool:
    """True if ``s`` is a syntactically valid handle (case-insensitive)."""
    return _handle_error(s) is None


def ensure_valid_handle(s: str) -> None:
    """Raise :class:`InvalidSyntax` unless ``s`` is a valid handle."""
    _ensure(_handle_error, s)


def is_valid_nsid(s: str) -> bool:
    """True if ``s`` is a syntactically valid NSID."""
    return _nsid_error(s) is None


def ensure_valid_nsid(s: str) -> None:
    """Raise :class:`InvalidSyntax` unless ``s`` is a valid NSID."""
    _ensure(_nsid_error, s)


def is_valid_record_key(s: str) -> bool:
    """True if ``s`` is a valid record key (1-512 chars, not ``.``/``..``)."""
    return _record_key_error(s) is None


def ensure_valid_record_key(s: str) -> None:
    """Raise :class:`InvalidSyntax` unless ``s`` is a valid record key."""
    _ensure(_record_key_error, s)


def is_valid_tid(s: str) -> bool:
    """True if ``s`` is a syntactically valid TID."""
    return _tid_error(s) is None


def ensure_valid_tid(s: str) -> None:
    """Raise :class:`InvalidSyntax` unless ``s`` is a valid TID."""
    _ensure(_tid_error, s)


def is_valid_at_identifier(s: str) -> bool:
    """True if ``s`` is a valid DID or handle."""
    return _at_identifier_error(s) is None


def ensure_valid_at_identifier(s: str) -> None:
    """Raise :class:`InvalidSyntax` unless ``s`` is a valid DID or handle."""
    _ensure(_at_identifier_error, s)


def is_valid_at_uri(s: str) -> bool:
    """True if ``s`` is an ``at://`` URI in the Lexicon-restricted form."""
    return _at_uri_error(s) is None


def ensure_valid_at_uri(s: str) -> None:
    """Raise :class:`InvalidSyntax` unless ``s`` is a valid restricted AT URI."""
    _ensure(_at_uri_error, s)


def is_valid_cid(s: str) -> bool:
    """True if ``s`` looks like a CID string (string-level check only)."""
    return _cid_error(s) is None


def ensure_valid_cid(s: str) -> None:
    """Raise :class:`InvalidSyntax` unless ``s`` looks like a CID string."""
    _ensure(_cid_error, s)


def is_valid_datetime(s: str) -> bool:
    """True if ``s`` is an atproto datetime naming a real instant."""
    return _datetime_error(s) is None


def ensure_valid_datetime(s: str) -> None:
    """Raise :class:`InvalidSyntax` unless ``s`` is a valid atproto datetime."""
    _ensure(_datetime_error, s)


def is_valid_language(s: str) -> bool:
    """True if ``s`` is a well-formed and valid BCP-47 language tag."""
    return _language_error(s) is None


def ensure_valid_language(s: str) -> None:
    """Raise :class:`InvalidSyntax` unless ``s`` is a valid BCP-47 tag."""
    _ensure(_language_error, s)


def is_valid_uri(s: str) -> bool:
    """True if ``s`` is a generic URI (scheme, colon, no whitespace, <= 8 KB)."""
    return _uri_error(s) is None


def ensure_valid_uri(s: str) -> None:
    """Raise :class:`InvalidSyntax` unless ``s`` is a generic URI."""
    _ensure(_uri_error, s)


def split_record_path(path: str) -> tuple[str, str]:
    """Split a repo path ``<nsid>/<rkey>`` into ``(collection, rkey)``.

    The path must have exactly two segments (no leading or trailing ``/``),
    the first a valid NSID and the second a valid record key.
    """
    if not isinstance(path, str):
        raise InvalidSyntax("record path must be a string")
    parts = path.split("/")
    if len(parts) != 2:
        raise InvalidSyntax(f"record path must be '<collection>/<rkey>': {_show(path)}")
    collection, rkey = parts
    ensure_valid_nsid(collection)
    ensure_valid_record_key(rkey)
    return collection, rkey
