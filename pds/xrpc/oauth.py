"""OAuth routes (not XRPC): the metadata documents, /oauth/par, /oauth/authorize (the
sign-in page), /oauth/token, /oauth/revoke and /oauth/account.

Endpoint errors are OAuth's JSON, `{"error", "error_description"}`, with the status
`errors.render` gives the domain error; every answer carries a fresh `DPoP-Nonce`.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

import falcon
import falcon.asgi

from ..errors import InvalidInput, PayloadTooLarge, PdsError
from ..services import oauth_flow
from ..services.oauth_flow import Page
from ..services.threads import blocking
from .errors import render
from .oauth_page import render as render_page

FORM_LIMIT = 64 * 1024
CSRF_COOKIE = "pds-csrf"
DEVICE_COOKIE = "pds-device"
DEVICE_MAX_AGE = 7 * 24 * 3600
_PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                               "img-src 'self' data:; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
}


async def read_form(req: falcon.asgi.Request) -> dict[str, str]:
    """A url-encoded (or JSON object) body as a dict of strings (the last value wins)."""
    length = req.content_length
    if length is not None and length > FORM_LIMIT:
        raise PayloadTooLarge("request entity too large")
    data = await req.stream.read(FORM_LIMIT + 1)
    if len(data) > FORM_LIMIT:
        raise PayloadTooLarge("request entity too large")
    ctype = (req.content_type or "").split(";")[0].strip().lower()
    try:
        if ctype == "application/json":
            value = json.loads(data or b"{}")
            if not isinstance(value, dict):
                raise ValueError
            return {k: v for k, v in value.items() if isinstance(v, str)}
        return dict(parse_qsl(data.decode(), keep_blank_values=True))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise InvalidInput("the request body is not a valid form") from None


def _client_ip(ctx: Any, req: falcon.asgi.Request) -> str:
    if ctx.settings.behind_nginx and req.get_header("X-Real-IP"):
        return str(req.get_header("X-Real-IP"))
    return req.remote_addr or ""


class OAuthJson:
    """Base of the JSON endpoints: OAuth-style errors and a DPoP nonce on every answer."""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx

    async def answer(self, resp: falcon.asgi.Response, work: Any, status: int = 200) -> None:
        resp.set_header("DPoP-Nonce", self.ctx.oauth.dpop.nonce())
        resp.set_header("Cache-Control", "no-store")
        resp.content_type = "application/json"
        try:
            body = await work
        except PdsError as e:
            code, name, message, headers = render(e)
            if code >= 500:
                raise
            resp.status = code
            resp.set_headers(headers)
            body = {"error": e.error if e.error and e.error.islower() else _oauth_name(name),
                    "error_description": message}
        else:
            resp.status = status
        resp.data = json.dumps(body).encode()


def _oauth_name(xrpc_name: str) -> str:
    return {"RateLimitExceeded": "slow_down", "PayloadTooLarge": "invalid_request",
            "AuthenticationRequired": "invalid_client"}.get(xrpc_name, "invalid_request")


class Par(OAuthJson):
    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        async def work() -> dict:
            return await self.ctx.oauth.par(await read_form(req), req.get_header("DPoP"))
        await self.answer(resp, work(), status=201)


class Token(OAuthJson):
    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        async def work() -> dict:
            return await self.ctx.oauth.tokens.token(await read_form(req),
                                                     req.get_header("DPoP"))
        await self.answer(resp, work())


class Revoke(OAuthJson):
    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        async def work() -> dict:
            form = await read_form(req)
            await blocking(self.ctx.oauth.tokens.revoke, form.get("token"))
            return {}
        await self.answer(resp, work())


class Metadata:
    def __init__(self, ctx: Any, which: str) -> None:
        self.ctx = ctx
        self.which = which

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        oauth = self.ctx.oauth
        doc = oauth.server_metadata() if self.which == "server" else oauth.resource_metadata()
        resp.content_type = "application/json"
        resp.data = json.dumps(doc).encode()


class HtmlPage:
    """Shared by the sign-in page and the account page: cookies and rendering."""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx

    def _csrf(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> str:
        token = req.get_cookie_values(CSRF_COOKIE)
        value = token[0] if token and len(token[0]) < 100 else secrets.token_urlsafe(24)
        resp.set_cookie(CSRF_COOKIE, value, path="/oauth", secure=True, http_only=True,
                        same_site="Lax")
        return value

    @staticmethod
    def _cookie(req: falcon.asgi.Request, name: str) -> str | None:
        values = req.get_cookie_values(name)
        return values[0] if values else None

    def show(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, page: Page,
             csrf: str) -> None:
        if page.device:
            resp.set_cookie(DEVICE_COOKIE, page.device, path="/oauth", secure=True,
                            http_only=True, same_site="Lax", max_age=DEVICE_MAX_AGE)
        if page.forget_device:
            resp.unset_cookie(DEVICE_COOKIE, path="/oauth")
        resp.set_headers(_PAGE_HEADERS)
        if page.step == "redirect" and page.redirect:
            resp.status = 303
            resp.set_header("Location", page.redirect)
            return
        resp.status = page.status
        resp.content_type = "text/html; charset=utf-8"
        resp.text = render_page(page, csrf, self.ctx.settings.hostname)

    async def answer(self, req: falcon.asgi.Request, resp: falcon.asgi.Response,
                     make: Callable[[str], Awaitable[Page]]) -> None:
        """Show the page `make(csrf)` builds, or its refusal as an error page."""
        csrf = self._csrf(req, resp)
        try:
            page = await make(csrf)
        except PdsError as e:
            self.failed(resp, e, csrf)
            return
        self.show(req, resp, page, csrf)

    def failed(self, resp: falcon.asgi.Response, e: PdsError, csrf: str) -> None:
        status = render(e)[0]
        if status >= 500:
            raise e
        resp.set_headers(_PAGE_HEADERS)
        resp.status = status
        resp.content_type = "text/html; charset=utf-8"
        resp.text = render_page(Page("error", error=e.message), csrf,
                                self.ctx.settings.hostname)


class Authorize(HtmlPage):
    """/oauth/authorize: GET shows the page, POST is one of its buttons."""

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        async def make(csrf: str) -> Page:
            return await oauth_flow.visit(self.ctx, req.get_param("client_id"),
                                          req.get_param("request_uri"), csrf,
                                          self._cookie(req, DEVICE_COOKIE))
        await self.answer(req, resp, make)

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        async def make(csrf: str) -> Page:
            form = await read_form(req)
            return await oauth_flow.act(
                self.ctx, form, csrf,
                oauth_flow.csrf_matches(self._cookie(req, CSRF_COOKIE), form.get("csrf")),
                _client_ip(self.ctx, req))
        await self.answer(req, resp, make)


class Account(HtmlPage):
    """/oauth/account: the apps this account has authorized, each revocable."""

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        csrf = self._csrf(req, resp)
        page = await oauth_flow.account_page(self.ctx, self._cookie(req, DEVICE_COOKIE),
                                             None, True, _client_ip(self.ctx, req), csrf)
        self.show(req, resp, page, csrf)

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        async def make(csrf: str) -> Page:
            form = await read_form(req)
            return await oauth_flow.account_page(
                self.ctx, self._cookie(req, DEVICE_COOKIE), form,
                oauth_flow.csrf_matches(self._cookie(req, CSRF_COOKIE), form.get("csrf")),
                _client_ip(self.ctx, req), csrf)
        await self.answer(req, resp, make)


def add_routes(app: falcon.asgi.App, ctx: Any) -> None:
    """Mount the OAuth routes on the app."""
    app.add_route("/.well-known/oauth-authorization-server", Metadata(ctx, "server"))
    app.add_route("/.well-known/oauth-protected-resource", Metadata(ctx, "resource"))
    app.add_route("/oauth/par", Par(ctx))
    app.add_route("/oauth/token", Token(ctx))
    app.add_route("/oauth/revoke", Revoke(ctx))
    app.add_route("/oauth/authorize", Authorize(ctx))
    app.add_route("/oauth/account", Account(ctx))
