"""The falcon ASGI app: XRPC dispatch, errors, CORS, body limits, health, well-known."""

from __future__ import annotations

import itertools
import json
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any, Literal, overload

import falcon
import falcon.asgi
import orjson

from .. import __version__
from ..errors import InvalidInput, PayloadTooLarge, PdsError
from ..services.threads import blocking
from . import proxy, registry, validation
from .body import RequestBody
from .errors import INTERNAL, MethodNotAllowed, UpgradeRequired, answer_for, render

if TYPE_CHECKING:
    from ..services.context import AppContext

log = logging.getLogger("pds.xrpc")

JSON_LIMIT = 5 * 1024 * 1024
# A JSON body with at most this many `[` and `{` (so nested at most this deep) is read by
# orjson, any other by the stdlib (see _read_json).
FAST_JSON_OPENERS = 256
EXPOSE_HEADERS = [
    "RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset", "RateLimit-Policy",
    "Retry-After", "Atproto-Repo-Rev", "atproto-content-labelers", "DPoP-Nonce",
    "WWW-Authenticate",
]


class Raw:
    """A non-JSON answer: bytes or a byte iterator (sync, or async: a forwarded answer),
    with a content type."""

    def __init__(self, body: bytes | Iterator[bytes] | AsyncIterator[bytes], content_type: str,
                 headers: dict[str, str] | None = None, status: int = 200) -> None:
        self.body = body
        self.content_type = content_type
        self.headers = headers or {}
        self.status = status


# What a handler returns: a JSON value, a non-JSON answer, or nothing (an empty 200).
Answer = dict[str, Any] | Raw | None


def dumps(value: Any) -> bytes:
    """A JSON answer's bytes: orjson (a few times faster than the stdlib's), else the
    stdlib for what orjson refuses (a lone surrogate echoed from input, which JSON can
    escape; a non-string key; an integer beyond 64 bits)."""
    try:
        return orjson.dumps(value)
    except TypeError:
        pass
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
    except UnicodeEncodeError:  # a lone surrogate (echoed input): JSON can escape it
        return json.dumps(value, separators=(",", ":")).encode()


class Call:
    """One XRPC call as a handler sees it."""

    __slots__ = ("ctx", "req", "resp", "nsid", "auth", "body", "_params")

    def __init__(self, ctx: AppContext, req: falcon.asgi.Request,
                 resp: falcon.asgi.Response, nsid: str) -> None:
        self.ctx = ctx
        self.req = req
        self.resp = resp
        self.nsid = nsid
        self.auth: Any = None
        self.body: Any = None
        self._params = req.params

    # --- query parameters -------------------------------------------------------------

    @overload
    def param(self, name: str, required: Literal[True]) -> str: ...

    @overload
    def param(self, name: str, required: bool = False,
              default: str | None = None) -> str | None: ...

    def param(self, name: str, required: bool = False, default: str | None = None) -> str | None:
        """A query parameter (the last one given), or `default`; `required` refuses a
        missing or empty one."""
        v = self._params.get(name)
        if isinstance(v, list):
            v = v[-1]
        if v is None or v == "":
            if required:
                raise InvalidInput(f"Error: Params must have the property \"{name}\"")
            return default
        return v

    def param_int(self, name: str, default: int, lo: int, hi: int) -> int:
        v = self.param(name)
        if v is None:
            return default
        try:
            n = int(v)
        except ValueError:
            raise InvalidInput(f"Error: {name} must be an integer") from None
        if not lo <= n <= hi:
            raise InvalidInput(f"Error: {name} must be between {lo} and {hi}")
        return n

    def param_bool(self, name: str, default: bool = False) -> bool:
        v = self.param(name)
        if v is None:
            return default
        if v not in ("true", "false"):
            raise InvalidInput(f"Error: {name} must be a boolean")
        return v == "true"

    def param_list(self, name: str) -> list[str]:
        v = self._params.get(name)
        if v is None:
            return []
        return v if isinstance(v, list) else [v]

    # --- body -------------------------------------------------------------------------

    def field(self, name: str, required: bool = True, kind: type | None = str) -> Any:
        """A field of the JSON body, type-checked."""
        body = self.body if isinstance(self.body, dict) else {}
        v = body.get(name)
        if v is None:
            if required:
                raise InvalidInput(f"Input must have the property \"{name}\"")
            return None
        if kind is not None and not isinstance(v, kind) or (kind is int and isinstance(v, bool)):
            raise InvalidInput(f"Input/{name} must be a {getattr(kind, '__name__', kind)}")
        return v

    @property
    def ip(self) -> str:
        """The client's address (nginx's X-Real-IP when the app sits behind it)."""
        if self.ctx.settings.behind_nginx:
            real = self.req.get_header("X-Real-IP")
            if real:
                return real
        return self.req.remote_addr or ""


