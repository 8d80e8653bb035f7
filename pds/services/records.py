"""Records of hosted accounts: API input -> the one repo write path, and the reads of
com.atproto.repo.* (getRecord, listRecords, describeRepo).

The coroutines do their file work in a worker thread; `apply_writes` is the blocking
write path itself (for callers already in a thread)."""

from __future__ import annotations

from typing import Any

from cbrrr import CID

from ..errors import AuthFailed, InvalidInput
from ..lexicon import LexiconError, official
from ..lexicon.primitives import BlobRule
from ..lexicon.validate import check_record
from ..repo.codec import InvalidData, cid_str, decode_json, encode, json_to_value, parse_cid
from ..repo.syntax import is_valid_nsid, is_valid_record_key
from ..repo.tid import next_tid
from ..store.repo import (
    ANY,
    CommitResult,
    InvalidSwap,
    RecordNotFound,
    RepoError,
    RepoNotFound,
    Write,
)
from . import reads
from .account import Account, Use, find, load, require
from .accounts import did_doc
from .blobs import BlobHooks, BlobMissing, InvalidBlob, blob_store
from .context import AppContext
from .pagination import Page, paginate
from .threads import blocking

MAX_RECORD_BYTES = 1_000_000
MAX_OPS = 200


def parse_record(collection: str, record: Any) -> Any:
    """A record from JSON: a map whose `$type` is its collection (filled in when absent,
    as the reference does), within the size limit."""
    if not isinstance(record, dict):
        raise InvalidInput("Record must be an object")
    if "$type" not in record:
        record = {**record, "$type": collection}
    rtype = record["$type"]
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
    try:
        return parse_cid(value)
    except (InvalidData, TypeError):
        raise InvalidInput(f"Invalid {name}: must be a CID") from None


# The lexicons' names for what the repository refuses; any other refusal is InvalidRequest.
_REFUSALS: dict[type[RepoError], str] = {
    RecordNotFound: "RecordNotFound", InvalidSwap: "InvalidSwap",
    RepoNotFound: "RepoNotFound", BlobMissing: "BlobNotFound", InvalidBlob: "InvalidRequest",
}


def _refused(e: RepoError) -> InvalidInput:
    name = next((n for cls, n in _REFUSALS.items() if isinstance(e, cls)), None)
    return InvalidInput(str(e), name)


def commit_result_view(result: CommitResult) -> dict:
    return {"cid": cid_str(result.cid), "rev": result.rev}


def apply_writes(ctx: AppContext, did: str, writes: list[Write],
                 swap_commit: Any = ANY, rules: dict[str, list[BlobRule]] | None = None
                 ) -> CommitResult:
    """The write path of every record endpoint (blocking: call it from a thread).
    `rules`: per record path, the blobs whose stored type and size its lexicon limits."""
    if len(writes) > MAX_OPS:
        raise InvalidInput(f"Too many writes. Max: {MAX_OPS}")
    require(load(ctx, did), Use.WRITE, did)
    repo = ctx.repo(did)
    hooks = BlobHooks(lambda: blob_store(ctx, did), repo.blocks.get, ctx.after_commit, rules)
    try:
        return repo.apply_writes(writes, swap_commit=swap_commit, hooks=hooks)
    except RepoError as e:
        raise _refused(e) from None


def new_rkey() -> str:
    return next_tid()


# --- the caller's repo ----------------------------------------------------------------------


def resolve_repo(ctx: AppContext, repo: Any) -> Account:
    """The hosted account a `repo` parameter (DID or handle) names (blocking)."""
    if not isinstance(repo, str) or not repo:
        raise InvalidInput("Input must have the property \"repo\"")
    return require(find(ctx, repo), Use.REPO, repo)


def _own_repo(ctx: AppContext, caller: str, repo: Any) -> str:
    """The DID `repo` names, which must be the caller's."""
    did = resolve_repo(ctx, repo).did
    if did != caller:
        # As the reference PDS answers: the credentials don't cover this repo.
        raise AuthFailed("Not authorized to write to this repo")
    return did


def _commit(ctx: AppContext, caller: str, repo: Any, writes: list[Write],
            swap_commit: Any) -> CommitResult:
    return apply_writes(ctx, _own_repo(ctx, caller, repo), writes, swap_commit)


def check_writes(writes: list[Write], validate: bool | None
                 ) -> tuple[list[str | None], dict[str, list[BlobRule]]]:
    """Each record against its lexicon, as `validate` asks (see `lexicon.validate`): the
    `validationStatus` of each write (None: not validated, or a delete) and the blobs
    whose stored type and size the lexicons limit. One invalid record refuses them all."""
    statuses: list[str | None] = []
    rules: dict[str, list[BlobRule]] = {}
    lex = official()
    for w in writes:
        if w.record is None:
            statuses.append(None)
            continue
        try:
            checked = check_record(lex, w.collection, w.rkey, w.record, validate)
        except LexiconError as e:
            raise InvalidInput(str(e)) from None
        statuses.append(checked.status)
        if checked.blobs:
            rules[w.path] = checked.blobs
    return statuses, rules


