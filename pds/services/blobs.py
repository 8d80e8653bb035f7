"""Blobs of hosted accounts: uploads, the references records make to them, listing, and
serving them (getBlob), with nginx (`X-Accel-Redirect`) or without it (the file streamed,
Range honoured).

A blob is served only while a record refers to it, and only while its account may be
served (`account.Use.SYNC`). The public functions are coroutines doing their file work
in worker threads.
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
from collections.abc import AsyncIterable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cbrrr import CID

from ..errors import InvalidInput, PayloadTooLarge
from ..lexicon.primitives import BlobRule, LexiconError, check_blob
from ..repo.codec import InvalidData, cid_str, decode, find_blob_refs
from ..store.blobs import BlobStore, BlobTooLarge, QuotaExceeded, Upload
from ..store.repo import CommitHooks, CommitResult, Op, RepoError, Write
from .account import Use, load, require
from .auth import AuthInfo
from .context import AppContext
from .pagination import Page, paginate
from .sync import hosted
from .threads import blocking

# The headers every blob answer carries, wherever it is sent from (nginx's internal
# location adds the same).
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; sandbox",
    "X-Content-Type-Options": "nosniff",
}
CHUNK = 256 * 1024
UPLOAD_BUFFER = 1024 * 1024  # bytes of an upload gathered before one write to disk


def blob_store(ctx: AppContext, did: str) -> BlobStore:
    return BlobStore(ctx.data.blobs(did), ctx.data.tmp)


# --- references from records ------------------------------------------------------------


class BlobMissing(RepoError):
    """A record refers to a blob that was never uploaded."""


class InvalidBlob(RepoError):
    """A record's blob is not of a type or size its lexicon allows."""


class BlobHooks(CommitHooks):
    """Keep blob references in step with the records that make them."""

    def __init__(self, open_store: Callable[[], BlobStore], read_block: Any,
                 on_commit: Any = None, rules: dict[str, list[BlobRule]] | None = None
                 ) -> None:
        self.open_store = open_store
        self.read_block = read_block
        self.on_commit = on_commit
        self.added: dict[str, set[CID]] = {}
        # record path -> the blobs its lexicon constrains (accept, maxSize)
        self.rules = rules or {}

    @functools.cached_property
    def store(self) -> BlobStore:
        """The account's blob store, opened only by a write that has blob refs to keep."""
        return self.open_store()

    def prepare(self, ops: list[Op], writes: list[Write]) -> None:
        by_path = {w.path: w for w in writes}
        for op in ops:
            w = by_path[op.path]
            if w.record is None:
                continue
            try:
                refs = {b.cid for b in find_blob_refs(w.record)}
            except InvalidData as e:
                raise RepoError(f"invalid blob ref in {op.path}: {e}") from None
            for cid in refs:
                if not self.store.has(cid):
                    raise BlobMissing(f"Could not find blob: {cid_str(cid)}")
            self._check_rules(op.path, w.collection)
            self.added[op.path] = refs
        # Only now, when every write is known good, record the new references.
        for path, refs in self.added.items():
            for cid in refs:
                self.store.add_ref(cid, path)

    def _check_rules(self, path: str, collection: str) -> None:
        """The stored type and size of each blob a record's lexicon constrains (what was
        uploaded, not what the record says) against the lexicon's accept and maxSize."""
        for rule in self.rules.get(path, ()):
            meta = self.store.meta(rule.cid) or {}
            try:
                check_blob(rule.path, str(meta.get("mimeType", "")), int(meta.get("size", 0)),
                           rule.accept, rule.max_size)
            except LexiconError as e:
                raise InvalidBlob(f"Invalid {collection} record: {e}") from None

    def finish(self, result: CommitResult) -> None:
        for op in result.ops:
            if op.prev is None:
                continue
            try:
                old = decode(self.read_block(op.prev))
                old_refs = {b.cid for b in find_blob_refs(old)}
            except (KeyError, InvalidData):
                continue
            for cid in old_refs - self.added.get(op.path, set()):
                self.store.remove_ref(cid, op.path)
        # Still under the repo lock: events of one repo go out in commit order.
        if self.on_commit is not None:
            self.on_commit(result)


def record_blob_refs(ctx: AppContext, did: str) -> Iterator[tuple[str, str, bool]]:
    """(record path, blob CID, stored here?) for every blob ref of every record, in record
    order (blocking: a walk of the whole repo)."""
    repo = ctx.repo(did)
    store = blob_store(ctx, did)
    for path, cid in repo.tree().items():
        for ref in find_blob_refs(decode(repo.blocks.get(cid))):
            c = cid_str(ref.cid)
            yield path, c, store.has(c)


