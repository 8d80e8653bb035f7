"""Account status changes: activation, deactivation, deletion, handle updates.

Each change goes through here so the firehose (#account, #identity, #sync) can be told
in one place.
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
import time
from typing import Any

from ..errors import AuthFailed, InvalidInput
from ..store.files import read_file, write_file
from . import accounts as acc
from .auth import verify_password
from .context import AppContext

DELETE_TOKEN_TTL = 15 * 60


class Lifecycle:
    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx

    async def activate(self, did: str) -> None:
        acct = self.ctx.accounts.get(did)
        if acct.get("status") == "takendown":
            raise InvalidInput("Account has been taken down", "AccountTakedown")
        if acct.get("status") is None:
            return
        if self.ctx.repo(did).head() is None:
            raise InvalidInput("Repo has not been imported yet", "RepoNotFound")
        self.ctx.accounts.update(did, status=None, deactivatedAt=None, deleteAfter=None)
        self.ctx.events.account(did)
        self.ctx.events.identity(did)
        self.ctx.events.sync(did)

    async def deactivate(self, did: str, delete_after: Any = None) -> None:
        acct = self.ctx.accounts.get(did)
        if acct.get("status") == "takendown":
            raise InvalidInput("Account has been taken down", "AccountTakedown")
        self.ctx.accounts.update(did, status="deactivated", deactivatedAt=int(time.time()),
                                 deleteAfter=delete_after if isinstance(delete_after, str)
                                 else None)
        self.ctx.events.account(did)

    def request_delete_token(self, did: str) -> None:
        token = f"{secrets.token_hex(3)}-{secrets.token_hex(3)}".upper()
        write_file(self.ctx.data.account(did) / "delete_token",
                   json.dumps({"token": token, "expiresAt": int(time.time()) + DELETE_TOKEN_TTL})
                   .encode(), self.ctx.data.tmp, mode=0o600)

    async def delete_with_token(self, did: str, password: str, token: str, ip: str) -> None:
        self.ctx.auth.limiter.hit("delete-ip:" + ip, 50, 3600)
        acct = self.ctx.accounts.get(did)
        if acct is None:
            raise InvalidInput("Account not found", "AccountNotFound")
        if not (acct.get("passwordHash") and verify_password(password, acct["passwordHash"])):
            raise AuthFailed("Invalid did or password")
        path = self.ctx.data.account(did) / "delete_token"
        stored = read_file(path)
        info = json.loads(stored) if stored else None
        if not info or info["expiresAt"] < time.time() or \
                not hmac.compare_digest(info["token"], token.strip().upper()):
            raise InvalidInput("Token is invalid", "InvalidToken")
        os.unlink(path)
        await self.delete(did)

    async def delete(self, did: str) -> None:
        acc.delete_account(self.ctx, did)
        self.ctx.events.account(did, deleted=True)

    def status_report(self, did: str) -> dict:
        """checkAccountStatus: what is imported, what is missing."""
        from .records import record_blob_refs
        repo = self.ctx.repo(did)
        head = repo.head()
        acct = self.ctx.accounts.get(did)
        blocks = sum(1 for _ in repo.blocks.iter_cids())
        records = expected = imported = 0
        if head is not None:
            records = sum(1 for _ in repo.tree().items())
            present = {c: ok for _path, c, ok in record_blob_refs(self.ctx, did)}
            expected, imported = len(present), sum(present.values())
        out = {"activated": acct.get("status") is None, "validDid": True,
               "repoBlocks": blocks, "indexedRecords": records, "privateStateValues": 0,
               "expectedBlobs": expected, "importedBlobs": imported}
        if head is not None:
            out["repoCommit"] = head.cid.encode()
            out["repoRev"] = head.rev
        return out

    async def update_handle(self, did: str, handle: str) -> None:
        """Move an account to a new handle: claim it, update the DID, release the old."""
        ctx = self.ctx
        acct = ctx.accounts.get(did)
        owner = ctx.accounts.did_for_handle(handle)
        if owner is not None and owner != did:
            raise InvalidInput(f"Handle already taken: {handle}", "HandleNotAvailable")
        hosted = any(handle.endswith(d) for d in ctx.settings.handle_domains)
        if not hosted and await ctx.identity.resolve_handle(handle) != did:
            raise InvalidInput("External handle did not resolve to DID",
                               "InvalidHandle")
        old = acct["handle"]
        if hosted:
            try:
                ctx.accounts.claim_handle(handle, did)
            except acc.Taken:
                raise InvalidInput(f"Handle already taken: {handle}",
                                   "HandleNotAvailable") from None
        try:
            if did.startswith("did:plc:"):
                await ctx.identity.update_plc(did, handle=handle)
            elif did.startswith("did:web:"):
                ctx.identity.write_web_did_doc(did, handle,
                                               ctx.local_signing_key(did).public_key())
        except BaseException:
            if handle != old:
                ctx.accounts.release_handle(handle, did)
            raise
        ctx.accounts.update(did, handle=handle)
        if handle != old:
            ctx.accounts.release_handle(old, did)
            ctx.identity.remove_handle_file(old, did)
        if hosted:
            ctx.identity.write_handle_file(handle, did)
        ctx.events.identity(did)

    def takedown(self, did: str, applied: bool, ref: str | None = None) -> None:
        """Take an account down (or restore it): nothing of it is served while down."""
        acct = self.ctx.accounts.get(did)
        if acct is None:
            raise InvalidInput("Account not found", "AccountNotFound")
        if applied:
            self.ctx.accounts.update(did, status="takendown", takedownRef=ref or "takedown")
            # Sessions die with the takedown; a new login needs allowTakendown.
            acc.revoke_all_sessions(self.ctx, did)
        elif acct.get("status") == "takendown":
            self.ctx.accounts.update(did, status=None, takedownRef=None)
        else:
            return
        self.ctx.events.account(did)

    def set_password(self, did: str, password: str) -> None:
        from .auth import hash_password
        self.ctx.accounts.update(did, passwordHash=hash_password(password))
        acc.revoke_all_sessions(self.ctx, did)

    def set_email(self, did: str, email: str) -> None:
        acct = self.ctx.accounts.get(did)
        email = acc.check_email(email)
        try:
            self.ctx.accounts.claim_email(email, did)
        except acc.Taken:
            raise InvalidInput("Email already taken", "InvalidEmail") from None
        if acct.get("email") and acct["email"].lower() != email.lower():
            self.ctx.accounts.release_email(acct["email"], did)
        self.ctx.accounts.update(did, email=email, emailConfirmedAt=None)
