"""Service proxying: XRPC methods this PDS does not serve itself are forwarded.

As the reference PDS's `pipethrough` does it (PROTOCOL.md, XRPC and service auth):

- Where to: the `atproto-proxy: <did>#<service id>` header names a service, whose DID is
  resolved (cached, SSRF-guarded: `Identity.resolve_did`) and whose entry of that id gives
  the endpoint. Without the header, `com.atproto.moderation.createReport` goes to the
  report service (`PDS_REPORT_SERVICE_*`) and everything else to the AppView
  (`PDS_BSKY_APP_VIEW_*`). A header naming the configured AppView as `#bsky_appview` uses
  its configured URL without resolving anything.
- Who may: the caller's session is checked first (any access token). Methods of account
  management (`sessions.PROTECTED_METHODS`) are never forwarded; `chat.bsky.*` only for a
  password session or a privileged app password.
- With what: a fresh service-auth JWT signed by the account's repo signing key (`iss` the
  account, `aud` the service's bare DID, `lxm` the method, 60 s, a `jti`); the path and
  query unchanged; the body streamed as it comes; of the request headers only those the
  reference passes.
- What comes back: the status, the reference's response headers (content type, length,
  encoding and language, `atproto-repo-rev`, `atproto-content-labelers`, `retry-after`)
  and the body streamed chunk by chunk (compressed bytes stay compressed). An upstream
  error passes with its status and `{error, message}` (a 500 becomes 502
  `UpstreamFailure`); an upstream that can't be reached or answers garbage is 502
  `UpstreamFailure`, one that doesn't answer in time 504 `UpstreamTimeout`.

One pooled HTTP/1.1 client per worker process (`upstream.Pool`: keep-alive, bounded),
whose connections are checked at connect time outside development: no loopback, private
or link-local targets, https only.
"""

from __future__ import annotations

import asyncio
import json
import logging
import zlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urlencode, urlsplit

from ..errors import (
    InvalidInput,
    PayloadTooLarge,
    PdsError,
    UpstreamFailure,
    UpstreamTimeout,
)
from ..repo.did import service_endpoint_from_doc
from ..repo.syntax import is_valid_did
from . import auth as A
from . import fetch, proxy_raw, upstream
from . import read_after_write as raw
from .sessions import is_privileged_method, is_protected_method
from .threads import blocking

if TYPE_CHECKING:
    from .context import AppContext

log = logging.getLogger("pds.proxy")

HEADERS_TIMEOUT = 10.0  # seconds for the upstream's status and headers (as the reference)
BODY_TIMEOUT = 30.0  # seconds between two chunks of its body (as the reference)
CONNECT_TIMEOUT = 5.0
MAX_RESPONSE = 10 * 1024 * 1024  # bytes of a forwarded answer (as the reference)
SMALL_BODY = 64 * 1024  # bytes of an answer of known length sent in one piece
ERROR_BODY_MAX = 64 * 1024  # bytes of an upstream error read to re-send its name, message
PROXY_HEADER_MAX = 2048 + 256  # a DID (at most 2 KB), '#' and a service id
MAX_ACTIVE = 100  # upstream requests at once per worker
MAX_IDLE = 20  # kept-alive connections per upstream per worker
KEEPALIVE = 30.0  # seconds an idle upstream connection is kept
JSON_MAX = 1024 * 1024  # bytes of an answer the PDS reads itself (`get`)

REPORT_METHOD = "com.atproto.moderation.createReport"
FEED_SKELETON = "app.bsky.feed.getFeedSkeleton"
PUSH_METHODS = ("app.bsky.notification.registerPush", "app.bsky.notification.unregisterPush")
# Request headers passed upstream (the reference's list); the body's only with a body.
REQUEST_HEADERS = ("accept-language", "atproto-accept-labelers", "x-bsky-topics")
BODY_HEADERS = ("content-type", "content-encoding", "content-length")
# Response headers passed back (the reference's list).
RESPONSE_HEADERS = ("content-length", "content-encoding", "content-type", "content-language",
                    "atproto-repo-rev", "atproto-content-labelers", "retry-after")
ERROR_HEADERS = RESPONSE_HEADERS[4:]  # an error's body is ours: not its content headers
# XRPC error names of statuses an upstream error body may not name itself.
STATUS_NAMES = {400: "InvalidRequest", 401: "AuthenticationRequired", 403: "Forbidden",
                404: "XRPCNotSupported", 406: "NotAcceptable", 413: "PayloadTooLarge",
                415: "UnsupportedMediaType", 429: "RateLimitExceeded",
                501: "MethodNotImplemented", 502: "UpstreamFailure",
                503: "NotEnoughResources", 504: "UpstreamTimeout"}


