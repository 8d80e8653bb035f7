"""Emailed tokens: `accounts/<did>/tokens/<purpose>`, one per account and purpose, holding
the token's SHA-256 (never the token) and when it was issued, as JSON (0600).

A new token for a purpose replaces the old one (as the reference's upsert does). Using
one is a consume: the file is opened, locked with flock, checked to be still linked (a
token replaced or used meanwhile is another file, or none), compared and unlinked while
the lock is held, so of two requests racing with the same token exactly one succeeds.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
import time
from pathlib import Path

from .files import ensure_dir, fsync_dir, read_whole, write_file
from .layout import TOKENS, DataDir, file_name


def token_hash(token: str) -> str:
    """The stored form of a token (tokens are compared upper-case, as the reference)."""
    return hashlib.sha256(token.strip().upper().encode("utf-8", "surrogatepass")).hexdigest()


class TokenStore:
    """The emailed tokens of the accounts of a data dir."""

    def __init__(self, data: DataDir) -> None:
        self.data = data

    def path(self, did: str, purpose: str) -> Path:
        return self.data.account(did) / TOKENS / file_name(purpose, "token purpose")

    def put(self, did: str, purpose: str, token: str, issued_at: float | None = None) -> None:
        """Store `token` (hashed) for `purpose`, replacing any earlier one; durable."""
        path = self.path(did, purpose)
        if not path.parent.is_dir():  # the account's first token: tokens/ made durable too
            ensure_dir(path.parent, 0o700)
            fsync_dir(path.parent.parent)
        doc = {"hash": token_hash(token),
               "issuedAt": int(time.time() if issued_at is None else issued_at)}
        write_file(path, json.dumps(doc).encode(), self.data.tmp, mode=0o600)

    def matches(self, did: str, purpose: str, token: str) -> bool:
        """Whether `token` is the one stored (a look, without using it)."""
        try:
            data = read_whole(self.path(did, purpose))
            stored = str(json.loads(data)["hash"])
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return False
        return hmac.compare_digest(stored, token_hash(token))

    def consume(self, did: str, purpose: str, token: str, max_age: float) -> str | None:
        """Spend `token`: "ok" (and removed) when it is the stored one and under `max_age`
        seconds old; "expired" (left in place: a refusal changes nothing) when it is the
        stored one but older; None when there is none or it differs."""
        path = self.path(did, purpose)
        while True:
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                return None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                if not os.fstat(fd).st_nlink:
                    continue  # replaced (or used) while we waited: look again
                try:
                    doc = json.loads(os.pread(fd, 4096, 0))
                    stored, issued = str(doc["hash"]), float(doc["issuedAt"])
                except (ValueError, KeyError, TypeError):
                    stored, issued = "", 0.0  # torn or damaged: matches nothing
                if not hmac.compare_digest(stored, token_hash(token)):
                    return None
                if time.time() - issued >= max_age:
                    return "expired"
                os.unlink(path)
                fsync_dir(path.parent)
                return "ok"
            finally:
                os.close(fd)

    def discard(self, did: str, purpose: str | None = None) -> None:
        """Forget one purpose's token, or (None) all of the account's."""
        folder = self.data.account(did) / TOKENS
        names = [purpose] if purpose else (os.listdir(folder) if folder.is_dir() else [])
        for name in names:
            try:
                os.unlink(folder / file_name(name, "token purpose"))
            except FileNotFoundError:
                pass
