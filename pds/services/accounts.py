"""Accounts: sign-up, the checks of handles, emails and passwords, invite codes, and
removing an account. (Sessions and app passwords: `sessions`; what an account's status
allows: `account`; status changes and the events they make: `lifecycle`.)"""

from __future__ import annotations

import re
import secrets
import shutil
import time
from dataclasses import dataclass
from typing import Any

from ..errors import AuthFailed, InvalidInput
from ..repo.did import did_web_host
from ..repo.plc import plc_did_for_genesis
from ..repo.signing_keys import PrivateKey, export_private_key, generate_signing_key
from ..repo.syntax import is_valid_did
from ..store.accounts import Taken, now_iso
from ..store.files import write_file
from ..store.repo import Repo
from . import auth as A
from . import handles
from .account import DEACTIVATED, Account, Use, load, require
from .context import AppContext
from .threads import blocking

# RFC 5321's limits, which the reference PDS's checker (@hapi/address) applies too: the
# whole address and its local part are measured before any pattern sees them.
EMAIL_MAX = 254
EMAIL_LOCAL_MAX = 64
# Local part, "@", then dot-separated labels. No "/" or control characters, no leading
# "." (the address names a file under emails/). Each piece's characters exclude the
# separator that ends it, so the pattern never backtracks more than a step: linear time.
_EMAIL_CHAR = r"[^@\s/.\x00-\x1f\x7f]"
EMAIL_RE = re.compile(rf"{_EMAIL_CHAR}[^@\s/\x00-\x1f\x7f]*@{_EMAIL_CHAR}+(?:\.{_EMAIL_CHAR}+)+")


def check_email(email: Any) -> str:
    """A usable email address (lengths first, then the pattern, so any input is cheap)."""
    if not isinstance(email, str) or len(email) > EMAIL_MAX or \
            len(email.partition("@")[0]) > EMAIL_LOCAL_MAX or not EMAIL_RE.fullmatch(email):
        raise InvalidInput("This email address is not supported, please use a different email.",
                           "InvalidEmail")
    return email


def check_new_password(password: Any) -> str:
    """A password a new account or a reset may set."""
    if not isinstance(password, str) or not password:
        raise InvalidInput("Password is required")
    if len(password) > 256:
        raise InvalidInput("Password too long")
    return password


def did_doc(ctx: AppContext, did: str, handle: str) -> dict:
    """The DID document of an account hosted here (blocking: reads its signing key)."""
    key = ctx.signing_key(did)
    return ctx.identity.did_document(did, handle, key.public_key())


# --- sign-up ----------------------------------------------------------------------------


@dataclass
class SignUp:
    """A checked createAccount request."""

    handle: str
    email: str | None
    password: str | None
    invite: Any           # the inviteCode given (spent only when invites are required)
    did: str | None       # the DID a migrating account brings along

    @property
    def migrating(self) -> bool:
        return self.did is not None


def parse_signup(ctx: AppContext, body: dict, service_auth: A.AuthInfo | None,
                 operator: bool = False) -> SignUp:
    """Check a createAccount body, cheap checks first (lengths before patterns, nothing
    that resolves or touches a file), in the reference PDS's order. Every sign-up needs
    an invite when invites are required; a migrating account (one that brings its `did`)
    needs service auth by that DID too, may leave out email and password, and may ask
    for an external handle (resolved later: `create_account`). The operator (the command
    line) needs no invite."""
    requested_did = body.get("did")
    migrating = requested_did is not None
    if migrating:
        if not isinstance(requested_did, str) or not is_valid_did(requested_did):
            raise InvalidInput("Invalid DID", "InvalidDid")
        if service_auth is None or service_auth.did != requested_did:
            raise AuthFailed("Service auth by the DID being migrated is required")
    password = body.get("password")
    if password is not None or not migrating:
        password = check_new_password(password)
    invite = body.get("inviteCode")
    if (ctx.settings.invite_required and not operator
            and (not isinstance(invite, str) or not invite)):
        raise InvalidInput("No invite code provided", "InvalidInviteCode")
    email = body.get("email")
    if email is not None or not migrating:
        email = check_email(email)
    handle = handles.normalize_handle_input(ctx, body.get("handle"), external_ok=migrating)
    return SignUp(handle, email, password, invite, requested_did)


def _spends_invite(ctx: AppContext, s: SignUp) -> bool:
    return bool(ctx.settings.invite_required and s.invite)


def _check_available(ctx: AppContext, s: SignUp) -> None:
    """The invite code, handle and email of a sign-up are free (blocking)."""
    if _spends_invite(ctx, s):
        existing = ctx.accounts.get_invite(s.invite)
        if existing is None or existing.get("disabled") or \
                len(existing.get("uses", [])) >= existing.get("available", 1):
            raise InvalidInput("Provided invite code not available", "InvalidInviteCode")
    if ctx.accounts.did_for_handle(s.handle) is not None:
        raise InvalidInput("Handle already taken: " + s.handle, "HandleNotAvailable")
    if s.email and ctx.accounts.did_for_email(s.email) is not None:
        raise InvalidInput("Email already taken: " + s.email, "InvalidEmail")


