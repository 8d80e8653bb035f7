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
        pool = upstream.Pool(dev=True)
        resp = await pool.request("GET", base + "/", [])
        with pytest.raises(upstream.UpstreamError):
            await body(resp)
        await pool.aclose()
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
