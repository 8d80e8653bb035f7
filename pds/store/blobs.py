"""An account's blobs: `blobs/<xx>/<cid>` holds the bytes (what nginx sends), and
`blobs/<xx>/<cid>.json` beside it the metadata: MIME type, size, upload time and the
record paths that reference it.

A blob with no references is a temporary upload: it is not served, and it is removed
once it is older than the grace period. References are added before the commit that
makes them and removed after the commit that drops them, so a crash can only leave a
blob referenced too long, never one unreferenced too early.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

from cbrrr import CID

from ..repo.codec import cid_str, raw_cid_for
from .blocks import shard_path
from .files import discard, ensure_dir, flock, fsync_dir, read_file, write_all, write_file
from .layout import BLOBS_LOCK

TEMP_GRACE = 3600  # seconds an unreferenced upload is kept
# In the metadata of a blob an imported repo's records refer to, not uploaded yet.
EXPECTED = "expected"


class BlobTooLarge(Exception):
    pass


class QuotaExceeded(Exception):
    """Storing an upload would take the account's blobs over its quota."""

    def __init__(self, used: int, quota: int) -> None:
        super().__init__(f"{used} of {quota} bytes in use")
        self.used = used
        self.quota = quota


class BlobStore:
    """The blobs directory of one account."""

    def __init__(self, root: Path, tmp: Path) -> None:
        self.root = root
        self.tmp = tmp
        # flock: one upload at a time is counted against the quota and stored.
        self.lock_path = root.parent / BLOBS_LOCK

    def path(self, cid: CID | str) -> Path:
        return shard_path(self.root, cid if isinstance(cid, str) else cid_str(cid))

    def meta_path(self, cid: CID | str) -> Path:
        p = self.path(cid)
        return p.with_name(p.name + ".json")

    def meta(self, cid: CID | str) -> dict | None:
        data = read_file(self.meta_path(cid))
        return None if data is None else json.loads(data)

    def _write_meta(self, cid: CID | str, meta: dict) -> None:
        write_file(self.meta_path(cid), json.dumps(meta).encode(), self.tmp)

    def has(self, cid: CID | str) -> bool:
        return self.meta_path(cid).exists() and self.path(cid).exists()

    # --- upload -------------------------------------------------------------------------

    def start_upload(self) -> Upload:
        ensure_dir(self.tmp)
        return Upload(self, self.tmp / f"blob-{os.getpid()}-{secrets.token_hex(8)}")

    def _commit_upload(self, tmp_path: Path, cid: CID, size: int, mime: str) -> dict:
        path = self.path(cid)
        ensure_dir(path.parent)
        if path.exists():
            os.unlink(tmp_path)
        else:
            os.rename(tmp_path, path)
        meta = self.meta(cid)
        if meta is None or meta.get(EXPECTED):
            # New, or expected by an imported repo's records (which already refer to it).
            refs = meta["refs"] if meta else []
            meta = {"mimeType": mime, "size": size, "createdAt": int(time.time()), "refs": refs}
        else:
            # A re-upload refreshes the temporary grace of a still-unreferenced blob.
            meta["createdAt"] = int(time.time())
        self._write_meta(cid, meta)
        fsync_dir(path.parent)
        return meta

    def usage(self) -> int:
        """Bytes of every blob stored, referenced or not (by the files' sizes)."""
        total = 0
        try:
            shards = os.scandir(self.root)
        except FileNotFoundError:
            return 0
        with shards:
            for shard in shards:
                if not shard.is_dir():
                    continue
                with os.scandir(shard.path) as entries:
                    for entry in entries:
                        if entry.name.endswith(".json"):
                            continue
                        try:
                            total += entry.stat().st_size
                        except FileNotFoundError:  # collected meanwhile
                            pass
        return total

    # --- references ---------------------------------------------------------------------

    def add_ref(self, cid: CID, path: str) -> None:
        meta = self.meta(cid)
        if meta is None:
            raise KeyError(cid)
        if path not in meta["refs"]:
            meta["refs"].append(path)
            self._write_meta(cid, meta)

    def import_refs(self, refs: dict[str, list[str]]) -> None:
        """The references of an imported repo's records (blob CID -> record paths) become
        the blobs' references. A blob not uploaded yet gets its metadata now, marked
        `expected` (no file: not served, not counted), so its upload lands referenced."""
        for cid, paths in refs.items():
            meta = self.meta(cid)
            if meta is None:
                meta = {EXPECTED: True, "createdAt": int(time.time()), "refs": []}
            if sorted(meta["refs"]) != sorted(paths):
                meta["refs"] = sorted(paths)
                ensure_dir(self.meta_path(cid).parent)
                self._write_meta(cid, meta)

    def drop_refs_except(self, refs: dict[str, list[str]]) -> None:
        """After an import: blobs the imported records do not refer to lose their
        references (an uploaded one becomes a temporary upload, collected after the grace
        period; an expected one is forgotten)."""
        for cid, meta in list(self.iter_meta()):
            if cid in refs or not meta["refs"]:
                continue
            if meta.get(EXPECTED):
                self.delete(cid)
            else:
                meta["refs"], meta["createdAt"] = [], int(time.time())
                self._write_meta(cid, meta)

    def remove_ref(self, cid: CID, path: str) -> None:
        """Drop a reference; the last one's removal deletes the blob."""
        meta = self.meta(cid)
        if meta is None or path not in meta["refs"]:
            return
        meta["refs"].remove(path)
        if meta["refs"]:
            self._write_meta(cid, meta)
        else:
            self.delete(cid)

    def delete(self, cid: CID | str) -> None:
        for p in (self.path(cid), self.meta_path(cid)):
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass

    # --- listing and GC -----------------------------------------------------------------

    def iter_meta(self) -> Iterator[tuple[str, dict]]:
        """(cid, metadata) of every blob, in CID order within each shard."""
        if not self.root.is_dir():
            return
        for shard in sorted(os.listdir(self.root)):
            d = self.root / shard
            for name in sorted(os.listdir(d)):
                if name.endswith(".json"):
                    data = read_file(d / name)
                    if data:
                        yield name[:-5], json.loads(data)

    def gc(self, now: float | None = None) -> int:
        """Remove unreferenced uploads older than the grace period; returns the count."""
        now = time.time() if now is None else now
        removed = 0
        for cid, meta in list(self.iter_meta()):
            if not meta["refs"] and now - meta["createdAt"] > TEMP_GRACE:
                self.delete(cid)
                removed += 1
        return removed


