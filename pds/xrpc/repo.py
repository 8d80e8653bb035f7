"""com.atproto.repo.*"""

from __future__ import annotations

from ..errors import InvalidInput
from ..repo.codec import cid_str
from ..services import blobs, repo_import
from ..services import records as svc
from ..services.auth import AuthKind
from ..services.records import ANY, Write
from .app import Answer, Call
from .registry import procedure, query


def _swap(value: object, name: str) -> object:
    if value is None:
        return ANY
    return svc.parse_cid_field(value, name)


def _status(answer: dict, status: str | None) -> dict:
    """`validationStatus` when the record was validated (validate: false leaves it out)."""
    if status is not None:
        answer["validationStatus"] = status
    return answer


async def _write_one(call: Call, repo: str, write: Write) -> dict:
    """Commit one record write; the answer of createRecord and putRecord."""
    swap_commit = _swap(call.body.get("swapCommit"), "swapCommit")
    result, statuses = await svc.write_records(call.ctx, call.auth.did, repo, [write],
                                               swap_commit, call.body.get("validate"))
    op = result.ops[0]
    assert op.cid is not None  # a create or update names its record
    return _status({"uri": f"at://{result.did}/{op.path}", "cid": cid_str(op.cid),
                    "commit": svc.commit_result_view(result)}, statuses[0])


@procedure("com.atproto.repo.createRecord", auth=AuthKind.ACCESS)
async def create_record(call: Call) -> Answer:
    # (the input's types and formats are the lexicon's, checked before this runs)
    repo, collection = call.body["repo"], call.body["collection"]
    rkey = call.body.get("rkey") or svc.new_rkey()
    record = svc.parse_record(collection, call.body["record"])
    return await _write_one(call, repo, Write("create", collection, rkey, record))


@procedure("com.atproto.repo.putRecord", auth=AuthKind.ACCESS)
async def put_record(call: Call) -> Answer:
    repo, collection, rkey = call.body["repo"], call.body["collection"], call.body["rkey"]
    record = svc.parse_record(collection, call.body["record"])
    # swapRecord: absent = no check; null = must not exist; a CID = must be that.
    if "swapRecord" not in call.body:
        swap = ANY
    elif call.body["swapRecord"] is None:
        swap = None
    else:
        swap = svc.parse_cid_field(call.body["swapRecord"], "swapRecord")
    return await _write_one(call, repo, Write("put", collection, rkey, record, swap))


@procedure("com.atproto.repo.deleteRecord", auth=AuthKind.ACCESS)
async def delete_record(call: Call) -> Answer:
    repo, collection, rkey = call.body["repo"], call.body["collection"], call.body["rkey"]
    swap_commit = _swap(call.body.get("swapCommit"), "swapCommit")
    swap_record = _swap(call.body.get("swapRecord"), "swapRecord")
    write = Write("delete", collection, rkey, None, swap_record)
    result = await svc.delete_record(call.ctx, call.auth.did, repo, write, swap_commit)
    if result is None:
        return {}  # nothing was there to delete
    return {"commit": svc.commit_result_view(result)}


_WRITE_TYPES = {
    "com.atproto.repo.applyWrites#create": "create",
    "com.atproto.repo.applyWrites#update": "update",
    "com.atproto.repo.applyWrites#delete": "delete",
}


def _parse_write(item: dict) -> Write:
    """One item of applyWrites' `writes` (its shape checked by the lexicon: a closed
    union of the three)."""
    action = _WRITE_TYPES[item["$type"]]
    collection = item["collection"]
    rkey = (item.get("rkey") or svc.new_rkey()) if action == "create" else item["rkey"]
    record = None
    if action != "delete":
        record = svc.parse_record(collection, item.get("value"))
    return Write(action, collection, rkey, record)


@procedure("com.atproto.repo.applyWrites", auth=AuthKind.ACCESS)
async def apply_writes(call: Call) -> Answer:
    repo, items = call.body["repo"], call.body["writes"]
    if len(items) > svc.MAX_OPS:
        raise InvalidInput(f"Too many writes. Max: {svc.MAX_OPS}")
    swap_commit = _swap(call.body.get("swapCommit"), "swapCommit")
    writes = [_parse_write(item) for item in items]
    result, statuses = await svc.write_records(call.ctx, call.auth.did, repo, writes,
                                               swap_commit, call.body.get("validate"))
    results = []
    for op, status in zip(result.ops, statuses, strict=True):
        if op.action == "delete":
            results.append({"$type": "com.atproto.repo.applyWrites#deleteResult"})
        else:
            assert op.cid is not None  # a create or update names its record
            results.append(_status({
                "$type": f"com.atproto.repo.applyWrites#{op.action}Result",
                "uri": f"at://{result.did}/{op.path}", "cid": cid_str(op.cid)}, status))
    return {"commit": svc.commit_result_view(result), "results": results}


@query("com.atproto.repo.getRecord")
async def get_record(call: Call) -> Answer:
    repo = call.param("repo", required=True)
    collection = call.param("collection", required=True)
    rkey = call.param("rkey", required=True)
    cid_param = call.param("cid")
    cid = svc.parse_cid_field(cid_param, "cid") if cid_param else None
    return await svc.get_record(call.ctx, repo, collection, rkey, cid)


@query("com.atproto.repo.listRecords")
async def list_records(call: Call) -> Answer:
    repo = call.param("repo", required=True)
    collection = call.param("collection", required=True)
    limit = call.param_int("limit", 50, 1, 100)
    cursor = call.param("cursor")
    if cursor is not None:
        svc.check_rkey(cursor)
    reverse = call.param_bool("reverse")
    page = await svc.list_records(call.ctx, repo, collection, limit, cursor, reverse)
    return page.answer("records")


@query("com.atproto.repo.describeRepo")
async def describe_repo(call: Call) -> Answer:
    return await svc.describe_repo(call.ctx, call.param("repo", required=True))


def _blob_type(content_type: str | None) -> str:
    mime = (content_type or "application/octet-stream").split(";")[0].strip().lower()
    return mime if mime and "/" in mime else "application/octet-stream"


@procedure("com.atproto.repo.uploadBlob", auth=AuthKind.ACCESS_OR_SERVICE, body="raw")
async def upload_blob(call: Call) -> Answer:
    cid, meta = await blobs.receive_blob(
        call.ctx, call.auth.did, call.req.stream, _blob_type(call.req.content_type),
        call.ctx.settings.blob_limit, call.req.content_length)
    return {"blob": {"$type": "blob", "ref": {"$link": cid_str(cid)},
                     "mimeType": meta["mimeType"], "size": meta["size"]}}


@query("com.atproto.repo.listMissingBlobs", auth=AuthKind.ACCESS)
async def list_missing_blobs(call: Call) -> Answer:
    limit = call.param_int("limit", 500, 1, 1000)
    page = await blobs.list_missing_blobs(call.ctx, call.auth.did, limit, call.param("cursor"))
    return page.answer("blobs", lambda row: {"cid": row[0], "recordUri": row[1]})


@procedure("com.atproto.repo.importRepo", auth=AuthKind.ACCESS_FULL, body="raw")
async def import_repo(call: Call) -> Answer:
    await repo_import.import_repo(call.ctx, call.auth.did, call.req.stream,
                                  call.req.content_length)
    return None
