"""Sessions: login, the session view, refresh, logout, app passwords and service-auth
tokens minted for the account.

These functions are blocking (files, argon2id): call them from a worker thread, as the
handlers do with `threads.blocking`.
"""

from __future__ import annotations

import functools
import re
import secrets
import time
from typing import Any

from ..errors import AuthFailed, InvalidInput
from ..repo.syntax import is_valid_did, is_valid_nsid
from ..store.accounts import now_iso
from ..store.files import flock
from ..store.layout import SESSIONS_LOCK
from . import auth as A
from .account import Account, Use, load, require
from .accounts import did_doc
from .context import AppContext
from .email_flows import second_factor

MAX_APP_PASSWORDS = 50
APP_PASSWORDS = "app_passwords.json"


@functools.cache
def _dummy_hash() -> str:
    """A hash of a random password, checked when no account matches a login: made at
    the first such login, not at import (a 7 MiB argon2 hash in every worker)."""
    return A.hash_password(secrets.token_hex(8))


def find_account(ctx: AppContext, identifier: str) -> Account | None:
    """An account by handle, email or DID."""
    identifier = identifier.strip()
    did: str | None
    if identifier.startswith("did:"):
        did = identifier
    elif "@" in identifier:
        try:
            did = ctx.accounts.did_for_email(identifier)
        except ValueError:  # an address no account can have
            return None
    else:
        did = ctx.accounts.did_for_handle(identifier.lower())
    if did is None or not is_valid_did(did):
        return None
    acct = load(ctx, did)
    return None if acct is None or acct.deleted else acct


# Login attempts allowed, as (count, seconds): from one client address in all, and for one
# identifier from one address (as the reference keys them: `<identifier>-<ip>`), so that a
# stranger's guesses from elsewhere never lock the owner out of their own account.
LOGIN_PER_IP = (100, 300)
LOGIN_PER_IDENTIFIER = ((30, 300), (300, 86400))


def limit_login(ctx: AppContext, identifier: str, ip: str) -> None:
    """Count a login attempt; RateLimited when one of its windows is spent."""
    ctx.auth.limiter.hit("login-ip:" + ip, *LOGIN_PER_IP)
    who = f"{identifier.strip().lower()}-{ip}"
    for n, window in LOGIN_PER_IDENTIFIER:
        ctx.auth.limiter.hit(f"login-id:{window}:{who}", n, window)


def login(ctx: AppContext, identifier: Any, password: Any, ip: str,
          allow_takendown: bool = False, auth_factor_token: Any = None) -> dict:
    """com.atproto.server.createSession: password or app password (a password login of an
    account with sign-in codes on needs the mailed code too)."""
    if not isinstance(identifier, str) or not identifier or not isinstance(password, str):
        raise InvalidInput("Invalid identifier or password")
    limit_login(ctx, identifier, ip)
    acct = find_account(ctx, identifier)
    if acct is None:
        # Spend the same effort as a real check, so timing doesn't reveal accounts.
        A.verify_password(password, _dummy_hash())
        raise AuthFailed("Invalid identifier or password")
    scope, app_password = A.SCOPE_ACCESS, None
    if not (acct.password_hash and A.verify_password(password, acct.password_hash)):
        matched = _match_app_password(ctx, acct.did, password)
        if matched is None:
            raise AuthFailed("Invalid identifier or password")
        app_password, privileged = matched
        scope = A.SCOPE_APP_PASS_PRIVILEGED if privileged else A.SCOPE_APP_PASS
    require(acct, Use.LOGIN, acct.did, privileged=allow_takendown)
    if app_password is None:  # app passwords are for apps: no codes (as Bluesky)
        second_factor(ctx, acct, auth_factor_token)
    if acct.takendown:
        scope = A.SCOPE_TAKENDOWN
    tokens = ctx.auth.issue_session(acct, scope, app_password)
    return {**tokens, **session_view(ctx, acct, scope)}


def _match_app_password(ctx: AppContext, did: str, password: str) -> tuple[str, bool] | None:
    # App passwords have a fixed shape; skip hashing for anything else.
    if not re.fullmatch(r"[a-z2-7]{4}(-[a-z2-7]{4}){3}", password):
        return None
    for name, entry in ctx.accounts.read_doc(did, APP_PASSWORDS, {}).items():
        if A.verify_password(password, entry["hash"]):
            return name, bool(entry.get("privileged"))
    return None