# --- uploads --------------------------------------------------------------------------------


# Magic numbers of the media types records ask for (lexicons' `accept`): the stored type
# is what the bytes are, as the reference's upload decides it, whatever the client said
# (clients send `*/*` or nothing). (offset, bytes, type); `ftyp` boxes by their brand.
_MAGIC: list[tuple[int, bytes, str]] = [
    (0, b"\x89PNG\r\n\x1a\n", "image/png"), (0, b"\xff\xd8\xff", "image/jpeg"),
    (0, b"GIF87a", "image/gif"), (0, b"GIF89a", "image/gif"), (8, b"WEBP", "image/webp"),
    (0, b"\x1aE\xdf\xa3", "video/webm"), (0, b"%PDF-", "application/pdf"),
]
_BRANDS = {b"avif": "image/avif", b"heic": "image/heic", b"heix": "image/heic",
           b"mif1": "image/heif", b"qt  ": "video/quicktime"}
SNIFF_BYTES = 16


def sniff_mime(head: bytes) -> str | None:
    """The media type the first bytes of a file show, when they show one."""
    for offset, magic, mime in _MAGIC:
        if head[offset:offset + len(magic)] == magic:
            return mime
    if head[4:8] == b"ftyp":
        return _BRANDS.get(head[8:12], "video/mp4")
    return None


async def _receive(upload: Upload, chunks: AsyncIterable[bytes], limit: int) -> bytes:
    """Write an upload's bytes as they arrive, a buffer-full at a time from a thread;
    returns its first bytes (to tell its type by)."""
    buffer = bytearray()
    head = b""
    async for chunk in chunks:
        if len(head) < SNIFF_BYTES:
            head += chunk[:SNIFF_BYTES - len(head)]
        buffer += chunk
        if len(buffer) >= UPLOAD_BUFFER:
            await blocking(upload.write, bytes(buffer), limit)
            buffer.clear()
    if buffer:
        await blocking(upload.write, bytes(buffer), limit)
    return head


def _quota_refusal(used: int, quota: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"Blob storage quota exceeded: {used} of {quota} bytes in use")


def _start_upload(ctx: AppContext, did: str, limit: int, length: int | None
                  ) -> tuple[Upload, int]:
    """The checks before an upload's first byte is read (the account, the upload rate,
    the declared length against the size limit and the quota); returns the upload and
    how many bytes it may have (blocking)."""
    acct = require(load(ctx, did), Use.MANAGE, did)
    rate = ctx.settings.blob_upload_rate
    # An account moving in (not active yet) uploads all its blobs at once; the quota
    # still bounds what it can store.
    if rate and acct.active:
        ctx.auth.limiter.hit("blob-upload:" + did, rate, 3600)
    if length is not None and length > limit:
        raise PayloadTooLarge("request entity too large")
    store = blob_store(ctx, did)
    quota = ctx.settings.blob_quota
    if quota:
        used = store.usage()
        if used + (length or 1) > quota:
            raise _quota_refusal(used, quota)
        limit = min(limit, quota - used)
    return store.start_upload(), limit


async def receive_blob(ctx: AppContext, did: str, chunks: AsyncIterable[bytes], mime: str,
                       limit: int, length: int | None = None) -> tuple[CID, dict]:
    """uploadBlob: store a blob of account `did` as its bytes arrive (its type: what its
    first bytes show, else `mime`, what the client said), refusing it past
    `limit` bytes (at once when its declared `length` is over) or past what the account's
    blob quota leaves (`PDS_BLOB_QUOTA`), and refusing uploads over the account's upload
    rate (`PDS_BLOB_UPLOAD_RATE`, for active accounts); returns (cid, metadata). It
    stays a temporary upload until a record refers to it."""
    upload, room = await blocking(_start_upload, ctx, did, limit, length)
    quota = ctx.settings.blob_quota or None
    try:
        head = await _receive(upload, chunks, room)
        if upload.size == 0:
            raise InvalidInput("Blob is empty")
        return await blocking(upload.finish, sniff_mime(head) or mime, quota)
    except BlobTooLarge:
        if upload.size <= limit and quota is not None:  # cut off by the quota's room
            raise _quota_refusal(quota - room, quota) from None
        raise PayloadTooLarge("request entity too large") from None
    except QuotaExceeded as e:
        raise _quota_refusal(e.used, e.quota) from None
    except BaseException:
        await asyncio.shield(blocking(upload.abort))
        raise


# --- listing --------------------------------------------------------------------------------


