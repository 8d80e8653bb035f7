"""Account lifecycle: sign-up, login, sessions, app passwords, invites, status changes."""

from __future__ import annotations

import asyncio
import re
import secrets
import shutil
import time
from typing import Any

from ..errors import AuthFailed, InvalidInput
from ..repo.plc import plc_did_for_genesis
from ..repo.signing_keys import export_private_key, generate_signing_key
from ..repo.syntax import is_disallowed_handle_tld, is_valid_did, is_valid_handle
from ..store.accounts import Taken, now_iso
from ..store.files import write_file
from ..store.repo import Repo
from . import auth as A
from .context import AppContext

# No "/" or control characters, no leading ".": the address names a file under emails/.
EMAIL_RE = re.compile(r"^[^@\s/.\x00-\x1f\x7f][^@\s/\x00-\x1f\x7f]*"
                      r"@[^@\s/\x00-\x1f\x7f]+\.[^@\s/\x00-\x1f\x7f]+$")
MAX_APP_PASSWORDS = 50


def normalize_handle_input(ctx: AppContext, handle: Any, external_ok: bool = False) -> str:
    """Check a requested handle: syntax, reserved TLDs, and (unless external handles are
    allowed) one of this PDS's domains with a 3-18 character name in front."""
    if not isinstance(handle, str) or not is_valid_handle(handle):
        raise InvalidInput("Handle invalid", "InvalidHandle")
    handle = handle.lower()
    if is_disallowed_handle_tld(handle):
        raise InvalidInput("Handle TLD is invalid or disallowed", "InvalidHandle")
    domain = next((d for d in ctx.settings.handle_domains if handle.endswith(d)), None)
    if domain is None:
        if external_ok:
            return handle
        raise InvalidInput("Not a supported handle domain", "UnsupportedDomain")
    front = handle[: -len(domain)]
    if "." in front:
        raise InvalidInput("Invalid characters in handle", "InvalidHandle")
    if not 3 <= len(front) <= 18:
        raise InvalidInput("Handle too short or too long", "InvalidHandle")
    return handle


def check_email(email: Any) -> str:
    if not isinstance(email, str) or not EMAIL_RE.match(email) or len(email) > 254:
        raise InvalidInput("This email address is not supported, please use a different email.",
                           "InvalidEmail")
    return email.strip()


def _check_password(password: Any) -> str:
    if not isinstance(password, str) or not password:
        raise InvalidInput("Password is required")
    if len(password) > 256:
        raise InvalidInput("Password too long")
    return password


def did_doc(ctx: AppContext, did: str, handle: str) -> dict:
    key = ctx.local_signing_key(did)
    return ctx.identity.did_document(did, handle, key.public_key())


def status_fields(acct: dict) -> dict:
    """`active` and `status` as the lexicons give them."""
    status = acct.get("status")
    return {"active": status is None} | ({"status": status} if status else {})


async def create_account(ctx: AppContext, body: dict, service_auth: A.AuthInfo | None) -> dict:
    """com.atproto.server.createAccount."""
    requested_did = body.get("did")
    migrating = requested_did is not None
    if migrating:
        if not isinstance(requested_did, str) or not is_valid_did(requested_did):
            raise InvalidInput("Invalid DID", "InvalidDid")
        if service_auth is None or service_auth.did != requested_did:
            raise AuthFailed("Service auth by the DID being migrated is required")
    handle = normalize_handle_input(ctx, body.get("handle"), external_ok=migrating)
    email = body.get("email")
    if email is not None or not migrating:
        email = check_email(email)
    password = body.get("password")
    if password is not None or not migrating:
        password = _check_password(password)
    invite = body.get("inviteCode")
    if ctx.settings.invite_required and not migrating:
        if not isinstance(invite, str) or not invite:
            raise InvalidInput("No invite code provided", "InvalidInviteCode")
        existing = ctx.accounts.get_invite(invite)
        if existing is None or existing.get("disabled") or \
                len(existing.get("uses", [])) >= existing.get("available", 1):
            raise InvalidInput("Provided invite code not available", "InvalidInviteCode")
    if ctx.accounts.did_for_handle(handle) is not None:
        raise InvalidInput("Handle already taken: " + handle, "HandleNotAvailable")
    if email and ctx.accounts.did_for_email(email) is not None:
        raise InvalidInput("Email already taken: " + email, "InvalidEmail")

    key = generate_signing_key()
    if migrating:
        did = requested_did
        if ctx.accounts.get(did) is not None:
            raise InvalidInput("Account already exists", "AlreadyExists")
    elif ctx.settings.did_method == "web":
        did = "did:web:" + handle
        if ctx.accounts.get(did) is not None:
            # The handle was this account's before it changed handles: its DID (and
            # signing key, and DID document) still carry the name.
            raise InvalidInput("Handle already taken: " + handle, "HandleNotAvailable")
    else:
        # The DID follows from the signed genesis op, so it is known before the PLC hears
        # of it: claim the handle first, then publish.
        genesis = ctx.identity.sign_plc_operation(
            ctx.identity.genesis_op(handle, key.public_key()))
        did = plc_did_for_genesis(genesis)

    # Claims first (O_EXCL), so a racing sign-up in another worker loses cleanly.
    try:
        ctx.accounts.claim_handle(handle, did, exclusive=True)
    except Taken:
        raise InvalidInput("Handle already taken: " + handle, "HandleNotAvailable") from None
    claimed_email = False
    try:
        if email:
            try:
                ctx.accounts.claim_email(email, did)
                claimed_email = True
            except Taken:
                raise InvalidInput("Email already taken: " + email, "InvalidEmail") from None
        if invite and ctx.settings.invite_required and not migrating:
            try:
                ctx.accounts.use_invite(invite, did)
            except ValueError as e:
                raise InvalidInput(str(e), "InvalidInviteCode") from None
        if not migrating:
            if did.startswith("did:web:"):
                ctx.identity.create_web_did(handle, key.public_key())
            else:
                await ctx.identity.submit_plc_operation(did, genesis)
    except BaseException:
        ctx.accounts.release_handle(handle, did)
        if claimed_email:
            ctx.accounts.release_email(email, did)
        raise

    acct = {
        "did": did, "handle": handle, "email": email,
        "passwordHash": await asyncio.to_thread(A.hash_password, password) if password else None,
        "createdAt": now_iso(), "status": "deactivated" if migrating else None,
        "emailConfirmedAt": None, "inviteCode": invite if ctx.settings.invite_required else None,
    }
    return await asyncio.to_thread(_materialise_account, ctx, acct, key, migrating)


