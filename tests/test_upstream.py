"""The forwarding client (`pds.services.upstream`) against a real socket server that
answers scripted bytes: body framings, keep-alive reuse, an idle connection the server
closed, garbage, limits."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from pds.services import upstream

Script = Callable[[bytes], bytes | None]  # request head -> raw answer (None: close)


async def serve(script: Script) -> tuple[asyncio.Server, str, list[int]]:
    """A server answering each request head by `script`; counts connections."""
    conns: list[int] = []

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        conns.append(1)
        try:
            while True:
                head = await r.readuntil(b"\r\n\r\n")
                if b"transfer-encoding: chunked" in head:
                    while (line := await r.readuntil(b"\r\n")) != b"0\r\n":
                        await r.readexactly(int(line, 16) + 2)
                    await r.readexactly(2)
                answer = script(head)
                if answer is None:
                    break
                w.write(answer)
                await w.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        w.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}", conns


def run(coro_fn: Callable[[], object]) -> None:
    asyncio.run(coro_fn())  # type: ignore[arg-type]


async def body(resp: upstream.Response) -> bytes:
    try:
        return await resp.read(1 << 20, 5)
    finally:
        await resp.aclose()


async def get_refused(base: str) -> None:
    """A GET of `base` fails with UpstreamError, from `request` or while reading the body."""
    pool = upstream.Pool(dev=True)
    with pytest.raises(upstream.UpstreamError):
        await body(await pool.request("GET", base + "/", []))
    await pool.aclose()


def test_framings_and_keep_alive() -> None:
    answers = {
        b"/length": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\nX-A: 2\r\n\r\nhello",
        b"/chunked": b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\n"
                     b"Trailer: x\r\n\r\n",
        b"/empty": b"HTTP/1.1 204 No Content\r\n\r\n",
    }

    async def main() -> None:
        server, base, conns = await serve(lambda h: answers[h.split()[1]])
        pool = upstream.Pool(dev=True)
        resp = await pool.request("GET", base + "/length", [("accept", "*/*")])
        assert resp.status == 200 and resp.headers["x-a"] == "1, 2"
        assert await body(resp) == b"hello"
        resp = await pool.request("GET", base + "/chunked", [])
        assert resp.status == 200 and await body(resp) == b"abcde"
        resp = await pool.request("GET", base + "/empty", [])
        assert resp.status == 204 and await body(resp) == b""
        assert len(conns) == 1 and pool.opened == 1  # one kept-alive connection
        await pool.aclose()
        server.close()
    run(main)


def test_a_streamed_post_body_goes_chunked() -> None:
    seen: list[bytes] = []

    async def parts() -> AsyncIterator[bytes]:
        yield b"ab"
        yield b"cd"

    def script(head: bytes) -> bytes:
        seen.append(head)
        return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

    async def main() -> None:
        server, base, _ = await serve(script)
        pool = upstream.Pool(dev=True)
        assert await body(await pool.request("POST", base + "/x", [], parts())) == b"ok"
        assert b"transfer-encoding: chunked" in seen[0] and b"host: 127.0.0.1:" in seen[0]
        await pool.aclose()
        server.close()
    run(main)


def test_an_idle_connection_the_server_closed_is_not_reused() -> None:
    count = {"n": 0}

    def script(head: bytes) -> bytes:
        count["n"] += 1
        # Each answer says close: the server hangs up after it.
        return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"

    async def main() -> None:
        server, base, conns = await serve(script)
        pool = upstream.Pool(dev=True)
        for _ in range(3):
            assert await body(await pool.request("GET", base + "/", [])) == b"ok"
        assert len(conns) == 3 and count["n"] == 3
        await pool.aclose()
        server.close()
    run(main)


def test_a_reused_connection_closed_under_a_get_is_retried_once() -> None:
    calls = {"n": 0}

    def script(head: bytes) -> bytes | None:
        calls["n"] += 1
        # The second request on the first connection finds it closed (no answer).
        if calls["n"] == 2:
            return None
        return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

    async def main() -> None:
        server, base, conns = await serve(script)
        pool = upstream.Pool(dev=True)
        assert await body(await pool.request("GET", base + "/", [])) == b"ok"
        assert await body(await pool.request("GET", base + "/", [])) == b"ok"
        assert len(conns) == 2
        await pool.aclose()
        server.close()
    run(main)


@pytest.mark.parametrize("answer", [
    b"this is not HTTP\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n bad fold\r\n\r\n",
    b"HTTP/1.1 2000 OK\r\n\r\n",
])
def test_garbage_is_an_upstream_error(answer: bytes) -> None:
    async def main() -> None:
        server, base, _ = await serve(lambda h: answer)
        pool = upstream.Pool(dev=True)
        with pytest.raises(upstream.UpstreamError):
            await pool.request("GET", base + "/", [])
        await pool.aclose()
        server.close()
    run(main)


@pytest.mark.parametrize("chunks", [b"0x3\r\nabc\r\n0\r\n\r\n", b"-3\r\nabc\r\n",
                                    b"3\r\nabcX\r\n", b"zz\r\n"])
def test_a_bad_chunked_body_is_an_upstream_error(chunks: bytes) -> None:
    async def main() -> None:
        server, base, _ = await serve(
            lambda h: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks)
        # A bad first chunk that came with the head is refused with it (then the proxy
        # answers 502 before sending anything); a later one while reading.
        await get_refused(base)
        server.close()
    run(main)


def test_a_body_that_breaks_off_or_runs_over() -> None:
    async def main() -> None:
        server, base, _ = await serve(
            lambda h: b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc" if b"/short" in h
            else b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789")
        pool = upstream.Pool(dev=True)
        resp = await pool.request("GET", base + "/short", [])
        with pytest.raises(upstream.UpstreamError):
            await body(resp)
        resp = await pool.request("GET", base + "/long", [])
        with pytest.raises(upstream.fetch.ResponseTooLarge):
            await resp.read(5, 5)
        await resp.aclose()
        await pool.aclose()
        server.close()
    run(main)


def test_refused_before_sending() -> None:
    async def main() -> None:
        pool = upstream.Pool(dev=False)
        for url in ("http://example.com/", "https://127.0.0.1/", "https://10.1.2.3/x",
                    "ftp://example.com/"):
            with pytest.raises((upstream.UpstreamError, upstream.fetch.UnsafeTarget)):
                await pool.request("GET", url, [])
        dev = upstream.Pool(dev=True)
        for headers in ([("x", "a\r\nb: c")], [("x\r\n", "a")]):
            with pytest.raises(upstream.UpstreamError):
                await dev.request("GET", "http://127.0.0.1:9/", headers)
        with pytest.raises(upstream.UpstreamError):
            await dev.request("GET", "http://127.0.0.1:9/a b", [])
        assert pool.opened == 0 and dev.opened == 0
    run(main)


async def serve_once(answers: list[bytes]) -> tuple[asyncio.Server, str, list[bytes]]:
    """A server that answers each connection's first request with the next of `answers`
    (raw bytes, sent at once), then closes it; keeps the heads it got."""
    heads: list[bytes] = []

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            heads.append(await r.readuntil(b"\r\n\r\n"))
            w.write(answers[len(heads) - 1])
            await w.drain()
        except (asyncio.IncompleteReadError, ConnectionError, IndexError):
            pass
        w.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", heads


OK_HEAD = b"HTTP/1.1 200 OK\r\n"


HOSTILE = {
    "bare CR in a value": OK_HEAD + b"X-A: a\rb\r\nContent-Length: 0\r\n\r\n",
    "bare LF: a line with no colon": OK_HEAD + b"X-A: a\nb\r\nContent-Length: 0\r\n\r\n",
    "NUL in a value": OK_HEAD + b"X-A: a\0b\r\nContent-Length: 0\r\n\r\n",
    "space before the colon": OK_HEAD + b"X-A : a\r\nContent-Length: 0\r\n\r\n",
    "two lengths that disagree": OK_HEAD + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\nabc",
    "a list of lengths": OK_HEAD + b"Content-Length: 2, 3\r\n\r\nabc",
    "a negative length": OK_HEAD + b"Content-Length: -1\r\n\r\n",
    "a 30-digit length": OK_HEAD + b"Content-Length: " + b"9" * 30 + b"\r\n\r\n",
    "a coding besides chunked": OK_HEAD + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    "chunked twice": OK_HEAD + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked"
                     b"\r\n\r\n0\r\n\r\n",
    "chunk size overflow": OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n1" + b"0" * 20
                           + b"\r\nab",
    "a chunk ending in LF": OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\n0\r\n\r\n",
    "an unasked-for 101": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n",
    "HTTP/2": b"HTTP/2 200 OK\r\nContent-Length: 0\r\n\r\n",
    "a head over the limit": OK_HEAD + b"Content-Length: 0\r\nX-Pad: "
                             + b"a" * (2 * upstream.HEAD_MAX) + b"\r\n\r\n",
    "closed before the length": OK_HEAD + b"Content-Length: 5\r\n\r\nab",
    "closed before the last chunk": OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
    "nothing at all": b"",
}


@pytest.mark.parametrize("answer", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_answers_h11_refuses(answer: bytes) -> None:
    async def main() -> None:
        server, base, _ = await serve_once([answer])
        await get_refused(base)
        server.close()
    run(main)


def test_framings_h11_decides() -> None:
    async def main() -> None:
        server, base, heads = await serve_once([
            # HEAD: a length but no body; then the connection closes (not reused below)
            OK_HEAD + b"Content-Length: 100\r\n\r\n",
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
            OK_HEAD + b"\r\nuntil close",  # no length: the body ends with the connection
            b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
            # chunked wins over a length, which is dropped (it would lie to our client)
            OK_HEAD + b"Transfer-Encoding: chunked\r\nContent-Length: 99\r\n\r\n"
                      b"2\r\nok\r\n0\r\n\r\n",
            b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
            b"HTTP/1.1 100 Continue\r\n\r\n" + OK_HEAD + b"Content-Length: 1\r\n\r\n1",
        ])
        pool = upstream.Pool(dev=True)
        resp = await pool.request("HEAD", base + "/", [])
        assert resp.status == 200 and resp.headers["content-length"] == "100"
        assert await body(resp) == b""
        resp = await pool.request("GET", base + "/", [])
        assert resp.status == 304 and await body(resp) == b""
        assert await body(await pool.request("GET", base + "/", [])) == b"until close"
        assert await body(await pool.request("GET", base + "/", [])) == b"ok"
        resp = await pool.request("GET", base + "/", [])
        assert "content-length" not in resp.headers and await body(resp) == b"ok"
        assert await body(await pool.request("GET", base + "/", [])) == b"1"
        assert heads[0].startswith(b"HEAD / HTTP/1.1\r\n") and pool.opened == 6
        await pool.aclose()
        server.close()
    run(main)


def test_no_reuse_unless_h11_says_so() -> None:
    answers = {
        b"/keep": OK_HEAD + b"Content-Length: 2\r\n\r\nok",
        b"/close": OK_HEAD + b"Content-Length: 2\r\nConnection: close\r\n\r\nok",
        b"/old": b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
        # bytes after the answer nobody asked for: the connection is not trusted again
        b"/extra": OK_HEAD + b"Content-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n\r\n",
    }

    async def main() -> None:
        server, base, conns = await serve(lambda h: answers[h.split()[1]])
        pool = upstream.Pool(dev=True)
        for path, opened in (("/keep", 1), ("/keep", 1), ("/close", 1), ("/keep", 2),
                             ("/old", 2), ("/keep", 3), ("/extra", 3), ("/keep", 4),
                             ("/keep", 4)):
            assert await body(await pool.request("GET", base + path, [])) == b"ok"
            assert pool.opened == opened, path
        await pool.aclose()
        server.close()
    run(main)


def test_bodies_stream_in_pieces_and_uploads_keep_their_length() -> None:
    big = b"x" * (5 * upstream.PIECE + 7)
    seen: list[bytes] = []

    def script(head: bytes) -> bytes:
        seen.append(head)
        return OK_HEAD + b"Content-Length: %d\r\n\r\n" % len(big) + big

    async def parts() -> AsyncIterator[bytes]:
        yield b"ab"
        yield b""
        yield b"cd"

    async def main() -> None:
        server, base, _ = await serve(script)
        pool = upstream.Pool(dev=True)
        resp = await pool.request("POST", base + "/", [("content-length", "4")], parts())
        sizes = [len(p) async for p in resp.iter_raw(5)]
        assert sum(sizes) == len(big) and len(sizes) > 1 and max(sizes) <= upstream.PIECE
        assert b"content-length: 4\r\n" in seen[0] and b"chunked" not in seen[0]
        # A body longer than the length it declared is refused before it goes out whole.
        with pytest.raises(upstream.UpstreamError):
            await pool.request("POST", base + "/", [("content-length", "3")], parts())
        await pool.aclose()
        server.close()
    run(main)


def test_request_fields_h11_refuses() -> None:
    async def main() -> None:
        dev = upstream.Pool(dev=True)
        for headers in ([("x", "a\0b")], [("x", "a\nb")], [("x y", "a")], [("", "a")],
                        [("x", "\u20ac")]):
            with pytest.raises(upstream.UpstreamError):
                await dev.request("GET", "http://127.0.0.1:9/", headers)
        for method, path in (("G ET", "/"), ("GET", "/a\rb"), ("GET", "/\u00e9")):
            with pytest.raises(upstream.UpstreamError):
                await dev.request(method, "http://127.0.0.1:9" + path, [])
        assert dev.opened == 0
    run(main)
