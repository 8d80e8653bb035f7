"""Reads of hosted repositories for com.atproto.sync.*: exports, proofs, blocks, heads,
hosting status and the list of repos.

Every read first asks `account.require(..., Use.SYNC)` whether the account's repo may be
served to this caller. The public functions are coroutines that do their file work in a
worker thread; an export is a blocking chunk iterator, to be driven from a thread too.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from cbrrr import CID

from ..errors import InvalidInput
from ..repo import car
from ..store.repo import Head
from .account import Account, Use, load, require
from .auth import AuthInfo
from .context import AppContext
from .pagination import Page, paginate
from .threads import blocking


def privileged(auth: AuthInfo | None, did: str) -> bool:
    """Whether the caller may read `did`'s repo while it is inactive: the admin, or the
    account itself (e.g. to migrate out)."""
    return auth is not None and (auth.kind == "admin" or auth.did == did)


def hosted(ctx: AppContext, did: str, auth: AuthInfo | None, use: Use = Use.SYNC) -> Account:
    """The account whose repo is read, if this caller may read it (blocking)."""
    return require(load(ctx, did), use, did, privileged=privileged(auth, did))


async def export_repo(ctx: AppContext, did: str, auth: AuthInfo | None,
                      since: str | None = None) -> Iterator[bytes]:
    """getRepo/getCheckout: the repo as CAR chunks (whole, or what changed after rev
    `since`). The iterator reads blocks as it goes: drive it from a thread."""
    def run() -> Iterator[bytes]:
        hosted(ctx, did, auth)
        return ctx.repo(did).export_car(since)
    return await blocking(run)


async def record_proof(ctx: AppContext, did: str, auth: AuthInfo | None,
                       collection: str, rkey: str) -> bytes:
    """getRecord: a CAR proving the record's presence or absence."""
    def run() -> bytes:
        hosted(ctx, did, auth)
        return ctx.repo(did).record_proof_car(f"{collection}/{rkey}")
    return await blocking(run)


def _blocks(ctx: AppContext, did: str, auth: AuthInfo | None, cids: list[CID]) -> bytes:
    hosted(ctx, did, auth)
    repo = ctx.repo(did)
    found, missing = [], []
    for cid in cids:
        try:
            found.append((cid, repo.blocks.get_checked(cid)))
        except KeyError:
            missing.append(cid.encode())
    if missing:
        raise InvalidInput(f"Could not find blocks: {', '.join(missing)}", "BlockNotFound")
    return car.car_bytes([], found)


async def blocks_car(ctx: AppContext, did: str, auth: AuthInfo | None,
                     cids: list[CID]) -> bytes:
    """getBlocks: the blocks named, as a CAR with no roots; BlockNotFound names any
    missing (each block is hashed against its CID on the way)."""
    return await blocking(_blocks, ctx, did, auth, cids)


async def head(ctx: AppContext, did: str, auth: AuthInfo | None, missing: str) -> Head:
    """getLatestCommit/getHead: the repo's current commit; before its first, the error
    `missing` names (the two methods' lexicons name it differently)."""
    def run() -> Head | None:
        hosted(ctx, did, auth)
        return ctx.repo(did).head()
    current = await blocking(run)
    if current is None:
        raise InvalidInput(f"Could not find root for DID: {did}", missing)
    return current


def _repo_status(ctx: AppContext, did: str, auth: AuthInfo | None) -> dict[str, Any]:
    acct = hosted(ctx, did, auth, Use.REPO_STATUS)
    out: dict[str, Any] = {"did": did, **acct.status_fields()}
    if acct.active:
        current = ctx.repo(did).head()
        if current:
            out["rev"] = current.rev
    return out


async def repo_status(ctx: AppContext, did: str, auth: AuthInfo | None) -> dict[str, Any]:
    """getRepoStatus: whether the repo is active (and its rev when it is)."""
    return await blocking(_repo_status, ctx, did, auth)


def _repo_row(ctx: AppContext, did: str) -> dict[str, Any] | None:
    acct = load(ctx, did)
    current = ctx.repo(did).head() if acct else None
    if acct is None or current is None:
        return None
    return {"did": did, "head": current.cid.encode(), "rev": current.rev,
            **acct.status_fields()}


async def list_repos(ctx: AppContext, limit: int, cursor: str | None) -> Page[dict]:
    """listRepos: every hosted repo with a commit, by DID, with its head and status."""
    def run() -> Page[dict]:
        return paginate(ctx.accounts.list_dids(), limit, cursor,
                        load=lambda did: _repo_row(ctx, did))
    return await blocking(run)
