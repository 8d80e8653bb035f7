"""Syntax checks for the atproto identifiers: DID, handle, NSID, record key, TID, AT URI.

Every format has a pair of functions: ``is_valid_X(s) -> bool`` for cheap
branching and ``ensure_valid_X(s) -> None`` which raises :class:`InvalidSyntax`
with a readable reason. Both share one private ``_X_error`` helper that returns
the reason (or ``None``), so the two can never disagree. Also here: the AT
identifier (DID or handle), handle normalisation and reserved TLDs, record
paths (``<nsid>/<rkey>``), and the two helpers every checker shares.

The rules follow the atproto specs (``specs/did``, ``specs/handle``,
``specs/nsid``, ``specs/record-key``, ``specs/tid``, ``specs/at-uri-scheme``)
and are pinned down by the interop vectors in ``atproto-interop-tests/syntax``.
The other Lexicon string formats (datetime, language, URI, CID) are in
``string_formats.py``. Everything here is pure: no I/O, no DNS.

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
    "ensure_valid_did",
    "ensure_valid_handle",
    "ensure_valid_nsid",
    "ensure_valid_record_key",
    "ensure_valid_tid",
    "is_disallowed_handle_tld",
    "is_valid_at_identifier",
    "is_valid_at_uri",
    "is_valid_did",
    "is_valid_handle",
    "is_valid_nsid",
    "is_valid_record_key",
    "is_valid_tid",
    "normalize_handle",
    "quote_input",
    "raise_if_invalid",
    "split_record_path",
]


class InvalidSyntax(ValueError):
    """A string does not match the atproto syntax it was checked against."""


def quote_input(s: str) -> str:
    """Quote a (possibly huge, hostile) input for an error message."""
    if len(s) > 64:
        return repr(s[:64]) + f"... ({len(s)} chars)"
    return repr(s)


def raise_if_invalid(check: Callable[[str], str | None], s: str) -> None:
    """Raise :class:`InvalidSyntax` with the reason `check` gives for `s`, if any."""
    err = check(s)
    if err is not None:
        raise InvalidSyntax(err)


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
        return f"DID must start with 'did:': {quote_input(s)}"
    if _DID_RE.fullmatch(s) is None:
        return f"invalid DID syntax: {quote_input(s)}"
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
        return f"invalid handle syntax: {quote_input(s)}"
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
        return f"invalid NSID syntax: {quote_input(s)}"
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
        return f"invalid record key syntax: {quote_input(s)}"
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
        return f"invalid TID syntax: {quote_input(s)}"
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
    return f"not a valid DID or handle: {quote_input(s)}"


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
        return f"AT URI must start with 'at://': {quote_input(s)}"
    parts = s[5:].split("/")
    if len(parts) > 3:
        return f"AT URI path has too many segments: {quote_input(s)}"
    if _at_identifier_error(parts[0]) is not None:
        return f"AT URI authority is not a valid DID or handle: {quote_input(s)}"
    if len(parts) >= 2 and _nsid_error(parts[1]) is not None:
        return f"AT URI collection is not a valid NSID: {quote_input(s)}"
    if len(parts) == 3 and _record_key_error(parts[2]) is not None:
        return f"AT URI record key is not valid: {quote_input(s)}"
    return None


# --------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------


def is_valid_did(s: str) -> bool:
    """True if ``s`` is a syntactically valid DID (any method)."""
    return _did_error(s) is None


def ensure_valid_did(s: str) -> None:
    """Raise :class:`InvalidSyntax` unless ``s`` is a valid DID."""
    raise_if_invalid(_did_error, s)


def is_valid_handle(s: str) -> bool:
    """True if ``s`` is a syntactically valid handle (case-insensitive)."""
    return _handle_error(s) is None


def ensure_valid_handle(s: str) -> None:
    """Raise :class:`InvalidSyntax` unless ``s`` is a valid handle."""
    raise_if_invalid(_handle_error, s)


def is_valid_nsid(s: str) -> bool:
    """True if ``s`` is a syntactically valid NSID."""
    return _nsid_error(s) is None


def ensure_valid_nsid(s: str) -> None:
    """Raise :class:`InvalidSyntax` unless ``s`` is a valid NSID."""
    raise_if_invalid(_nsid_error, s)


def is_valid_record_key(s: str) -> bool:
    """True if ``s`` is a valid record key (1-512 chars, not ``.``/``..``)."""
    return _record_key_error(s) is None


def ensure_valid_record_key(s: str) -> None:
    """Raise :class:`InvalidSyntax` unless ``s`` is a valid record key."""
    raise_if_invalid(_record_key_error, s)


def is_valid_tid(s: str) -> bool:
    """True if ``s`` is a syntactically valid TID."""
    return _tid_error(s) is None


def ensure_valid_tid(s: str) -> None:
    """Raise :class:`InvalidSyntax` unless ``s`` is a valid TID."""
    raise_if_invalid(_tid_error, s)


def is_valid_at_identifier(s: str) -> bool:
    """True if ``s`` is a valid DID or handle."""
    return _at_identifier_error(s) is None


def ensure_valid_at_identifier(s: str) -> None:
    """Raise :class:`InvalidSyntax` unless ``s`` is a valid DID or handle."""
    raise_if_invalid(_at_identifier_error, s)


def is_valid_at_uri(s: str) -> bool:
    """True if ``s`` is an ``at://`` URI in the Lexicon-restricted form."""
    return _at_uri_error(s) is None


def ensure_valid_at_uri(s: str) -> None:
    """Raise :class:`InvalidSyntax` unless ``s`` is a valid restricted AT URI."""
    raise_if_invalid(_at_uri_error, s)


def split_record_path(path: str) -> tuple[str, str]:
    """Split a repo path ``<nsid>/<rkey>`` into ``(collection, rkey)``.

    The path must have exactly two segments (no leading or trailing ``/``),
    the first a valid NSID and the second a valid record key.
    """
    if not isinstance(path, str):
        raise InvalidSyntax("record path must be a string")
    parts = path.split("/")
    if len(parts) != 2:
        raise InvalidSyntax(f"record path must be '<collection>/<rkey>': {quote_input(path)}")
    collection, rkey = parts
    ensure_valid_nsid(collection)
    ensure_valid_record_key(rkey)
    return collection, rkey