class Upload:
    """A blob being received: bytes go to a temp file, hashed on the way."""

    def __init__(self, store: BlobStore, path: Path) -> None:
        self.store = store
        self.path = path
        self.hash = hashlib.sha256()
        self.size = 0
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)

    def write(self, chunk: bytes, limit: int) -> None:
        self.size += len(chunk)
        if self.size > limit:
            self.abort()
            raise BlobTooLarge()
        self.hash.update(chunk)
        write_all(self.fd, chunk)

    def finish(self, mime: str, quota: int | None = None) -> tuple[CID, dict]:
        """fsync, move into place, and record the metadata; returns (cid, metadata).
        With a `quota` (bytes), a new blob that would take the account's blobs over it
        is dropped instead: QuotaExceeded."""
        os.fsync(self.fd)
        os.close(self.fd)
        self.fd = -1
        cid = CID(raw_cid_for(b"").cid_bytes[:4] + self.hash.digest())
        if quota is None:
            return cid, self.store._commit_upload(self.path, cid, self.size, mime)
        with flock(self.store.lock_path):
            if not self.store.path(cid).exists():  # a blob stored already costs nothing
                used = self.store.usage()
                if used + self.size > quota:
                    self.abort()
                    raise QuotaExceeded(used, quota)
            return cid, self.store._commit_upload(self.path, cid, self.size, mime)

    def abort(self) -> None:
        discard(self.fd, self.path)
        self.fd = -1