class XrpcResource:
    """`/xrpc/{nsid}`: finds the method, checks auth, parses input, runs the handler."""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response,
                     nsid: str) -> None:
        await self._dispatch(req, resp, nsid, "query")

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response,
                      nsid: str) -> None:
        await self._dispatch(req, resp, nsid, "procedure")

    async def on_head(self, req: falcon.asgi.Request, resp: falcon.asgi.Response,
                      nsid: str) -> None:
        await self._dispatch(req, resp, nsid, "query")

    async def on_websocket(self, req: falcon.asgi.Request, ws: falcon.asgi.WebSocket,
                           nsid: str) -> None:
        handler = registry.SUBSCRIPTIONS.get(nsid)
        if handler is None:
            raise falcon.HTTPNotFound()
        await handler(self.ctx, req, ws)

    async def _dispatch(self, req: falcon.asgi.Request, resp: falcon.asgi.Response,
                        nsid: str, kind: str) -> None:
        method = registry.METHODS.get(nsid)
        if method is None and nsid in registry.SUBSCRIPTIONS:
            if kind != "query":
                raise MethodNotAllowed("subscriptions are GET only")
            raise UpgradeRequired("Upgrade Required: use a WebSocket")
        if method is None:  # not served here: forwarded (issue 13)
            await proxy.forward(Call(self.ctx, req, resp, nsid))
            return
        if method.kind != kind:
            raise InvalidInput(
                f"Incorrect HTTP method ({req.method}) expected "
                f"{'GET' if method.kind == 'query' else 'POST'}")
        call = Call(self.ctx, req, resp, nsid)
        validation.check_query(nsid, req.params)  # the lexicon's parameters
        call.auth = await self.ctx.auth.check(method.auth, req.get_header("Authorization") or "",
                                              nsid, call.ip, oauth_request(req))
        if call.auth is not None and call.auth.headers:
            resp.set_headers(call.auth.headers)
        if kind == "procedure" and method.body == "json":
            call.body = await _read_json(req)
            validation.check_body(nsid, call.body)  # the lexicon's input
            if call.body is None:
                call.body = {}  # no body: what the lexicon saw, an empty object
        if call.auth is not None and call.auth.check_input is not None:
            call.auth.check_input(call.body)  # an OAuth grant's repo permissions
        result = await method.handler(call)
        if self.ctx.settings.validate_output and isinstance(result, dict):
            validation.check_answer(nsid, result)
        write_result(resp, result)


def oauth_request(req: falcon.asgi.Request) -> dict[str, str | None]:
    """What an OAuth (DPoP) credential is checked against besides the token."""
    return {"method": req.method, "path": req.path, "dpop": req.get_header("DPoP"),
            "content-type": req.content_type, "atproto-proxy": req.get_header("atproto-proxy")}


