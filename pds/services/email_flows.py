"""What the emailed tokens open, as the reference does it: confirming the address,
changing it, resetting a forgotten password, and email sign-in codes (2FA).

Deleting an account by token is `lifecycle.delete_with_token`; the PLC operation token is
spent by signPlcOperation. Every function here is blocking (files, argon2id): the
handlers call them with `threads.blocking`.
"""

from __future__ import annotations

from typing import Any

from ..errors import AuthFailed, InvalidInput
from ..store.accounts import Taken, now_iso
from ..store.tokens import TokenStore
from . import accounts as acc
from . import email
from .account import Account, Use, load, require
from .context import AppContext

RESET_PER_IP = ((15, 3600), (50, 86400))  # requestPasswordReset, as the reference


def _account(ctx: AppContext, did: str) -> Account:
    return require(load(ctx, did), Use.MANAGE, did)


def request_confirmation(ctx: AppContext, did: str) -> None:
    """requestEmailConfirmation: a confirm_email token to the account's address."""
    email.issue(ctx, did, "confirm_email")


def confirm(ctx: AppContext, did: str, address: Any, token: Any) -> None:
    """confirmEmail: the address must be the account's; the token confirms it."""
    acct = _account(ctx, did)
    if not isinstance(address, str) or not acct.email or \
            acct.email.lower() != address.strip().lower():
        raise InvalidInput("invalid email", "InvalidEmail")
    email.spend(ctx, did, "confirm_email", token)
    ctx.accounts.update(did, emailConfirmedAt=now_iso())


def request_update(ctx: AppContext, did: str) -> dict:
    """requestEmailUpdate: once the address is confirmed a change needs a token, mailed to
    the current address; `tokenRequired` says which."""
    acct = _account(ctx, did)
    if not acct.email:
        raise InvalidInput("account does not have an email address")
    if acct.email_confirmed_at:
        email.issue(ctx, did, "update_email")
    return {"tokenRequired": bool(acct.email_confirmed_at)}


def update(ctx: AppContext, did: str, address: Any, token: Any, auth_factor: Any) -> None:
    """updateEmail: a new address (unconfirmed; the tokens issued to the old one die with
    it, and so do sign-in codes, which only ever go to a confirmed address), and/or
    `emailAuthFactor` turned on or off. A confirmed account needs an update_email token."""
    acct = _account(ctx, did)
    address = acc.check_email(address)
    if auth_factor is not None and not isinstance(auth_factor, bool):
        raise InvalidInput("emailAuthFactor must be a boolean")
    changed = (acct.email or "").lower() != address.lower()
    if acct.email_confirmed_at and token is None:
        raise InvalidInput("confirmation token required", "TokenRequired")
    if auth_factor and (changed or not acct.email_confirmed_at):
        raise InvalidInput("Confirm the email address before turning on sign-in codes")
    if changed and ctx.accounts.did_for_email(address) not in (None, did):
        raise InvalidInput("This email address is already in use", "InvalidEmail")
    if token is not None:
        email.spend(ctx, did, "update_email", token)
    if changed:
        try:
            ctx.accounts.claim_email(address, did)
        except Taken:
            raise InvalidInput("This email address is already in use",
                               "InvalidEmail") from None
        if acct.email:
            ctx.accounts.release_email(acct.email, did)
        ctx.accounts.update(did, email=address, emailConfirmedAt=None, emailAuthFactor=None)
        TokenStore(ctx.data).discard(did)
    elif auth_factor is not None:
        ctx.accounts.update(did, emailAuthFactor=auth_factor or None)


def request_reset(ctx: AppContext, address: Any, ip: str) -> None:
    """requestPasswordReset: a reset_password token to the account with that address."""
    if not isinstance(address, str) or not address:
        raise InvalidInput("email must be a string")
    for n, window in RESET_PER_IP:
        ctx.auth.limiter.hit(f"reset-ip:{window}:{ip}", n, window)
    try:
        did = ctx.accounts.did_for_email(address.strip())
    except ValueError:
        did = None
    acct = load(ctx, did) if did else None
    if acct is None or acct.deleted or not acct.email:
        raise InvalidInput("account does not have an email address")
    email.issue(ctx, acct.did, "reset_password")


def reset(ctx: AppContext, token: Any, password: Any, ip: str) -> None:
    """resetPassword: the token names the account; every session of it ends."""
    ctx.auth.limiter.hit("reset-use-ip:" + ip, 50, 300)
    password = acc.check_new_password(password)
    if not isinstance(token, str) or not 0 < len(token) <= 64:
        raise InvalidInput("Token is invalid", "InvalidToken")
    did = email.find_account(ctx, "reset_password", token)
    if did is None:
        raise InvalidInput("Token is invalid", "InvalidToken")
    email.spend(ctx, did, "reset_password", token)
    ctx.lifecycle.set_password(did, password)


def wants_code(acct: Account) -> bool:
    """Whether a password sign-in of `acct` needs an emailed code too (codes on, and an
    address confirmed to send them to): createSession's rule, and the OAuth page's."""
    return bool(acct.email_auth_factor and acct.email and acct.email_confirmed_at)


def mail_code(ctx: AppContext, did: str) -> None:
    """Mail a fresh sign-in code (replacing any earlier one; rate limited per account)."""
    email.issue(ctx, did, "2fa")


def check_code(ctx: AppContext, did: str, token: Any) -> None:
    """Spend a mailed sign-in code: AuthFailed (InvalidToken, ExpiredToken) when it is
    not the live one. Single use, rate limited per account (`email.spend`)."""
    try:
        email.spend(ctx, did, "2fa", token)
    except InvalidInput as e:
        raise AuthFailed(e.message, e.error) from None


def second_factor(ctx: AppContext, acct: Account, token: Any) -> None:
    """createSession of an account with sign-in codes on: without a code, mail one and
    refuse (AuthFactorTokenRequired); with one, it must be the mailed code."""
    if not wants_code(acct):
        return
    if token is None or token == "":
        mail_code(ctx, acct.did)
        raise AuthFailed("A sign-in code has been sent to your email address",
                         "AuthFactorTokenRequired")
    check_code(ctx, acct.did, token)
