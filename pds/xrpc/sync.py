"""com.atproto.sync.* (all public reads; subscribeRepos lives with the firehose)."""

from __future__ import annotations

import asyncio
import os
import re

import falcon

from ..errors import InvalidInput
from ..repo import car
from ..repo.codec import InvalidData, parse_cid
from ..repo.syntax import is_valid_did, is_valid_tid
from ..services import records as rsvc
from ..services.auth import AuthKind
from .app import Call, Raw
from .registry import query, subscription

CAR_TYPE = "application/vnd.ipld.car"


def _did_param(call: Call) -> str:
    did = call.param("did", required=True)
    if not is_valid_did(did):
        raise InvalidInput("Invalid did")
    return did


def _hosted(call: Call, did: str, allow_inactive: bool = False) -> dict:
    """A hosted account readable through sync, with the lexicon's errors when not."""
    acct = call.ctx.accounts.get(did)
    if acct is None or acct.get("status") == "deleted":
        raise InvalidInput(f"Could not find repo for DID: {did}", "RepoNotFound")
    status = acct.get("status")
    # Admins and the account itself may still read an inactive repo (e.g. to migrate out).
    privileged = call.auth is not None and (call.auth.kind == "admin" or call.auth.did == did)
    if status and not allow_inactive and not privileged:
        name = {"takendown": "RepoTakendown", "suspended": "RepoSuspended",
                "deactivated": "RepoDeactivated"}.get(status, "RepoNotFound")
        raise InvalidInput(f"Repo has been {status}: {did}", name)
    return acct


@query("com.atproto.sync.getRepo", auth=AuthKind.OPTIONAL)
async def get_repo(call: Call):
    did = _did_param(call)
    since = call.param("since")
    if since is not None and not is_valid_tid(since):
        raise InvalidInput("since must be a TID")
    _hosted(call, did)
    repo = call.ctx.repo(did)
    return Raw(repo.export_car(since), CAR_TYPE)


@query("com.atproto.sync.getCheckout", auth=AuthKind.OPTIONAL)
async def get_checkout(call: Call):
    did = _did_param(call)
    _hosted(call, did)
    return Raw(call.ctx.repo(did).export_car(), CAR_TYPE)


@query("com.atproto.sync.getRecord", auth=AuthKind.OPTIONAL)
async def get_record(call: Call):
    did = _did_param(call)
    collection = rsvc.check_collection(call.param("collection", required=True))
    rkey = rsvc.check_rkey(call.param("rkey", required=True))
    _hosted(call, did)

    proof = await asyncio.to_thread(call.ctx.repo(did).record_proof_car,
                                    f"{collection}/{rkey}")
    return Raw(proof, CAR_TYPE)


@query("com.atproto.sync.getBlocks", auth=AuthKind.OPTIONAL)
async def get_blocks(call: Call):
    did = _did_param(call)
    cids = []
    for c in call.param_list("cids"):
        try:
            cids.append(parse_cid(c))
        except InvalidData:
            raise InvalidInput(f"Invalid CID: {c}") from None
    _hosted(call, did)
    repo = call.ctx.repo(did)
    found, missing = [], []
    for cid in cids:
        try:
            found.append((cid, repo.blocks.get_checked(cid)))
        except KeyError:
            missing.append(cid.encode())
    if missing:
        raise InvalidInput(f"Could not find blocks: {', '.join(missing)}", "BlockNotFound")
    return Raw(car.car_bytes([], found), CAR_TYPE)


@query("com.atproto.sync.getLatestCommit", auth=AuthKind.OPTIONAL)
async def get_latest_commit(call: Call):
    did = _did_param(call)
    _hosted(call, did)
    head = call.ctx.repo(did).head()
    if head is None:
        raise InvalidInput(f"Could not find root for DID: {did}", "RepoNotFound")
    return {"cid": head.cid.encode(), "rev": head.rev}


@query("com.atproto.sync.getHead", auth=AuthKind.OPTIONAL)
async def get_head(call: Call):
    did = _did_param(call)
    _hosted(call, did)
    head = call.ctx.repo(did).head()
    if head is None:
        raise InvalidInput(f"Could not find root for DID: {did}", "HeadNotFound")
    return {"root": head.cid.encode()}


@query("com.atproto.sync.getRepoStatus")
async def get_repo_status(call: Call):
    did = _did_param(call)
    acct = _hosted(call, did, allow_inactive=True)
    status = acct.get("status")
    out = {"did": did, "active": status is None}
    if status:
        out["status"] = status
    else:
        head = call.ctx.repo(did).head()
        if head:
            out["rev"] = head.rev
    return out


