"""The sign-in page's flow: what a visit or a button press on `/oauth/authorize` leads
to (a sign-in form, the emailed-code step, a consent question, or a redirect back to the
app), and the account page's list of authorized apps. The HTML is the XRPC layer's; this
decides.

The page's browser is known by its CSRF cookie (`browser`): a request signed in from one
browser can only be approved from that browser. A remembered device is a second cookie
(`device`), naming a file in `oauth/devices/`.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from typing import Any

from ..errors import AuthFailed, OAuthError, PdsError
from . import oauth_scopes
from .account import load
from .oauth import Pending, SignIn
from .threads import blocking


@dataclass
class Page:
    """What to answer: `step` is "sign_in", "code" (the emailed code), "consent",
    "redirect", "error" or "account"."""

    step: str
    pending: Pending | None = None
    handle: str | None = None
    did: str | None = None
    error: str | None = None
    status: int = 200
    redirect: str | None = None
    device: str | None = None       # a new device cookie to set
    forget_device: bool = False     # clear the device cookie
    asks: list[str] = field(default_factory=list)
    grants: list[dict] = field(default_factory=list)
    code_step: str | None = None    # the code step's signed value (a hidden field)
    hint: str | None = None         # the masked address the code went to
    notice: str | None = None


def _consent(ctx: Any, p: Pending, did: str, device: str | None = None) -> Page:
    acct = load(ctx, did)
    return Page("consent", p, handle=acct.handle if acct else did, did=did,
                asks=oauth_scopes.describe(p.rec["scope"]), device=device)


async def visit(ctx: Any, client_id: Any, request_uri: Any, browser: str,
                device: str | None) -> Page:
    """GET /oauth/authorize: the sign-in form, or the consent question for a browser
    already signed in (for this request, or remembered)."""
    oauth = ctx.oauth
    p = await oauth.pending(client_id, request_uri)
    prompt = p.rec.get("prompt")
    if prompt == "none":
        known = await blocking(oauth.remembered, device)
        error = "consent_required" if known else "login_required"
        return Page("redirect", p, redirect=await blocking(
            oauth.refuse, p, error, "The user must be asked"))
    did = oauth.signed_in(p, browser)
    if did is None and prompt != "login":
        did = await blocking(oauth.remembered, device)
        if did is not None:
            await blocking(oauth.use_device, p, did, browser)
    if did is None:
        return Page("sign_in", p)
    return await blocking(_consent, ctx, p, did)


async def act(ctx: Any, form: dict[str, str], browser: str, csrf_ok: bool,
              ip: str) -> Page:
    """POST /oauth/authorize: a button of the page ("sign_in", "code", "resend",
    "authorize", "deny", "switch")."""
    oauth = ctx.oauth
    if not csrf_ok:
        return Page("error", error="This page has expired. Go back to the app and sign in "
                    "again.", status=403)
    p = await oauth.pending(None, form.get("request_uri"))
    action = form.get("action")
    if action == "deny":
        return Page("redirect", p, redirect=await blocking(oauth.deny, p))
    if action == "authorize":
        try:
            url = await blocking(oauth.approve, p, browser)
        except OAuthError:
            return Page("sign_in", p, error="Sign in first.", status=403)
        return Page("redirect", p, redirect=url)
    if action == "switch":
        await blocking(oauth._bind, p, "", "")
        return Page("sign_in", p, forget_device=True)
    if action not in SIGN_IN_ACTIONS:
        return Page("error", error="Unknown action.", status=400)
    try:
        done = await _sign_in(ctx, p, form, browser, ip)
    except AuthFailed as e:
        return Page("sign_in", p, error=e.message, status=401)
    except PdsError as e:  # rate limited, account deactivated or taken down
        return Page("sign_in", p, error=e.message, status=_status(e))
    if done.did is None:
        return _code_page(p, done)
    return await blocking(_consent, ctx, p, done.did, done.device)


SIGN_IN_ACTIONS = ("sign_in", "code", "resend")


async def _sign_in(ctx: Any, p: Pending | None, form: dict[str, str], browser: str,
                   ip: str) -> SignIn:
    """A sign-in button: the password form's, or the code step's "Sign in" ("code") or
    "Send a new code" ("resend")."""
    oauth, action = ctx.oauth, form.get("action")
    if action == "sign_in":
        return await blocking(
            oauth.sign_in, p, form.get("identifier", "").strip(), form.get("password", ""),
            ip, browser, p is None or form.get("remember") == "on")
    if action == "code":
        return await blocking(oauth.enter_code, p, form.get("step"),
                                       form.get("code", "").strip(), browser)
    return await blocking(oauth.resend_code, p, form.get("step"), browser)


def _code_page(p: Pending | None, done: SignIn) -> Page:
    return Page("code", p, code_step=done.step, hint=done.hint, error=done.error,
                notice=done.notice, status=done.status)


def _status(e: PdsError) -> int:
    return 429 if "RateLimit" in (e.error or type(e).__name__) else 403


def csrf_matches(cookie: str | None, sent: str | None) -> bool:
    """The double-submit check: the form's token is the browser's cookie."""
    return bool(cookie) and bool(sent) and hmac.compare_digest(str(cookie), str(sent))


async def account_page(ctx: Any, device: str | None, form: dict[str, str] | None,
                       csrf_ok: bool, ip: str, browser: str) -> Page:
    """/oauth/account: a remembered browser's account, its authorized apps, and revoking
    one ("revoke" with `id`), or signing out ("sign_out"). Signing in here (password,
    then the emailed code for an account with codes on) always remembers the browser."""
    oauth = ctx.oauth
    did = await blocking(oauth.remembered, device)
    new_device = None
    if form is not None:
        if not csrf_ok:
            return Page("error", error="This page has expired. Reload it.", status=403)
        if did is None and form.get("action") in SIGN_IN_ACTIONS:
            try:
                done = await _sign_in(ctx, None, form, browser, ip)
            except PdsError as e:
                return Page("account", error=e.message, status=401 if isinstance(
                    e, AuthFailed) else _status(e))
            if done.did is None:
                return _code_page(None, done)
            did, new_device = done.did, done.device
        if did is not None and form.get("action") == "revoke":
            await blocking(oauth.tokens.revoke_grant, did, form.get("id", ""))
        elif did is not None and form.get("action") == "sign_out":
            await blocking(oauth.forget_device, device)
            return Page("account", forget_device=True)
    if did is None:
        return Page("account")
    acct = await blocking(load, ctx, did)
    grants = await blocking(oauth.tokens.grants, did)
    for g in grants:
        g["asks"] = oauth_scopes.describe(g["scope"])
    return Page("account", did=did, handle=acct.handle if acct else did, grants=grants,
                device=new_device)
