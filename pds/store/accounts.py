"""Accounts in the data dir.

    accounts/<did>/account.json      handle, email, password hash, status, timestamps
    accounts/<did>/app_passwords.json
    accounts/<did>/sessions/<jti>    one refresh session per file
    accounts/<did>/preferences.json
    handles/<handle>                 -> DID; claimed with O_EXCL, so two workers can't
    emails/<email>                   -> DID; likewise
    invites/<code>.json
    tombstones/<did>                 a deleted account's DID, never to be issued again

JSON files are replaced atomically; account.json is cached per process and re-read when
its mtime changes, so every worker sees another's changes on its next request.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..repo.syntax import is_valid_handle
from .clock import ACCOUNTS
from .files import ensure_dir, flock, fsync_dir, read_file, write_file
from .layout import ACCOUNT_JSON, ACCOUNT_LOCK, LOCK, SESSIONS, DataDir


class Taken(Exception):
    """A handle or email already belongs to another account."""


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())


class AccountStore:
    """Account records and their indexes."""

    def __init__(self, data: DataDir) -> None:
        self.data = data
        self.handles = data.handles
        self.emails = data.emails
        self.invites = data.invites
        self._cache: dict[str, tuple[bytes, dict]] = {}

    def ensure(self) -> None:
        for d in (self.handles, self.emails, self.invites):
            ensure_dir(d)

    # --- account.json -----------------------------------------------------------------

    def _path(self, did: str) -> Path:
        return self.data.account(did) / ACCOUNT_JSON

    def peek(self, did: str) -> dict | None:
        """The account record when this process's cache holds it current (no I/O), else
        None (not cached, changed since, or no such account)."""
        stamp = self.data.clock.stamp(ACCOUNTS)
        hit = self._cache.get(did)
        if hit is not None and stamp is not None and hit[0] == stamp:
            return hit[1]
        return None

    def get(self, did: str) -> dict | None:
        """The account record, or None (also for malformed DIDs). Served from this
        process's cache while the change clock says no account record changed since."""
        stamp = self.data.clock.stamp(ACCOUNTS)
        hit = self._cache.get(did)
        if hit is not None and stamp is not None and hit[0] == stamp:
            return hit[1]
        try:
            data = read_file(self._path(did))
        except ValueError:
            return None
        if data is None:
            self._cache.pop(did, None)
            return None
        acct = json.loads(data)
        if stamp is not None:
            self._cache[did] = (stamp, acct)
        return acct

    def put(self, acct: dict) -> None:
        """Replace an account record (durably)."""
        path = self._path(acct["did"])
        ensure_dir(path.parent)
        write_file(path, json.dumps(acct, indent=1).encode(), self.data.tmp, mode=0o600)
        self.changed(acct["did"])

    def changed(self, did: str) -> None:
        """After `did`'s record changed or went: every process's cached copy is stale.
        Every slot of the clock moves, HEADs too (a deleted account's repo went with it):
        account changes are rare, commits are what must not move the accounts' slot."""
        self._cache.pop(did, None)
        self.data.clock.tick()

    def update(self, did: str, **changes: Any) -> dict:
        """Change fields of an account record under its lock."""
        with flock(self.data.account(did) / ACCOUNT_LOCK):
            self._cache.pop(did, None)
            acct = self.get(did)
            if acct is None:
                raise KeyError(did)
            acct = {**acct, **changes}
            self.put(acct)
            return acct

    def list_dids(self) -> list[str]:
        try:
            return sorted(d for d in os.listdir(self.data.accounts)
                          if (self.data.accounts / d / ACCOUNT_JSON).exists())
        except FileNotFoundError:
            return []

    # --- handle and email claims ------------------------------------------------------

    def _claim(self, path: Path, did: str, exclusive: bool = False) -> None:
        name = path.name
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            if not exclusive and (read_file(path) or b"").decode().strip() == did:
                return
            raise Taken(name) from None
        try:
            os.write(fd, did.encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    @staticmethod
    def _lookup(entry: Callable[[str], Path], name: str, refuse: bool = False) -> str | None:
        """The DID an index entry names; None when there is none, or (unless `refuse`)
        when `name` can't be an entry at all (the layout refuses it before any path is
        built)."""
        try:
            path = entry(name)
        except ValueError:
            if refuse:
                raise
            return None
        data = read_file(path)
        return data.decode().strip() if data else None

    def _release(self, entry: Callable[[str], Path], name: str, did: str) -> None:
        if self._lookup(entry, name) == did:
            try:
                os.unlink(entry(name))
            except FileNotFoundError:
                pass

    def claim_handle(self, handle: str, did: str, exclusive: bool = False) -> None:
        """Take a handle for `did`; raises Taken if another account has it. With
        `exclusive` (sign-up), also if `did` already has it: two sign-ups racing for one
        handle derive the same did:web, and only the first may go on."""
        if not is_valid_handle(handle):
            raise ValueError(f"invalid handle {handle!r}")
        self._claim(self.data.handle(handle.lower()), did, exclusive)

    def did_for_handle(self, handle: str) -> str | None:
        return self._lookup(self.data.handle, handle.lower())

    def release_handle(self, handle: str, did: str) -> None:
        self._release(self.data.handle, handle.lower(), did)

    @staticmethod
    def _email_key(email: str) -> str:
        return email.strip().lower()

    def claim_email(self, email: str, did: str) -> None:
        key = self._email_key(email)
        if key.startswith("."):
            raise ValueError("invalid email")
        self._claim(self.data.email(key), did)

    def did_for_email(self, email: str) -> str | None:
        """The account an address belongs to, or None. An address no file can be named
        for (over 255 bytes...) is refused (InvalidName, a ValueError): no account can
        have it, and a sign-up must hear so before it claims anything."""
        return self._lookup(self.data.email, self._email_key(email), refuse=True)

    def release_email(self, email: str, did: str) -> None:
        self._release(self.data.email, self._email_key(email), did)

    # --- tombstones of deleted accounts -------------------------------------------------

    def bury(self, did: str, record: dict) -> None:
        """Record (durably) that account `did` was deleted; done before anything of it is
        removed, so a DID is never free to be issued again, even after a crash."""
        path = self.data.tombstone(did)
        if not path.parent.is_dir():
            ensure_dir(path.parent)
            fsync_dir(self.data.root)  # the new directory's entry, too
        write_file(path, json.dumps(record).encode(), self.data.tmp)

    def tombstone(self, did: str) -> dict | None:
        """The tombstone of a deleted account, or None (also for malformed DIDs)."""
        try:
            data = read_file(self.data.tombstone(did))
        except ValueError:
            return None
        return None if data is None else json.loads(data)

    # --- small per-account JSON documents ---------------------------------------------

    def read_doc(self, did: str, name: str, default: Any = None) -> Any:
        data = read_file(self.data.account(did) / name)
        return default if data is None else json.loads(data)

    def write_doc(self, did: str, name: str, value: Any) -> None:
        write_file(self.data.account(did) / name, json.dumps(value).encode(), self.data.tmp,
                   mode=0o600)

    # --- refresh sessions -------------------------------------------------------------

    def _session_path(self, did: str, jti: str) -> Path:
        if not jti.replace("-", "").replace("_", "").isascii() or \
                not jti.replace("-", "").replace("_", "").isalnum():
            raise ValueError("bad session id")
        return self.data.session(did, jti)

    def put_session(self, did: str, jti: str, session: dict) -> None:
        path = self._session_path(did, jti)
        ensure_dir(path.parent)
        write_file(path, json.dumps(session).encode(), self.data.tmp, mode=0o600)

    def get_session(self, did: str, jti: str) -> dict | None:
        try:
            data = read_file(self._session_path(did, jti))
        except ValueError:
            return None
        return None if data is None else json.loads(data)

    def delete_session(self, did: str, jti: str) -> None:
        try:
            os.unlink(self._session_path(did, jti))
        except (FileNotFoundError, ValueError):
            pass

    def sessions(self, did: str) -> dict[str, dict | None]:
        d = self.data.account(did) / SESSIONS
        out: dict[str, dict | None] = {}
        try:
            names = os.listdir(d)
        except FileNotFoundError:
            return out
        for n in names:
            data = read_file(d / n)
            try:
                out[n] = json.loads(data) if data else None
            except ValueError:
                out[n] = None  # unreadable: no session anyone can use
        return out

    # --- invite codes -------------------------------------------------------------------

    def _invite_path(self, code: str) -> Path:
        if not isinstance(code, str) or not code.isascii() or \
                not code.replace("-", "").isalnum():
            raise ValueError("bad invite code")
        return self.data.invite(code)

    def put_invite(self, invite: dict) -> None:
        write_file(self._invite_path(invite["code"]), json.dumps(invite).encode(), self.data.tmp)

    def get_invite(self, code: str) -> dict | None:
        try:
            data = read_file(self._invite_path(code))
        except ValueError:
            return None
        return None if data is None else json.loads(data)

    def use_invite(self, code: str, did: str) -> None:
        """Spend one use of an invite code, atomically across workers."""
        with flock(self.invites / LOCK):
            invite = self.get_invite(code)
            if invite is None or invite.get("disabled"):
                raise ValueError("invalid invite code")
            uses = invite.setdefault("uses", [])
            if len(uses) >= invite.get("available", 1):
                raise ValueError("invite code has no uses left")
            uses.append({"usedBy": did, "usedAt": _now()})
            self.put_invite(invite)

    def list_invites(self) -> list[dict]:
        out: list[dict] = []
        try:
            names = sorted(os.listdir(self.invites))
        except FileNotFoundError:
            return out
        for n in names:
            if n.endswith(".json"):
                data = read_file(self.invites / n)
                if data:
                    out.append(json.loads(data))
        return out


now_iso = _now