def _materialise_account(ctx: AppContext, acct: dict, key: Any, migrating: bool) -> dict:
    """Write a new account's files and announce it (blocking: run in a thread)."""
    did, handle = acct["did"], acct["handle"]
    acct_dir = ctx.data.account(did)
    acct_dir.mkdir(parents=True, exist_ok=True)
    write_file(ctx.data.signing_key(did), export_private_key(key), ctx.data.tmp, mode=0o600)
    ctx.forget(did)
    first_commit = None
    if not migrating:
        # The first commit is made durable by the repo's own journal, flushed at once
        # (sign-ups are rare); its #commit event follows the account's, as below.
        repo = Repo(acct_dir, ctx.data.tmp, did, key)
        first_commit = repo.create(key)
        repo.checkpoint()
    ctx.accounts.put(acct)
    ctx.identity.write_handle_file(handle, did)
    # The reference PDS's order on sign-up: #identity, #account, #commit, #sync.
    ctx.events.identity(did)
    ctx.events.account(did)
    if first_commit is not None:
        ctx.events.commit(first_commit)
        ctx.events.sync(did)
    tokens = ctx.auth.issue_session(did)
    out = {"handle": handle, "did": did, **tokens}
    if not migrating:
        out["didDoc"] = did_doc(ctx, did, handle)
    return out


def find_account(ctx: AppContext, identifier: str) -> dict | None:
    """An account by handle, email or DID."""
    identifier = identifier.strip()
    if identifier.startswith("did:"):
        did = identifier
    elif "@" in identifier:
        did = ctx.accounts.did_for_email(identifier)
    else:
        did = ctx.accounts.did_for_handle(identifier.lower())
    if did is None or not is_valid_did(did):
        return None
    acct = ctx.accounts.get(did)
    if acct is None or acct.get("status") == "deleted":
        return None
    return acct


def login(ctx: AppContext, identifier: Any, password: Any, ip: str,
          allow_takendown: bool = False) -> dict:
    """com.atproto.server.createSession: password or app password."""
    if not isinstance(identifier, str) or not identifier or not isinstance(password, str):
        raise InvalidInput("Invalid identifier or password")
    ctx.auth.limiter.hit("login-ip:" + ip, 100, 300)
    ctx.auth.limiter.hit("login-id:" + identifier.lower(), 30, 300)
    ctx.auth.limiter.hit("login-id-day:" + identifier.lower(), 300, 86400)
    acct = find_account(ctx, identifier)
    if acct is None:
        # Spend the same effort as a real check, so timing doesn't reveal accounts.
        A.verify_password(password, _DUMMY_HASH)
        raise AuthFailed("Invalid identifier or password")
    scope, app_password = A.SCOPE_ACCESS, None
    if not (acct.get("passwordHash") and A.verify_password(password, acct["passwordHash"])):
        app_password = _match_app_password(ctx, acct["did"], password)
        if app_password is None:
            raise AuthFailed("Invalid identifier or password")
        scope = A.SCOPE_APP_PASS_PRIVILEGED if app_password[1] else A.SCOPE_APP_PASS
        app_password = app_password[0]
    if acct.get("status") == "takendown":
        if not allow_takendown:
            raise AuthFailed("Account has been taken down", "AccountTakedown")
        scope = A.SCOPE_TAKENDOWN
    tokens = ctx.auth.issue_session(acct["did"], scope, app_password)
    return {**tokens, **session_view(ctx, acct, scope)}


