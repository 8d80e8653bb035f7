"""com.atproto.repo.*"""

from __future__ import annotations

import asyncio

from ..errors import AuthFailed, InvalidInput, NotSupported, PayloadTooLarge
from ..repo.codec import cid_str, decode_json
from ..services import records as svc
from ..services.auth import AuthKind
from ..services.records import ANY, Write
from .app import Call
from .registry import procedure, query


def _own_repo(call: Call, repo: object) -> str:
    """The DID named by `repo` (handle or DID), which must be the caller's."""
    did = resolve_repo_param(call, repo)
    if did != call.auth.did:
        # As the reference PDS answers: the credentials don't cover this repo.
        raise AuthFailed("Not authorized to write to this repo")
    return did


def resolve_repo_param(call: Call, repo: object) -> str:
    """A hosted account's DID from a `repo` parameter (DID or handle)."""
    if not isinstance(repo, str) or not repo:
        raise InvalidInput("Input must have the property \"repo\"")
    if repo.startswith("did:"):
        did = repo
    else:
        did = call.ctx.accounts.did_for_handle(repo.lower())
    if did is None or call.ctx.accounts.get(did) is None:
        raise InvalidInput(f"Could not find repo: {repo}", "RepoNotFound")
    return did


def _swap(value: object, name: str) -> object:
    if value is None:
        return ANY
    return svc.parse_cid_field(value, name)


def _validation_status(call: Call) -> str:
    validate = call.body.get("validate") if isinstance(call.body, dict) else None
    if validate is True:
        # We hold no lexicons to validate against: refuse rather than pretend.
        raise InvalidInput("Lexicon validation is not supported; omit validate or use false")
    return "unknown"


async def _write_one(call: Call, did: str, write: Write) -> dict:
    """Commit one record write; the answer of createRecord and putRecord."""
    swap_commit = _swap(call.field("swapCommit", required=False), "swapCommit")
    status = _validation_status(call)
    result = await asyncio.to_thread(svc.apply_writes, call.ctx, did, [write], swap_commit)
    op = result.ops[0]
    return {"uri": f"at://{did}/{op.path}", "cid": op.cid.encode(),
            "commit": svc.commit_result_view(result), "validationStatus": status}


@procedure("com.atproto.repo.createRecord", auth=AuthKind.ACCESS)
async def create_record(call: Call):
    did = _own_repo(call, call.field("repo"))
    collection = svc.check_collection(call.field("collection"))
    rkey = call.field("rkey", required=False)
    rkey = svc.check_rkey(rkey) if rkey is not None else svc.new_rkey()
    record = svc.parse_record(collection, call.field("record", kind=dict))
    return await _write_one(call, did, Write("create", collection, rkey, record))


@procedure("com.atproto.repo.putRecord", auth=AuthKind.ACCESS)
async def put_record(call: Call):
    did = _own_repo(call, call.field("repo"))
    collection = svc.check_collection(call.field("collection"))
    rkey = svc.check_rkey(call.field("rkey"))
    record = svc.parse_record(collection, call.field("record", kind=dict))
    # swapRecord: absent = no check; null = must not exist; a CID = must be that.
    if "swapRecord" not in call.body:
        swap = ANY
    elif call.body["swapRecord"] is None:
        swap = None
    else:
        swap = svc.parse_cid_field(call.body["swapRecord"], "swapRecord")
    return await _write_one(call, did, Write("put", collection, rkey, record, swap))


@procedure("com.atproto.repo.deleteRecord", auth=AuthKind.ACCESS)
async def delete_record(call: Call):
    did = _own_repo(call, call.field("repo"))
    collection = svc.check_collection(call.field("collection"))
    rkey = svc.check_rkey(call.field("rkey"))
    swap_commit = _swap(call.field("swapCommit", required=False), "swapCommit")
    swap_record = _swap(call.field("swapRecord", required=False), "swapRecord")
    write = Write("delete", collection, rkey, None, swap_record)
    try:
        result = await asyncio.to_thread(svc.apply_writes, call.ctx, did, [write], swap_commit)
    except InvalidInput as e:
        if e.error == "RecordNotFound" and swap_record is ANY:
            return {}  # deleting what isn't there (as the reference): nothing to commit
        raise
    return {"commit": svc.commit_result_view(result)}


_WRITE_TYPES = {
    "com.atproto.repo.applyWrites#create": "create",
    "com.atproto.repo.applyWrites#update": "update",
    "com.atproto.repo.applyWrites#delete": "delete",
}


