"""The PDS as an atproto OAuth authorization server: metadata, pushed authorization
requests, the sign-in and consent steps behind the page, and the redirect back.

Tokens (the token endpoint, refresh, revocation, access tokens on XRPC) are in
`oauth_tokens`. State lives in the data dir (`pds.store.oauth`), so any worker serves
any step. Lifetimes are the reference's: a request lives PAR_TTL (5 minutes, the
reference's PAR_EXPIRES_IN and authorization inactivity timeout) and its code as long.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from ..errors import AuthFailed, OAuthError, RateLimited
from ..store.layout import DPOP_JTI, OAUTH_CODES, OAUTH_DEVICES, OAUTH_JTI, OAUTH_REQUESTS
from ..store.oauth import OAuthStore
from ..store.replay import SeenOnce
from . import auth as A
from . import oauth_scopes
from .account import Account, Use, load, require
from .email_flows import check_code, mail_code, wants_code
from .oauth_client_auth import SIGNING_ALGS, authenticate
from .oauth_clients import Client, get_client
from .oauth_code_step import ACCOUNT_PAGE, CodeStep, Steps, mask_email
from .oauth_dpop import ALGS, REPLAY_KEEP, Dpop
from .threads import blocking

PAR_TTL = 300
DEVICE_TTL = 7 * 24 * 3600  # a remembered browser (the reference's AUTHENTICATION_MAX_AGE)
REQUEST_URI_PREFIX = "urn:ietf:params:oauth:request_uri:"
MAX_FIELD = 2048


@dataclass
class Pending:
    """An authorization request being shown on the page."""

    request_id: str
    rec: dict
    client: Client

    @property
    def request_uri(self) -> str:
        return REQUEST_URI_PREFIX + self.request_id


@dataclass
class SignIn:
    """Where a sign-in got to: signed in (`did`), or waiting for the emailed code
    (`step`, the signed value the code form carries back; `hint`, where the code went)."""

    did: str | None = None
    device: str | None = None   # a new device cookie to set
    step: str | None = None
    hint: str | None = None
    error: str | None = None    # the code was refused: the code step is shown again
    notice: str | None = None
    status: int = 200


WRONG_CODE = "That code is not right. Check the newest mail from us and try again."
EXPIRED_CODE = "That code has expired. Send a new one."
SLOW_DOWN = "Too many tries. Wait a few minutes, then try again."
STEP_GONE = "This sign-in has expired. Sign in again."


def _field(form: dict[str, Any], name: str, required: bool = True) -> str | None:
    v = form.get(name)
    if v is None or v == "":
        if required:
            raise OAuthError(f'"{name}" is required', "invalid_request")
        return None
    if not isinstance(v, str) or len(v) > MAX_FIELD:
        raise OAuthError(f'"{name}" is not valid', "invalid_request")
    return v


class OAuth:
    """The authorization server of one PDS (per worker; state in the data dir)."""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        self.issuer = ctx.settings.public_url
        self.store = OAuthStore(ctx.data)
        self.steps = Steps(ctx.settings.jwt_secret)
        self.dpop = Dpop(ctx.settings.jwt_secret, self.issuer, SeenOnce(
            ctx.data.tmp / DPOP_JTI, ctx.data.oauth / OAUTH_JTI, REPLAY_KEEP))
        from .oauth_tokens import Tokens
        self.tokens = Tokens(self)

    # --- metadata ---------------------------------------------------------------------

    def server_metadata(self) -> dict:
        """/.well-known/oauth-authorization-server (RFC 8414, the atproto profile)."""
        u = self.issuer
        return {
            "issuer": u,
            "scopes_supported": list(oauth_scopes.SUPPORTED),
            "subject_types_supported": ["public"],
            "response_types_supported": ["code"],
            "response_modes_supported": ["query", "fragment"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "code_challenge_methods_supported": ["S256"],
            "ui_locales_supported": ["en-US"],
            "display_values_supported": ["page", "popup", "touch"],
            "authorization_response_iss_parameter_supported": True,
            "request_object_signing_alg_values_supported": ["none"],
            "request_parameter_supported": False,
            "request_uri_parameter_supported": True,
            "require_request_uri_registration": True,
            "authorization_endpoint": f"{u}/oauth/authorize",
            "token_endpoint": f"{u}/oauth/token",
            "token_endpoint_auth_methods_supported": ["none", "private_key_jwt"],
            "token_endpoint_auth_signing_alg_values_supported": SIGNING_ALGS,
            "revocation_endpoint": f"{u}/oauth/revoke",
            "pushed_authorization_request_endpoint": f"{u}/oauth/par",
            "require_pushed_authorization_requests": True,
            "dpop_signing_alg_values_supported": list(ALGS),
            "client_id_metadata_document_supported": True,
            "protected_resources": [u],
        }

    def resource_metadata(self) -> dict:
        """/.well-known/oauth-protected-resource (RFC 9728): we are our own server."""
        return {"resource": self.issuer, "authorization_servers": [self.issuer],
                "scopes_supported": [], "bearer_methods_supported": ["header"],
                "resource_documentation": "https://atproto.com"}

    # --- pushed authorization requests ------------------------------------------------

    async def par(self, form: dict[str, Any], proof: str | None) -> dict:
        """POST /oauth/par: check and store an authorization request (PKCE S256, DPoP)."""
        bound = await blocking(self.dpop.check, proof, "POST", "/oauth/par")
        client = await get_client(self.ctx, form.get("client_id"))
        client_auth = await authenticate(self.ctx, client, form)
        rec = _request_fields(form, client)
        rec["clientAuth"] = client_auth
        rec["clientName"] = client.name
        if rec["jkt"] is not None and rec["jkt"] != bound.jkt:
            raise OAuthError("dpop_jkt does not match the DPoP proof", "invalid_request")
        rec["jkt"] = bound.jkt
        request_id = "req-" + secrets.token_hex(16)
        await blocking(self.store.put, OAUTH_REQUESTS, request_id, rec)
        return {"request_uri": REQUEST_URI_PREFIX + request_id, "expires_in": PAR_TTL}

    async def pending(self, client_id: Any, request_uri: Any) -> Pending:
        """The stored request a page visit names (its client must be the one that
        pushed it)."""
        if not isinstance(request_uri, str) or not request_uri.startswith(REQUEST_URI_PREFIX):
            raise OAuthError("request_uri is required (pushed requests only)",
                             "invalid_request")
        request_id = request_uri[len(REQUEST_URI_PREFIX):]
        rec = await blocking(self.store.get, OAUTH_REQUESTS, request_id)
        if rec is None or rec.get("code") is not None:
            raise OAuthError("This sign-in request has expired or was already used. Go "
                             "back to the app and start again.", "invalid_request")
        if client_id is not None and client_id != rec["clientId"]:
            raise OAuthError("client_id does not match the request", "invalid_request")
        client = await get_client(self.ctx, rec["clientId"])
        return Pending(request_id, rec, client)

    # --- the page's steps (blocking) --------------------------------------------------

    def sign_in(self, p: Pending | None, identifier: str, password: str, ip: str,
                browser: str, remember: bool) -> SignIn:
        """Check a password (the login rate limits apply). For an account with sign-in
        codes on, mail a code and return the code step; otherwise sign in: bind the
        request `p` (None: the account page) to the account and to this browser
        (`browser`, its CSRF cookie), and remember the browser if asked."""
        acct = self.check_password(identifier, password, ip)
        if not wants_code(acct):
            return self._signed_in(p, acct.did, browser, remember, False)
        mail_code(self.ctx, acct.did)
        self._keep_alive(p)
        where = p.request_id if p else ACCOUNT_PAGE
        return SignIn(step=self.steps.issue(acct, where, browser, remember),
                      hint=mask_email(acct.email))

    def enter_code(self, p: Pending | None, step: Any, code: Any, browser: str) -> SignIn:
        """The code step's "Sign in": the mailed code for the account the step names
        signs the browser in; a wrong, spent or expired code shows the step again."""
        opened = self._open_step(p, step, browser)
        try:
            check_code(self.ctx, opened.did, code)
        except AuthFailed as e:
            self._keep_alive(p)
            return SignIn(step=step, hint=opened.hint, status=401, error=EXPIRED_CODE if
                          e.error == "ExpiredToken" else WRONG_CODE)
        except RateLimited:
            return SignIn(step=step, hint=opened.hint, status=429, error=SLOW_DOWN)
        return self._signed_in(p, opened.did, browser, opened.remember, True)

    def resend_code(self, p: Pending | None, step: Any, browser: str) -> SignIn:
        """The code step's "Send a new code" (the earlier code stops working)."""
        opened = self._open_step(p, step, browser)
        try:
            mail_code(self.ctx, opened.did)
        except RateLimited:
            return SignIn(step=step, hint=opened.hint, status=429, error=SLOW_DOWN)
        self._keep_alive(p)
        return SignIn(step=step, hint=opened.hint, notice="We sent a new code.")

    def _open_step(self, p: Pending | None, step: Any, browser: str) -> CodeStep:
        where = p.request_id if p else ACCOUNT_PAGE
        found = self.steps.open(step, where, browser, lambda did: load(self.ctx, did))
        if found is None or not wants_code(found[1]):
            raise AuthFailed(STEP_GONE)
        return found[0]

    def _signed_in(self, p: Pending | None, did: str, browser: str, remember: bool,
                   second_factor: bool) -> SignIn:
        require(load(self.ctx, did), Use.LOGIN, did)
        if p is not None:
            self._bind(p, did, browser)
        device = self.new_device(did, second_factor) if remember else None
        return SignIn(did=did, device=device)

    def _keep_alive(self, p: Pending | None) -> None:
        """A request waiting for a mailed code lives on (the reference's inactivity
        timeout is PAR_TTL since the last step, not since PAR)."""
        if p is not None:
            p.rec["expiresAt"] = max(p.rec["expiresAt"], int(time.time()) + PAR_TTL)
            self.store.put(OAUTH_REQUESTS, p.request_id, p.rec)

    def check_password(self, identifier: str, password: str, ip: str) -> Account:
        """The account a handle or email and its password name (the account's own
        password: app passwords don't sign in to apps); AuthFailed otherwise."""
        from .sessions import find_account, limit_login
        if not identifier or not password or len(identifier) > 512 or len(password) > 512:
            raise AuthFailed("Enter your handle or email and your password.")
        limit_login(self.ctx, identifier, ip)
        acct = find_account(self.ctx, identifier)
        if acct is None or not acct.password_hash or \
                not A.verify_password(password, acct.password_hash):
            raise AuthFailed("Wrong handle, email or password.")
        require(acct, Use.LOGIN, acct.did)
        return acct

    def new_device(self, did: str, second_factor: bool = False) -> str:
        """Remember this browser for `did`: the cookie value (its secret hashed on disk).
        `second_factor`: the browser passed the emailed-code step."""
        device, secret = "dev-" + secrets.token_hex(16), secrets.token_urlsafe(32)
        now = int(time.time())
        rec = {"did": did, "secret": _digest(secret), "createdAt": now,
               "expiresAt": now + DEVICE_TTL}
        if second_factor:
            rec["secondFactor"] = True
        self.store.put(OAUTH_DEVICES, device, rec)
        return f"{device}.{secret}"

    def remembered(self, cookie: str | None) -> str | None:
        """The account a device cookie remembers, if it is still good."""
        if not cookie or "." not in cookie or len(cookie) > 200:
            return None
        device, _, secret = cookie.partition(".")
        rec = self.store.get(OAUTH_DEVICES, device) if device.startswith("dev-") else None
        if rec is None or not hmac.compare_digest(rec["secret"], _digest(secret)):
            return None
        acct = load(self.ctx, rec["did"])
        if acct is None or acct.deleted:
            return None
        if wants_code(acct) and not rec.get("secondFactor"):
            # Remembered before the account turned sign-in codes on: the browser is
            # forgotten and signs in again, code included (as with the password alone).
            self.store.delete(OAUTH_DEVICES, device)
            return None
        return acct.did

    def forget_device(self, cookie: str | None) -> None:
        if cookie and cookie.startswith("dev-"):
            self.store.delete(OAUTH_DEVICES, cookie.partition(".")[0])

    def use_device(self, p: Pending, did: str, browser: str) -> None:
        """Sign in a remembered browser's account for the request."""
        require(load(self.ctx, did), Use.LOGIN, did)
        self._bind(p, did, browser)

    def _bind(self, p: Pending, did: str, browser: str) -> None:
        p.rec.update(did=did, browser=_digest(browser))
        self.store.put(OAUTH_REQUESTS, p.request_id, p.rec)

    def signed_in(self, p: Pending, browser: str) -> str | None:
        """The account this browser signed in for the request, or None."""
        if p.rec.get("did") and hmac.compare_digest(p.rec.get("browser", ""),
                                                     _digest(browser)):
            return str(p.rec["did"])
        return None

    def approve(self, p: Pending, browser: str) -> str:
        """The user said yes: issue a code; returns where to send the browser."""
        if self.signed_in(p, browser) is None:
            raise OAuthError("Sign in first.", "access_denied")
        code = "cod-" + secrets.token_hex(32)
        p.rec["code"] = _digest(code)
        self.store.put(OAUTH_REQUESTS, p.request_id, p.rec)
        self.store.put(OAUTH_CODES, _digest(code), {"request": p.request_id,
                                                   "expiresAt": p.rec["expiresAt"]})
        return self.redirect(p.rec, {"code": code})

    def deny(self, p: Pending) -> str:
        """The user said no: the request is gone; where to send the browser."""
        return self.refuse(p, "access_denied", "The user denied access")

    def refuse(self, p: Pending, error: str, description: str) -> str:
        """End the request with an error for the app; where to send the browser."""
        self.store.delete(OAUTH_REQUESTS, p.request_id)
        return self.redirect(p.rec, {"error": error, "error_description": description})

    def redirect(self, rec: dict, params: dict[str, str]) -> str:
        """The client's redirect URI with the answer (RFC 9207: `iss` included)."""
        answer = {**params, "iss": self.issuer}
        if rec.get("state") is not None:
            answer["state"] = rec["state"]
        sep = "#" if rec.get("responseMode") == "fragment" else (
            "&" if "?" in rec["redirectUri"] else "?")
        return rec["redirectUri"] + sep + urlencode(answer)

    def prune(self) -> int:
        """Remove expired OAuth state and old DPoP jti claims (maintenance)."""
        return self.store.prune() + self.dpop.prune()


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _prompt(form: dict[str, Any]) -> str | None:
    """OpenID's `prompt`: "login" always asks for the password, "none" never shows the
    page (this server always asks for consent, so it answers consent_required or
    login_required), "consent" and "select_account" are what the page does anyway."""
    prompt = _field(form, "prompt", required=False)
    if prompt not in (None, "login", "none", "consent", "select_account"):
        raise OAuthError("prompt must be login, none, consent or select_account",
                         "invalid_request")
    return prompt


