"""Talking to a served data dir, and reading what it wrote: an XRPC client over HTTP, the
firehose over WebSockets, the event log, and snapshots of the data dir.

Every response an `Api` receives passes through `check_response`: no 500 and no traceback
ever reaches a client.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbrrr
import httpx
import pytest
from harness import Server, running_server
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

PASSWORD = "correct horse battery"
SUBSCRIBE = "/xrpc/com.atproto.sync.subscribeRepos"


def check_response(resp: httpx.Response) -> None:
    resp.read()
    assert b"Traceback" not in resp.content, resp.content[:2000]
    assert resp.status_code != 500, f"{resp.request.method} {resp.request.url}: {resp.text}"


@dataclass
class Account:
    did: str
    handle: str
    email: str
    password: str
    access: str
    refresh: str


class Api:
    """A thin XRPC client over httpx."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.http = httpx.Client(base_url=server.url, timeout=60,
                                 event_hooks={"response": [check_response]})

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def host(self) -> str:
        """`localhost:<port>`, the PDS's configured hostname."""
        return f"localhost:{self.server.port}"

    @property
    def service_did(self) -> str:
        return "did:web:" + self.host.replace(":", "%3A")

    @staticmethod
    def _headers(token: str | None, headers: dict | None) -> dict:
        out = dict(headers or {})
        if token is not None:
            out["Authorization"] = f"Bearer {token}"
        return out

    def get(self, nsid: str, token: str | None = None, headers: dict | None = None,
            **params: Any) -> httpx.Response:
        return self.http.get("/xrpc/" + nsid, params=params,
                             headers=self._headers(token, headers))

    def post(self, nsid: str, body: Any = None, token: str | None = None,
             headers: dict | None = None, content: Any = None, **params: Any) -> httpx.Response:
        if content is not None:
            return self.http.post("/xrpc/" + nsid, content=content, params=params,
                                  headers=self._headers(token, headers))
        return self.http.post("/xrpc/" + nsid, json=body, params=params,
                              headers=self._headers(token, headers))

    def admin_headers(self, password: str | None = None, user: str = "admin") -> dict:
        pw = self.server.admin_password if password is None else password
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()}

    def create_account(self, name: str | None = None, password: str = PASSWORD,
                       **extra: Any) -> Account:
        name = name or "u" + secrets.token_hex(4)
        handle = f"{name}.test"
        email = f"{name}@example.com"
        r = self.post("com.atproto.server.createAccount",
                      {"handle": handle, "email": email, "password": password, **extra})
        body = ok(r)
        assert body["did"] == "did:web:" + handle
        return Account(body["did"], handle, email, password, body["accessJwt"],
                       body["refreshJwt"])

    def create_record(self, acct: Account, record: dict, collection: str = "com.example.note",
                      rkey: str | None = None) -> httpx.Response:
        body = {"repo": acct.did, "collection": collection,
                "record": {"$type": collection, **record}}
        if rkey is not None:
            body["rkey"] = rkey
        return self.post("com.atproto.repo.createRecord", body, token=acct.access)

    def list_records(self, did: str, collection: str = "com.example.note",
                     limit: int = 100) -> list[dict]:
        return ok(self.get("com.atproto.repo.listRecords", repo=did, collection=collection,
                           limit=limit))["records"]


