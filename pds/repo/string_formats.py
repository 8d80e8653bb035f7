"""Syntax checks for the Lexicon string formats that are not identifiers.

``datetime`` (the RFC 3339 profile, naming a real instant), ``language``
(BCP-47, well-formed and valid), ``uri`` (generic) and ``cid`` (string-level
only). As in ``syntax.py``, which holds the identifier formats (DID, handle,
NSID, record key, TID, AT URI) and :class:`~pds.repo.syntax.InvalidSyntax`:
``is_valid_X(s) -> bool`` and ``ensure_valid_X(s) -> None`` share one private
``_X_error`` helper, so the two can never disagree.

The rules follow ``specs/lexicon`` and are pinned down by the interop vectors
in ``atproto-interop-tests/syntax``. Pure: no I/O. Regexes are compiled once
and matched with ``fullmatch``.
"""

from __future__ import annotations

import re

from .syntax import quote_input, raise_if_invalid

__all__ = [
    "ensure_valid_cid",
    "ensure_valid_datetime",
    "ensure_valid_language",
    "ensure_valid_uri",
    "is_valid_cid",
    "is_valid_datetime",
    "is_valid_language",
    "is_valid_uri",
]


# --------------------------------------------------------------------------
# CID (string-level only; no multibase/multihash decoding)
# --------------------------------------------------------------------------

_CID_RE = re.compile(r"[a-zA-Z0-9+=]{8,256}")


def _cid_error(s: str) -> str | None:
    if not isinstance(s, str):
        return "CID must be a string"
    if _CID_RE.fullmatch(s) is None:
        return f"invalid CID syntax: {quote_input(s)}"
    # Every CIDv0 (bare base58btc sha2-256 multihash) starts with "Qm", and no
    # multibase-prefixed CIDv1 can start with 'Q'; atproto forbids CIDv0.
    if s.startswith("Qm"):
        return f"CIDv0 is not allowed: {quote_input(s)}"
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
        return f"invalid datetime syntax (want e.g. 1985-04-12T23:20:50.123Z): {quote_input(s)}"
    year, month, day, hour, minute, second = (int(g) for g in m.group(1, 2, 3, 4, 5, 6))
    sign, off_h, off_m = m.group(7, 8, 9)
    if sign == "-" and off_h == "00" and off_m == "00":
        # RFC 3339 uses -00:00 for "offset unknown"; atproto wants it explicit.
        return f"datetime offset -00:00 is not allowed: {quote_input(s)}"
    # The regex only checks digit counts; now check it names a real instant.
    if not 1 <= month <= 12:
        return f"datetime month out of range: {quote_input(s)}"
    dim = 29 if month == 2 and _is_leap(year) else _DAYS_IN_MONTH[month - 1]
    if not 1 <= day <= dim:
        return f"datetime day out of range: {quote_input(s)}"
    # No leap second (:60): neither the JS nor the Go reference parser takes it.
    if hour > 23 or minute > 59 or second > 59:
        return f"datetime time of day out of range: {quote_input(s)}"
    offset = 0
    if sign is not None:
        oh, om = int(off_h), int(off_m)
        if oh > 23 or om > 59:
            return f"datetime offset out of range: {quote_input(s)}"
        offset = (oh * 60 + om) * 60 * (1 if sign == "+" else -1)
    # Offsets are < 24h, so only 0000-01-01 can normalize to before year 0.
    if year == 0 and month == 1 and day == 1:
        if hour * 3600 + minute * 60 + second - offset < 0:
            return f"datetime normalizes to before year 0: {quote_input(s)}"
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
# No limit in RFC 5646 (it asks for at least 35); real tags are far shorter (the interop
# vectors' longest valid one is 84). Checked before the patterns run.
_LANGUAGE_MAX = 256
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
    if len(s) > _LANGUAGE_MAX:
        return f"language tag is too long ({len(s)} chars, max {_LANGUAGE_MAX})"
    if s in _GRANDFATHERED or _PRIVATEUSE_RE.fullmatch(s) is not None:
        return None
    if _LANGTAG_RE.fullmatch(s) is None:
        return f"invalid BCP-47 language tag: {quote_input(s)}"
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
                return f"duplicate extension singleton {sub!r} in language tag: {quote_input(s)}"
            singletons.add(sub)
            in_extensions = True
        elif not in_extensions and _is_variant(sub):
            if sub in variants:
                return f"duplicate variant {sub!r} in language tag: {quote_input(s)}"
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
        return f"invalid URI syntax: {quote_input(s)}"
    return None


# --------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------


def is_valid_cid(s: str) -> bool:
    """True if ``s`` looks like a CID string (string-level check only)."""
    return _cid_error(s) is None


def ensure_valid_cid(s: str) -> None:
    """Raise :class:`InvalidSyntax` unless ``s`` looks like a CID string."""
    raise_if_invalid(_cid_error, s)


def is_valid_datetime(s: str) -> bool:
    """True if ``s`` is an atproto datetime naming a real instant."""
    return _datetime_error(s) is None


def ensure_valid_datetime(s: str) -> None:
    """Raise :class:`InvalidSyntax` unless ``s`` is a valid atproto datetime."""
    raise_if_invalid(_datetime_error, s)


def is_valid_language(s: str) -> bool:
    """True if ``s`` is a well-formed and valid BCP-47 language tag."""
    return _language_error(s) is None


def ensure_valid_language(s: str) -> None:
    """Raise :class:`InvalidSyntax` unless ``s`` is a valid BCP-47 tag."""
    raise_if_invalid(_language_error, s)


def is_valid_uri(s: str) -> bool:
    """True if ``s`` is a generic URI (scheme, colon, no whitespace, <= 8 KB)."""
    return _uri_error(s) is None


def ensure_valid_uri(s: str) -> None:
    """Raise :class:`InvalidSyntax` unless ``s`` is a generic URI."""
    raise_if_invalid(_uri_error, s)

