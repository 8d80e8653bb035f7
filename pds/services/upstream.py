"""A lean keep-alive HTTP/1.1 client for forwarding (`proxy.Proxy`): one per worker.

The HTTP/1.1 framing is h11's, not ours: the upstream may be any did:web service a
caller names, so its answers are hostile input, and parsing HTTP is a solved problem.
Request heads and bodies are written by `h11.Connection.send` (which refuses a method,
target, header name or value that would end a line or field early: CR, LF, NUL,
spaces); answers are parsed by `receive_data`/`next_event`, which refuse malformed
status lines and header lines (a bare CR, a NUL, a line without a colon, a space before
the colon), conflicting or malformed `content-length`s, transfer codings besides
chunked, bad chunk sizes (over 20 hex digits) and chunk ends, and an unasked-for 101.
h11's `their_state`/`our_state` say whether a connection may carry another request.

Why not httpx/httpcore (which use h11 too), as the rest of the code does for its few
outbound calls: a forwarded call is the hot path. Against a stub AppView on loopback one
small GET cost about 650 µs of CPU through httpx and 400 µs through httpcore (its anyio
streams, and a `poll` + `getpeername` per pooled connection per request to see whether
it is still open). Here h11 is driven straight from asyncio streams: a request is one
`write`, a pooled connection knows it was closed from the event loop (EOF or data
arriving while idle) without a system call, and an answer that came whole with its head
(most do) is taken at once. h11 costs 65 to 85 µs of CPU per request more than the
hand-written parser it replaced (it validates every request and response header and
runs its state machine per event; bench/README.md): the price of not parsing HTTP here.

What it does, and no more:

- HTTP/1.1 only; a body by `content-length`, `transfer-encoding: chunked`, or until the
  connection closes, as h11 decides (with both, chunked, and the `content-length` is
  dropped from the headers handed on); 1xx heads skipped; a HEAD, 204 or 304 has none.
  A request body goes by its `content-length` header (it must be that long), else
  chunked, as it comes.
- Heads bounded: h11 refuses one still incomplete past HEAD_MAX bytes (so at most
  HEAD_MAX + PIECE are held). Bodies stream in pieces of at most PIECE bytes.
- Connections kept per origin while h11 says both sides are done and may go on (an
  answer read to the end, no `connection: close`, not HTTP/1.0) and nothing came after
  the answer: at most `max_idle` idle ones per origin and `max_idle_total` in all,
  `keepalive` seconds each; one the upstream closed is dropped when next looked at. At
  most `max_active` requests at once (more wait up to `connect_timeout`).
- Outside development every new connection resolves its host and refuses it unless every
  address is public (`fetch.is_public_address`), then connects to the address it checked,
  with TLS naming the host.
- A GET or HEAD that fails on a reused connection before any byte of its answer came
  back is sent once more on a new one (the upstream closed an idle connection just then).

Errors: `UpstreamError` (unreachable, refused target or request, broken or garbage
answer, a body pausing longer than its timeout) and `TimeoutError` (the caller's
deadline); the caller turns them into XRPC errors.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field

import h11

from . import fetch

HEAD_MAX = 64 * 1024  # bytes of a response head (status line and headers)
PIECE = 64 * 1024  # bytes read at a time from a body
_EOM = h11.EndOfMessage()
# What a connection may fail with while a request goes or its answer comes back.
_BROKEN = (OSError, h11.ProtocolError)


class UpstreamError(Exception):
    """The upstream could not be reached, or did not answer as HTTP/1.1 does."""


class _Retry(Exception):
    """A reused connection broke before its answer began: send again on a new one."""


@dataclass(frozen=True)
class Origin:
    scheme: str
    host: str  # lowercased; IPv6 literals without brackets
    port: int

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


def split_url(url: str) -> tuple[Origin, str]:
    """(origin, request target) of an absolute http(s) URL."""
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in ("http", "https"):
        raise UpstreamError(f"not an http(s) URL: {url[:200]!r}")
    authority, slash, path = rest.partition("/")
    target = slash + path if slash else "/"
    if "?" in authority or "#" in authority or "@" in authority or not authority:
        raise UpstreamError(f"bad URL {url[:200]!r}")
    if authority.startswith("["):
        host, _, port_s = authority[1:].partition("]")
        port_s = port_s.removeprefix(":")
    else:
        host, _, port_s = authority.partition(":")
    if port_s and not (port_s.isdigit() and 0 < int(port_s) < 65536):
        raise UpstreamError(f"bad port in {url[:200]!r}")
    port = int(port_s) if port_s else (443 if scheme == "https" else 80)
    return Origin(scheme, host.lower(), port), target


class _Conn:
    """One connection: its streams, its h11 state machine, and when it went idle."""

    def __init__(self, origin: Origin, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.origin, self.reader, self.writer = origin, reader, writer
        self.http = h11.Connection(h11.CLIENT, max_incomplete_event_size=HEAD_MAX)
        self.idle_since = 0.0
        self.reused = False
        self.heard = False  # a byte of the current answer arrived

    def usable(self, now: float, keepalive: float) -> bool:
        """Still fit to send on: open, nothing unasked-for arrived, not idle too long."""
        r = self.reader
        return (now - self.idle_since < keepalive and not r.at_eof()
                and not r._buffer  # type: ignore[attr-defined]
                and not self.writer.transport.is_closing())

    async def send(self, request: h11.Request, body: AsyncIterator[bytes] | None) -> None:
        """The request, framed by h11: its head (and end) in one write when it has no
        body, else the body as it comes (by its content-length or chunked)."""
        http, w = self.http, self.writer
        self.heard = False
        if body is None:
            w.write((http.send(request) or b"") + (http.send(_EOM) or b""))
            return
        w.write(http.send(request) or b"")
        async for chunk in body:
            if chunk:
                w.write(http.send(h11.Data(data=chunk)) or b"")
                await w.drain()
        w.write(http.send(_EOM) or b"")

    async def fill(self, timeout: float | None = None) -> None:
        """Read what came (at most `timeout` seconds) and hand it to h11; b"" tells it
        the upstream closed (h11 decides whether that ends the answer or breaks it)."""
        if timeout is None:
            data = await self.reader.read(PIECE)
        else:
            async with asyncio.timeout(timeout):
                data = await self.reader.read(PIECE)
        self.heard = self.heard or bool(data)
        self.http.receive_data(data)

    def buffered(self) -> tuple[list[bytes], bool]:
        """The body h11 can give without reading more (what came with the head: most
        answers whole), and whether that was all of it."""
        http, pieces = self.http, []
        while True:
            event = http.next_event()
            if type(event) is h11.Data:
                pieces.append(bytes(event.data))
            else:
                return pieces, type(event) is h11.EndOfMessage

    def reusable(self) -> bool:
        """After an answer read to the end: whether h11 lets both sides go on, and
        nothing came after the answer (then ready for the next request)."""
        http = self.http
        if http.our_state is not h11.DONE or http.their_state is not h11.DONE:
            return False
        http.start_next_cycle()
        return not http.trailing_data[0]

    def close(self) -> None:
        self.writer.transport.abort()


@dataclass
class Response:
    """An answer whose body is still to be read (`read`, `iter_raw`); `aclose` when done."""

    status: int
    headers: dict[str, str]  # lowercased names; repeated ones joined by ", "
    _pool: Pool
    _conn: _Conn | None
    _first: list[bytes] = field(default_factory=list)  # body h11 had with the head
    _done: bool = False  # the body was all read (or h11 had it all with the head)

    async def read(self, limit: int, timeout: float) -> bytes:
        """The whole body (transfer coding removed), at most `limit` bytes."""
        if self._done and self._conn is None:  # all of it came with the head
            parts, self._first = self._first, []
            if sum(map(len, parts)) > limit:
                raise fetch.ResponseTooLarge(f"over {limit} bytes")
            return b"".join(parts)
        parts = []
        size = 0
        async for piece in self.iter_raw(timeout):  # checked as it comes: never all held
            size += len(piece)
            if size > limit:
                raise fetch.ResponseTooLarge(f"over {limit} bytes")
            parts.append(piece)
        return b"".join(parts)

    async def iter_raw(self, timeout: float) -> AsyncIterator[bytes]:
        """The body as it arrives, transfer coding removed (a content coding stays), in
        pieces of at most PIECE bytes; `timeout` seconds at most between two pieces. The
        connection goes back to the pool once it is all read."""
        while self._first:
            yield self._first.pop(0)
        conn = self._conn
        if conn is None or self._done:
            return
        http = conn.http
        try:
            while True:
                event = http.next_event()
                if type(event) is h11.Data:
                    yield bytes(event.data)
                elif event is h11.NEED_DATA:
                    await conn.fill(timeout)
                elif type(event) is h11.EndOfMessage:
                    break
                else:  # ConnectionClosed before the end: h11 raises, but to be sure
                    raise UpstreamError("the answer broke off")
        except _BROKEN as e:  # a pause over `timeout` too (TimeoutError is an OSError)
            raise UpstreamError(f"the answer broke off: {e!r}") from None
        self._done = True
        self._release()

    async def aclose(self) -> None:
        """Done with it: a body read to the end leaves the connection pooled; one left
        unread closes it."""
        if not self._done:
            self._done = True
            if self._conn is not None:
                self._conn.close()
                self._conn = None
                self._pool._active.release()

    def _release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._pool._give_back(conn, conn.reusable())


def _request(method: str, origin: Origin, target: str, user_agent: str,
             headers: Iterable[tuple[str, str]], body: bool) -> h11.Request:
    """The request's h11 event; h11 checks every name, value and the target (no line
    breaks, NUL or spaces where they would end a line or field early)."""
    try:
        fields = [(b"host", origin.authority.encode("ascii")),
                  (b"user-agent", user_agent.encode("latin-1"))]
        sized = False
        for name, value in headers:
            fields.append((name.encode("latin-1"), value.encode("latin-1")))
            sized = sized or name.lower() == "content-length"
        if body and not sized:
            fields.append((b"transfer-encoding", b"chunked"))
        return h11.Request(method=method.encode("ascii"), target=target.encode("ascii"),
                           headers=fields)
    except (h11.LocalProtocolError, UnicodeEncodeError) as e:
        raise UpstreamError(f"a request HTTP/1.1 can't carry: {e}") from None


def _head(event: h11.Response) -> dict[str, str]:
    """The answer's headers, lowercased names, repeated ones joined by ", "."""
    headers: dict[str, str] = {}
    for raw_name, raw_value in event.headers.raw_items():  # (as sent: cheaper to walk)
        name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    if "transfer-encoding" in headers:
        # The length is the chunks' (h11 reads it so): a content-length too would be a
        # lie passed on to our client (RFC 9112 6.3: an intermediary drops it).
        headers.pop("content-length", None)
    return headers


