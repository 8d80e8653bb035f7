"""Compiles lexicon definitions into checkers (closures), once per definition and form.

The structure types live here (object, array, ref, union, token, record); the primitive
ones in `primitives`. References are resolved when first used, not when compiled, so
recursive definitions compile and only the definitions a value reaches are loaded.
The messages are the reference implementation's (its packages/lexicon validators).
"""

from __future__ import annotations

from typing import Any

from .primitives import PRIMITIVES, BlobRule, Check, LexiconError
from .schemas import Lexicons

__all__ = ["BlobRule", "Check", "LexiconError", "checker", "compile_def", "full_ref"]

def full_ref(ref: str, nsid: str) -> str:
    """A reference made absolute (`#name` -> `nsid#name`) and without `#main`."""
    if ref.startswith("#"):
        ref = nsid + ref
    return ref.removesuffix("#main")


def checker(lex: Lexicons, ref: str, mode: str = "value") -> Check:
    """The checker of the definition `ref` names (compiled once, then cached); one
    that always refuses when the lexicons lack it."""
    key = f"{mode} {ref}"
    found = lex.compiled.get(key)
    if found is not None:
        return found
    with lex.lock:
        defn = lex.get_def(ref)
        if defn is None:
            def missing(v: Any, path: str, blobs: list) -> None:
                raise LexiconError(f"{path}: lexicon {ref} not found")
            compiled: Check = missing
        else:
            compiled = compile_def(lex, defn, ref.partition("#")[0], mode)
        lex.compiled[key] = compiled
        return compiled


def _lazy(lex: Lexicons, ref: str, mode: str) -> Check:
    """A checker that compiles its target on first use."""
    cell: list[Check] = []

    def check(v: Any, path: str, blobs: list) -> None:
        if not cell:
            cell.append(checker(lex, ref, mode))
        cell[0](v, path, blobs)
    return check


def compile_def(lex: Lexicons, d: dict, nsid: str, mode: str) -> Check:
    """The checker of one definition `d` found in the document of `nsid`."""
    kind = d.get("type")
    primitive = PRIMITIVES.get(kind) if isinstance(kind, str) else None
    if primitive is not None:
        return primitive(d, mode)
    if kind == "object":
        return _object(lex, d, nsid, mode)
    if kind == "array":
        return _array(lex, d, nsid, mode)
    if kind == "ref" and isinstance(d.get("ref"), str):
        return _lazy(lex, full_ref(d["ref"], nsid), mode)
    if kind == "union" and isinstance(d.get("refs"), list):
        return _union(lex, d, nsid, mode)
    if kind == "token":
        return _token(nsid, d)
    if kind == "record" and isinstance(d.get("record"), dict):
        return _object(lex, d["record"], nsid, mode)

    def unexpected(v: Any, path: str, blobs: list) -> None:
        raise LexiconError(f"{path}: unexpected lexicon type {kind}")
    return unexpected


def _object(lex: Lexicons, d: dict, nsid: str, mode: str) -> Check:
    props: dict = d["properties"] if isinstance(d.get("properties"), dict) else {}
    nullable = frozenset(d.get("nullable") or ())
    fields = {key: compile_def(lex, sub, nsid, mode)
              for key, sub in props.items() if isinstance(sub, dict)}
    # A required property with a default may be left out (the default applies).
    required = [key for key in d.get("required") or () if isinstance(key, str)
                and not (isinstance(props.get(key), dict) and "default" in props[key])]
    required_set = frozenset(required)

    def check(v: Any, path: str, blobs: list) -> None:
        if type(v) is not dict:
            raise LexiconError(f"{path} must be an object")
        if required_set and not required_set <= v.keys():
            key = next(k for k in required if k not in v)
            raise LexiconError(f'{path} must have the property "{key}"')
        # The value's keys, not the schema's: a record sets a few of many properties.
        for key, x in v.items():
            sub = fields.get(key)
            if sub is None or (x is None and key in nullable):
                continue
            sub(x, f"{path}/{key}", blobs)
    return check


def _array(lex: Lexicons, d: dict, nsid: str, mode: str) -> Check:
    lo = d.get("minLength") if type(d.get("minLength")) is int else None
    hi = d.get("maxLength") if type(d.get("maxLength")) is int else None
    items = d.get("items")
    item = compile_def(lex, items, nsid, mode) if isinstance(items, dict) else None

    def check(v: Any, path: str, blobs: list) -> None:
        if type(v) is not list:
            raise LexiconError(f"{path} must be an array")
        if hi is not None and len(v) > hi:
            raise LexiconError(f"{path} must not have more than {hi} elements")
        if lo is not None and len(v) < lo:
            raise LexiconError(f"{path} must not have fewer than {lo} elements")
        if item is not None:
            for i, x in enumerate(v):
                item(x, f"{path}/{i}", blobs)
    return check


def _union(lex: Lexicons, d: dict, nsid: str, mode: str) -> Check:
    refs = [r for r in d["refs"] if isinstance(r, str)]
    members = {full_ref(r, nsid): _lazy(lex, full_ref(r, nsid), mode) for r in refs}
    closed = d.get("closed") is True
    listed = ", ".join(refs)

    def check(v: Any, path: str, blobs: list) -> None:
        t = v.get("$type") if type(v) is dict else None
        if type(t) is not str:
            raise LexiconError(f'{path} must be an object which includes the "$type" property')
        sub = members.get(t.removesuffix("#main"))
        if sub is None:
            if closed:
                raise LexiconError(f"{path} $type must be one of {listed}")
            return  # an open union: a type it doesn't list is let through unchecked
        sub(v, path, blobs)
    return check


def _token(nsid: str, d: dict) -> Check:
    """A reference to a token: the value is the token's name."""
    def check(v: Any, path: str, blobs: list) -> None:
        if type(v) is not str:
            raise LexiconError(f"{path} must be a string")
    return check
