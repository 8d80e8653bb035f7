"""Where lexicon documents come from: the official set shipped by `lexrpc` (read lazily,
one file per NSID), or documents given in memory (tests, the interop vectors).

A `Lexicons` holds the documents it has read and the checkers compiled from them, so each
NSID costs its file read and compilation once per process, and only NSIDs actually used
(a handful on a PDS: the records people write, the methods it serves) are ever loaded.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..repo.syntax import is_valid_nsid

_LEXRPC = "lexrpc"


def _lexicon_root() -> Path | None:
    """The `lexicons/` directory of the installed `lexrpc` package, found without
    importing it (its import reads every one of its ~600 files)."""
    spec = importlib.util.find_spec(_LEXRPC)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        root = Path(location) / "lexicons"
        if root.is_dir():
            return root
    return None


def _version() -> str:
    try:
        return importlib.metadata.version(_LEXRPC)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


# Which lexicon documents records and calls are validated against (the README says it).
LEXICON_SET = f"{_LEXRPC} {_version()}"


def official_loader() -> Callable[[str], dict | None]:
    """A loader of the official documents: NSID -> document, or None when unknown."""
    root = _lexicon_root()

    def load(nsid: str) -> dict | None:
        if root is None or not is_valid_nsid(nsid):
            return None
        path = root.joinpath(*nsid.split(".")).with_suffix(".json")
        try:
            doc = json.loads(path.read_bytes())
        except (OSError, ValueError):
            return None
        return doc if isinstance(doc, dict) and doc.get("id") == nsid else None

    return load


class Lexicons:
    """A set of lexicon documents, read on demand, and their compiled checkers."""

    def __init__(self, loader: Callable[[str], dict | None]) -> None:
        self._loader = loader
        self._docs: dict[str, dict] = {}
        self.compiled: dict[str, Any] = {}  # the compiler's cache: ref -> checker
        self.lock = threading.RLock()

    @classmethod
    def of(cls, docs: list[dict]) -> Lexicons:
        """Lexicons of the given documents only."""
        by_id = {d["id"]: d for d in docs}
        return cls(by_id.get)

    def doc(self, nsid: str) -> dict | None:
        """The document of `nsid`, or None when the set has none. Only documents found
        are kept (at most the set's few hundred): a miss is asked again each time, so
        records of ever new unknown collections can't grow the cache."""
        found = self._docs.get(nsid)
        if found is not None:
            return found
        with self.lock:
            found = self._docs.get(nsid) or self._loader(nsid)
            if found is not None:
                self._docs[nsid] = found
            return found

    def get_def(self, ref: str) -> dict | None:
        """The definition a reference names: `nsid`, `nsid#main` or `nsid#name`."""
        nsid, _, name = ref.partition("#")
        doc = self.doc(nsid)
        if doc is None:
            return None
        defs = doc.get("defs")
        found = defs.get(name or "main") if isinstance(defs, dict) else None
        return found if isinstance(found, dict) else None


_OFFICIAL: Lexicons | None = None


def official() -> Lexicons:
    """The official lexicons (one instance per process)."""
    global _OFFICIAL
    if _OFFICIAL is None:
        _OFFICIAL = Lexicons(official_loader())
    return _OFFICIAL
