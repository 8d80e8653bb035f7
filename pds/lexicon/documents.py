"""Is a lexicon document itself well formed (the language's rules, as the interop
vectors `lexicon-valid` / `lexicon-invalid` pin them down)?"""

from __future__ import annotations

from typing import Any

from ..repo.syntax import is_valid_nsid
from .primitives import LexiconError

# Types that may only be a document's `main` definition.
PRIMARY = frozenset({"record", "query", "procedure", "subscription", "permission-set",
                     "space"})
# Types a named definition may have (`ref`, `union` and `unknown` only appear inside).
NAMED = PRIMARY | frozenset({"object", "array", "token", "string", "integer", "boolean",
                             "bytes", "cid-link", "blob"})
FIELD_TYPES = NAMED - PRIMARY | frozenset({"ref", "union", "unknown"})


def check_document(doc: Any) -> None:
    """Raise `LexiconError` naming what is wrong with a lexicon document."""
    if not isinstance(doc, dict):
        raise LexiconError("Lexicon must be an object")
    if type(doc.get("lexicon")) is not int or doc["lexicon"] != 1:
        raise LexiconError("Lexicon/lexicon must be 1")
    nsid = doc.get("id")
    if not isinstance(nsid, str):
        raise LexiconError("Lexicon/id must be a string")
    if not is_valid_nsid(nsid):
        raise LexiconError("Lexicon/id must be a valid nsid")
    defs = doc.get("defs")
    if not isinstance(defs, dict):
        raise LexiconError("Lexicon/defs must be an object")
    for name, d in defs.items():
        _check_named(f"Lexicon/defs/{name}", name, d)


def _check_named(path: str, name: str, d: Any) -> None:
    if not isinstance(d, dict) or not isinstance(d.get("type"), str):
        raise LexiconError(f"{path} must be an object with a type")
    kind = d["type"]
    if kind not in NAMED:
        raise LexiconError(f"{path}: a definition can not be of type {kind}")
    if kind in PRIMARY and name != "main":
        raise LexiconError(f"{path}: a {kind} can only be the main definition")
    if kind == "record":
        if not isinstance(d.get("key"), str):
            raise LexiconError(f"{path}/key must be a string")
        _check_object(f"{path}/record", d.get("record"))
    elif kind == "object":
        _check_object(path, d)
    elif kind == "array":
        _check_field(f"{path}/items", d.get("items"))


def _check_object(path: str, d: Any) -> None:
    if not isinstance(d, dict) or d.get("type") != "object":
        raise LexiconError(f"{path} must be of type object")
    props = d.get("properties", {})
    if not isinstance(props, dict):
        raise LexiconError(f"{path}/properties must be an object")
    for key, sub in props.items():
        _check_field(f"{path}/properties/{key}", sub)
    for key in ("required", "nullable"):
        names = d.get(key, [])
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise LexiconError(f"{path}/{key} must be an array of strings")


def _check_field(path: str, d: Any) -> None:
    if not isinstance(d, dict) or d.get("type") not in FIELD_TYPES:
        raise LexiconError(f"{path} must be a field definition (type one of "
                           f"{', '.join(sorted(FIELD_TYPES))})")
    kind = d["type"]
    if kind == "object":
        _check_object(path, d)
    elif kind == "array":
        _check_field(f"{path}/items", d.get("items"))
    elif kind == "ref" and not isinstance(d.get("ref"), str):
        raise LexiconError(f"{path}/ref must be a string")
    elif kind == "union" and not (isinstance(d.get("refs"), list)
                                  and all(isinstance(r, str) for r in d["refs"])):
        raise LexiconError(f"{path}/refs must be an array of strings")
