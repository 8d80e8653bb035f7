"""importRepo: an account's repository replaced by a CAR (moving in from another PDS).

The body is received into the data dir's `tmp/` as it arrives (`store.staged_car`),
within `PDS_MAX_REPO_IMPORT_SIZE`; then, in a worker thread, it is checked as the
account's repository (`repo.repo_import`: its DID, a signature by the DID's current
`#atproto` key, resolved afresh, every node and record there and hashed right) and
stored through the repo's write path (`Repo.import_commit`: under the repo lock, durable
before the answer). A refused import leaves nothing behind but its staging file, which
is removed at once.

While the account is deactivated (a migration), no firehose event tells of it, and
HEAD is the imported commit as it was signed: activation announces the repo
(`lifecycle`). An active account's import becomes a commit of ours over the imported
records, announced with `#sync` at once.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterable

from cbrrr import CID

from ..errors import InvalidInput, PayloadTooLarge
from ..repo.codec import InvalidData
from ..repo.commit import sign_commit
from ..repo.keys import PublicKey
from ..repo.repo_import import CheckedRepo, ImportRefused, check_repo
from ..repo.tid import next_tid
from ..store.staged_car import CarTooLarge, StagedCar
from .account import Use, load, require
from .blobs import blob_store
from .context import AppContext
from .threads import blocking

RECEIVE_BUFFER = 1024 * 1024  # bytes of the body gathered before one write to disk


def _too_large() -> PayloadTooLarge:
    return PayloadTooLarge("request entity too large")  # the reference's words


async def import_repo(ctx: AppContext, did: str, chunks: AsyncIterable[bytes],
                      length: int | None) -> None:
    """importRepo for account `did` (the caller): receive, check and store the CAR."""
    limit = ctx.settings.max_repo_import_size or None
    if limit is not None and length is not None and length > limit:
        raise _too_large()
    await blocking(_admit, ctx, did)
    staged = await blocking(StagedCar, ctx.data.tmp, limit)
    try:
        try:
            await _receive(staged, chunks)
        except CarTooLarge:
            raise _too_large() from None
        # The key the DID names now, asked afresh: during a migration, the old PDS's.
        key = await ctx.identity.atproto_key(did, force=True)
        await blocking(_check_and_store, ctx, did, staged, key)
    finally:
        await asyncio.shield(blocking(staged.close))


def _admit(ctx: AppContext, did: str) -> None:
    require(load(ctx, did), Use.IMPORT, did)


async def _receive(staged: StagedCar, chunks: AsyncIterable[bytes]) -> None:
    """Write the body as it arrives, a buffer-full at a time from a thread."""
    buffer = bytearray()
    async for chunk in chunks:
        buffer += chunk
        if len(buffer) >= RECEIVE_BUFFER:
            await blocking(staged.write, bytes(buffer))
            buffer.clear()
    if buffer:
        await blocking(staged.write, bytes(buffer))


def _check(staged: StagedCar, did: str, key: PublicKey | None) -> CheckedRepo:
    try:
        index = staged.read_index()
    except InvalidData as e:
        raise InvalidInput(f"Invalid CAR: {e}") from None
    try:
        return check_repo(staged.get, index.roots, did, key)
    except ImportRefused as e:
        raise InvalidInput(str(e)) from None


def _check_and_store(ctx: AppContext, did: str, staged: StagedCar,
                     key: PublicKey | None) -> None:
    """Check the staged CAR as `did`'s repository, then store it (blocking)."""
    checked = _check(staged, did, key)
    acct = require(load(ctx, did), Use.IMPORT, did)
    repo = ctx.repo(did)
    blobs = blob_store(ctx, did)
    head = repo.head()
    # A v2 commit has no rev: the import gets one after the current HEAD's.
    cid, rev = checked.commit_cid, checked.commit.rev or next_tid(head.rev if head else None)
    blocks = staged.blocks(checked.blocks)
    if acct.active:
        # Relays see this at once (#sync below): HEAD is a commit of ours over the
        # imported records, under a rev after every one they have seen (an older state
        # imported would otherwise go back in rev, and they would drop it).
        cid, rev, commit_block = _resigned(ctx, did, checked, head.rev if head else None)
        blocks = itertools.chain(blocks, [(cid, commit_block)])
    # Blob references of the new records first (a crash leaves a blob referenced too
    # long, never too early); the old records' are dropped once HEAD moved.
    repo.import_commit(cid, rev, blocks,
                       before_head=lambda: blobs.import_refs(checked.blob_refs))
    blobs.drop_refs_except(checked.blob_refs)
    if acct.active:
        ctx.events.sync(did)


def _resigned(ctx: AppContext, did: str, checked: CheckedRepo,
              head_rev: str | None) -> tuple[CID, str, bytes]:
    """A commit of the imported tree signed with the account's key here, its rev after
    both the current HEAD's and the imported commit's."""
    revs = [r for r in (head_rev, checked.commit.rev) if r is not None]
    rev = next_tid(max(revs) if revs else None)
    _commit, block, cid = sign_commit(did, rev, checked.commit.data, ctx.signing_key(did))
    return cid, rev, block
