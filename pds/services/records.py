"""Record writes and reads for hosted accounts: API input -> the one repo write path."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, Iterator
from typing import Any

from cbrrr import CID

from ..errors import InvalidInput, PayloadTooLarge
from ..repo.codec import (
    InvalidData,
    cid_str,
    decode,
    decode_json,
    encode,
    find_blob_refs,
    json_to_value,
)
from ..repo.syntax import is_valid_nsid, is_valid_record_key
from ..repo.tid import next_tid
from ..store.blobs import BlobStore, BlobTooLarge
from ..store.repo import (
    ANY,
    CommitHooks,
    CommitResult,
    InvalidSwap,
    Op,
    RecordNotFound,
    RepoError,
    RepoNotFound,
    Write,
)
from .context import AppContext

MAX_RECORD_BYTES = 1_000_000
MAX_OPS = 200


def blobs(ctx: AppContext, did: str) -> BlobStore:
    return BlobStore(ctx.data.blobs(did), ctx.data.tmp)


def parse_record(collection: str, record: Any) -> Any:
    """A record from JSON: a map whose `$type` is its collection, within the size limit."""
    if not isinstance(record, dict):
        raise InvalidInput("Record must be an object")
    rtype = record.get("$type")
    if rtype is None:
        raise InvalidInput("Record/$type must be a string")
    if rtype != collection:
        raise InvalidInput(f"Invalid $type: expected {collection}, got {rtype}")
    try:
        value = json_to_value(record)
        size = len(encode(value))
    except InvalidData as e:
        raise InvalidInput(f"Invalid record: {e}") from None
    if size > MAX_RECORD_BYTES:
        raise InvalidInput("Record is too large", "RecordTooBig")
    return value


def check_collection(collection: Any) -> str:
    if not isinstance(collection, str) or not is_valid_nsid(collection):
        raise InvalidInput("Invalid collection: must be an NSID")
    return collection


def check_rkey(rkey: Any) -> str:
    if not isinstance(rkey, str) or not is_valid_record_key(rkey):
        raise InvalidInput("Invalid record key")
    return rkey


def parse_cid_field(value: Any, name: str) -> CID:
    from ..repo.codec import parse_cid
    try:
        return parse_cid(value)
    except (InvalidData, TypeError):
        raise InvalidInput(f"Invalid {name}: must be a CID") from None


class BlobHooks(CommitHooks):
    """Keep blob references in step with the records that make them."""

    def __init__(self, store: BlobStore, read_block: Any, on_commit: Any = None) -> None:
        self.store = store
        self.read_block = read_block
        self.on_commit = on_commit
        self.added: dict[str, set[CID]] = {}

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
                    raise BlobMissing(f"Could not find blob: {cid.encode()}")
            self.added[op.path] = refs
        # Only now, when every write is known good, record the new references.
        for path, refs in self.added.items():
            for cid in refs:
                self.store.add_ref(cid, path)

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


class BlobMissing(RepoError):
    """A record refers to a blob that was never uploaded."""


# The lexicons' names for what the repository refuses; any other refusal is InvalidRequest.
_REFUSALS: dict[type[RepoError], str] = {
    RecordNotFound: "RecordNotFound", InvalidSwap: "InvalidSwap",
    RepoNotFound: "RepoNotFound", BlobMissing: "BlobNotFound",
}


def _refused(e: RepoError) -> InvalidInput:
    name = next((n for cls, n in _REFUSALS.items() if isinstance(e, cls)), None)
    return InvalidInput(str(e), name)


async def receive_blob(ctx: AppContext, did: str, chunks: AsyncIterable[bytes], mime: str,
                       limit: int) -> tuple[CID, dict]:
    """Store an uploaded blob as its bytes arrive, refusing it past `limit` bytes; returns
    (cid, metadata). It stays a temporary upload until a record refers to it."""
    store = blobs(ctx, did)
    upload = await asyncio.to_thread(store.start_upload)
    try:
        async for chunk in chunks:
            upload.write(chunk, limit)
        if upload.size == 0:
            raise InvalidInput("Blob is empty")
        return await asyncio.to_thread(upload.finish, mime)
    except BlobTooLarge:
        raise PayloadTooLarge("request entity too large") from None
    except BaseException:
        upload.abort()
        raise


def record_blob_refs(ctx: AppContext, did: str) -> Iterator[tuple[str, str, bool]]:
    """(record path, blob CID, stored here?) for every blob ref of every record, in record
    order (blocking: a walk of the whole repo)."""
    repo = ctx.repo(did)
    store = blobs(ctx, did)
    for path, cid in repo.tree().items():
        for ref in find_blob_refs(decode(repo.blocks.get(cid))):
            c = cid_str(ref.cid)
            yield path, c, store.has(c)


def commit_result_view(result: CommitResult) -> dict:
    return {"cid": result.cid.encode(), "rev": result.rev}


def apply_writes(ctx: AppContext, did: str, writes: list[Write],
                 swap_commit: Any = ANY) -> CommitResult:
    """The write path of every record endpoint (blocking: call it from a thread)."""
    if len(writes) > MAX_OPS:
        raise InvalidInput(f"Too many writes. Max: {MAX_OPS}")
    acct = ctx.accounts.get(did)
    if acct is None:
        raise InvalidInput("Could not find repo: " + did, "RepoNotFound")
    if acct.get("status") is not None:
        raise InvalidInput(f"Account is {acct['status']}", "AccountDeactivated"
                           if acct["status"] == "deactivated" else "AccountTakedown")
    repo = ctx.repo(did)
    hooks = BlobHooks(blobs(ctx, did), repo.blocks.get, ctx.after_commit)
    try:
        return repo.apply_writes(writes, swap_commit=swap_commit, hooks=hooks)
    except RepoError as e:
        raise _refused(e) from None


def new_rkey() -> str:
    return next_tid()


def get_record_json(ctx: AppContext, did: str, collection: str, rkey: str,
                    cid: CID | None = None) -> dict | None:
    """{uri, cid, value} of a record, or None."""
    found = ctx.repo(did).get_record(f"{collection}/{rkey}")
    if found is None or (cid is not None and found[0] != cid):
        return None
    return {"uri": f"at://{did}/{collection}/{rkey}", "cid": cid_str(found[0]),
            "value": decode_json(found[1])}
