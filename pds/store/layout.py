"""Paths of the data directory (see DESIGN.md). Every path a request can name goes
through here after its syntax check, so nothing outside the data dir is reachable."""

from __future__ import annotations

from pathlib import Path

from ..repo.syntax import is_valid_did


class DataDir:
    """The data directory's layout."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    @property
    def accounts(self) -> Path:
        return self.root / "accounts"

    def account(self, did: str) -> Path:
        """An account's directory; refuses anything but a syntactically valid DID."""
        if not is_valid_did(did) or "/" in did or did in (".", ".."):
            raise ValueError(f"not a DID: {did!r}")
        return self.accounts / did

    def ensure(self) -> None:
        """Create the top-level directories (tmp/ must share the accounts' filesystem)."""
        for d in (self.root, self.tmp, self.accounts):
            d.mkdir(parents=True, exist_ok=True)