def session_view(ctx: AppContext, acct: Account, scope: str | None) -> dict:
    """The account fields of createSession/getSession."""
    out: dict[str, Any] = {"handle": acct.handle, "did": acct.did}
    # An OAuth app sees the address only with transition:email (or account:email).
    oauth_email = bool(scope) and any(s in ("transition:email", "account:email")
                                      for s in str(scope).split())
    if acct.email and (oauth_email or scope in (A.SCOPE_ACCESS, A.SCOPE_APP_PASS_PRIVILEGED,
                                                A.SCOPE_APP_PASS, A.SCOPE_TAKENDOWN)):
        out["email"] = acct.email
        out["emailConfirmed"] = bool(acct.email_confirmed_at)
        out["emailAuthFactor"] = acct.email_auth_factor
    try:
        out["didDoc"] = did_doc(ctx, acct.did, acct.handle)
    except Exception:  # noqa: BLE001 - a doc we can't render is left out, not fatal
        pass
    return {**out, **acct.status_fields()}


def get_session(ctx: AppContext, info: A.AuthInfo) -> dict:
    """com.atproto.server.getSession."""
    acct = require(load(ctx, info.account), Use.MANAGE, info.account)
    return session_view(ctx, acct, info.scope)


def refresh(ctx: AppContext, info: A.AuthInfo) -> dict:
    """com.atproto.server.refreshSession: a new token pair for a live refresh token."""
    acct = require(load(ctx, info.account), Use.REFRESH, info.account)
    tokens = ctx.auth.rotate(info)
    return {**tokens, **session_view(ctx, acct, A.SCOPE_ACCESS)}


def logout(ctx: AppContext, info: A.AuthInfo) -> None:
    if info.jti is not None:
        ctx.accounts.delete_session(info.account, info.jti)


def _spent(session: Any, now: float) -> bool:
    """Whether a stored refresh session can no longer be used: expired, or rotated
    longer ago than the grace period (a token whose successor is in use)."""
    if not isinstance(session, dict):
        return True
    expires, rotated = session.get("expiresAt"), session.get("rotatedAt")
    if isinstance(expires, int | float) and expires <= now:
        return True
    return session.get("next") is not None and isinstance(rotated, int | float) \
        and now - rotated > A.REFRESH_GRACE


def prune_sessions(ctx: AppContext, now: float | None = None) -> int:
    """Remove every account's refresh sessions that can no longer be used (blocking);
    returns how many. Under each account's rotation lock, so no rotation races it."""
    now = time.time() if now is None else now
    removed = 0
    for did in ctx.accounts.list_dids():
        try:
            with flock(ctx.data.account(did) / SESSIONS_LOCK):
                for jti, session in ctx.accounts.sessions(did).items():
                    if _spent(session, now):
                        ctx.accounts.delete_session(did, jti)
                        removed += 1
        except FileNotFoundError:  # the account was deleted meanwhile
            continue
    return removed


def revoke_all_sessions(ctx: AppContext, did: str, app_password: str | None = None) -> None:
    """Drop refresh sessions (all of them, or those of one app password). All of them
    means the account's OAuth grants and remembered browsers too."""
    for jti, s in ctx.accounts.sessions(did).items():
        if app_password is None or (s or {}).get("appPassword") == app_password:
            ctx.accounts.delete_session(did, jti)
    if app_password is None:
        ctx.oauth.tokens.revoke_account(did)


# --- app passwords ----------------------------------------------------------------------


def create_app_password(ctx: AppContext, did: str, name: Any, privileged: bool) -> dict:
    if not isinstance(name, str) or not name.strip() or len(name) > 100:
        raise InvalidInput("Invalid app password name")
    name = name.strip()
    current = ctx.accounts.read_doc(did, APP_PASSWORDS, {})
    if name in current:
        raise InvalidInput("App password with this name already exists",
                           "DuplicateAppPassword")
    if len(current) >= MAX_APP_PASSWORDS:
        raise InvalidInput("Too many app passwords")
    password = A.new_app_password()
    created = now_iso()
    current[name] = {"hash": A.hash_password(password), "privileged": privileged,
                     "createdAt": created}
    ctx.accounts.write_doc(did, APP_PASSWORDS, current)
    return {"name": name, "password": password, "createdAt": created, "privileged": privileged}


def list_app_passwords(ctx: AppContext, did: str) -> dict:
    current = ctx.accounts.read_doc(did, APP_PASSWORDS, {})
    return {"passwords": [{"name": n, "createdAt": e["createdAt"],
                           "privileged": bool(e.get("privileged"))}
                          for n, e in sorted(current.items(), key=lambda x: x[1]["createdAt"],
                                             reverse=True)]}


def revoke_app_password(ctx: AppContext, did: str, name: Any) -> None:
    if not isinstance(name, str):
        raise InvalidInput("Invalid app password name")
    current = ctx.accounts.read_doc(did, APP_PASSWORDS, {})
    if current.pop(name, None) is not None:
        ctx.accounts.write_doc(did, APP_PASSWORDS, current)
    revoke_all_sessions(ctx, did, app_password=name)