_DUMMY_HASH = A.hash_password(secrets.token_hex(8))


def _match_app_password(ctx: AppContext, did: str, password: str) -> tuple[str, bool] | None:
    # App passwords have a fixed shape; skip hashing for anything else.
    if not re.fullmatch(r"[a-z2-7]{4}(-[a-z2-7]{4}){3}", password):
        return None
    for name, entry in ctx.accounts.read_doc(did, "app_passwords.json", {}).items():
        if A.verify_password(password, entry["hash"]):
            return name, bool(entry.get("privileged"))
    return None


def session_view(ctx: AppContext, acct: dict, scope: str | None) -> dict:
    """The account fields of createSession/getSession."""
    out: dict[str, Any] = {"handle": acct["handle"], "did": acct["did"]}
    if acct.get("email") and scope in (A.SCOPE_ACCESS, A.SCOPE_APP_PASS_PRIVILEGED,
                                       A.SCOPE_APP_PASS, A.SCOPE_TAKENDOWN):
        out["email"] = acct["email"]
        out["emailConfirmed"] = bool(acct.get("emailConfirmedAt"))
        out["emailAuthFactor"] = False
    try:
        out["didDoc"] = did_doc(ctx, acct["did"], acct["handle"])
    except Exception:  # noqa: BLE001 - a doc we can't render is left out, not fatal
        pass
    return {**out, **status_fields(acct)}


def refresh(ctx: AppContext, info: A.AuthInfo) -> dict:
    acct = ctx.accounts.get(info.did)
    if acct is None or acct.get("status") == "deleted":
        raise InvalidInput("Account not found", "AccountNotFound")
    tokens = ctx.auth.rotate(info)
    return {**tokens, **session_view(ctx, acct, A.SCOPE_ACCESS)}


def logout(ctx: AppContext, info: A.AuthInfo) -> None:
    ctx.accounts.delete_session(info.did, info.jti)


def revoke_all_sessions(ctx: AppContext, did: str, app_password: str | None = None) -> None:
    """Drop refresh sessions (all of them, or those of one app password)."""
    for jti, s in ctx.accounts.sessions(did).items():
        if app_password is None or s.get("appPassword") == app_password:
            ctx.accounts.delete_session(did, jti)


# --- app passwords ----------------------------------------------------------------------


def create_app_password(ctx: AppContext, did: str, name: Any, privileged: bool) -> dict:
    if not isinstance(name, str) or not name.strip() or len(name) > 100:
        raise InvalidInput("Invalid app password name")
    name = name.strip()
    current = ctx.accounts.read_doc(did, "app_passwords.json", {})
    if name in current:
        raise InvalidInput("App password with this name already exists",
                           "DuplicateAppPassword")
    if len(current) >= MAX_APP_PASSWORDS:
        raise InvalidInput("Too many app passwords")
    password = A.new_app_password()
    created = now_iso()
    current[name] = {"hash": A.hash_password(password), "privileged": privileged,
                     "createdAt": created}
    ctx.accounts.write_doc(did, "app_passwords.json", current)
    return {"name": name, "password": password, "createdAt": created, "privileged": privileged}


def list_app_passwords(ctx: AppContext, did: str) -> dict:
    current = ctx.accounts.read_doc(did, "app_passwords.json", {})
    return {"passwords": [{"name": n, "createdAt": e["createdAt"],
                           "privileged": bool(e.get("privileged"))}
                          for n, e in sorted(current.items(), key=lambda x: x[1]["createdAt"],
                                             reverse=True)]}


def revoke_app_password(ctx: AppContext, did: str, name: Any) -> None:
    if not isinstance(name, str):
        raise InvalidInput("Invalid app password name")
    current = ctx.accounts.read_doc(did, "app_passwords.json", {})
    if current.pop(name, None) is not None:
        ctx.accounts.write_doc(did, "app_passwords.json", current)
    revoke_all_sessions(ctx, did, app_password=name)


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


# --- status -------------------------------------------------------------------------------


def set_status(ctx: AppContext, did: str, status: str | None, **extra: Any) -> dict:
    return ctx.accounts.update(did, status=status, **extra)


def delete_account(ctx: AppContext, did: str) -> None:
    """Remove an account and everything of it from the data dir."""
    acct = ctx.accounts.get(did)
    if acct is None:
        raise InvalidInput("Account not found", "AccountNotFound")
    ctx.accounts.release_handle(acct["handle"], did)
    if acct.get("email"):
        ctx.accounts.release_email(acct["email"], did)
    ctx.identity.remove_handle_file(acct["handle"], did)
    # Rename first (atomic), then delete at leisure: no half-deleted account is ever visible.
    acct_dir = ctx.data.account(did)
    grave = ctx.data.tmp / f"deleted-{int(time.time())}-{secrets.token_hex(4)}"
    acct_dir.rename(grave)
    ctx.forget(did)
    shutil.rmtree(grave, ignore_errors=True)