async def list_blobs(ctx: AppContext, did: str, auth: AuthInfo | None, limit: int,
                     cursor: str | None, since: str | None = None) -> Page[str]:
    """listBlobs: the CIDs of the blobs the repo's records refer to; with `since` (a
    rev), those of the records created or updated after it."""
    def run() -> Page[str]:
        hosted(ctx, did, auth)
        if since is not None:
            repo = ctx.repo(did)
            cids = sorted({cid_str(ref.cid) for rec in repo.records_since(since)
                           for ref in find_blob_refs(decode(repo.blocks.get(rec)))})
        else:
            # Referenced blobs only: temporary uploads are not part of the repo.
            cids = sorted(c for c, m in blob_store(ctx, did).iter_meta() if m["refs"])
        return paginate(cids, limit, cursor)
    return await blocking(run)


async def list_missing_blobs(ctx: AppContext, did: str, limit: int,
                             cursor: str | None) -> Page[tuple[str, str]]:
    """listMissingBlobs: (cid, record URI) of blobs records refer to but that were never
    uploaded (after an import), by CID."""
    def run() -> Page[tuple[str, str]]:
        missing: dict[str, str] = {}
        for path, c, present in record_blob_refs(ctx, did):
            if not present:
                missing.setdefault(c, f"at://{did}/{path}")
        return paginate(sorted(missing.items()), limit, cursor, key=lambda row: row[0])
    return await blocking(run)


# --- serving (getBlob) ----------------------------------------------------------------------


@dataclass
class BlobAnswer:
    """What to send for a getBlob: status, the blob's type, headers and a body (bytes, or
    a blocking chunk iterator reading the file: drive it from a thread)."""

    mime: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | Iterator[bytes] = b""
    status: int = 200


_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def _byte_range(header: str | None, size: int) -> tuple[int, int] | None | Literal[False]:
    """(first, last) byte of a satisfiable single Range; None for no (usable) Range; False
    when the Range can't be satisfied."""
    m = _RANGE.match(header.strip()) if header else None
    if not m or not (m.group(1) or m.group(2)):
        return None
    if m.group(1):
        start = int(m.group(1))
        end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
    else:
        start, end = max(0, size - int(m.group(2))), size - 1
    if start > end or start >= size:
        return False
    return start, end


def _read_range(path: Path, start: int, length: int) -> Iterator[bytes]:
    with open(path, "rb") as f:
        f.seek(start)
        while length > 0:
            chunk = f.read(min(length, CHUNK))
            if not chunk:
                return
            length -= len(chunk)
            yield chunk


def _stream(path: Path, size: int, mime: str, headers: dict[str, str],
            range_header: str | None) -> BlobAnswer:
    """The file itself, or the part of it a Range asks for."""
    rng = _byte_range(range_header, size)
    if rng is False:
        return BlobAnswer(mime, {**headers, "Content-Range": f"bytes */{size}"}, b"", 416)
    start, end, status = 0, size - 1, 200
    if rng:
        (start, end), status = rng, 206
        headers = {**headers, "Content-Range": f"bytes {start}-{end}/{size}"}
    headers = {**headers, "Accept-Ranges": "bytes", "Content-Length": str(end - start + 1)}
    return BlobAnswer(mime, headers, _read_range(path, start, end - start + 1), status)


def _serve(ctx: AppContext, did: str, cid: CID, auth: AuthInfo | None,
           range_header: str | None) -> BlobAnswer:
    hosted(ctx, did, auth)
    store = blob_store(ctx, did)
    meta = store.meta(cid)
    path = store.path(cid)
    if meta is None or not meta["refs"] or not path.exists():
        raise InvalidInput("Blob not found", "BlobNotFound")
    mime = meta["mimeType"]
    if ctx.settings.behind_nginx:
        # nginx sends the file (sendfile, Range) from its internal location, adding the
        # security headers there; it keeps this answer's Content-Type, so send only what
        # it cannot know.
        rel = os.path.relpath(path, ctx.data.accounts)
        return BlobAnswer(mime, {"X-Accel-Redirect": "/_blobs/" + rel})
    headers = {
        **SECURITY_HEADERS,
        "Content-Disposition": f'attachment; filename="{cid.encode()}"',
        "Cache-Control": "private, max-age=31536000, immutable",
    }
    return _stream(path, meta["size"], mime, headers, range_header)


async def serve_blob(ctx: AppContext, did: str, cid: CID, auth: AuthInfo | None,
                     range_header: str | None = None) -> BlobAnswer:
    """getBlob: what to answer for blob `cid` of `did` (Range: the request's header)."""
    return await blocking(_serve, ctx, did, cid, auth, range_header)