def api_fixture(env: dict | None = None, workers: int = 2) -> Callable:
    """A module-scoped fixture: an `Api` on one `running_server` (a fresh data dir) for the
    whole module. `api = api_fixture()` in a test module makes its `api` fixture."""
    @pytest.fixture(scope="module")
    def api(request: pytest.FixtureRequest,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
        base = tmp_path_factory.mktemp(request.module.__name__.removeprefix("test_"))
        with running_server(base, env=env, workers=workers) as server, Api(server) as client:
            yield client

    return api


def app_context(data_dir: Path):
    """The app in process, with no server: an AppContext over a fresh data dir (dev,
    did:web accounts, `.test` handles, no rate limits), its directories made."""
    from pds.config import Settings
    from pds.services.context import AppContext

    (data_dir / "tmp").mkdir(parents=True, exist_ok=True)
    ctx = AppContext(Settings(data_dir=data_dir, hostname="localhost:1", handle_domains=[".test"],
                              did_method="web", dev=True, jwt_secret="s" * 32,
                              rate_limits=False))
    ctx.data.ensure()
    ctx.accounts.ensure()
    return ctx


def ok(resp: httpx.Response) -> Any:
    """The JSON body of a 200 answer (None for an empty body)."""
    assert resp.status_code == 200, f"{resp.status_code} {resp.text}"
    return resp.json() if resp.content else None


def err(resp: httpx.Response, status: int, name: str | tuple[str, ...] | None = None) -> dict:
    """Assert an XRPC error answer: the status, and `{"error", "message"}` JSON."""
    assert resp.status_code == status, f"{resp.status_code} {resp.text}"
    assert resp.headers["content-type"].startswith("application/json"), resp.headers
    body = resp.json()
    assert isinstance(body.get("error"), str) and isinstance(body.get("message"), str), body
    if name is not None:
        names = (name,) if isinstance(name, str) else name
        assert body["error"] in names, body
    return body


def jwt_parts(token: str) -> tuple[dict, dict]:
    """(header, payload) of a JWT, unverified."""
    def dec(part: str) -> dict:
        return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    h, p, _ = token.split(".")
    return dec(h), dec(p)


def blob_ref(blob: dict) -> dict:
    """The blob object of an uploadBlob answer, as a record embeds it."""
    return {"$type": "blob", "ref": blob["ref"], "mimeType": blob["mimeType"],
            "size": blob["size"]}


def snapshot(root: Path, tops: tuple[str, ...] = ("accounts", "handles", "emails", "invites",
                                                  "well-known", "tombstones", "tmp")) -> dict:
    """Every path under `tops` with its type, size and mtime: any write shows up (but for
    export snapshots, derived files background maintenance refreshes at any time)."""
    out: dict[str, tuple] = {}
    for top in tops:
        for dirpath, dirnames, filenames in os.walk(root / top):
            for n in dirnames + filenames:
                if top == "tmp" and (n.startswith(".") or n.endswith(".LOCK")
                                     or n == "CHANGES"):
                    # write_file's staging names, lock files and the change clock:
                    # background maintenance (checkpoints, blob collection) makes them
                    # at any time.
                    continue
                if n == "export.car":
                    continue
                p = Path(dirpath) / n
                st = p.lstat()
                out[str(p.relative_to(root))] = (p.is_dir(), st.st_size, st.st_mtime_ns)
        st = (root / top).stat() if (root / top).exists() else None
        # tmp/ is a staging area: what counts is that nothing is left behind in it.
        out[top] = (True, 0, st.st_mtime_ns if top != "tmp" else 0) if st else None
    return out


def diff_snapshots(before: dict, after: dict) -> list[str]:
    changes = []
    for k in sorted(set(before) | set(after)):
        if before.get(k) != after.get(k):
            changes.append(f"{k}: {before.get(k)} -> {after.get(k)}")
    return changes


# --- the firehose -----------------------------------------------------------------------------


def subscribe_url(base_url: str, cursor: int | None = None) -> str:
    """The ws:// URL of subscribeRepos on the server at `base_url` (http://...)."""
    url = base_url.replace("http://", "ws://") + SUBSCRIBE
    return url if cursor is None else f"{url}?cursor={cursor}"


def ws_connect(url: str, **kw: Any):
    """A `websockets` client: no proxy, no compression, no size limit (`kw` overrides)."""
    return connect(url, **{"proxy": None, "compression": None, "max_size": None,
                           "open_timeout": 30, "close_timeout": 10, **kw})


def decode_frame(data: bytes) -> tuple[dict, dict]:
    """(header, payload) of a firehose frame."""
    items = list(cbrrr.decode_multi_dag_cbor_in_violation_of_the_spec(data))
    assert len(items) == 2, f"a frame is two DAG-CBOR items, got {len(items)}"
    return items[0], items[1]


class Subscriber:
    """A firehose subscriber reading on its own thread; keeps every frame it receives.
    `closed` is how the connection closed (if it did), `error` anything else that
    stopped the reading."""

    def __init__(self, url: str, **connect_kw: Any) -> None:
        self.ws = ws_connect(url, legacy=True, **connect_kw)
        self.frames: list[tuple[dict, dict, bytes]] = []
        self.lock = threading.Lock()
        self.closed: ConnectionClosed | None = None
        self.closed_at: float | None = None
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    data = self.ws.recv(timeout=0.2)
                except TimeoutError:
                    continue
                header, body = decode_frame(data)
                with self.lock:
                    self.frames.append((header, body, data))
        except ConnectionClosed as e:
            self.closed, self.closed_at = e, time.monotonic()
        except BaseException as e:  # noqa: BLE001 - the test looks at it
            self.error = e

    def snapshot(self) -> list[tuple[dict, dict, bytes]]:
        with self.lock:
            return list(self.frames)

    def seqs(self) -> list[int]:
        return [b["seq"] for h, b, _ in self.snapshot() if h.get("op") == 1 and "seq" in b]

    def last_seq(self) -> int:
        seqs = self.seqs()
        return seqs[-1] if seqs else -1

    def close(self) -> None:
        self._stop.set()
        self.thread.join(15)
        self.ws.close()


# --- what the server wrote --------------------------------------------------------------------


def seq_events(data: Path) -> list[tuple[int, dict, dict]]:
    """Every event in `DATA/seq/` as (seq, header, payload), in seq order."""
    from pds.store.seqlog import EventLog
    log = EventLog(data / "seq", data / "tmp")
    return [(seq, *decode_frame(raw)) for seq, raw in log.events()]


def account_events(data: Path, did: str) -> list[dict]:
    """The `#account` payloads of one DID in the event log, in order."""
    return [p for _s, h, p in seq_events(data) if h.get("t") == "#account" and p["did"] == did]