def _choose_did(ctx: AppContext, s: SignUp, key: PrivateKey) -> tuple[str, dict | None]:
    """The new account's DID, and the signed PLC genesis op when it is a new did:plc.
    A DID this PDS issued and an account of it was deleted (its tombstone) is never
    issued again; a migrating DID may come back (its owner proved control with the
    service token), unless it is a did:web whose document this PDS would publish."""
    if s.did is not None:
        if ctx.accounts.get(s.did) is not None:
            raise InvalidInput("Account already exists", "AlreadyExists")
        if ctx.accounts.tombstone(s.did) is not None and _web_did_we_host(ctx, s.did):
            raise InvalidInput("This DID belonged to a deleted account", "AlreadyExists")
        return s.did, None
    if ctx.settings.did_method == "web":
        did = "did:web:" + s.handle
        if ctx.accounts.get(did) is not None or ctx.accounts.tombstone(did) is not None:
            # The DID the handle names is another account's (it changed handles since:
            # its DID, key and document still carry the name) or a deleted one's.
            raise InvalidInput("Handle already taken: " + s.handle, "HandleNotAvailable")
        return did, None
    # The DID follows from the signed genesis op, so it is known before the PLC hears
    # of it: claim the handle first, then publish.
    genesis = ctx.identity.sign_plc_operation(
        ctx.identity.genesis_op(s.handle, key.public_key()))
    return plc_did_for_genesis(genesis), genesis


def _web_did_we_host(ctx: AppContext, did: str) -> bool:
    host = did_web_host(did)
    return host is not None and (handles.hosted_domain(ctx, host) is not None
                                 or handles.is_service_host(ctx, host))


def _claim(ctx: AppContext, s: SignUp, did: str) -> None:
    """Claim the handle and email (O_EXCL, so a racing sign-up in another worker loses
    cleanly) and spend the invite; nothing stays claimed when one fails."""
    try:
        ctx.accounts.claim_handle(s.handle, did, exclusive=True)
    except Taken:
        raise InvalidInput("Handle already taken: " + s.handle, "HandleNotAvailable") from None
    claimed_email = False
    try:
        if s.email:
            try:
                ctx.accounts.claim_email(s.email, did)
                claimed_email = True
            except Taken:
                raise InvalidInput("Email already taken: " + s.email, "InvalidEmail") from None
        if _spends_invite(ctx, s):
            try:
                ctx.accounts.use_invite(s.invite, did)
            except ValueError as e:
                raise InvalidInput(str(e), "InvalidInviteCode") from None
    except BaseException:
        _release(ctx, s, did, claimed_email)
        raise


def _release(ctx: AppContext, s: SignUp, did: str, email: bool = True) -> None:
    ctx.accounts.release_handle(s.handle, did)
    if email and s.email:
        ctx.accounts.release_email(s.email, did)


def _reserve(ctx: AppContext, s: SignUp, key: PrivateKey) -> tuple[str, dict | None]:
    """Check, choose the DID and claim (blocking); returns (did, PLC genesis op)."""
    _check_available(ctx, s)
    did, genesis = _choose_did(ctx, s, key)
    _claim(ctx, s, did)
    return did, genesis


async def _publish(ctx: AppContext, s: SignUp, did: str, key: PrivateKey,
                   genesis: dict | None) -> None:
    """Make a new (not migrating) account's DID resolvable: its did:web document, or its
    genesis op at the PLC directory."""
    if s.migrating:
        return
    if did.startswith("did:web:"):
        await blocking(ctx.identity.create_web_did, s.handle, key.public_key())
    elif genesis is not None:
        await ctx.identity.submit_plc_operation(did, genesis)
    else:
        raise RuntimeError(f"no genesis operation for the new {did}")


def _record(ctx: AppContext, s: SignUp, did: str) -> dict:
    """The new account.json (blocking: the password is hashed)."""
    return {
        "did": did, "handle": s.handle, "email": s.email,
        "passwordHash": A.hash_password(s.password) if s.password else None,
        "createdAt": now_iso(), "status": DEACTIVATED if s.migrating else None,
        "emailConfirmedAt": None,
        "inviteCode": s.invite if ctx.settings.invite_required else None,
        # Tokens carry it: they open this account, never a later one of the same DID.
        "generation": secrets.token_urlsafe(12),
    }


async def create_account(ctx: AppContext, body: dict, service_auth: A.AuthInfo | None,
                         ip: str | None = None, operator: bool = False) -> dict:
    """com.atproto.server.createAccount (`ip`, when given, is rate limited); `operator`:
    made by the operator's command line, so no invite is asked for."""
    if ip is not None:
        await blocking(ctx.auth.limiter.hit, "signup-ip:" + ip, 100, 300)
    signup = parse_signup(ctx, body, service_auth, operator)
    if signup.did is not None:
        await handles.require_resolves(ctx, signup.handle, signup.did)
    key = generate_signing_key()
    did, genesis = await blocking(_reserve, ctx, signup, key)
    try:
        await _publish(ctx, signup, did, key, genesis)
    except BaseException:
        await blocking(_release, ctx, signup, did)
        raise
    acct = await blocking(_record, ctx, signup, did)
    return await blocking(_materialise_account, ctx, acct, key, signup.migrating)


