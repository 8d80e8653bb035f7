"""What the firehose is told. The sequencer (event log under seq/) replaces these."""

from __future__ import annotations

from typing import Any


class Events:
    """Receives every repo commit and account/identity change, in order per account."""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx

    def commit(self, result: Any) -> None:
        """A new commit of a hosted repo."""

    def account(self, did: str, deleted: bool = False) -> None:
        """An account's status changed."""

    def identity(self, did: str) -> None:
        """An account's handle or DID document changed."""

    def sync(self, did: str) -> None:
        """An account's repo state should be re-asserted."""
