"""A lean keep-alive HTTP/1.1 client for forwarding (`proxy.Proxy`): one per worker.

Why not httpx/httpcore, which the rest of the code uses for its few outbound calls: a
forwarded call is the hot path. Against a stub AppView on loopback, one small GET cost
about 650 µs of CPU through httpx, 400 µs through httpcore (its anyio streams, h11, and a
`poll` + `getpeername` per pooled connection per request to see if it is still alive),
and 60 µs here: a request is one `write` of prepared bytes, the answer's head is split
by hand, and a pooled connection knows it was closed from the event loop (EOF or data
arriving while idle) without a system call.

What it does, and no more:

- HTTP/1.1 only; a body by `content-length`, `transfer-encoding: chunked`, or until the
  connection closes; 1xx heads skipped; a HEAD, 204 or 304 has none.
- Connections kept per origin while their answers were read to the end (at most
  `max_idle` idle ones per origin and `max_idle_total` in all, `keepalive` seconds each;
  one the upstream closed is dropped when next looked at); at most `max_active` requests
  at once (more wait up to `connect_timeout`).
- Outside development every new connection resolves its host and refuses it unless every
  address is public (`fetch.is_public_address`), then connects to the address it checked,
  with TLS naming the host.
- A GET or HEAD that fails on a reused connection before any byte of its answer came
  back is sent once more on a new one (the upstream closed an idle connection just then).

Errors: `UpstreamError` (unreachable, refused target, broken or garbage answer) and
`TimeoutError`; the caller turns them into XRPC errors.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field

from . import fetch

HEAD_MAX = 64 * 1024  # bytes of a response head (status line and headers)
PIECE = 64 * 1024  # bytes read at a time from a body
_NO_BODY = {204, 304}


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


def _safe(value: str, space: bool = True) -> str:
    # What goes into a request line or header must not end it (or the line) early.
    if "\r" in value or "\n" in value or "\0" in value or (not space and " " in value):
        raise UpstreamError("a header or path with a line break")
    return value


class _Conn:
    """One connection: its streams, and when it went idle."""

    def __init__(self, origin: Origin, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.origin, self.reader, self.writer = origin, reader, writer
        self.idle_since = 0.0
        self.reused = False

    def usable(self, now: float, keepalive: float) -> bool:
        """Still fit to send on: open, nothing unasked-for arrived, not idle too long."""
        r = self.reader
        return (now - self.idle_since < keepalive and not r.at_eof()
                and not r._buffer  # type: ignore[attr-defined]
                and not self.writer.transport.is_closing())

    def close(self) -> None:
        self.writer.transport.abort()


@dataclass
class Response:
    """An answer whose body is still to be read (`read`, `iter_raw`); `aclose` when done."""

    status: int
    headers: dict[str, str]  # lowercased names; repeated ones joined by ", "
    _pool: Pool
    _conn: _Conn | None
    _framing: str  # "none", "length", "chunked" or "close"
    _left: int = 0
    _done: bool = field(default=False)

    async def read(self, limit: int, timeout: float) -> bytes:
        """The whole body (transfer coding removed), at most `limit` bytes."""
        parts: list[bytes] = []
        size = 0
        async for piece in self.iter_raw(timeout):
            size += len(piece)
            if size > limit:
                raise fetch.ResponseTooLarge(f"over {limit} bytes")
            parts.append(piece)
        return b"".join(parts)

    async def iter_raw(self, timeout: float) -> AsyncIterator[bytes]:
        """The body as it arrives, transfer coding removed (a content coding stays);
        `timeout` seconds at most between two pieces. The connection goes back to the
        pool once it is all read."""
        conn = self._conn
        if conn is None or self._done:
            return
        r = conn.reader
        try:
            if self._framing == "length":
                while self._left > 0:
                    async with asyncio.timeout(timeout):
                        piece = await r.read(min(self._left, PIECE))
                    if not piece:
                        raise UpstreamError("the answer broke off")
                    self._left -= len(piece)
                    yield piece
            elif self._framing == "chunked":
                async for piece in _chunks(r, timeout):
                    yield piece
            elif self._framing == "close":
                while True:
                    async with asyncio.timeout(timeout):
                        piece = await r.read(PIECE)
                    if not piece:
                        break
                    yield piece
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ValueError) as e:
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
            return

    def _release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._pool._give_back(conn, reusable=self._framing != "close"
                                  and "close" not in self.headers.get("connection",
                                                                      "").lower())


async def _chunks(r: asyncio.StreamReader, timeout: float) -> AsyncIterator[bytes]:
    """The data of a chunked body, in pieces of at most PIECE bytes."""
    while True:
        async with asyncio.timeout(timeout):
            line = await r.readuntil(b"\r\n")
        digits = line.split(b";", 1)[0].strip()
        if not digits or digits.strip(b"0123456789abcdefABCDEF"):
            raise ValueError("a bad chunk size")
        size = int(digits, 16)
        if size == 0:
            while True:  # trailers, up to the empty line
                async with asyncio.timeout(timeout):
                    if await r.readuntil(b"\r\n") == b"\r\n":
                        return
        while size > 0:
            async with asyncio.timeout(timeout):
                piece = await r.read(min(size, PIECE))
            if not piece:
                raise UpstreamError("the answer broke off")
            size -= len(piece)
            yield piece
        async with asyncio.timeout(timeout):
            if await r.readexactly(2) != b"\r\n":
                raise ValueError("bad chunk end")


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
        """Send a request and read its answer's head. `headers` must not name `host`,
        `content-length` with a body of unknown length, or `connection`; a body without
        a `content-length` header goes chunked. The caller bounds the wait (its deadline
        covers this call) and reads or closes the answer."""
        origin, target = split_url(url)
        lines = [f"{_safe(method, False)} {_safe(target, False)} HTTP/1.1\r\n"
                 f"host: {origin.authority}\r\nuser-agent: {self.user_agent}\r\n"]
        sized = False
        for name, value in headers:
            lines.append(f"{_safe(name)}: {_safe(value)}\r\n")
            sized = sized or name.lower() == "content-length"
        if body is not None and not sized:
            lines.append("transfer-encoding: chunked\r\n")
        try:
            head = "".join(lines).encode("latin-1") + b"\r\n"
        except UnicodeEncodeError:
            raise UpstreamError("a header that HTTP/1.1 can't carry") from None
        try:
            async with asyncio.timeout(self.connect_timeout):
                await self._active.acquire()
        except TimeoutError:
            raise UpstreamError("too many upstream requests at once") from None
        try:
            try:
                return await self._exchange(origin, method, head, body, sized, fresh=False)
            except _Retry:
                return await self._exchange(origin, method, head, body, sized, fresh=True)
        except BaseException:
            self._active.release()
            raise

    async def _exchange(self, origin: Origin, method: str, head: bytes,
                        body: AsyncIterator[bytes] | None, sized: bool,
                        fresh: bool) -> Response:
        conn = None if fresh else self._take(origin)
        if conn is None:
            conn = await self._connect(origin)
        try:
            conn.writer.write(head)
            if body is not None:
                await _send_body(conn.writer, body, chunked=not sized)
            status, headers = await _read_head(conn.reader)
            framing, left = _framing(method, status, headers)
        except BaseException as e:
            conn.close()
            # Nothing of an answer came back on a reused connection: it was closed idle.
            broken = isinstance(e, OSError) or (isinstance(e, asyncio.IncompleteReadError)
                                                and not e.partial)
            if conn.reused and method in ("GET", "HEAD") and broken:
                raise _Retry from None
            if isinstance(e, (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                              ValueError, UnicodeDecodeError)):
                raise UpstreamError(f"no answer from {origin.authority}: {e!r}") from None
            raise
        resp = Response(status, headers, self, conn, framing, left)
        if framing == "none":
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
                    address, origin.port, ssl=tls, limit=HEAD_MAX,
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


async def _send_body(writer: asyncio.StreamWriter, body: AsyncIterator[bytes],
                     chunked: bool) -> None:
    async for chunk in body:
        if not chunk:
            continue
        if chunked:
            writer.write(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
        else:
            writer.write(chunk)
        await writer.drain()
    if chunked:
        writer.write(b"0\r\n\r\n")


async def _read_head(r: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    """Status and headers of the answer (1xx heads skipped)."""
    while True:
        raw = await r.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        version, _, rest = lines[0].partition(" ")
        code = rest.partition(" ")[0]
        if not version.startswith("HTTP/1.") or not code.isdigit() or len(code) != 3:
            raise ValueError("not an HTTP/1.x answer")
        status = int(code)
        if 100 <= status < 200 and status != 101:
            continue
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if not line:
                continue
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip() or line[0] in " \t":
                raise ValueError("a malformed header")
            name, value = name.lower(), value.strip()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        if version != "HTTP/1.1":
            headers["connection"] = "close"  # 1.0: no keep-alive assumed
        return status, headers


def _framing(method: str, status: int, headers: dict[str, str]) -> tuple[str, int]:
    """How the body is delimited (RFC 9112 6.3): ("none" | "length" | "chunked" |
    "close", bytes when "length")."""
    if method == "HEAD" or status in _NO_BODY or 100 <= status < 200:
        return "none", 0
    te = headers.get("transfer-encoding")
    if te is not None:
        if te.lower().rsplit(",", 1)[-1].strip() != "chunked":
            return "close", 0
        return "chunked", 0
    length = headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise UpstreamError("a bad content-length")
        n = int(length)
        return ("length", n) if n else ("none", 0)
    return "close", 0