class Pool:
    """The worker's upstream connections (see the module docstring)."""

    def __init__(self, *, dev: bool, max_active: int = 100, max_idle: int = 20,
                 max_idle_total: int = 100,
                 keepalive: float = 30.0, connect_timeout: float = 5.0,
                 user_agent: str = "pds (python)") -> None:
        self.dev = dev
        self.max_idle, self.keepalive = max_idle, keepalive
        self.max_idle_total = max_idle_total
        self._idle_count = 0
        self.connect_timeout = connect_timeout
        self.user_agent = user_agent
        self._idle: dict[Origin, deque[_Conn]] = {}
        self._active = asyncio.Semaphore(max_active)
        self._tls: ssl.SSLContext | None = None
        self.opened = 0  # connections opened so far (for tests and benchmarks)

    async def request(self, method: str, url: str, headers: Iterable[tuple[str, str]],
                      body: AsyncIterator[bytes] | None = None) -> Response:
        """Send a request and read its answer's head. `headers` must not name `host` or
        `connection`; a body goes by its `content-length` header if given (it must then
        be that long), else chunked. The caller bounds the wait (its deadline covers this
        call) and reads or closes the answer."""
        origin, target = split_url(url)
        event = _request(method, origin, target, self.user_agent, headers, body is not None)
        try:
            async with asyncio.timeout(self.connect_timeout):
                await self._active.acquire()
        except TimeoutError:
            raise UpstreamError("too many upstream requests at once") from None
        try:
            try:
                return await self._exchange(origin, event, body, fresh=False)
            except _Retry:
                return await self._exchange(origin, event, body, fresh=True)
        except BaseException:
            self._active.release()
            raise

    async def _exchange(self, origin: Origin, request: h11.Request,
                        body: AsyncIterator[bytes] | None, fresh: bool) -> Response:
        conn = None if fresh else self._take(origin)
        if conn is None:
            conn = await self._connect(origin)
        try:
            await conn.send(request, body)
            while (event := conn.http.next_event()) is h11.NEED_DATA or \
                    type(event) is h11.InformationalResponse:  # 1xx: the answer is next
                if event is h11.NEED_DATA:
                    await conn.fill()
            if type(event) is not h11.Response:
                raise h11.RemoteProtocolError("no answer")
            # What h11 already has of the body, without waiting: most answers whole (the
            # connection goes back at once), or their first pieces.
            first, whole = conn.buffered()
        except BaseException as e:
            conn.close()
            # Nothing of an answer came back on a reused connection: it was closed idle.
            if (conn.reused and not conn.heard and isinstance(e, _BROKEN)
                    and request.method in (b"GET", b"HEAD")):
                raise _Retry from None
            if isinstance(e, _BROKEN):
                raise UpstreamError(f"no answer from {origin.authority}: {e!r}") from None
            raise
        resp = Response(event.status_code, _head(event), self, conn, first)
        if whole:
            resp._done = True
            resp._release()
        return resp

    def _take(self, origin: Origin) -> _Conn | None:
        idle = self._idle.get(origin)
        now = time.monotonic()
        while idle:
            conn = idle.pop()  # the most recently used: the likeliest still open
            self._idle_count -= 1
            if conn.usable(now, self.keepalive):
                conn.reused = True
                return conn
            conn.close()
        return None

    def _give_back(self, conn: _Conn, reusable: bool) -> None:
        self._active.release()
        now = time.monotonic()
        idle = self._idle.get(conn.origin)
        if idle is None:
            idle = self._idle[conn.origin] = deque()
        while idle and not idle[0].usable(now, self.keepalive):
            idle.popleft().close()  # the oldest, closed by the upstream or expired
            self._idle_count -= 1
        if not reusable or len(idle) >= self.max_idle or \
                self._idle_count >= self.max_idle_total:
            conn.close()
        else:
            conn.idle_since = now
            idle.append(conn)
            self._idle_count += 1
        if not idle:
            del self._idle[conn.origin]

    async def _connect(self, origin: Origin) -> _Conn:
        """A new connection, its target checked outside development."""
        address = origin.host
        if not self.dev:
            if origin.scheme != "https":
                raise UpstreamError("only https upstreams outside development")
            addresses = await fetch._resolve(origin.host, fetch.RESOLVE_TIMEOUT)
            bad = [a for a in addresses if not fetch.is_public_address(a)]
            if bad:
                raise fetch.UnsafeTarget(f"{origin.host!r} resolves to non-public "
                                         f"address {bad[0]}")
            address = addresses[0]
        tls = None
        if origin.scheme == "https":
            if self._tls is None:
                self._tls = ssl.create_default_context()
            tls = self._tls
        try:
            async with asyncio.timeout(self.connect_timeout):
                reader, writer = await asyncio.open_connection(
                    address, origin.port, ssl=tls, limit=PIECE,  # reading pauses past 2x
                    server_hostname=origin.host if tls else None)
        except (OSError, ssl.SSLError) as e:
            raise UpstreamError(f"cannot connect to {origin.authority}: {e!r}") from None
        self.opened += 1
        return _Conn(origin, reader, writer)

    async def aclose(self) -> None:
        """Close the idle connections (answers still being read close with theirs)."""
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
        self._idle_count = 0