@dataclass
class Forward:
    """One call to forward, as the handler read it off the request."""

    nsid: str
    method: str  # GET, HEAD or POST
    path: str  # path and query string, as received
    headers: Mapping[str, str]  # lowercased names
    body: AsyncIterator[bytes] | None  # a POST's body, unread
    ip: str = ""
    # What an OAuth (DPoP) credential is checked against besides the token (`Auth.check`).
    credential: dict[str, str | None] | None = None


@dataclass
class Answer:
    """What the upstream answered: status, headers to send, and the body (bytes, or an
    iterator that streams it and closes the upstream response when done)."""

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes | AsyncIterator[bytes] = b""


class Proxy:
    """The forwarding service of one worker process (`ctx.proxy`)."""

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self._pool: upstream.Pool | None = None

    @property
    def pool(self) -> upstream.Pool:
        """The worker's pooled client, made in its event loop on first use."""
        if self._pool is None:
            self._pool = upstream.Pool(dev=self.ctx.settings.dev, max_active=MAX_ACTIVE,
                                       max_idle=MAX_IDLE, keepalive=KEEPALIVE,
                                       connect_timeout=CONNECT_TIMEOUT)
        return self._pool

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.aclose()
            self._pool = None

    async def forward(self, call: Forward) -> Answer:
        """Forward one call (see the module docstring); raises PdsError when it may not
        go, or no answer came back."""
        if is_protected_method(call.nsid):
            raise InvalidInput("Bad token method", "InvalidToken")
        info = await self.ctx.auth.check(A.AuthKind.ACCESS,
                                         call.headers.get("authorization", ""),
                                         call.nsid, call.ip, call.credential)
        if info is None:  # ACCESS never lets a call through without a credential
            raise PdsError("no credential")
        if is_privileged_method(call.nsid) and info.scope not in A.PRIVILEGED_SCOPES:
            raise InvalidInput("Bad token method", "InvalidToken")
        url, aud = await self.target(call.nsid, call.headers.get("atproto-proxy"))
        token = await self.token(info.account, aud, call.nsid)
        answer = await self._send(call, url, token)
        if call.nsid in raw.METHODS and answer.status == 200:
            answer = await proxy_raw.merge_local(self, call, info.account, answer, _collect)
        elif call.nsid == raw.THREAD and answer.status == 400:
            answer = await proxy_raw.own_new_thread(self, call, info.account, answer)
        return answer

    async def get_feed(self, call: Forward, did: str, feed: str) -> Answer:
        """app.bsky.feed.getFeed for account `did`: the feed generator's DID read from its
        record (asked of the AppView), then the call forwarded to the AppView (or the
        `atproto-proxy` service) with a token for the generator, `lxm` getFeedSkeleton,
        as the reference does."""
        parts = feed.removeprefix("at://").split("/") if feed.startswith("at://") else []
        if len(parts) != 3 or not all(parts) or len(feed) > 8192:
            raise InvalidInput("feed must be an at:// URI of a feed generator record")
        s = self.ctx.settings
        if not s.bsky_app_view_url:
            raise InvalidInput("No service configured for app.bsky.feed.getFeed")
        url, _ = await self.target(call.nsid, call.headers.get("atproto-proxy"))
        record = await self._get_json(s.bsky_app_view_url, "com.atproto.repo.getRecord",
                                      {"repo": parts[0], "collection": parts[1],
                                       "rkey": parts[2]})
        value = record.get("value") if isinstance(record, dict) else None
        feed_did = value.get("did") if isinstance(value, dict) else None
        if not isinstance(feed_did, str) or not is_valid_did(feed_did):
            raise InvalidInput("could not resolve feed did", "UnknownFeed")
        token = await self.token(did, feed_did, FEED_SKELETON)
        return await self._send(call, url, token)

    async def push_registration(self, did: str, nsid: str, body: dict) -> None:
        """app.bsky.notification.registerPush and unregisterPush (`nsid`): `body` sent to
        the notification service `serviceDid` names (the AppView's URL when it is the
        AppView, else its DID's `#bsky_notif` service) with a token for it."""
        if nsid not in PUSH_METHODS:
            raise ValueError(nsid)  # a handler's mistake, not the caller's
        service_did = body.get("serviceDid")
        if not isinstance(service_did, str) or not is_valid_did(service_did):
            raise InvalidInput("serviceDid must be a DID")
        s = self.ctx.settings
        url = s.bsky_app_view_url if service_did == s.bsky_app_view_did else None
        if not url:
            doc = await self.ctx.identity.resolve_did(service_did)
            url = service_endpoint_from_doc(doc, "bsky_notif", "BskyNotificationService",
                                            service_did) if doc else None
        if not url:
            raise InvalidInput("invalid notification service details in did document: "
                               f"{service_did}")
        token = await self.token(did, service_did, nsid)
        data = json.dumps(body).encode()
        call = Forward(nsid, "POST", "/xrpc/" + nsid,
                       {"content-type": "application/json", "content-length": str(len(data))},
                       _once(data))
        answer = await self._send(call, url, token)
        if not isinstance(answer.body, bytes):
            await _drain(answer.body)
        if answer.status >= 400:
            raise UpstreamFailure("the notification service refused the request")

    async def _get_json(self, base: str, nsid: str, params: dict[str, str]) -> object:
        """An unauthenticated query of `base` (the configured AppView), its JSON answer."""
        status, body = await self.get(base, nsid, list(params.items()))
        if status != 200:
            raise InvalidInput("could not resolve feed did", "UnknownFeed")
        try:
            return json.loads(body)
        except (ValueError, RecursionError):
            raise UpstreamFailure("Upstream answered garbage") from None

    async def get(self, base: str, nsid: str, query: list[tuple[str, str]],
                  token: str | None = None) -> tuple[int, bytes]:
        """A query of service `base` (with a service-auth `token`): status and body (at
        most JSON_MAX bytes). UpstreamFailure, UpstreamTimeout when none came."""
        url = _join(base, f"/xrpc/{nsid}?{urlencode(query)}", self.ctx)
        headers = [("accept-encoding", "identity")]
        if token:
            headers.append(("authorization", "Bearer " + token))
        try:
            async with asyncio.timeout(HEADERS_TIMEOUT):
                resp = await self.pool.request("GET", url, headers)
                try:
                    return resp.status, await resp.read(JSON_MAX, BODY_TIMEOUT)
                finally:
                    await resp.aclose()
        except TimeoutError:
            raise UpstreamTimeout("Upstream service timed out") from None
        except (upstream.UpstreamError, fetch.FetchError, OSError):
            raise UpstreamFailure("Upstream service unreachable") from None

    # --- where to ---------------------------------------------------------------------

    async def target(self, nsid: str, proxy_to: str | None) -> tuple[str, str]:
        """(endpoint URL, service DID) of the service `nsid` goes to."""
        s = self.ctx.settings
        if not proxy_to:
            url, did = ((s.report_service_url, s.report_service_did) if nsid == REPORT_METHOD
                        else (s.bsky_app_view_url, s.bsky_app_view_did))
            if not url:
                raise InvalidInput(f"No service configured for {nsid}")
            return url, did
        did, service_id = parse_proxy_header(proxy_to)
        if s.bsky_app_view_url and proxy_to == f"{s.bsky_app_view_did}#bsky_appview":
            return s.bsky_app_view_url, did
        doc = await self.ctx.identity.resolve_did(did)
        if doc is None:
            raise InvalidInput("could not resolve proxy did")
        endpoint = service_endpoint_from_doc(doc, service_id, None, did)
        if endpoint is None:
            raise InvalidInput("could not resolve proxy did service url")
        return endpoint, did

    async def token(self, did: str, aud: str, lxm: str) -> str:
        """A fresh service-auth JWT of account `did` for service `aud`, method `lxm`."""
        key = self.ctx.cached_signing_key(did) or \
            await blocking(self.ctx.local_signing_key, did)
        if key is None:
            raise InvalidInput("Account not found", "AccountNotFound")
        return A.sign_service_jwt(key, did, aud, lxm)

    # --- there and back ---------------------------------------------------------------

    async def _send(self, call: Forward, base: str, token: str) -> Answer:
        # What read-after-write may rewrite comes uncompressed; the rest as the client likes.
        encoding = "identity" if call.nsid in raw.METHODS else \
            call.headers.get("accept-encoding") or "identity"
        headers = [("accept-encoding", encoding), ("authorization", "Bearer " + token)]
        names = REQUEST_HEADERS + (BODY_HEADERS if call.body is not None else ())
        headers.extend((n, call.headers[n]) for n in names if call.headers.get(n))
        content = None
        if call.body is not None:
            content = _capped(call.body, self.ctx.settings.blob_limit)
        url = _join(base, call.path, self.ctx)
        try:
            async with asyncio.timeout(HEADERS_TIMEOUT):  # no task per call, unlike wait_for
                resp = await self.pool.request(call.method, url, headers, content)
        except TimeoutError:
            log.warning("upstream %s timed out", base)
            raise UpstreamTimeout("Upstream service timed out") from None
        except (upstream.UpstreamError, fetch.FetchError, OSError) as e:
            log.warning("upstream %s unreachable: %r", base, e)
            raise UpstreamFailure("Upstream service unreachable") from None
        if resp.status >= 400:
            return await _error_answer(resp)
        length = resp.headers.get("content-length")
        if length and length.isdigit() and int(length) > MAX_RESPONSE:
            await resp.aclose()
            raise UpstreamFailure("Upstream response too large")
        kept = [(n, resp.headers[n]) for n in RESPONSE_HEADERS if n in resp.headers]
        if length and length.isdigit() and int(length) <= SMALL_BODY:
            # A small answer of known size (most are): one read and one send instead of
            # a stream's per-chunk round trips through the server.
            try:
                body = await resp.read(SMALL_BODY, BODY_TIMEOUT)
            except (TimeoutError, upstream.UpstreamError) as e:
                log.warning("upstream %s broke off: %r", base, e)
                raise UpstreamFailure("Upstream service unreachable") from None
            finally:
                await resp.aclose()
            return Answer(resp.status, kept, body)
        return Answer(resp.status, kept, _relay(resp))