# --- tokens for other services --------------------------------------------------------------

# Methods a service token is never minted for (account management stays between the user
# and us), and methods only a privileged credential gets one for: moving the account
# away (createAccount at another PDS) and direct messages. As the reference's
# pipethrough.ts PROTECTED_METHODS and PRIVILEGED_METHODS (its CHAT_BSKY_METHODS plus
# createAccount); compared case-insensitively, as it does, so no other spelling of a name
# slips past.
PROTECTED_METHODS = frozenset(m.lower() for m in (
    "com.atproto.admin.sendEmail", "com.atproto.identity.requestPlcOperationSignature",
    "com.atproto.identity.signPlcOperation", "com.atproto.identity.updateHandle",
    "com.atproto.server.activateAccount", "com.atproto.server.confirmEmail",
    "com.atproto.server.createAppPassword", "com.atproto.server.deactivateAccount",
    "com.atproto.server.getAccountInviteCodes", "com.atproto.server.getSession",
    "com.atproto.server.listAppPasswords", "com.atproto.server.requestAccountDelete",
    "com.atproto.server.requestEmailConfirmation", "com.atproto.server.requestEmailUpdate",
    "com.atproto.server.revokeAppPassword", "com.atproto.server.updateEmail",
))
PRIVILEGED_METHODS = frozenset({"com.atproto.server.createaccount"})
PRIVILEGED_PREFIXES = ("chat.bsky.",)  # the reference lists each chat method; all of them


def is_protected_method(lxm: str) -> bool:
    return lxm.lower() in PROTECTED_METHODS


def is_privileged_method(lxm: str) -> bool:
    lxm = lxm.lower()
    return lxm in PRIVILEGED_METHODS or lxm.startswith(PRIVILEGED_PREFIXES)


SERVICE_TOKEN_MAX_TTL = 3600  # seconds: the longest a service token may be asked for
SERVICE_TOKEN_TTL = 60  # the default, and the longest for a token without `lxm`


def _service_token_exp(exp: str | None, lxm: str | None) -> int:
    now = int(time.time())
    if exp is None:
        return now + SERVICE_TOKEN_TTL
    try:
        when = int(exp)
    except ValueError:
        raise InvalidInput("exp must be an integer") from None
    if when - now > SERVICE_TOKEN_MAX_TTL:
        raise InvalidInput("expiration is too far in the future", "BadExpiration")
    if lxm is None and when - now > SERVICE_TOKEN_TTL:
        raise InvalidInput("cannot request a token without lxm for over 60 seconds",
                           "BadExpiration")
    if when < now:
        raise InvalidInput("expiration is in the past", "BadExpiration")
    return when


def service_auth_token(ctx: AppContext, auth: A.AuthInfo, aud: str, lxm: str | None,
                       exp: str | None) -> dict:
    """getServiceAuth: a JWT for service `aud` (method `lxm`, expiring at `exp`, as the
    query gave them), signed with the account's repo signing key. Never for a protected
    method; for a privileged one only to a privileged credential (not a plain app
    password). A taken-down session never gets here (`auth.TAKENDOWN_METHODS`)."""
    if not is_valid_did(aud.split("#")[0]):
        raise InvalidInput("aud must be a DID")
    if lxm is not None and not is_valid_nsid(lxm):
        raise InvalidInput("lxm must be an NSID")
    when = _service_token_exp(exp, lxm)
    if lxm is not None and is_protected_method(lxm):
        raise InvalidInput(f"cannot request a service token for the protected method {lxm}")
    if lxm is not None and is_privileged_method(lxm) and \
            auth.scope not in A.PRIVILEGED_SCOPES:
        raise InvalidInput("insufficient access to request a service token for the "
                           f"method {lxm}")
    did = auth.did
    key = ctx.local_signing_key(did) if did is not None else None
    if did is None or key is None:
        raise InvalidInput("Account not found", "AccountNotFound")
    return {"token": A.sign_service_jwt(key, did, aud, lxm, when)}


def recommended_did_credentials(ctx: AppContext, did: str) -> dict:
    """getRecommendedDidCredentials: what the account's DID document should hold to be
    hosted here."""
    acct = require(load(ctx, did), Use.MANAGE, did)
    key = ctx.signing_key(did)
    rotation = ctx.identity.plc_rotation_key().public_key().did_key()
    return {
        "rotationKeys": [rotation],
        "alsoKnownAs": [f"at://{acct.handle}"],
        "verificationMethods": {"atproto": key.public_key().did_key()},
        "services": {"atproto_pds": {"type": "AtprotoPersonalDataServer",
                                     "endpoint": ctx.settings.public_url}},
    }
