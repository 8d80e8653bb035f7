"""A "seen once" set shared by every worker process, for short-lived keys: the `jti` of
DPoP proofs and of client assertions, each accepted only the first time.

It is a hash table in one file every process maps, `tmp/DPOP-JTI`, changed under an
flock of that file: a claim is a few microseconds of memory work and two system calls,
where a file created with O_EXCL per key (what this replaced, and still the overflow)
costs a directory entry and journal work that varies with the machine's other disk
traffic.

Layout: a 64-byte header (magic, bucket count, the time of the last overflow), then
`buckets` buckets of SLOTS slots each: SLOTS 16-byte keys (the first 16 bytes of the
key's SHA-256; the next 4 pick the bucket) followed by SLOTS 4-byte times (unix seconds
of the claim; 0: never used). A slot claimed more than `keep` seconds ago is free
again. A bucket whose slots are all live (a flood) overflows to an O_EXCL file in
`overflow/`; for `keep` seconds after an overflow (or after the table was made, so the
files of an older version count too) every claim looks there as well, so a key is
refused the second time whichever place holds it.

The mapping is page cache shared by all processes; it outlives a restart (a replay
right after one is refused too), though not a machine crash (nor did the files, never
synced; a proof is stale minutes later anyway). Not data: not backed up; delete it
only while the server is stopped.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import mmap
import os
import struct
import time
from pathlib import Path

MAGIC = b"PDSJTI01"
HEADER = 64
SLOTS = 16
KEY = 16
BUCKET = SLOTS * (KEY + 4)
BUCKETS = 8192  # 131072 slots (2.6 MB): ten minutes of 200 claims a second
_TIMES = struct.Struct(f"<{SLOTS}I")
_U32 = struct.Struct("<I")
_OVERFLOW_AT = 12  # header offset of the last overflow's time


class SeenOnce:
    """The shared set of one data dir (blocking; safe in any number of processes)."""

    def __init__(self, path: Path, overflow: Path, keep: int,
                 buckets: int = BUCKETS) -> None:
        self.path = path
        self.overflow = overflow
        self.keep = keep
        self.buckets = buckets
        self.size = HEADER + buckets * BUCKET
        self._pid = -1
        self._fd = -1
        self._map: mmap.mmap | None = None

    def _mapped(self) -> tuple[int, mmap.mmap]:
        """This process's descriptor and mapping (a forked child opens its own: an flock
        on a descriptor inherited from the parent would not exclude the parent)."""
        if self._pid == os.getpid() and self._map is not None:
            return self._fd, self._map
        self.close()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            head = os.pread(fd, HEADER, 0)
            if head[:8] != MAGIC or int.from_bytes(head[8:12], "little") != self.buckets \
                    or os.fstat(fd).st_size != self.size:
                os.ftruncate(fd, 0)
                os.ftruncate(fd, self.size)
                now = int(time.time())  # the overflow files count for `keep` from here
                os.pwrite(fd, MAGIC + self.buckets.to_bytes(4, "little")
                          + _U32.pack(now), 0)
            self._map = mmap.mmap(fd, self.size)
        except BaseException:
            os.close(fd)
            raise
        finally:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
        self._fd, self._pid = fd, os.getpid()
        return fd, self._map

    def close(self) -> None:
        """Unmap and close (this process's)."""
        if self._map is not None:
            with contextlib.suppress(BufferError, ValueError):
                self._map.close()
            self._map = None
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1

    def seen(self, key: str, now: float | None = None) -> bool:
        """Whether `key` was claimed before (within `keep` seconds), by any process;
        claims it if not."""
        digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()
        tag = digest[:KEY]
        base = HEADER + int.from_bytes(digest[KEY:KEY + 4], "little") % self.buckets * BUCKET
        times_at = base + SLOTS * KEY
        t = int(time.time() if now is None else now)
        fd, m = self._mapped()
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            times = _TIMES.unpack_from(m, times_at)
            slot = _find(m, tag, base, times_at)
            if slot is not None and t - times[slot] <= self.keep:
                return True
            if t - _U32.unpack_from(m, _OVERFLOW_AT)[0] <= self.keep and \
                    (self.overflow / digest.hex()).exists():
                return True
            if slot is None:
                slot = next((i for i, at in enumerate(times) if t - at > self.keep), None)
            if slot is None:  # every slot live: the key goes to a file
                _U32.pack_into(m, _OVERFLOW_AT, t)
                return not self._claim_file(digest.hex())
            m[base + slot * KEY:base + (slot + 1) * KEY] = tag
            _U32.pack_into(m, times_at + 4 * slot, t)
            return False
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def _claim_file(self, name: str) -> bool:
        """Claim `name` in the overflow directory (O_EXCL); False when it was there."""
        try:
            fd = os.open(self.overflow / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return False
        except FileNotFoundError:
            self.overflow.mkdir(parents=True, exist_ok=True, mode=0o700)
            return self._claim_file(name)
        os.close(fd)
        return True

    def prune(self, now: float | None = None) -> int:
        """Remove overflow files older than `keep` (the table frees its slots by itself);
        returns how many went."""
        cutoff = (time.time() if now is None else now) - self.keep
        removed = 0
        try:
            entries = list(os.scandir(self.overflow))
        except FileNotFoundError:
            return 0
        for entry in entries:
            try:
                if entry.stat().st_mtime < cutoff:
                    os.unlink(entry.path)
                    removed += 1
            except FileNotFoundError:
                continue
        return removed


def _find(m: mmap.mmap, tag: bytes, start: int, end: int) -> int | None:
    """The slot of `tag` among the keys in m[start:end], or None."""
    pos = m.find(tag, start, end)
    while pos != -1:
        slot, off = divmod(pos - start, KEY)
        if off == 0:
            return slot
        pos = m.find(tag, pos + 1, end)
    return None
