"""The OAuth server's state in the data dir: small JSON files, 0600, under `oauth/`.

`oauth/<kind>/<id>` for kind requests, codes, sessions, devices (layout.py names them);
every record carries `expiresAt` (unix seconds), and `prune` removes expired ones.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from typing import Any

from .files import flock, read_file, write_file
from .layout import OAUTH_CODES, OAUTH_DEVICES, OAUTH_LOCK, OAUTH_REQUESTS, OAUTH_SESSIONS, DataDir

KINDS = (OAUTH_REQUESTS, OAUTH_CODES, OAUTH_SESSIONS, OAUTH_DEVICES)


class OAuthStore:
    """Read and write OAuth records of one data dir (blocking)."""

    def __init__(self, data: DataDir) -> None:
        self.data = data

    def get(self, kind: str, name: str) -> dict | None:
        """A record, or None when absent, unreadable or expired."""
        try:
            raw = read_file(self.data.oauth_file(kind, name))
        except ValueError:  # a name no record can have
            return None
        if raw is None:
            return None
        try:
            rec = json.loads(raw)
        except ValueError:
            return None
        if not isinstance(rec, dict) or rec.get("expiresAt", 0) < time.time():
            return None
        return rec

    def put(self, kind: str, name: str, rec: dict) -> None:
        """Write a record durably (atomic replace), 0600."""
        path = self.data.oauth_file(kind, name)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_file(path, json.dumps(rec, separators=(",", ":")).encode(), self.data.tmp,
                   mode=0o600)

    def create(self, kind: str, name: str, rec: dict) -> bool:
        """Write a record only if none exists (O_EXCL: once across workers)."""
        path = self.data.oauth_file(kind, name)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return False
        try:
            os.write(fd, json.dumps(rec, separators=(",", ":")).encode())
            os.fdatasync(fd)
        finally:
            os.close(fd)
        return True

    def delete(self, kind: str, name: str) -> None:
        with contextlib.suppress(FileNotFoundError, ValueError):
            os.unlink(self.data.oauth_file(kind, name))

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """One code exchange or refresh rotation at a time, across workers."""
        self.data.oauth.mkdir(parents=True, exist_ok=True, mode=0o700)
        with flock(self.data.oauth / OAUTH_LOCK):
            yield

    def scan(self, kind: str) -> Iterator[tuple[str, dict]]:
        """Every live record of a kind."""
        try:
            names = os.listdir(self.data.oauth / kind)
        except FileNotFoundError:
            return
        for name in names:
            rec = self.get(kind, name)
            if rec is not None:
                yield name, rec

    def prune(self, now: float | None = None) -> int:
        """Remove expired records of every kind; returns how many went."""
        now = time.time() if now is None else now
        removed = 0
        for kind in KINDS:
            try:
                names = os.listdir(self.data.oauth / kind)
            except FileNotFoundError:
                continue
            for name in names:
                raw = read_file(self.data.oauth / kind / name)
                try:
                    rec: Any = json.loads(raw) if raw is not None else None
                except ValueError:
                    rec = None
                if raw is not None and (not isinstance(rec, dict)
                                        or rec.get("expiresAt", 0) < now):
                    self.delete(kind, name)
                    removed += 1
        return removed


def verify(data: DataDir) -> list[str]:
    """`pds verify`'s look at the OAuth state: each record a JSON object with an expiry,
    readable by the service's user only (0600). Returns the problems found."""
    problems = []
    for kind in KINDS:
        try:
            entries = list(os.scandir(data.oauth / kind))
        except FileNotFoundError:
            continue
        for entry in entries:
            where = f"oauth/{kind}/{entry.name}"
            try:
                rec = json.loads(read_file(entry.path) or b"")
                mode = entry.stat().st_mode
            except (ValueError, OSError):
                problems.append(f"{where}: not a JSON record")
                continue
            if not isinstance(rec, dict) or not isinstance(rec.get("expiresAt"), int):
                problems.append(f"{where}: not an OAuth record (no expiresAt)")
            if mode & 0o077:
                problems.append(f"{where}: readable by others (mode {mode & 0o777:o})")
    return problems
