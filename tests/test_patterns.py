"""Every regular expression in `pds/` is audited: it runs in linear time, and what it is
matched against is bounded before it runs (a length check, or a bound of the input's
source). A pattern added without an entry here fails this test: audit it, then add it.

`bench/regex_audit.py` measures each against inputs built to make a backtracking
pattern slow (the numbers behind the verdicts), from 1 KB to 1 MB.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "pds"

# (module, name of a compiled pattern, or the literal of an inline re.* call) -> verdict.
AUDIT = {
    ("pds.services.accounts", "EMAIL_RE"):
        "linear: each part's characters exclude the separator ending it; fullmatch after "
        "len <= 254 and local part <= 64",
    ("pds.services.sessions", r"[a-z2-7]{4}(-[a-z2-7]{4}){3}"):
        "fixed length (19): fails by the 20th character whatever the input's size",
    ("pds.services.wellknown", "_HOST"):
        "linear: one class, then an optional port the class can't match; Host header "
        "<= 259 characters checked first",
    ("pds.services.blobs", "_RANGE"):
        "linear: digits, '-', digits; a Range header (the HTTP server bounds headers)",
    ("pds.config", "_LABEL"):
        "per DNS label, at most 63 characters of backtracking; names <= 253 checked first",
    ("pds.repo.plc", "_PLC_DID_RE"): "fixed length (32)",
    ("pds.repo.plc", "[A-Za-z0-9_-]*"): "one class: a single pass",
    ("pds.repo.string_formats", "_CID_RE"): "one class, at most 256 characters",
    ("pds.repo.string_formats", "_DATETIME_RE"):
        "fixed fields, fraction <= 20 digits; length <= 64 checked first",
    ("pds.repo.string_formats", "_LANGTAG_RE"):
        "subtags are split by '-' and each production takes subtags of lengths no other "
        "one at that place does: backtracking is a step per subtag; length <= 256 first",
    ("pds.repo.string_formats", "_PRIVATEUSE_RE"): "subtags split by '-': linear",
    ("pds.repo.string_formats", "_URI_RE"):
        "scheme class excludes ':': linear; length <= 8 KB checked first",
    ("pds.repo.signing_keys", "_HEX64"): "fixed length (64)",
    ("pds.repo.syntax", "_DID_RE"):
        "method class excludes ':', the rest backtracks one character; <= 2048 first",
    ("pds.repo.syntax", "_HANDLE_RE"):
        "labels split by '.', at most 63 characters of backtracking each; <= 253 first",
    ("pds.repo.syntax", "_NSID_RE"):
        "segments split by '.', at most 63 characters of backtracking each; <= 317 first",
    ("pds.repo.syntax", "_RKEY_RE"): "one class, at most 512 characters",
    ("pds.repo.syntax", "_TID_RE"): "fixed length (13); length checked first",
    ("pds.repo.did", "_HOST_RE"):
        "labels split by '.', at most 63 characters of backtracking each; the input is a "
        "checked handle or the host of a checked DID (<= 2048)",
    ("pds.repo.did", "%3a"): "a literal (re.sub of '%3a'), on a checked DID",
    ("pds.lexicon.primitives", "_ISO_DATETIME"):
        "fixed fields, fraction <= 20 digits, nothing repeats; length <= 64 checked first",
    ("pds.xrpc.app", "_SURROGATE_ESCAPE"):
        "fixed length (6 bytes): a scan, one step per byte of a body <= the JSON limit",
    ("pds.store.mailspool", "_ID"):
        "fixed length (29): digits, '-', hex; length == 29 checked first",
    ("pds.store.recovery", "_STAGING"):
        "anchored: a prefix, digits, one separator; file names (<= 255 bytes)",
}

_RE_FUNCS = {"compile", "match", "fullmatch", "search", "sub", "subn", "split", "findall",
             "finditer"}


def _found() -> set[tuple[str, str]]:
    found = set()
    for path in sorted(ROOT.rglob("*.py")):
        module = "pds." + ".".join(path.relative_to(ROOT).with_suffix("").parts)
        module = module.removesuffix(".__init__")
        tree = ast.parse(path.read_text(), str(path))
        compiled_here = False
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "re"
                    and node.func.attr in _RE_FUNCS):
                continue
            if node.func.attr == "compile":
                compiled_here = True
            elif node.args and isinstance(node.args[0], ast.Constant):
                found.add((module, node.args[0].value))
        if compiled_here:
            mod = importlib.import_module(module)
            found.update((module, name) for name, value in vars(mod).items()
                         if isinstance(value, re.Pattern))
    return found


def test_every_pattern_is_audited() -> None:
    found = _found()
    missing = sorted(found - set(AUDIT))
    assert not missing, f"patterns with no audit entry (see this file's docstring): {missing}"
    stale = sorted(set(AUDIT) - found)
    assert not stale, f"audit entries of patterns that are gone: {stale}"