def _request_fields(form: dict[str, Any], client: Client) -> dict:
    """The stored part of a pushed request, checked against its client."""
    if _field(form, "response_type") != "code":
        raise OAuthError('response_type must be "code"', "unsupported_response_type")
    challenge = _field(form, "code_challenge", required=False)
    method = _field(form, "code_challenge_method", required=False)
    if challenge is None:
        raise OAuthError("PKCE is required (code_challenge)", "invalid_request")
    if method != "S256":
        raise OAuthError('code_challenge_method must be "S256"', "invalid_request")
    if not 43 <= len(challenge) <= 128:
        raise OAuthError("code_challenge is not valid", "invalid_request")
    redirect_uri = _field(form, "redirect_uri", required=len(client.redirect_uris) != 1) \
        or client.redirect_uris[0]
    if redirect_uri not in client.redirect_uris:
        raise OAuthError("redirect_uri is not one of the client's", "invalid_request")
    mode = _field(form, "response_mode", required=False) or "query"
    if mode not in ("query", "fragment"):
        raise OAuthError("response_mode must be query or fragment", "invalid_request")
    scope = oauth_scopes.parse(_field(form, "scope", required=False) or client.scope,
                               client.scope)
    for name in ("request", "request_uri"):
        if form.get(name) is not None:
            raise OAuthError(f'"{name}" is not accepted at the PAR endpoint',
                             "invalid_request")
    return {"clientId": client.client_id, "redirectUri": redirect_uri, "scope": scope,
            "state": _field(form, "state", required=False), "codeChallenge": challenge,
            "responseMode": mode, "loginHint": _field(form, "login_hint", required=False),
            "prompt": _prompt(form),
            "jkt": _field(form, "dpop_jkt", required=False),
            "expiresAt": int(time.time()) + PAR_TTL}