def _materialise_account(ctx: AppContext, acct: dict, key: Any, migrating: bool) -> dict:
    """Write a new account's files and announce it (blocking: run in a thread)."""
    did, handle = acct["did"], acct["handle"]
    acct_dir = ctx.data.account(did)
    acct_dir.mkdir(parents=True, exist_ok=True)
    write_file(ctx.data.signing_key(did), export_private_key(key), ctx.data.tmp, mode=0o600)
    ctx.forget(did)
    # The first commit is made durable by the repo's own journal, flushed at once
    # (sign-ups are rare); its #commit event follows the account's, as below. A migrating
    # account gets an empty repo too, as in the reference (checkAccountStatus names its
    # commit), announced by no event: its import replaces it, activation announces that.
    repo = Repo(acct_dir, ctx.data.tmp, did, key, clock=ctx.data.clock)
    first = repo.create(key)
    repo.checkpoint()
    first_commit = None if migrating else first
    ctx.accounts.put(acct)
    if handles.hosted_domain(ctx, handle) is not None:
        ctx.identity.write_handle_file(handle, did)
    # The reference PDS's order on sign-up: #identity, #account, #commit, #sync.
    ctx.events.identity(did)
    ctx.events.account(did)
    if first_commit is not None:
        ctx.events.commit(first_commit)
        ctx.events.sync(did)
    tokens = ctx.auth.issue_session(Account.from_record(acct))
    out = {"handle": handle, "did": did, **tokens}
    if not migrating:
        out["didDoc"] = did_doc(ctx, did, handle)
    return out


# --- invite codes -----------------------------------------------------------------------


def _new_code(ctx: AppContext) -> str:
    host = ctx.settings.host_only.replace(".", "-")
    return f"{host}-{secrets.token_hex(3)}-{secrets.token_hex(3)}"


def create_invites(ctx: AppContext, use_count: int, count: int = 1,
                   for_accounts: list[str] | None = None, created_by: str = "admin") -> list[dict]:
    out = []
    for account in for_accounts or ["admin"]:
        codes = []
        for _ in range(count):
            code = _new_code(ctx)
            ctx.accounts.put_invite({"code": code, "available": use_count, "disabled": False,
                                     "forAccount": account, "createdBy": created_by,
                                     "createdAt": now_iso(), "uses": []})
            codes.append(code)
        out.append({"account": account, "codes": codes})
    return out


def disable_invites(ctx: AppContext, codes: list[str] | None = None,
                    accounts: list[str] | None = None) -> int:
    """Disable the invite codes named, and every code made for the accounts named;
    returns how many were disabled."""
    wanted, owners, n = set(codes or ()), set(accounts or ()), 0
    for invite in ctx.accounts.list_invites():
        if invite["code"] in wanted or invite.get("forAccount") in owners:
            invite["disabled"] = True
            ctx.accounts.put_invite(invite)
            n += 1
    return n


def invite_view(invite: dict) -> dict:
    return {k: invite[k] for k in ("code", "available", "disabled", "forAccount", "createdBy",
                                   "createdAt", "uses")}


def account_invite_codes(ctx: AppContext, did: str) -> list[dict]:
    """The invite codes made for account `did` (getAccountInviteCodes)."""
    return [invite_view(i) for i in ctx.accounts.list_invites() if i.get("forAccount") == did]


def set_invites_disabled(ctx: AppContext, did: str, disabled: bool) -> None:
    """Stop (or let again) account `did` from getting invite codes."""
    require(load(ctx, did), Use.MANAGE, did)
    ctx.accounts.update(did, invitesDisabled=disabled)


# --- deletion -------------------------------------------------------------------------------


def delete_account(ctx: AppContext, did: str) -> None:
    """Remove an account and everything of it from the data dir, leaving its tombstone
    (first, so that its DID is never free to be issued again, even after a crash)."""
    acct = require(load(ctx, did), Use.MANAGE, did)
    ctx.accounts.bury(did, {"did": did, "handle": acct.handle, "deletedAt": now_iso()})
    ctx.accounts.release_handle(acct.handle, did)
    if acct.email:
        ctx.accounts.release_email(acct.email, did)
    ctx.identity.remove_handle_file(acct.handle, did)
    ctx.identity.remove_web_did_doc(did)
    # Rename first (atomic), then delete at leisure: no half-deleted account is ever visible.
    acct_dir = ctx.data.account(did)
    grave = ctx.data.tmp / f"deleted-{int(time.time())}-{secrets.token_hex(4)}"
    acct_dir.rename(grave)
    ctx.accounts.changed(did)
    ctx.forget(did)
    shutil.rmtree(grave, ignore_errors=True)
