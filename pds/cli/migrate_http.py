"""An XRPC client for `pds account migrate-in`: the command is a client of two PDSes (the
old one and this one, over HTTP like any other client), of the PLC directory, and of the
DNS and https hosts that resolve a handle. Every failure becomes one `XrpcFailure` that
names which side failed and what it said, so the command can print it as one line."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import httpx

from .. import __version__

TIMEOUT = httpx.Timeout(60.0, connect=15.0)
# A JSON answer of the methods used here is small; a bigger one is not an XRPC answer.
JSON_LIMIT = 16 * 1024 * 1024
CHUNK = 256 * 1024


class XrpcFailure(Exception):
    """A call that failed: `name` is the XRPC error name (or a word for a network or
    protocol failure), `status` the HTTP status (0 when nothing was answered)."""

    def __init__(self, where: str, nsid: str, status: int, name: str, message: str) -> None:
        super().__init__(f"{where}: {nsid}: {name}" + (f": {message}" if message else ""))
        self.where, self.nsid, self.status, self.name, self.message = (
            where, nsid, status, name, message)


def _failure(where: str, nsid: str, resp: httpx.Response) -> XrpcFailure:
    """The XrpcFailure of an answer that is not 200: its `{"error","message"}`, or its
    status when it carries none."""
    name, message = f"HTTP {resp.status_code}", ""
    try:
        body = json.loads(resp.read()[:JSON_LIMIT])
        if isinstance(body, dict):
            name = str(body.get("error") or name)[:100]
            message = str(body.get("message") or "")[:500]
    except (ValueError, httpx.HTTPError):
        pass
    return XrpcFailure(where, nsid, resp.status_code, name, message)


class Xrpc:
    """XRPC calls to one service at `base_url`, as `where` ("old PDS ...") for messages.
    After a sign-in (`signed_in`) every call carries the session's access token, and one
    refused as expired (a run that copies for hours outlives it) is sent again after a
    refreshSession."""

    def __init__(self, base_url: str, where: str, transport: httpx.BaseTransport | None = None,
                 auth: httpx.Auth | None = None) -> None:
        self.where = where
        self.token: str | None = None
        self.refresh: str | None = None
        self.http = httpx.Client(base_url=base_url.rstrip("/"), timeout=TIMEOUT,
                                 transport=transport, auth=auth, follow_redirects=False,
                                 headers={"User-Agent": f"pds/{__version__} migrate-in"})

    def close(self) -> None:
        self.http.close()

    def signed_in(self, session: dict[str, Any]) -> None:
        """Use this session (createSession's or createAccount's answer) from now on."""
        self.token, self.refresh = session["accessJwt"], session.get("refreshJwt")

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        out = dict(extra or {})
        if self.token is not None and "Authorization" not in out:
            out["Authorization"] = f"Bearer {self.token}"
        return out

    @contextlib.contextmanager
    def _calling(self, nsid: str) -> Iterator[None]:
        """Network and protocol failures of one call, as XrpcFailure."""
        try:
            yield
        except httpx.TimeoutException:
            raise XrpcFailure(self.where, nsid, 0, "Timeout",
                              f"no answer from {self.http.base_url}") from None
        except httpx.HTTPError as e:
            raise XrpcFailure(self.where, nsid, 0, "Unreachable",
                              f"{self.http.base_url}: {e or type(e).__name__}") from None

    def _send(self, nsid: str, method: str, headers: dict[str, str] | None = None,
              stream: bool = False, **kw: Any) -> httpx.Response:
        """One request (again after a refresh if the access token had expired); an answer
        that is not 200 raises."""
        with self._calling(nsid):
            for attempt in (1, 2):
                sent_token = headers is None or "Authorization" not in headers
                req = self.http.build_request(method, "/xrpc/" + nsid,
                                              headers=self._headers(headers), **kw)
                # A query may be redirected (blobs served from elsewhere); httpx drops
                # the Authorization header when the redirect leaves the host.
                resp = self.http.send(req, stream=stream, follow_redirects=method == "GET")
                if resp.status_code == 200:
                    return resp
                failure = _failure(self.where, nsid, resp)
                resp.close()
                if (attempt == 1 and sent_token and self.refresh
                        and failure.name == "ExpiredToken" and not _is_iterator(kw)):
                    self._refresh()
                    continue
                raise failure
        raise AssertionError("unreachable")

    def _refresh(self) -> None:
        resp = self.http.post("/xrpc/com.atproto.server.refreshSession",
                              headers={"Authorization": f"Bearer {self.refresh}"})
        if resp.status_code != 200:
            raise _failure(self.where, "com.atproto.server.refreshSession", resp)
        self.signed_in(resp.json())

    def _json(self, nsid: str, resp: httpx.Response) -> Any:
        if not resp.content:
            return None
        try:
            return resp.json()
        except ValueError:
            raise XrpcFailure(self.where, nsid, 200, "BadAnswer",
                              "the answer is not JSON") from None

    def get(self, nsid: str, headers: dict[str, str] | None = None, **params: Any) -> Any:
        """A query's JSON answer."""
        params = {k: v for k, v in params.items() if v is not None}
        return self._json(nsid, self._send(nsid, "GET", headers, params=params))

    def post(self, nsid: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
        """A procedure with a JSON body (or none); its JSON answer."""
        kw = {} if body is None else {"json": body}
        return self._json(nsid, self._send(nsid, "POST", headers, **kw))

    def post_bytes(self, nsid: str, content: bytes | Iterator[bytes], content_type: str,
                   length: int) -> Any:
        """A procedure whose body is bytes of `content_type` (`length` of them)."""
        headers = {"Content-Type": content_type, "Content-Length": str(length)}
        return self._json(nsid, self._send(nsid, "POST", headers, content=content))

    def download(self, nsid: str, out: BinaryIO, progress: Callable[[int, int | None], None],
                 **params: Any) -> str:
        """Stream a query's (binary) answer into `out`, telling `progress(done, total)`;
        returns its Content-Type."""
        resp = self._send(nsid, "GET", stream=True, params=params)
        with self._calling(nsid), contextlib.closing(resp):
            length = resp.headers.get("content-length")
            total = int(length) if length and length.isdigit() else None
            done = 0
            for chunk in resp.iter_bytes(CHUNK):
                out.write(chunk)
                done += len(chunk)
                progress(done, total)
            return resp.headers.get("content-type", "application/octet-stream")

    def fetch_bytes(self, nsid: str, limit: int, **params: Any) -> tuple[bytes, str]:
        """A query's binary answer (at most `limit` bytes) and its Content-Type."""
        resp = self._send(nsid, "GET", stream=True, params=params)
        with self._calling(nsid), contextlib.closing(resp):
            parts, size = [], 0
            for chunk in resp.iter_bytes(CHUNK):
                size += len(chunk)
                if size > limit:
                    raise XrpcFailure(self.where, nsid, 200, "TooLarge",
                                      f"larger than {limit} bytes")
                parts.append(chunk)
            return b"".join(parts), resp.headers.get("content-type", "application/octet-stream")


def _is_iterator(kw: dict[str, Any]) -> bool:
    """Whether a request's body is an iterator (spent by the first attempt)."""
    content = kw.get("content")
    return content is not None and not isinstance(content, bytes)


def file_chunks(path: Path, progress: Callable[[int], None]) -> Iterator[bytes]:
    """The bytes of `path` in chunks, telling `progress(n)` of each chunk as it goes."""
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            progress(len(chunk))
            yield chunk


def get_json(url: str, where: str, limit: int = 1024 * 1024) -> Any:
    """GET a JSON document outside XRPC (a PLC directory's answer); None for a 404."""
    try:
        resp = httpx.get(url, timeout=TIMEOUT, follow_redirects=False)
    except httpx.HTTPError as e:
        raise XrpcFailure(where, url, 0, "Unreachable", str(e) or type(e).__name__) from None
    if resp.status_code == 404:
        return None
    if resp.status_code != 200 or len(resp.content) > limit:
        raise XrpcFailure(where, url, resp.status_code, f"HTTP {resp.status_code}",
                          resp.text[:200])
    try:
        return resp.json()
    except ValueError:
        raise XrpcFailure(where, url, 200, "BadAnswer", "not JSON") from None