def parse_proxy_header(value: str) -> tuple[str, str]:
    """(DID, service id) of an `atproto-proxy` header; InvalidInput names what is wrong,
    as the reference's messages do."""
    if len(value) > PROXY_HEADER_MAX:
        raise InvalidInput("invalid proxy header format")
    did, sep, service_id = value.partition("#")
    if sep and not did:
        raise InvalidInput("no did specified in proxy header")
    if not sep or not service_id:
        raise InvalidInput("no service id specified in proxy header")
    if "#" in service_id:
        raise InvalidInput("invalid proxy header format")
    if " " in value:
        raise InvalidInput("proxy header cannot contain spaces")
    if not is_valid_did(did):
        raise InvalidInput("could not resolve proxy did")
    return did, service_id


def _join(base: str, path: str, ctx: AppContext) -> str:
    """The upstream URL: its endpoint with our path and query; https only outside dev."""
    parts = urlsplit(base)
    if parts.scheme != "https" and not (ctx.settings.dev and parts.scheme == "http"):
        raise UpstreamFailure("Upstream service unreachable")
    return base.rstrip("/") + path


async def _collect(body: AsyncIterator[bytes]) -> bytes:
    """A relayed body read whole (`_relay` caps it at MAX_RESPONSE)."""
    try:
        return b"".join([c async for c in body])
    except (TimeoutError, upstream.UpstreamError) as e:
        log.warning("upstream broke off: %r", e)
        raise UpstreamFailure("Upstream service unreachable") from None


