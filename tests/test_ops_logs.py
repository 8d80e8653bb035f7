"""The request log: `pds serve` writes one line per request to stdout (journald, under
systemd): request id, client, method and path, status, time in ms. The id is the
response's X-Request-Id (made by the app, or taken from the request, as nginx sends it),
so a user's report can be matched to its line. Everything else goes to stderr.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from harness import running_server, wait_for

pytestmark = pytest.mark.slow  # `pds serve`'s request log

LINE = re.compile(r'^(?P<rid>\S+) (?P<client>\S+) "(?P<method>[A-Z]+) (?P<path>\S+)" '
                  r'(?P<status>\d{3}) (?P<ms>\d+\.\d)ms$')


@dataclass
class LoggedServer:
    url: str
    out: Path   # stdout: the access log
    err: Path   # stderr: gunicorn's own messages

    def lines(self) -> list[str]:
        return self.out.read_text(errors="replace").splitlines()

    def line_for(self, rid: str) -> re.Match:
        def find():
            hits = [m for m in map(LINE.match, self.lines()) if m and m["rid"] == rid]
            return hits or None
        hits = wait_for(find, 30, f"the log line of request {rid}")
        assert len(hits) == 1, hits  # one line per request
        return hits[0]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoggedServer]:
    base = tmp_path_factory.mktemp("logs")
    err = base / "stderr.log"
    with running_server(base, env={"PDS_ACCESS_LOG": "1"}, err_path=err, wait=60) as srv:
        yield LoggedServer(srv.url, srv.log_path, err)


def test_a_200_line_matches_the_response_request_id(server: LoggedServer) -> None:
    r = httpx.get(server.url + "/xrpc/com.atproto.server.describeServer", timeout=60)
    assert r.status_code == 200
    rid = r.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{16}", rid), rid
    m = server.line_for(rid)
    assert m["method"] == "GET" and m["path"] == "/xrpc/com.atproto.server.describeServer"
    assert m["status"] == "200" and m["client"] == "127.0.0.1"
    assert float(m["ms"]) >= 0


def test_a_400_line(server: LoggedServer) -> None:
    r = httpx.get(server.url + "/xrpc/com.atproto.repo.getRecord",
                  params={"repo": "not a did", "collection": "x", "rkey": "y"}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]
    m = server.line_for(r.headers["x-request-id"])
    assert m["status"] == "400" and m["method"] == "GET"
    assert m["path"].startswith("/xrpc/com.atproto.repo.getRecord?repo=not")


def test_other_statuses_and_methods(server: LoggedServer) -> None:
    cases = [
        (httpx.post, "/xrpc/com.atproto.server.createSession", {"json": {}}, "POST", "400"),
        (httpx.get, "/xrpc/com.atproto.admin.getInviteCodes", {}, "GET", "401"),
        (httpx.get, "/xrpc/com.example.nothing", {}, "GET", "401"),
        (httpx.get, "/no/such/path", {}, "GET", "404"),
    ]
    for fn, path, kw, method, status in cases:
        r = fn(server.url + path, timeout=60, **kw)
        assert str(r.status_code) == status, (path, r.status_code, r.text)
        m = server.line_for(r.headers["x-request-id"])
        assert (m["method"], m["path"], m["status"]) == (method, path, status)


def test_request_id_taken_from_the_request(server: LoggedServer) -> None:
    """nginx sends X-Request-Id ($request_id): the app logs and returns that one."""
    rid = "0123456789abcdef0123456789abcdef"
    r = httpx.get(server.url + "/xrpc/_health", headers={"X-Request-Id": rid}, timeout=60)
    assert r.headers["x-request-id"] == rid
    assert server.line_for(rid)["status"] == "200"


def test_stdout_holds_only_request_lines(server: LoggedServer) -> None:
    ids = []
    for _ in range(5):
        ids.append(httpx.get(server.url + "/xrpc/_health", timeout=60).headers["x-request-id"])
    for rid in ids:
        server.line_for(rid)
    lines = [ln for ln in server.lines() if ln]
    bad = [ln for ln in lines if not LINE.match(ln)]
    assert not bad, bad
    rids = [LINE.match(ln)["rid"] for ln in lines]
    assert len(rids) == len(set(rids)), "a request id logged twice"
    # gunicorn's own messages went to stderr.
    assert "Booting worker" in server.err.read_text()