@procedure("com.atproto.repo.applyWrites", auth=AuthKind.ACCESS)
async def apply_writes(call: Call):
    did = _own_repo(call, call.field("repo"))
    items = call.field("writes", kind=list)
    if len(items) > svc.MAX_OPS:
        raise InvalidInput(f"Too many writes. Max: {svc.MAX_OPS}")
    swap_commit = _swap(call.field("swapCommit", required=False), "swapCommit")
    status = _validation_status(call)
    writes = []
    for item in items:
        if not isinstance(item, dict) or item.get("$type") not in _WRITE_TYPES:
            raise InvalidInput("Invalid write: unknown $type")
        action = _WRITE_TYPES[item["$type"]]
        collection = svc.check_collection(item.get("collection"))
        if action == "create":
            rkey = item.get("rkey")
            rkey = svc.check_rkey(rkey) if rkey is not None else svc.new_rkey()
        else:
            rkey = svc.check_rkey(item.get("rkey"))
        record = None
        if action != "delete":
            record = svc.parse_record(collection, item.get("value"))
        writes.append(Write(action, collection, rkey, record))
    result = await asyncio.to_thread(svc.apply_writes, call.ctx, did, writes, swap_commit)
    results = []
    for op in result.ops:
        if op.action == "delete":
            results.append({"$type": "com.atproto.repo.applyWrites#deleteResult"})
        else:
            results.append({"$type": f"com.atproto.repo.applyWrites#{op.action}Result",
                            "uri": f"at://{did}/{op.path}", "cid": op.cid.encode(),
                            "validationStatus": status})
    return {"commit": svc.commit_result_view(result), "results": results}


@query("com.atproto.repo.getRecord")
async def get_record(call: Call):
    did = resolve_repo_param(call, call.param("repo", required=True))
    collection = svc.check_collection(call.param("collection", required=True))
    rkey = svc.check_rkey(call.param("rkey", required=True))
    cid_param = call.param("cid")
    cid = svc.parse_cid_field(cid_param, "cid") if cid_param else None
    _check_readable(call, did)
    rec = svc.get_record_json(call.ctx, did, collection, rkey, cid)
    if rec is None:
        raise InvalidInput(f"Could not locate record: at://{did}/{collection}/{rkey}",
                           "RecordNotFound")
    return rec


def _check_readable(call: Call, did: str) -> None:
    acct = call.ctx.accounts.get(did)
    status = acct.get("status") if acct else None
    if status == "takendown":
        raise InvalidInput(f"Repo has been takendown: {did}", "RepoTakendown")
    if status == "deactivated":
        raise InvalidInput(f"Repo has been deactivated: {did}", "RepoDeactivated")


@query("com.atproto.repo.listRecords")
async def list_records(call: Call):
    did = resolve_repo_param(call, call.param("repo", required=True))
    collection = svc.check_collection(call.param("collection", required=True))
    limit = call.param_int("limit", 50, 1, 100)
    cursor = call.param("cursor")
    if cursor is not None:
        svc.check_rkey(cursor)
    reverse = call.param_bool("reverse")
    _check_readable(call, did)
    rows = call.ctx.repo(did).list_records(collection, limit, cursor, reverse)
    out = {"records": [{"uri": f"at://{did}/{collection}/{rkey}", "cid": cid_str(cid),
                        "value": decode_json(data)} for rkey, cid, data in rows]}
    if len(rows) == limit:
        out["cursor"] = rows[-1][0]
    return out


@query("com.atproto.repo.describeRepo")
async def describe_repo(call: Call):
    did = resolve_repo_param(call, call.param("repo", required=True))
    _check_readable(call, did)
    acct = call.ctx.accounts.get(did)
    handle = acct["handle"]
    collections = call.ctx.repo(did).collections()
    doc = None
    try:
        from ..services.accounts import did_doc
        doc = did_doc(call.ctx, did, handle)
    except Exception:  # noqa: BLE001
        pass
    handle_ok = True
    return {"handle": handle, "did": did, "didDoc": doc, "collections": collections,
            "handleIsCorrect": handle_ok}


@procedure("com.atproto.repo.uploadBlob", auth=AuthKind.ACCESS_OR_SERVICE, body="raw")
async def upload_blob(call: Call):
    did = call.auth.did
    acct = call.ctx.accounts.get(did)
    if acct is None:
        raise InvalidInput("Account not found", "AccountNotFound")
    limit = call.ctx.settings.blob_limit
    length = call.req.content_length
    if length is not None and length > limit:
        raise PayloadTooLarge("request entity too large")
    mime = (call.req.content_type or "application/octet-stream").split(";")[0].strip().lower()
    if not mime or "/" not in mime:
        mime = "application/octet-stream"
    cid, meta = await svc.receive_blob(call.ctx, did, call.req.stream, mime, limit)
    return {"blob": {"$type": "blob", "ref": {"$link": cid.encode()},
                     "mimeType": meta["mimeType"], "size": meta["size"]}}


@query("com.atproto.repo.listMissingBlobs", auth=AuthKind.ACCESS)
async def list_missing_blobs(call: Call):
    did = call.auth.did
    limit = call.param_int("limit", 500, 1, 1000)
    cursor = call.param("cursor")

    def run():
        missing: dict[str, str] = {}
        for path, c, present in svc.record_blob_refs(call.ctx, did):
            if not present:
                missing.setdefault(c, f"at://{did}/{path}")
        rows = sorted(missing.items())
        if cursor:
            rows = [r for r in rows if r[0] > cursor]
        return rows[:limit]

    rows = await asyncio.to_thread(run)
    out = {"blobs": [{"cid": c, "recordUri": uri} for c, uri in rows]}
    if len(rows) == limit:
        out["cursor"] = rows[-1][0]
    return out


@procedure("com.atproto.repo.importRepo", auth=AuthKind.ACCESS_OR_SERVICE, body="raw")
async def import_repo(call: Call):
    raise NotSupported("importRepo is not supported yet")