async def _capped(body: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
    """A request body passed on as it arrives, refused past `limit` bytes."""
    size = 0
    async for chunk in body:
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge("request entity too large")
        yield chunk


async def _relay(resp: upstream.Response) -> AsyncIterator[bytes]:
    """The upstream body as it comes (still encoded), up to MAX_RESPONSE bytes; the
    response goes back to the pool when done or abandoned."""
    size = 0
    try:
        async for chunk in resp.iter_raw(BODY_TIMEOUT):
            size += len(chunk)
            if size > MAX_RESPONSE:
                raise UpstreamFailure("Upstream response too large")
            yield chunk
    finally:
        await resp.aclose()


def _decoded(body: bytes, encoding: str) -> bytes:
    """An error body without its content coding (gzip or deflate; ValueError else)."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding in ("gzip", "x-gzip", "deflate"):
        try:
            # wbits 47: gzip or zlib header, told apart by the header
            out = zlib.decompressobj(47).decompress(body, ERROR_BODY_MAX)
        except zlib.error:
            raise ValueError("undecodable body") from None
        return out
    raise ValueError(f"content coding {encoding!r}")


async def _error_answer(resp: upstream.Response) -> Answer:
    """An upstream error as ours: its status (500 becomes 502), its error name and
    message when it sent JSON, else the status's name."""
    error, message = None, None
    try:
        ctype = resp.headers.get("content-type", "")
        if "json" in ctype.lower():
            # Decoded: the error is sent anew, uncompressed.
            raw = _decoded(await resp.read(ERROR_BODY_MAX, BODY_TIMEOUT),
                           resp.headers.get("content-encoding", ""))
            parsed = json.loads(raw)
            if isinstance(parsed, dict):
                error = parsed.get("error") if isinstance(parsed.get("error"), str) else None
                message = parsed.get("message") if isinstance(parsed.get("message"),
                                                              str) else None
    except (ValueError, TimeoutError, upstream.UpstreamError, fetch.FetchError,
            RecursionError):
        pass  # an error we can't read: its status still says what happened
    finally:
        await resp.aclose()
    status = 502 if resp.status == 500 else resp.status
    name = error or STATUS_NAMES.get(status, "UpstreamFailure" if status >= 500
                                     else "InvalidRequest")
    body = json.dumps({"error": name, "message": message or name}).encode()
    kept = [(n, resp.headers[n]) for n in ERROR_HEADERS if n in resp.headers]
    return Answer(status, [*kept, ("content-type", "application/json; charset=utf-8")], body)



async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _drain(body: AsyncIterator[bytes]) -> None:
    async for _ in body:
        pass