def _write(ctx: AppContext, caller: str, repo: Any, writes: list[Write], swap_commit: Any,
           validate: bool | None) -> tuple[CommitResult, list[str | None]]:
    did = _own_repo(ctx, caller, repo)
    statuses, rules = check_writes(writes, validate)
    return apply_writes(ctx, did, writes, swap_commit, rules), statuses


async def write_records(ctx: AppContext, caller: str, repo: Any, writes: list[Write],
                        swap_commit: Any = ANY, validate: bool | None = None
                        ) -> tuple[CommitResult, list[str | None]]:
    """createRecord/putRecord/applyWrites: check the records against their lexicons
    (`validate`: None, True or False, as the lexicon of these methods says), then commit
    `writes` to the repo `repo` names (DID or handle), which must be the caller's.
    Returns the commit and each write's `validationStatus` (None: leave it out)."""
    return await blocking(_write, ctx, caller, repo, writes, swap_commit, validate)


def _delete(ctx: AppContext, caller: str, repo: Any, write: Write,
            swap_commit: Any) -> CommitResult | None:
    try:
        return _commit(ctx, caller, repo, [write], swap_commit)
    except InvalidInput as e:
        if e.error == "RecordNotFound" and write.swap is ANY:
            return None  # deleting what isn't there (as the reference): nothing to commit
        raise


async def delete_record(ctx: AppContext, caller: str, repo: Any, write: Write,
                        swap_commit: Any = ANY) -> CommitResult | None:
    """deleteRecord: commit one delete; None when there was nothing to delete (and no
    swap asked that there be)."""
    return await blocking(_delete, ctx, caller, repo, write, swap_commit)


# --- reads ----------------------------------------------------------------------------------


def readable(ctx: AppContext, repo: Any) -> Account:
    """The account whose records are read through com.atproto.repo.* (blocking)."""
    return require(resolve_repo(ctx, repo), Use.READ, repo)


def _get_record(ctx: AppContext, repo: str, collection: str, rkey: str,
                cid: CID | None) -> dict:
    did = readable(ctx, repo).did
    found = ctx.repo(did).get_record(f"{collection}/{rkey}")
    if found is None or (cid is not None and found[0] != cid):
        raise InvalidInput(f"Could not locate record: at://{did}/{collection}/{rkey}",
                           "RecordNotFound")
    return {"uri": f"at://{did}/{collection}/{rkey}", "cid": cid_str(found[0]),
            "value": decode_json(found[1])}


async def get_record(ctx: AppContext, repo: str, collection: str, rkey: str,
                     cid: CID | None = None) -> dict:
    """getRecord: {uri, cid, value} of a record (at version `cid`, when given)."""
    return await reads.read(_get_record, ctx, repo, collection, rkey, cid)


def _list_records(ctx: AppContext, repo: str, collection: str, limit: int,
                  cursor: str | None, reverse: bool) -> Page[dict]:
    did = readable(ctx, repo).did
    # The MST walk seeks to the cursor itself: the page rule does the rest.
    rows = ctx.repo(did).list_records(collection, limit, cursor, reverse)
    page: Page[Any] = paginate(rows, limit, key=lambda row: row[0])
    page.items = [{"uri": f"at://{did}/{collection}/{rkey}", "cid": cid_str(cid),
                   "value": decode_json(data)} for rkey, cid, data in page.items]
    return page


async def list_records(ctx: AppContext, repo: str, collection: str, limit: int,
                       cursor: str | None = None, reverse: bool = False) -> Page[dict]:
    """listRecords: a collection's records, newest rkey first unless `reverse`."""
    return await reads.read(_list_records, ctx, repo, collection, limit, cursor, reverse)


def _describe_repo(ctx: AppContext, repo: str) -> dict:
    acct = readable(ctx, repo)
    collections = ctx.repo(acct.did).collections()
    try:
        doc = did_doc(ctx, acct.did, acct.handle)
    except Exception:  # noqa: BLE001 - a doc we can't render is left out, not fatal
        doc = None
    return {"handle": acct.handle, "did": acct.did, "didDoc": doc,
            "collections": collections}


async def describe_repo(ctx: AppContext, repo: str) -> dict:
    """describeRepo: the account's handle, DID document and collections, and whether
    the handle and the DID name each other (the handle resolves to the DID, the DID's
    document claims the handle: checked as anyone would, remembered a while)."""
    out = await blocking(_describe_repo, ctx, repo)
    out["handleIsCorrect"] = await ctx.identity.handle_is_correct(out["handle"], out["did"])
    return out
