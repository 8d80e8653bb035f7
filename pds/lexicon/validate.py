"""What the PDS asks of the lexicons: is this record valid, are these XRPC parameters
and this body what the method's lexicon says, does the lexicon know this collection.

Records are checked in value form (decoded: `CID`s and `bytes`), XRPC bodies in JSON
form. Every refusal raises `LexiconError` with a message naming the path and the rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..repo.syntax import is_valid_nsid, is_valid_record_key, is_valid_tid
from .compiler import checker, compile_def
from .primitives import BlobRule, LexiconError
from .schemas import Lexicons


@dataclass
class RecordCheck:
    """The outcome of checking one record: its `validationStatus` (None: not validated,
    the key is left out of the answer) and the blobs whose stored type and size must
    fit the lexicon too."""

    status: str | None
    blobs: list[BlobRule] = field(default_factory=list)


def record_def(lex: Lexicons, collection: str) -> dict | None:
    """The record definition of a collection, or None when the lexicons have none."""
    d = lex.get_def(collection)
    return d if d is not None and d.get("type") == "record" else None


def check_record_key(collection: str, key_type: Any, rkey: str) -> None:
    """A record key against its lexicon's key type (`tid`, `nsid`, `literal:x`, `any`)."""
    if not isinstance(key_type, str) or key_type == "any":
        ok, rule = is_valid_record_key(rkey), "a record key"
    elif key_type == "tid":
        ok, rule = is_valid_tid(rkey), "a TID"
    elif key_type == "nsid":
        ok, rule = is_valid_nsid(rkey), "an NSID"
    elif key_type.startswith("literal:"):
        literal = key_type.removeprefix("literal:")
        ok, rule = rkey == literal, f'"{literal}"'
    else:
        ok, rule = is_valid_record_key(rkey), "a record key"
    if not ok:
        raise LexiconError(f"Invalid record key for {collection}: must be {rule}")


def check_record(lex: Lexicons, collection: str, rkey: str, record: Any,
                 validate: bool | None) -> RecordCheck:
    """A record (value form) written to `collection/rkey`, as the reference PDS checks it:
    `validate` None validates when the lexicon is known (`valid`, else `unknown`), True
    requires a known lexicon, False skips the lexicon but still holds the key to the
    lexicon's key type."""
    d = record_def(lex, collection)
    if d is None:
        if validate is True:
            raise LexiconError(f"Unknown lexicon type: {collection}")
        return RecordCheck(None if validate is False else "unknown")
    check_record_key(collection, d.get("key"), rkey)
    if validate is False:
        return RecordCheck(None)
    blobs: list[BlobRule] = []
    try:
        checker(lex, collection)(record, "Record", blobs)
    except LexiconError as e:
        raise LexiconError(f"Invalid {collection} record: {e}") from None
    return RecordCheck("valid", blobs)


def method_def(lex: Lexicons, nsid: str) -> dict | None:
    """The query or procedure definition of an XRPC method, or None."""
    d = lex.get_def(nsid)
    return d if d is not None and d.get("type") in ("query", "procedure") else None


def _body_schema(lex: Lexicons, nsid: str, part: str) -> dict | None:
    d = method_def(lex, nsid)
    body = d.get(part) if d is not None else None
    if not isinstance(body, dict) or body.get("encoding") != "application/json":
        return None
    schema = body.get("schema")
    return schema if isinstance(schema, dict) else None


def _check_body(lex: Lexicons, nsid: str, part: str, root: str, value: Any) -> None:
    schema = _body_schema(lex, nsid, part)
    if schema is None:
        return
    key = f"{part} {nsid}"
    check = lex.compiled.get(key)
    if check is None:
        check = lex.compiled[key] = compile_def(lex, schema, nsid, "json")
    if type(value) is not dict:  # a body is always an object (the reference's mustBeObj)
        raise LexiconError(f"{root} must be an object")
    check(value, root, [])


def check_input(lex: Lexicons, nsid: str, body: Any) -> None:
    """A procedure's JSON body against its lexicon (no body counts as `{}`)."""
    _check_body(lex, nsid, "input", "Input", {} if body is None else body)


def check_output(lex: Lexicons, nsid: str, body: Any) -> None:
    """A method's JSON answer against its lexicon (the tests turn this on)."""
    _check_body(lex, nsid, "output", "Output", body)