@query("com.atproto.sync.listRepos")
async def list_repos(call: Call):
    limit = call.param_int("limit", 500, 1, 1000)
    cursor = call.param("cursor")
    dids = call.ctx.accounts.list_dids()
    if cursor:
        dids = [d for d in dids if d > cursor]
    repos = []
    for did in dids:
        acct = call.ctx.accounts.get(did)
        head = call.ctx.repo(did).head() if acct else None
        if acct is None or head is None:
            continue
        status = acct.get("status")
        row = {"did": did, "head": head.cid.encode(), "rev": head.rev, "active": status is None}
        if status:
            row["status"] = status
        repos.append(row)
        if len(repos) >= limit:
            break
    out = {"repos": repos}
    if len(repos) == limit:
        out["cursor"] = repos[-1]["did"]
    return out


@query("com.atproto.sync.listBlobs", auth=AuthKind.OPTIONAL)
async def list_blobs(call: Call):
    did = _did_param(call)
    limit = call.param_int("limit", 500, 1, 1000)
    cursor = call.param("cursor")
    since = call.param("since")
    if since is not None and not is_valid_tid(since):
        raise InvalidInput("since must be a TID")
    _hosted(call, did)

    def run():
        store = rsvc.blobs(call.ctx, did)
        # Referenced blobs only: temporary uploads are not part of the repo.
        cids = sorted(c for c, m in store.iter_meta() if m["refs"])
        if cursor:
            cids = [c for c in cids if c > cursor]
        return cids[:limit]

    cids = await asyncio.to_thread(run)
    out = {"cids": cids}
    if len(cids) == limit:
        out["cursor"] = cids[-1]
    return out


_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


@query("com.atproto.sync.getBlob", auth=AuthKind.OPTIONAL)
async def get_blob(call: Call):
    did = _did_param(call)
    cid_text = call.param("cid", required=True)
    try:
        cid = parse_cid(cid_text)
    except InvalidData:
        raise InvalidInput("Invalid cid") from None
    _hosted(call, did)
    store = rsvc.blobs(call.ctx, did)
    meta = store.meta(cid)
    if meta is None or not meta["refs"] or not store.path(cid).exists():
        raise InvalidInput("Blob not found", "BlobNotFound")
    headers = {
        "Content-Security-Policy": "default-src 'none'; sandbox",
        "X-Content-Type-Options": "nosniff",
        "Content-Disposition": f'attachment; filename="{cid.encode()}"',
        "Cache-Control": "private, max-age=31536000, immutable",
    }
    mime = meta["mimeType"]
    if call.ctx.settings.behind_nginx:
        # nginx sends the file (sendfile, Range) from its internal location; it adds the
        # same security headers there.
        # nginx keeps Content-Type (and would keep Content-Disposition/Cache-Control) from
        # this answer; its internal location adds the security headers, so send only
        # what it cannot know.
        rel = os.path.relpath(store.path(cid), call.ctx.data.accounts)
        return Raw(b"", mime, {"X-Accel-Redirect": "/_blobs/" + rel})
    return _stream_file(call, store.path(cid), meta["size"], mime, headers)


def _stream_file(call: Call, path, size: int, mime: str, headers: dict) -> Raw:
    start, end, status = 0, size - 1, 200
    rng = call.req.get_header("Range")
    if rng:
        m = _RANGE.match(rng.strip())
        if m and (m.group(1) or m.group(2)):
            if m.group(1):
                start = int(m.group(1))
                end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
            else:
                start = max(0, size - int(m.group(2)))
            if start > end or start >= size:
                return Raw(b"", mime, {**headers, "Content-Range": f"bytes */{size}"}, 416)
            status = 206
            headers = {**headers, "Content-Range": f"bytes {start}-{end}/{size}"}
    headers = {**headers, "Accept-Ranges": "bytes", "Content-Length": str(end - start + 1)}
    return Raw(_read_range(path, start, end - start + 1), mime, headers, status)


def _read_range(path, start: int, length: int):
    with open(path, "rb") as f:
        f.seek(start)
        while length > 0:
            chunk = f.read(min(length, 256 * 1024))
            if not chunk:
                return
            length -= len(chunk)
            yield chunk





@subscription("com.atproto.sync.subscribeRepos")
async def subscribe_repos(ctx, req, ws):
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
