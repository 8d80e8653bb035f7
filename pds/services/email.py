"""Emailed tokens: issue one and mail it (`send_token`), check and spend one (`use_token`).

Tokens have the reference's shape, `XXXXX-XXXXX` in upper-case base32 (`A-Z2-7`), are
compared case-insensitively, live 15 minutes, work once, and are kept only as a hash
(`store.tokens`). A new token for a purpose replaces the previous one. Issuing is rate
limited per account and purpose (the reference's 5 an hour, 15 a day); spending is rate
limited per account, so a token can't be guessed by trying.

The mail goes to the mail spool before `send_token` returns (`services.mailer` delivers
it); a PDS without SMTP keeps it there for the operator (`pds mail list`).
"""

from __future__ import annotations

import base64
import secrets

from ..errors import InvalidInput
from ..store.tokens import TokenStore
from .account import Use, load, require
from .context import AppContext
from .threads import blocking

TOKEN_TTL = 15 * 60  # seconds: every purpose, as the reference's default
ISSUE_LIMITS = ((5, 3600), (15, 86400))  # tokens per account and purpose
USE_LIMIT = (50, 300)  # token checks per account and purpose

# purpose -> (subject, what the token is for)
PURPOSES: dict[str, tuple[str, str]] = {
    "confirm_email": ("Confirm your email address",
                      "To confirm this email address for your account, enter this code:"),
    "update_email": ("Email address update requested",
                     "To change the email address of your account, enter this code:"),
    "reset_password": ("Password reset requested",
                       "To reset the password of your account, enter this code:"),
    "delete_account": ("Account deletion requested",
                       "To delete your account for good, enter this code:"),
    "plc_operation": ("Identity update requested",
                      "To sign an update of your account's identity (a PLC operation, as "
                      "when moving the account to another server), enter this code:"),
    "2fa": ("Sign-in code", "To finish signing in to your account, enter this code:"),
}


def new_token() -> str:
    """A fresh token: ten base32 characters as `XXXXX-XXXXX`."""
    raw = base64.b32encode(secrets.token_bytes(10)).decode()[:10]
    return raw[:5] + "-" + raw[5:]


def _purpose(purpose: str) -> str:
    if purpose not in PURPOSES:
        raise ValueError(f"unknown token purpose {purpose!r}")
    return purpose


def mail_text(ctx: AppContext, handle: str, purpose: str, token: str) -> tuple[str, str]:
    """(subject, plain text) of a token's mail; the token stands on its own line."""
    subject, lead = PURPOSES[purpose]
    host = ctx.settings.host_only
    text = (f"Hello {handle},\n\n{lead}\n\n{token}\n\n"
            f"The code works once, for {TOKEN_TTL // 60} minutes. If you did not ask for "
            f"it, ignore this mail; nothing changes without the code.\n\n-- {host}\n")
    return f"{subject} ({host})", text


def issue(ctx: AppContext, did: str, purpose: str, to: str | None = None) -> str:
    """Issue a token for `purpose` and spool its mail (to the account's address, or `to`);
    blocking. Returns the spooled message's id."""
    _purpose(purpose)
    acct = require(load(ctx, did), Use.MANAGE, did)
    address = to or acct.email
    if not address:
        raise InvalidInput("account does not have an email address")
    for n, window in ISSUE_LIMITS:
        ctx.auth.limiter.hit(f"email-token:{window}:{purpose}:{did}", n, window)
    token = new_token()
    TokenStore(ctx.data).put(did, purpose, token)
    subject, text = mail_text(ctx, acct.handle, purpose, token)
    return ctx.mailer.spool(address, subject, text)


def spend(ctx: AppContext, did: str, purpose: str, token: str) -> None:
    """Check and remove a token (blocking); see `use_token`."""
    _purpose(purpose)
    ctx.auth.limiter.hit(f"email-token-use:{purpose}:{did}", *USE_LIMIT)
    if not isinstance(token, str) or not 0 < len(token) <= 64:
        raise InvalidInput("Token is invalid", "InvalidToken")
    found = TokenStore(ctx.data).consume(did, purpose, token, TOKEN_TTL)
    if found is None:
        raise InvalidInput("Token is invalid", "InvalidToken")
    if found == "expired":
        raise InvalidInput("Token is expired", "ExpiredToken")


def find_account(ctx: AppContext, purpose: str, token: str) -> str | None:
    """The account holding `token` for `purpose` (for resetPassword, which names none);
    None when no account does. Blocking; reads each account's token for the purpose."""
    store = TokenStore(ctx.data)
    for did in ctx.accounts.list_dids():
        if store.matches(did, purpose, token):
            return did
    return None


async def send_token(ctx: AppContext, did: str, purpose: str) -> None:
    """Issue a fresh single-use token for `purpose` and spool a plain-text mail carrying it
    (token on its own line) to the account's email address."""
    await blocking(issue, ctx, did, purpose)


async def use_token(ctx: AppContext, did: str, purpose: str, token: str) -> None:
    """Consume a token: raises InvalidInput(..., "InvalidToken") when wrong/used and
    InvalidInput(..., "ExpiredToken") when expired. Single use."""
    await blocking(spend, ctx, did, purpose, token)
