"""XRPC query parameters against a method's lexicon: each given parameter is read as its
lexicon type (integer, boolean, string, or an array of those) and checked; a required one
must be there. Parameters the lexicon doesn't name are left alone."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .compiler import compile_def
from .primitives import Check, LexiconError
from .schemas import Lexicons
from .validate import method_def

_INT_DIGITS = 20  # longer than any int64: refused before int() runs


def _scalar(kind: str, raw: str, path: str) -> Any:
    """A query string value read as the lexicon type `kind`."""
    if kind == "integer":
        digits = raw.removeprefix("-")
        if not (0 < len(digits) <= _INT_DIGITS and digits.isascii() and digits.isdigit()):
            raise LexiconError(f"{path} must be an integer")
        return int(raw)
    if kind == "boolean":
        if raw not in ("true", "false"):
            raise LexiconError(f"{path} must be a boolean")
        return raw == "true"
    return raw


def _compiled(lex: Lexicons, nsid: str) -> list[tuple[str, str, str | None, bool, Check]]:
    """(name, type, item type, required, checker) per parameter of a method."""
    key = f"params {nsid}"
    found = lex.compiled.get(key)
    if found is not None:
        return list(found)
    d = method_def(lex, nsid)
    params = d.get("parameters") if d is not None else None
    props = params.get("properties") if isinstance(params, dict) else None
    out = []
    if isinstance(props, dict):
        required = set(params.get("required") or ()) if isinstance(params, dict) else set()
        for name, sub in props.items():
            if not isinstance(sub, dict):
                continue
            items = sub.get("items")
            item_type = items.get("type") if isinstance(items, dict) else None
            out.append((name, str(sub.get("type")), item_type, name in required,
                        compile_def(lex, sub, nsid, "json")))
    lex.compiled[key] = out
    return out


def check_params(lex: Lexicons, nsid: str, params: Mapping[str, Any]) -> None:
    """The query parameters of a call (as parsed: a name given twice holds a list)
    against the method's lexicon. An empty value counts as absent."""
    for name, kind, item_type, required, check in _compiled(lex, nsid):
        raw = params.get(name)
        path = f"Params/{name}"
        values = [raw] if isinstance(raw, str) else list(raw or ())
        values = [v for v in values if v != ""]
        if not values:
            if required:
                raise LexiconError(f'Params must have the property "{name}"')
            continue
        if kind == "array":
            value: Any = [_scalar(item_type or "string", v, f"{path}/{i}")
                          for i, v in enumerate(values)]
        else:
            value = _scalar(kind, values[-1], path)  # given twice: the last one counts
        check(value, path, [])
