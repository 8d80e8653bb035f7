"""com.atproto.sync.* (all public reads; subscribeRepos lives with the firehose)."""

from __future__ import annotations

import falcon
import falcon.asgi

from ..errors import InvalidInput
from ..repo.codec import InvalidData, parse_cid
from ..services import blobs
from ..services import sync as svc
from ..services.auth import AuthKind
from ..services.context import AppContext
from .app import Answer, Call, Raw
from .registry import query, subscription

CAR_TYPE = "application/vnd.ipld.car"


# The parameters' formats (did, tid, nsid, record-key, cid) are their lexicons', checked
# before a handler runs (validation.py).


def _did_param(call: Call) -> str:
    return call.param("did", required=True)


def _since_param(call: Call) -> str | None:
    return call.param("since")


@query("com.atproto.sync.getRepo", auth=AuthKind.OPTIONAL)
async def get_repo(call: Call) -> Answer:
    did = _did_param(call)
    since = _since_param(call)
    return Raw(await svc.export_repo(call.ctx, did, call.auth, since), CAR_TYPE)


@query("com.atproto.sync.getCheckout", auth=AuthKind.OPTIONAL)
async def get_checkout(call: Call) -> Answer:
    did = _did_param(call)
    return Raw(await svc.export_repo(call.ctx, did, call.auth), CAR_TYPE)


@query("com.atproto.sync.getRecord", auth=AuthKind.OPTIONAL)
async def get_record(call: Call) -> Answer:
    did = _did_param(call)
    collection = call.param("collection", required=True)
    rkey = call.param("rkey", required=True)
    return Raw(await svc.record_proof(call.ctx, did, call.auth, collection, rkey), CAR_TYPE)


@query("com.atproto.sync.getBlocks", auth=AuthKind.OPTIONAL)
async def get_blocks(call: Call) -> Answer:
    did = _did_param(call)
    cids = []
    for c in call.param_list("cids"):
        try:
            cids.append(parse_cid(c))
        except InvalidData:
            raise InvalidInput(f"Invalid CID: {c}") from None
    return Raw(await svc.blocks_car(call.ctx, did, call.auth, cids), CAR_TYPE)


@query("com.atproto.sync.getLatestCommit", auth=AuthKind.OPTIONAL)
async def get_latest_commit(call: Call) -> Answer:
    head = await svc.head(call.ctx, _did_param(call), call.auth, "RepoNotFound")
    return {"cid": head.cid.encode(), "rev": head.rev}


@query("com.atproto.sync.getHead", auth=AuthKind.OPTIONAL)
async def get_head(call: Call) -> Answer:
    head = await svc.head(call.ctx, _did_param(call), call.auth, "HeadNotFound")
    return {"root": head.cid.encode()}


@query("com.atproto.sync.getRepoStatus")
async def get_repo_status(call: Call) -> Answer:
    did = _did_param(call)
    return await svc.repo_status(call.ctx, did, call.auth)


@query("com.atproto.sync.listRepos")
async def list_repos(call: Call) -> Answer:
    limit = call.param_int("limit", 500, 1, 1000)
    page = await svc.list_repos(call.ctx, limit, call.param("cursor"))
    return page.answer("repos")


@query("com.atproto.sync.listBlobs", auth=AuthKind.OPTIONAL)
async def list_blobs(call: Call) -> Answer:
    did = _did_param(call)
    limit = call.param_int("limit", 500, 1, 1000)
    cursor = call.param("cursor")
    page = await blobs.list_blobs(call.ctx, did, call.auth, limit, cursor, _since_param(call))
    return page.answer("cids")


@query("com.atproto.sync.getBlob", auth=AuthKind.OPTIONAL)
async def get_blob(call: Call) -> Answer:
    did = _did_param(call)
    try:
        cid = parse_cid(call.param("cid", required=True))
    except InvalidData:
        raise InvalidInput("Invalid cid") from None
    found = await blobs.serve_blob(call.ctx, did, cid, call.auth, call.req.get_header("Range"))
    return Raw(found.body, found.mime, found.headers, found.status)


@subscription("com.atproto.sync.subscribeRepos")
async def subscribe_repos(ctx: AppContext, req: falcon.asgi.Request,
                          ws: falcon.asgi.WebSocket) -> None:
    from ..services.firehose import serve_subscriber
    raw = req.params.get("cursor")
    if isinstance(raw, list):
        raw = raw[-1]
    cursor = None
    # An empty value means no cursor, as in the reference (xrpc-server decodeQueryParam):
    # @atproto/sync's Firehose sends `?cursor=` when it has none.
    if raw is not None and raw != "":
        try:
            cursor = int(raw)
            if cursor < 0:
                raise ValueError
        except ValueError:
            await ws.accept()
            from ..repo.events import error_frame
            await ws.send_data(error_frame("InvalidRequest", "cursor must be an integer"))
            await ws.close(1008)
            return
    await ws.accept()
    try:
        await serve_subscriber(ctx, ws, cursor)
    except falcon.WebSocketDisconnected:
        return