async def _read_json(req: falcon.asgi.Request) -> Any:
    length = req.content_length
    if length is not None and length > JSON_LIMIT:
        raise PayloadTooLarge("request entity too large")
    data = await req.stream.read(JSON_LIMIT + 1) if length is None else await req.stream.read()
    if len(data) > JSON_LIMIT:
        raise PayloadTooLarge("request entity too large")
    if not data:
        return None
    ctype = (req.content_type or "").split(";")[0].strip().lower()
    if ctype and ctype != "application/json":
        raise InvalidInput(f"Wrong request encoding (Content-Type): {ctype}")
    # orjson: several times faster. It refuses lone surrogates, NaN and a BOM, which the
    # stdlib's reading below then judges as before (the same answers to the same
    # bodies). It reads any depth of nesting, though, where the stdlib (and the
    # checkers behind it, which recurse) stop with RecursionError: only a body with few
    # enough brackets to be shallow is given to it.
    if data.count(b"[") + data.count(b"{") <= FAST_JSON_OPENERS:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: deep nesting
        raise InvalidInput("Request body is not valid JSON") from None
    if _SURROGATE_ESCAPE.search(data) and not _is_unicode(value):
        raise InvalidInput("Request body is not valid JSON: a string is not valid Unicode")
    return value


# `\ud800`..`\udfff` in JSON text: a surrogate, one of a pair (an emoji) or alone.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _is_unicode(value: Any) -> bool:
    """Whether every string in a parsed JSON value (keys too) is valid Unicode: JSON's
    escapes can spell a lone surrogate, which no UTF-8 (no file, no record) can hold."""
    try:
        json.dumps(value, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return False
    return True


def write_result(resp: falcon.asgi.Response, result: Any) -> None:
    """Shape a handler's return value into the response."""
    if isinstance(result, Raw):
        resp.status = result.status
        resp.content_type = result.content_type
        for k, v in result.headers.items():
            resp.set_header(k, v)
        if isinstance(result.body, bytes | bytearray):
            resp.data = bytes(result.body)
        elif isinstance(result.body, AsyncIterator):
            resp.stream = result.body
        else:
            resp.stream = _async_chunks(result.body)
        return
    resp.status = 200
    if result is None:
        return
    resp.content_type = "application/json; charset=utf-8"
    resp.data = dumps(result)


async def _async_chunks(it: Iterator[bytes]) -> AsyncIterator[bytes]:
    """Drive a blocking chunk iterator from a thread, one chunk at a time."""
    try:
        while True:
            chunk = await blocking(next, it, None)
            if chunk is None:
                return
            yield chunk
    finally:
        close = getattr(it, "close", None)
        if close:
            close()


# --- errors ---------------------------------------------------------------------------


async def _pds_error(req: falcon.asgi.Request, resp: falcon.asgi.Response,
                     ex: PdsError, params: dict) -> None:
    """Any domain error, answered as the table in `errors` says."""
    if answer_for(type(ex)) is INTERNAL:  # a PdsError of no kind: a bug, answered as one
        await _unexpected(req, resp, ex, params)
        return
    status, name, message, headers = render(ex)
    resp.status = status
    resp.content_type = "application/json; charset=utf-8"
    for k, v in headers.items():
        resp.set_header(k, v)
    resp.data = dumps({"error": name, "message": message})


_HTTP_NAMES = {400: "InvalidRequest", 401: "AuthenticationRequired", 403: "Forbidden",
               404: "NotFound", 405: "MethodNotAllowed", 413: "PayloadTooLarge",
               429: "RateLimitExceeded", 501: "MethodNotImplemented"}


async def _http_error(req: falcon.asgi.Request, resp: falcon.asgi.Response,
                      ex: falcon.HTTPError, params: dict) -> None:
    status = ex.status_code
    resp.status = status
    resp.content_type = "application/json; charset=utf-8"
    resp.set_headers(ex.headers or {})
    name = _HTTP_NAMES.get(status, "InternalServerError" if status >= 500 else "InvalidRequest")
    resp.data = dumps({"error": name, "message": ex.description or ex.title or name})


async def _unexpected(req: falcon.asgi.Request, resp: falcon.asgi.Response,
                      ex: Exception, params: dict) -> None:
    # The traceback goes to the log only, never to the client.
    log.exception("unhandled error in %s %s (request %s)", req.method, req.path,
                  getattr(req.context, "rid", "-"))
    resp.status = 500
    resp.content_type = "application/json; charset=utf-8"
    resp.data = dumps({"error": "InternalServerError", "message": "Internal Server Error"})


# --- plain routes ---------------------------------------------------------------------


class Health:
    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.content_type = "application/json"
        resp.data = dumps({"version": __version__})


class Root:
    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.content_type = "text/plain; charset=utf-8"
        resp.text = (
            "This is an AT Protocol Personal Data Server (PDS): https://atproto.com\n\n"
            "Most API routes are under /xrpc/\n"
        )


class Robots:
    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.content_type = "text/plain"
        resp.text = "User-agent: *\nAllow: /\n"


access_log = logging.getLogger("pds.access")


class AccessLog:
    """One line per request (to stdout, i.e. journald): id, client, request, status, time.

    The request id comes from `X-Request-Id` (nginx can set it) or is made here, and is
    returned in the response so a client's report can be matched to the log.
    """

    def __init__(self, trust_real_ip: bool = False) -> None:
        # Behind nginx every connection comes from it: the client is in X-Real-IP.
        self.trust_real_ip = trust_real_ip
        # Ids are a random half drawn once (each worker builds its own app) and a count:
        # unique without asking the kernel for randomness on every request.
        self._prefix = secrets.token_hex(4)
        self._count = itertools.count()

    async def process_request(self, req: falcon.asgi.Request,
                              resp: falcon.asgi.Response) -> None:
        req.context.t0 = time.perf_counter()
        rid = req.get_header("X-Request-Id") or f"{self._prefix}{next(self._count):08x}"
        req.context.rid = rid[:64]
        resp.set_header("X-Request-Id", req.context.rid)

    async def process_response(self, req: falcon.asgi.Request, resp: falcon.asgi.Response,
                               resource: Any, req_succeeded: bool) -> None:
        if not access_log.isEnabledFor(logging.INFO):
            return
        ms = (time.perf_counter() - req.context.t0) * 1000
        access_log.info("%s %s \"%s %s\" %s %.1fms", req.context.rid,
                        (self.trust_real_ip and req.get_header("X-Real-IP"))
                        or req.remote_addr or "-", req.method, req.relative_uri[:300],
                        resp.status[:3] if isinstance(resp.status, str) else resp.status, ms)


class Lifespan:
    """Per-worker start-up and shutdown (ASGI lifespan): the ctx's `startup`/`shutdown`."""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx

    async def process_startup(self, scope: dict, event: dict) -> None:
        outputs = bool(getattr(getattr(self.ctx, "settings", None), "validate_output", False))
        await blocking(validation.preload, list(registry.METHODS), outputs)
        start = getattr(self.ctx, "startup", None)
        if start is not None:
            await start()

    async def process_shutdown(self, scope: dict, event: dict) -> None:
        stop = getattr(self.ctx, "shutdown", None)
        if stop is not None:
            await stop()


def create_app(ctx: Any, extra_routes: Callable[[falcon.asgi.App], None] | None = None
               ) -> RequestBody:
    """The ASGI app for one worker process: falcon's, behind `body.RequestBody` (which
    asks the server for a request body only when a handler reads it, and discards what
    an early answer left unread; see there)."""
    middleware: list[Any] = [
        AccessLog(bool(getattr(getattr(ctx, "settings", None), "behind_nginx", False))),
        falcon.CORSMiddleware(allow_origins="*", expose_headers=EXPOSE_HEADERS),
        Lifespan(ctx)]
    app = falcon.asgi.App(middleware=middleware)
    app.req_options.auto_parse_qs_csv = False
    app.req_options.strip_url_path_trailing_slash = False
    app.resp_options.secure_cookies_by_default = False
    # A procedure without output answers 200 with an empty body and no Content-Type, as
    # the reference does: the official client parses any application/json body.
    app.resp_options.default_media_type = None  # type: ignore[assignment]
    app.add_route("/", Root())
    app.add_route("/robots.txt", Robots())
    app.add_route("/xrpc/_health", Health())
    app.add_route("/xrpc/{nsid}", XrpcResource(ctx))
    if extra_routes is not None:
        extra_routes(app)
    app.add_error_handler(Exception, _unexpected)
    app.add_error_handler(falcon.HTTPError, _http_error)
    app.add_error_handler(PdsError, _pds_error)
    return RequestBody(app)
