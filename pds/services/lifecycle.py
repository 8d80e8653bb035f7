"""Account status changes: activation, deactivation, deletion, takedowns, handle, email and
password updates.

Each change goes through here so the firehose (#account, #identity, #sync) can be told
in one place. What a status allows is decided in `account`. The coroutines do their file
work (and password hashing) in worker threads; the plain methods are blocking, for
callers already off the event loop (the command line, `threads.blocking`).
"""

from __future__ import annotations

import time
from typing import Any

from ..errors import AuthFailed, InvalidInput
from ..repo.did import PDS_SERVICE_TYPE, IdentityError, key_from_doc, service_endpoint_from_doc
from ..store.accounts import Taken
from . import accounts as acc
from . import email, handles
from .account import DEACTIVATED, TAKENDOWN, Account, Use, load, require
from .auth import hash_password, verify_password
from .context import AppContext
from .sessions import revoke_all_sessions
from .threads import blocking


class Lifecycle:
    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx

    def _account(self, did: str, use: Use = Use.MANAGE) -> Account:
        return require(load(self.ctx, did), use, did)

    # --- activation -----------------------------------------------------------------------

    async def activate(self, did: str) -> None:
        """activateAccount: refused while the DID's document does not make this PDS the
        account's host (as the reference: announcing a repo relays can't verify against
        the DID would do harm); then `_activate`."""
        acct = await blocking(self._account, did, Use.CHANGE_STATUS)
        if acct.active:
            return
        problem = await self.did_problem(did)
        if problem is not None:
            raise InvalidInput(problem)
        await blocking(self._activate, did)

    async def did_problem(self, did: str) -> str | None:
        """Why the DID's current document does not name this PDS as the account's host
        (its endpoint, the account's signing key here, for did:plc our rotation key among
        its rotation keys), in the reference's words; None when it does."""
        ctx = self.ctx
        if did.startswith("did:plc:"):
            try:
                data = await ctx.identity.get_plc_data(did)
            except IdentityError:
                return "Could not resolve DID"
            services = data.get("services") or {}
            endpoint = (services.get("atproto_pds") or {}).get("endpoint")
            key = (data.get("verificationMethods") or {}).get("atproto")
            ours = ctx.identity.plc_rotation_key().public_key().did_key()
            if ours not in (data.get("rotationKeys") or []):
                return "Server rotation key not included in PLC DID data"
        else:
            doc = await ctx.identity.resolve_did(did, force=True)
            if doc is None:
                return "Could not resolve DID"
            endpoint = service_endpoint_from_doc(doc, "atproto_pds", PDS_SERVICE_TYPE, did)
            found = key_from_doc(doc, did)
            key = found.did_key() if found is not None else None
        if endpoint != ctx.settings.public_url:
            return "DID document atproto_pds service endpoint does not match PDS public url"
        signing = await blocking(ctx.signing_key, did)
        if key != signing.public_key().did_key():
            return "DID document verification method does not match expected signing key"
        return None

    def _activate(self, did: str) -> None:
        acct = self._account(did, Use.CHANGE_STATUS)
        if acct.active:
            return
        repo = self.ctx.repo(did)
        if repo.head() is None:
            raise InvalidInput("Repo has not been imported yet", "RepoNotFound")
        # A commit of our own first (same records, a new rev, signed by the account's key
        # here), through the write path: an imported HEAD is signed by the old PDS's key,
        # which the DID no longer names, so a relay checking the #sync would refuse it;
        # and consumers drop a rev they have seen (PROTOCOL.md: an empty commit after
        # reactivation or migration). The account is still inactive: no #commit for it.
        repo.apply_writes([])
        self.ctx.accounts.update(did, status=None, deactivatedAt=None, deleteAfter=None)
        # The reference's order (sequenceAccountActivation): #account, #identity, #sync.
        self.ctx.events.account(did)
        self.ctx.events.identity(did)
        self.ctx.events.sync(did)

    async def deactivate(self, did: str, delete_after: Any = None) -> None:
        await blocking(self._deactivate, did, delete_after)

    def _deactivate(self, did: str, delete_after: Any) -> None:
        self._account(did, Use.CHANGE_STATUS)
        self.ctx.accounts.update(did, status=DEACTIVATED, deactivatedAt=int(time.time()),
                                 deleteAfter=delete_after if isinstance(delete_after, str)
                                 else None)
        self.ctx.events.account(did)

    def takedown(self, did: str, applied: bool, ref: str | None = None) -> None:
        """Take an account down (or restore it): nothing of it is served while down
        (blocking)."""
        acct = self._account(did)
        if applied:
            self.ctx.accounts.update(did, status=TAKENDOWN, takedownRef=ref or "takedown")
            # Sessions die with the takedown; a new login needs allowTakendown.
            revoke_all_sessions(self.ctx, did)
        elif acct.takendown:
            self.ctx.accounts.update(did, status=None, takedownRef=None)
        else:
            return
        self.ctx.events.account(did)

    # --- deletion -------------------------------------------------------------------------

    async def request_delete_token(self, did: str) -> None:
        """requestAccountDelete: a `delete_account` token mailed to the account."""
        await email.send_token(self.ctx, did, "delete_account")

    def _check_delete_token(self, did: str, password: str, token: str, ip: str) -> None:
        self.ctx.auth.limiter.hit("delete-ip:" + ip, 50, 3600)
        acct = self._account(did)
        if not (acct.password_hash and verify_password(password, acct.password_hash)):
            raise AuthFailed("Invalid did or password")
        email.spend(self.ctx, did, "delete_account", token)

    async def delete_with_token(self, did: str, password: str, token: str, ip: str) -> None:
        """deleteAccount: by the account's password and a token from requestAccountDelete."""
        await blocking(self._check_delete_token, did, password, token, ip)
        await self.delete(did)

    def _delete(self, did: str) -> None:
        acc.delete_account(self.ctx, did)
        self.ctx.events.account(did, deleted=True)

    async def delete(self, did: str) -> None:
        await blocking(self._delete, did)

    # --- reports --------------------------------------------------------------------------

    async def status(self, did: str) -> dict:
        """checkAccountStatus: `status_report`, with `validDid`: whether the DID's document
        names this PDS as the account's host (`did_problem`)."""
        report = await blocking(self.status_report, did)
        report["validDid"] = await self.did_problem(did) is None
        return report

    def status_report(self, did: str) -> dict:
        """checkAccountStatus's counts: what is imported, what is missing (blocking)."""
        from .blobs import record_blob_refs
        acct = self._account(did)
        repo = self.ctx.repo(did)
        head = repo.head()
        blocks = sum(1 for _ in repo.blocks.iter_cids())
        records = expected = imported = 0
        if head is not None:
            records = sum(1 for _ in repo.tree().items())
            present = {c: ok for _path, c, ok in record_blob_refs(self.ctx, did)}
            expected, imported = len(present), sum(present.values())
        out: dict[str, Any] = {"activated": acct.active, "validDid": True,
               "repoBlocks": blocks, "indexedRecords": records, "privateStateValues": 0,
               "expectedBlobs": expected, "importedBlobs": imported}
        if head is not None:
            out["repoCommit"] = head.cid.encode()
            out["repoRev"] = head.rev
        return out

    # --- handle, email, password ----------------------------------------------------------

    def _handle_free(self, did: str, handle: str) -> str:
        """Check no other account holds the handle; returns the account's current one."""
        acct = self._account(did)
        owner = self.ctx.accounts.did_for_handle(handle)
        if owner is not None and owner != did:
            raise InvalidInput(f"Handle already taken: {handle}", "HandleNotAvailable")
        return acct.handle

    def _claim_handle(self, did: str, handle: str) -> None:
        try:
            self.ctx.accounts.claim_handle(handle, did)
        except Taken:
            raise InvalidInput(f"Handle already taken: {handle}",
                               "HandleNotAvailable") from None

    async def _publish_handle(self, did: str, handle: str) -> None:
        """Put the new handle in the account's DID document."""
        ctx = self.ctx
        if did.startswith("did:plc:"):
            await ctx.identity.update_plc(did, handle=handle)
        elif did.startswith("did:web:"):
            key = await blocking(ctx.signing_key, did)
            await blocking(ctx.identity.write_web_did_doc, did, handle,
                                    key.public_key())

    def _switch_handle(self, did: str, old: str, handle: str, hosted: bool) -> None:
        ctx = self.ctx
        ctx.accounts.update(did, handle=handle)
        if handle != old:
            ctx.accounts.release_handle(old, did)
            ctx.identity.remove_handle_file(old, did)
        if hosted:
            ctx.identity.write_handle_file(handle, did)
        ctx.events.identity(did)

    async def update_handle(self, did: str, handle: Any, by_admin: bool = False) -> None:
        """Move an account to a new handle (checked by the handle rules, `handles`; the
        admin may give a reserved name): claim it, update the DID, release the old."""
        handle = handles.normalize_handle_input(self.ctx, handle, external_ok=True,
                                                allow_reserved=by_admin)
        old = await blocking(self._handle_free, did, handle)
        await handles.require_resolves(self.ctx, handle, did)
        hosted = handles.hosted_domain(self.ctx, handle) is not None
        if hosted:
            await blocking(self._claim_handle, did, handle)
        try:
            await self._publish_handle(did, handle)
        except BaseException:
            if handle != old:
                await blocking(self.ctx.accounts.release_handle, handle, did)
            raise
        await blocking(self._switch_handle, did, old, handle, hosted)

    def set_password(self, did: str, password: str) -> None:
        """A new password; every session ends (blocking)."""
        self._account(did)
        self.ctx.accounts.update(did, passwordHash=hash_password(password))
        revoke_all_sessions(self.ctx, did)

    def set_email(self, did: str, email: str) -> None:
        """A new (unconfirmed) email address (blocking)."""
        acct = self._account(did)
        email = acc.check_email(email)
        try:
            self.ctx.accounts.claim_email(email, did)
        except Taken:
            raise InvalidInput("Email already taken", "InvalidEmail") from None
        if acct.email and acct.email.lower() != email.lower():
            self.ctx.accounts.release_email(acct.email, did)
        self.ctx.accounts.update(did, email=email, emailConfirmedAt=None)
