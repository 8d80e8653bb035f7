"""Helpers for the integration tests that drive a real `pds serve` over HTTP.

Every account is a did:web one (`did:web:<name>.test`, documents served by the PDS itself),
so no PLC directory is needed. Every response any test receives passes through
`check_response`: no 500 and no traceback ever reaches a client.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from harness import Server, free_port, init_data_dir, start_server

PASSWORD = "correct horse battery"


def check_response(resp: httpx.Response) -> None:
    resp.read()
    assert b"Traceback" not in resp.content, resp.content[:2000]
    assert resp.status_code != 500, f"{resp.request.method} {resp.request.url}: {resp.text}"


@contextlib.contextmanager
def running_server(base: Path, env: dict | None = None, workers: int = 2) -> Iterator[Server]:
    """A fresh data dir (did:web accounts, `.test` handles) served by `pds serve`."""
    port = free_port()
    data = base / "data"
    init_data_dir(data, port, did_method="web")
    server = start_server(data, port, workers=workers, env=env)
    # _health answers once one worker listens; let the others come up too, so requests
    # really spread over all of them.
    deadline = time.monotonic() + 20
    while server.log().count("ASGI server listening") < workers and \
            time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield server
    finally:
        server.stop()
    # A request that failed inside the app is logged as "unhandled error" (and answered
    # with a bare 500); none may have happened, even one no test looked at.
    log = server.log()
    assert "unhandled error" not in log, log[-4000:]


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

    @property
    def host(self) -> str:
        """`localhost:<port>`, the PDS's configured hostname."""
        return "localhost:" + self.server.url.rsplit(":", 1)[1]

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
                if top == "tmp" and (n.startswith(".") or n.endswith(".LOCK")):
                    # write_file's staging names and lock files: background maintenance
                    # (checkpoints, blob collection) makes them at any time.
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
