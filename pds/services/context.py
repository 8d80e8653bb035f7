"""Per-process services, built once in each worker after the fork."""

from __future__ import annotations

from functools import cached_property
from typing import Any

import httpx

from ..config import Settings
from ..repo.keys import PrivateKey, load_private_key
from ..store.accounts import AccountStore
from ..store.files import read_file
from ..store.layout import DataDir
from ..store.repo import Repo


class AppContext:
    """Everything a handler reaches through `call.ctx`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.data = DataDir(settings.data_dir)
        self.accounts = AccountStore(self.data)
        self._repos: dict[str, Repo] = {}
        self._keys: dict[str, PrivateKey] = {}
        self.fallback: Any = None
        from .auth import Auth
        from .events import Events
        from .identity import Identity
        from .lifecycle import Lifecycle
        self.auth = Auth(self)
        self.identity = Identity(self)
        self.lifecycle = Lifecycle(self)
        self.events = Events(self)

    @cached_property
    def http(self) -> httpx.AsyncClient:
        """Outbound HTTP (PLC, relays, handle resolution); created in the worker's loop."""
        return httpx.AsyncClient(timeout=10.0, follow_redirects=False,
                                 headers={"User-Agent": "pds (python)"})

    def local_signing_key(self, did: str) -> PrivateKey | None:
        """The repo signing key of an account hosted here, or None."""
        key = self._keys.get(did)
        if key is None:
            try:
                data = read_file(self.data.account(did) / "signing.key")
            except ValueError:
                return None
            if data is None:
                return None
            key = self._keys[did] = load_private_key(data)
        return key

    def repo(self, did: str) -> Repo:
        """The repository of a hosted account (cached: its node cache survives requests)."""
        repo = self._repos.get(did)
        if repo is None:
            repo = Repo(self.data.account(did), self.data.tmp, did, self.local_signing_key(did))
            self._repos[did] = repo
        return repo

    def after_commit(self, result: Any) -> None:
        """Tell the firehose about a commit (called by the write path, in order)."""
        self.events.commit(result)

    def forget(self, did: str) -> None:
        """Drop cached state of an account (deleted, or its key changed)."""
        self._repos.pop(did, None)
        self._keys.pop(did, None)
