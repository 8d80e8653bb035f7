"""Rate-limit counters shared by every worker: `ratelimit/<hash>`, one file per key (the
first 32 hex digits of the key's SHA-256), holding "<window start> <count> <window>".

A counter is a fixed window: `count` events since `start`, at most `limit` of them until
`start + window`. Each file is read and rewritten in place under an flock of the file
itself, so no lock file is left beside it; `prune` removes counters whose window is
over (holding the same lock), and a worker that was waiting on a pruned file opens the
new one instead (`_open` checks the file it locked is still linked).

Counters are not fsynced: after a crash a counter may start again from nothing, which
only forgives a few attempts.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import time
from pathlib import Path

from ..errors import RateLimited
from .files import ensure_dir

# The longest window in use (a day): a counter of the earlier format, which did not say
# its window, is stale once this old. So are the earlier format's `<hash>.lock` files.
LONGEST_WINDOW = 86400
_LEGACY_LOCK = ".lock"


def key_name(key: str) -> str:
    """The counter file's name for `key` (any string, lone surrogates included)."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _open(path: Path, create: bool) -> int:
    """`path` opened (created if need be) and locked; never a file pruned meanwhile.
    FileNotFoundError when it does not exist and `create` is false."""
    while True:
        fd = os.open(path, os.O_RDWR | (os.O_CREAT if create else 0), 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if os.fstat(fd).st_nlink:
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # unlinked by `prune` while we waited: take the new one


def _parse(data: bytes) -> tuple[int, int, int] | None:
    """(start, count, window) of a counter's text; window 0 when the (earlier) format
    did not say it; None when it is unreadable (torn by a crash)."""
    try:
        fields = [int(x) for x in data.decode().split()]
    except ValueError:
        return None
    if len(fields) == 2:
        return fields[0], fields[1], 0
    if len(fields) == 3:
        return fields[0], fields[1], fields[2]
    return None


class RateLimiter:
    """Fixed-window counters in files under `root`, shared by all workers."""

    def __init__(self, root: Path, enabled: bool = True) -> None:
        self.root = root
        self.enabled = enabled

    def hit(self, key: str, limit: int, window: int) -> None:
        """Count one event for `key`; raise RateLimited when the window's limit is spent."""
        self._update(key, limit, window, add=True, enforce=True)

    def check(self, key: str, limit: int, window: int) -> None:
        """Raise RateLimited when `key`'s limit is spent, counting nothing."""
        self._update(key, limit, window, add=False, enforce=True)

    def record(self, key: str, limit: int, window: int) -> None:
        """Count one event for `key` (a failure, say), without refusing it."""
        self._update(key, limit, window, add=True, enforce=False)

    def _update(self, key: str, limit: int, window: int, add: bool, enforce: bool) -> None:
        if not self.enabled:
            return
        now = int(time.time())
        path = self.root / key_name(key)
        try:
            fd = _open(path, create=add)
        except FileNotFoundError:
            if not add:
                return  # nothing counted yet
            ensure_dir(self.root)
            fd = _open(path, create=True)
        try:
            found = _parse(os.pread(fd, 64, 0))
            start, count = now, 0
            if found is not None and now - found[0] < window:
                start, count = found[0], found[1]
            if enforce and count >= limit:
                reset = start + window
                raise RateLimited("Rate Limit Exceeded", headers={
                    "Retry-After": str(max(1, reset - now)),
                    "RateLimit-Limit": str(limit), "RateLimit-Remaining": "0",
                    "RateLimit-Reset": str(reset), "RateLimit-Policy": f"{limit};w={window}",
                })
            if add:
                text = f"{start} {count + 1} {window}".encode()
                os.pwrite(fd, text, 0)
                os.ftruncate(fd, len(text))
        finally:
            os.close(fd)

    def prune(self, now: float | None = None) -> int:
        """Remove the counters whose window is over (and lock files of the earlier
        format); returns how many files went."""
        now = time.time() if now is None else now
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return 0
        removed = 0
        for name in names:
            path = self.root / name
            try:
                if name.endswith(_LEGACY_LOCK):
                    if now - path.stat().st_mtime > LONGEST_WINDOW:
                        path.unlink()
                        removed += 1
                    continue
                removed += self._prune_one(path, now)
            except FileNotFoundError:
                continue
        return removed

    @staticmethod
    def _prune_one(path: Path, now: float) -> int:
        fd = os.open(path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if not os.fstat(fd).st_nlink:
                return 0
            found = _parse(os.pread(fd, 64, 0))
            if found is not None:
                start, _count, window = found
                if now - start < (window or LONGEST_WINDOW):
                    return 0
            os.unlink(path)  # over, or unreadable: either way it counts nothing now
            return 1
        finally:
            os.close(fd)
