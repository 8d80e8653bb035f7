"""nginx.conf.example in front of a real `pds serve --workers 2` (PDS_BEHIND_NGINX=true).

The test config is made FROM the example the way README ("nginx") says: the port-80
redirect server dropped, `listen 443 ssl http2` turned into plain HTTP on a loopback port,
the certificate lines dropped, and the data dir, upstream and hostname substituted. Through
that nginx: sign-up and login, posting, uploadBlob, getBlob (security headers, the stored
Content-Type, Range) sent by nginx from disk and not by the app, the firehose over a
WebSocket (replay and live), the well-known files served from disk with the app stopped,
a taken-down account's blobs refused, and a JSON body over the app's limit answered by
the app. nginx's access log is the example's own format; one request id is in it, in the
app's log line and in the response, blobs nginx sends included. Skips only when nginx is
not installed.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from harness import Server, init_data_dir, start_server, wait_for
from ops_util import Nginx, nginx_binary, parse_ops_line, start_nginx
from server_util import PASSWORD, Api, Subscriber, ok, subscribe_url

pytestmark = [pytest.mark.slow,  # nginx in front of a live server
              pytest.mark.skipif(nginx_binary() is None,
                                 reason="nginx is not installed (looked on PATH and in /usr/sbin)")]

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 1200  # ~300 KB, not a real image
NOW = "2026-01-01T00:00:00.000Z"


class Stack:
    """`pds serve` (behind_nginx) and nginx in front of it, on one data dir whose public
    hostname is `localhost` (as nginx sees it: `$host` never carries a port)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.data = base / "data"
        init_data_dir(self.data, "localhost")
        self.app: Server = start_server(
            self.data, workers=2, env={"PDS_BEHIND_NGINX": "true", "PDS_ACCESS_LOG": "1"},
            wait=60)
        try:
            self.nginx: Nginx = start_nginx(base / "nginx", self.data,
                                            f"127.0.0.1:{self.app.port}")
        except BaseException:
            self.app.stop()
            raise
        self.http = httpx.Client(base_url=self.nginx.url, timeout=60)
        # server_util.Api, pointed at nginx (admin password from the data dir).
        self.api = Api(Server(self.nginx.url, self.data, self.app.proc, self.app.env,
                              self.app.log_path))

    def close(self) -> None:
        self.http.close()
        self.api.close()
        self.nginx.stop()
        self.app.stop()
        log = self.app.log()
        assert "Traceback" not in log, log[-4000:]

    def sign_up(self, name: str) -> dict:
        r = self.http.post("/xrpc/com.atproto.server.createAccount",
                           json={"handle": f"{name}.test", "email": f"{name}@example.com",
                                 "password": PASSWORD})
        return ok(r)

    def login(self, handle: str) -> dict:
        return ok(self.http.post("/xrpc/com.atproto.server.createSession",
                                 json={"identifier": handle, "password": PASSWORD}))

    def upload(self, token: str, data: bytes, mime: str) -> dict:
        r = self.http.post("/xrpc/com.atproto.repo.uploadBlob", content=data,
                           headers={"Authorization": f"Bearer {token}", "Content-Type": mime})
        return ok(r)["blob"]

    def post(self, did: str, token: str, text: str, blob: dict | None = None) -> dict:
        record = {"$type": "app.bsky.feed.post", "text": text, "createdAt": NOW}
        if blob is not None:
            record["embed"] = {"$type": "app.bsky.embed.images",
                               "images": [{"alt": "", "image": blob}]}
        r = self.http.post("/xrpc/com.atproto.repo.createRecord",
                           json={"repo": did, "collection": "app.bsky.feed.post",
                                 "record": record},
                           headers={"Authorization": f"Bearer {token}"})
        return ok(r)

    def get_blob(self, did: str, cid: str, headers: dict | None = None) -> httpx.Response:
        return self.http.get("/xrpc/com.atproto.sync.getBlob", params={"did": did, "cid": cid},
                             headers=headers or {})

    def nginx_line(self, pred: Callable[[dict], bool]) -> dict:
        """The first nginx access-log entry matching `pred` (waits for it to be written)."""
        def find():
            return next((e for e in map(parse_ops_line, self.nginx.access_log()) if pred(e)),
                        None)
        return wait_for(find, 30, "an nginx access-log line")

    def app_line(self, rid: str) -> str:
        """The app's own access-log line for request id `rid` (nginx passes X-Request-Id)."""
        def find():
            return next((ln for ln in self.app.log().splitlines() if ln.startswith(rid + " ")),
                        None)
        return wait_for(find, 30, f"the app's access-log line of request {rid}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("nginx"))
    try:
        yield s
    finally:
        s.close()


def blob_cid(blob: dict) -> str:
    return blob["ref"]["$link"]


def blob_file(data: Path, did: str, cid: str) -> Path:
    return data / "accounts" / did / "blobs" / cid[-2:] / cid


# --- tests -----------------------------------------------------------------------------------


def test_test_config_is_the_example_made_plain_http(stack: Stack) -> None:
    site = (stack.nginx.work / "pds-site.conf").read_text()
    assert f"listen 127.0.0.1:{stack.nginx.port};" in site
    assert "listen 80" not in site and "ssl" not in site.replace("ssl_", "SSL")
    assert "return 301" not in site
    assert f"alias {stack.data}/accounts/;" in site
    assert f"server 127.0.0.1:{stack.app.port};" in site
    assert "server_name localhost *.localhost;" in site
    # The example's own access log, in its own format (a log_format in a site file).
    assert "log_format pds_requests '$request_id " in site
    assert f"access_log {stack.nginx.work / 'access.log'} pds_requests;" in site
    # The app is really behind it: nginx answers, the app's health comes through.
    r = stack.http.get("/xrpc/_health")
    assert r.status_code == 200 and r.headers["server"].startswith("nginx")
    # One request id in nginx's log line, the app's log line and the response.
    rid = r.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", rid), rid  # nginx's $request_id
    line = stack.nginx_line(lambda ln: ln["rid"] == rid)
    assert line["uri"] == "/xrpc/_health" and line["upstatus"] == "200", line
    assert '"GET /xrpc/_health" 200' in stack.app_line(rid)


def test_login_post_upload_and_blob_sent_by_nginx(stack: Stack) -> None:
    acct = stack.sign_up("alice")
    did = acct["did"]
    session = stack.login("alice.test")
    assert session["did"] == did
    token = session["accessJwt"]

    blob = stack.upload(token, PNG, "image/png")
    assert blob["size"] == len(PNG) and blob["mimeType"] == "image/png"
    cid = blob_cid(blob)
    created = stack.post(did, token, "a picture", blob)
    got = ok(stack.http.get("/xrpc/com.atproto.repo.getRecord",
                            params={"repo": did, "collection": "app.bsky.feed.post",
                                    "rkey": created["uri"].rsplit("/", 1)[1]}))
    assert got["cid"] == created["cid"]
    assert got["value"]["embed"]["images"][0]["image"]["ref"]["$link"] == cid

    # The whole blob: bytes, stored type, and the three security headers.
    r = stack.get_blob(did, cid)
    assert r.status_code == 200, r.text
    assert r.content == PNG
    assert r.headers["content-type"] == "image/png"
    assert r.headers["content-security-policy"] == "default-src 'none'; sandbox"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["content-disposition"].startswith("attachment")
    assert len(r.headers.get_list("content-disposition")) == 1

    # Proof that nginx sent the file and the app did not:
    # 1. static-file headers the app never sends;
    assert r.headers["server"].startswith("nginx")
    assert r.headers.get("etag") and r.headers.get("last-modified"), r.headers
    assert r.headers.get("accept-ranges") == "bytes"
    # 2. nginx's log: it sent the whole blob while the app's answer had an empty body;
    line = stack.nginx_line(lambda ln: ln["uri"].startswith("/xrpc/com.atproto.sync.getBlob")
                            and cid in ln["uri"] and ln["status"] == 200)
    rid = line["rid"]
    assert line["sent"] == len(PNG) and line["up"] == "0" and line["upstatus"] == "200", line
    # the blob carries the request id nginx logged (and gave the app, below) once.
    assert re.fullmatch(r"[0-9a-f]{32}", rid), line
    assert r.headers.get_list("x-request-id") == [rid], r.headers
    # 3. the app did see the request (it checked the account and the blob) and logged it
    #    under the same request id nginx gave it;
    assert '"GET /xrpc/com.atproto.sync.getBlob' in stack.app_line(rid)
    # 4. asked directly, the app answers with the redirect and no body.
    direct = httpx.get(f"{stack.app.url}/xrpc/com.atproto.sync.getBlob",
                       params={"did": did, "cid": cid}, timeout=60)
    assert direct.status_code == 200 and direct.content == b""
    redirect = direct.headers["x-accel-redirect"]
    assert redirect == f"/_blobs/{did}/blobs/{cid[-2:]}/{cid}"
    assert direct.headers["content-type"] == "image/png"

    # A Range request is answered by nginx from the file.
    r = stack.get_blob(did, cid, {"Range": "bytes=1000-1999"})
    assert r.status_code == 206, r.text
    assert r.content == PNG[1000:2000]
    assert r.headers["content-range"] == f"bytes 1000-1999/{len(PNG)}"
    assert r.headers["content-security-policy"] == "default-src 'none'; sandbox"
    range_rid = r.headers["x-request-id"]
    assert range_rid != rid and stack.nginx_line(lambda ln: ln["rid"] == range_rid)["status"] \
        == 206
    assert '"GET /xrpc/com.atproto.sync.getBlob' in stack.app_line(range_rid)
    r = stack.get_blob(did, cid, {"Range": "bytes=-10"})
    assert r.status_code == 206 and r.content == PNG[-10:]

    # A blob nobody references (a fresh upload) and an unknown CID are not served.
    loose = stack.upload(token, b"not referenced yet " + os.urandom(16), "text/plain")
    r = stack.get_blob(did, blob_cid(loose))
    assert r.status_code == 400 and r.json()["error"] == "BlobNotFound"
    assert b"not referenced yet" not in r.content


def test_firehose_over_websocket_through_nginx(stack: Stack) -> None:
    acct = stack.sign_up("carol")
    did, token = acct["did"], acct["accessJwt"]
    first = stack.post(did, token, "before subscribing")
    sub = Subscriber(subscribe_url(stack.nginx.url, 0), compression="deflate")
    try:
        def commits_with(path: str):
            return [b for h, b, _ in sub.snapshot() if h.get("t") == "#commit"
                    and b["repo"] == did and any(op["path"] == path for op in b["ops"])]

        # Replay from cursor 0 carries the commit made before subscribing.
        first_path = "app.bsky.feed.post/" + first["uri"].rsplit("/", 1)[1]
        wait_for(lambda: commits_with(first_path), 60, "the replayed #commit")
        # A new post arrives live, through nginx's WebSocket proxying.
        live = stack.post(did, token, "after subscribing")
        live_path = "app.bsky.feed.post/" + live["uri"].rsplit("/", 1)[1]
        got = wait_for(lambda: commits_with(live_path), 60, "the live #commit")
        assert got[0]["commit"].encode() == live["commit"]["cid"]
    finally:
        sub.close()
    assert sub.closed is None and sub.error is None, (sub.closed, sub.error)
    seqs = [b["seq"] for h, b, _ in sub.snapshot() if h.get("op") == 1]
    assert seqs == sorted(seqs) and len(seqs) == len(set(seqs)), seqs


def test_taken_down_blob_refused_and_internal_path_hidden(stack: Stack) -> None:
    acct = stack.sign_up("dave")
    did, token = acct["did"], acct["accessJwt"]
    secret = b"dave's picture " + os.urandom(64)
    blob = stack.upload(token, secret, "image/jpeg")
    cid = blob_cid(blob)
    stack.post(did, token, "mine", blob)
    assert stack.get_blob(did, cid).content == secret
    path = blob_file(stack.data, did, cid)
    assert path.read_bytes() == secret  # the file nginx would send is there...

    # ...but its internal location can't be asked for from outside, taken down or not.
    internal = f"/_blobs/{did}/blobs/{cid[-2:]}/{cid}"
    r = stack.http.get(internal)
    assert r.status_code == 404 and secret not in r.content

    # Takedown through nginx with HTTP Basic admin credentials.
    admin = stack.api.admin_headers()
    r = stack.http.post("/xrpc/com.atproto.admin.updateSubjectStatus", headers=admin,
                        json={"subject": {"$type": "com.atproto.admin.defs#repoRef",
                                          "did": did},
                              "takedown": {"applied": True, "ref": "ops-test"}})
    ok(r)
    r = stack.get_blob(did, cid)
    assert r.status_code == 400, r.status_code
    assert r.json()["error"] == "RepoTakendown"
    assert secret not in r.content and "etag" not in r.headers
    r = stack.get_blob(did, cid, {"Range": "bytes=0-9"})
    assert r.status_code == 400 and secret[:10] not in r.content
    r = stack.http.get(internal)
    assert r.status_code == 404 and secret not in r.content
    # Wrong admin password: refused by the app, through nginx.
    r = stack.http.post("/xrpc/com.atproto.admin.updateSubjectStatus",
                        headers=stack.api.admin_headers("wrong"),
                        json={"subject": {"$type": "com.atproto.admin.defs#repoRef",
                                          "did": did}, "takedown": {"applied": False}})
    assert r.status_code == 401

    # Reversed: served again.
    ok(stack.http.post("/xrpc/com.atproto.admin.updateSubjectStatus", headers=admin,
                       json={"subject": {"$type": "com.atproto.admin.defs#repoRef",
                                         "did": did},
                             "takedown": {"applied": False}}))
    r = stack.get_blob(did, cid)
    assert r.status_code == 200 and r.content == secret


def test_well_known_files_served_from_disk_with_the_app_stopped(
        tmp_path: Path) -> None:
    s = Stack(tmp_path)
    try:
        acct = s.sign_up("erin")
        did = acct["did"]
        assert did == "did:web:erin.test"
        # Stop the app; nginx alone answers from the data dir.
        s.app.stop(signal.SIGTERM)
        assert s.app.proc.poll() is not None
        wait_for(lambda: s.http.get("/xrpc/_health").status_code == 502, 30,
                 "nginx to find the app gone")

        r = s.http.get("/.well-known/atproto-did", headers={"Host": "erin.test"})
        assert r.status_code == 200, r.text
        assert r.text.strip() == did
        assert r.headers["content-type"].startswith("text/plain")
        assert r.headers["access-control-allow-origin"] == "*"
        # nginx alone answered, with its request id, as logged.
        rid = r.headers["x-request-id"]
        assert s.nginx_line(lambda ln: ln["rid"] == rid)["uri"] == "/.well-known/atproto-did"

        r = s.http.get("/.well-known/did.json", headers={"Host": "erin.test"})
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("application/json")
        doc = json.loads(r.content)
        assert doc["id"] == did and "at://erin.test" in doc["alsoKnownAs"]
        pds = [sv for sv in doc["service"] if sv["id"].endswith("#atproto_pds")]
        assert pds and pds[0]["serviceEndpoint"] == "http://localhost"

        r = s.http.get("/.well-known/did.json", headers={"Host": "localhost"})
        assert r.status_code == 200, r.text
        assert json.loads(r.content)["id"] == "did:web:localhost"

        # A host the PDS doesn't serve: nothing (nginx's 404, no file).
        r = s.http.get("/.well-known/atproto-did", headers={"Host": "nobody.test"})
        assert r.status_code == 404
        # Nothing above reached the app (it is down); the 502 proves where it would go.
        lines = [parse_ops_line(ln) for ln in s.nginx.access_log()]
        wk = [ln for ln in lines if ln["uri"].startswith("/.well-known/")]
        assert wk and all(ln["upstatus"] == "-" for ln in wk), wk
    finally:
        s.close()


def test_upload_bigger_than_client_max_body_size_refused_by_nginx(stack: Stack) -> None:
    """client_max_body_size (100m in the example) stops an oversized upload at nginx from
    its Content-Length alone, before the app reads anything."""
    token = stack.sign_up("frank")["accessJwt"]
    with socket.create_connection(("127.0.0.1", stack.nginx.port), timeout=60) as sock:
        sock.sendall(("POST /xrpc/com.atproto.repo.uploadBlob HTTP/1.1\r\n"
                      f"Host: localhost\r\nAuthorization: Bearer {token}\r\n"
                      "Content-Type: image/png\r\n"
                      f"Content-Length: {200 * 1024 * 1024}\r\n\r\n").encode())
        head = b""
        while b"\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                break
            head += chunk
    assert head.split(b"\r\n", 1)[0].split()[1] == b"413", head[:200]
    line = wait_for(lambda: next((parse_ops_line(ln) for ln in stack.nginx.access_log()
                                  if "uploadBlob" in ln and " 413 " in ln), None),
                    30, "nginx's log line of the refused upload")
    assert line["upstatus"] == "-", line  # never passed to the app


def test_json_body_over_the_apps_limit_answered_by_the_app_through_nginx(stack: Stack) -> None:
    """Under client_max_body_size but over the app's 5 MiB for JSON: nginx streams the
    body on (no request buffering) and the app's own JSON 413 reaches the client, not a
    502 from a connection the app dropped; the request id ties the three together."""
    token = stack.sign_up("gina")["accessJwt"]
    for _ in range(3):
        r = stack.http.post("/xrpc/com.atproto.repo.createRecord",
                            content=b" " * (8 * 1024 * 1024),
                            headers={"Authorization": f"Bearer {token}",
                                     "Content-Type": "application/json"})
        assert r.status_code == 413, r.text
        assert r.json()["error"] == "PayloadTooLarge"
        rid = r.headers["x-request-id"]
        line = stack.nginx_line(lambda ln, rid=rid: ln["rid"] == rid)
        assert line["status"] == 413 and line["upstatus"] == "413", line
        assert '"POST /xrpc/com.atproto.repo.createRecord" 413' in stack.app_line(rid)


# --- hardening: HSTS, no version, request-rate limits --------------------------------------

HSTS = "max-age=63072000; includeSubDomains"


def _assert_hardened(r: httpx.Response, what: str) -> None:
    assert r.headers.get("strict-transport-security") == HSTS, (what, r.headers)
    assert r.headers.get("server") == "nginx", (what, r.headers.get("server"))


def test_hsts_and_no_version_on_everything_nginx_answers(stack: Stack) -> None:
    """Proxied answers, files nginx sends itself (well-known, blobs) and nginx's own error
    pages all carry HSTS and a bare `Server: nginx`."""
    acct = stack.sign_up("hsts")
    did, token = acct["did"], acct["accessJwt"]
    blob = stack.upload(token, PNG, "image/png")
    stack.post(did, token, "hsts", blob)
    for what, r in (
        ("proxied", stack.http.get("/xrpc/_health")),
        ("proxied error", stack.http.get("/xrpc/com.atproto.repo.getRecord")),
        ("atproto-did", stack.http.get("/.well-known/atproto-did",
                                       headers={"Host": "hsts.test"})),
        ("did.json", stack.http.get("/.well-known/did.json")),
        ("blob", stack.get_blob(did, blob_cid(blob))),
        ("internal path", stack.http.get(f"/_blobs/{did}/blobs/")),
    ):
        _assert_hardened(r, what)
    r = stack.http.get(f"/_blobs/{did}/blobs/")
    assert r.status_code == 404 and not re.search(rb"nginx/\d", r.content), r.content


def _limited_routes() -> dict[str, tuple[str, int]]:
    """zone -> (location, burst) from nginx.conf.example's rate-limited locations."""
    from ops_util import NGINX_EXAMPLE
    found = re.findall(r"location (?:= |\^~ )?(\S+) \{\s*limit_req zone=(\w+) burst=(\d+) "
                       r"nodelay;", NGINX_EXAMPLE.read_text())
    return {zone: (path, int(burst)) for path, zone, burst in found}


def _burst(http: httpx.Client, send: Callable[[], httpx.Response], n: int) -> list:
    out = []
    for _ in range(n):
        r = send()
        out.append((r.status_code, r.headers, r.content))
    return out


def test_rate_limits_answer_429_with_an_xrpc_error(tmp_path: Path) -> None:
    """A burst on each limited route (logins, sign-ups, admin, OAuth) is refused past its
    limit with 429 and `{"error": "RateLimitExceeded", ...}` from nginx, while everything
    else, and each other limited route, still passes."""
    routes = _limited_routes()
    assert set(routes) == {"pds_login", "pds_signup", "pds_admin", "pds_oauth"}, routes
    assert routes["pds_login"][0] == "/xrpc/com.atproto.server.createSession"
    assert routes["pds_signup"][0] == "/xrpc/com.atproto.server.createAccount"
    assert routes["pds_admin"][0] == "/xrpc/com.atproto.admin."
    assert routes["pds_oauth"][0] == "/oauth/"
    s = Stack(tmp_path)
    try:
        http = s.http
        senders = {
            "pds_login": lambda: http.post("/xrpc/com.atproto.server.createSession",
                                           json={"identifier": "nobody.test",
                                                 "password": "wrong"}),
            "pds_signup": lambda: http.post("/xrpc/com.atproto.server.createAccount",
                                            json={"handle": "x"}),
            "pds_admin": lambda: http.get("/xrpc/com.atproto.admin.getAccountInfo",
                                          params={"did": "did:web:nobody.test"}),
            # %-escaped: nginx matches the decoded path, so this is /oauth/authorize.
            "pds_oauth": lambda: http.get("/%6fauth/authorize"),
        }
        # An account made past nginx (the app itself), so no limit is used up yet.
        r = httpx.post(f"{s.app.url}/xrpc/com.atproto.server.createAccount", timeout=60,
                       json={"handle": "ratelimited.test", "password": PASSWORD,
                             "email": "ratelimited@example.com"})
        acct = ok(r)
        for zone, send in senders.items():
            _path, burst = routes[zone]
            started = time.monotonic()
            answers = _burst(http, send, burst + 12)
            elapsed = time.monotonic() - started
            codes = [c for c, _h, _b in answers]
            refused = [i for i, c in enumerate(codes) if c == 429]
            assert refused, f"{zone}: no 429 in {codes}"
            # The burst passes; then only what the rate refills in the meantime.
            passed = len(codes) - len(refused)
            assert burst + 1 <= passed <= burst + 2 + elapsed * 1.0, (zone, codes, elapsed)
            assert refused[0] >= burst + 1, (zone, codes)
            for i in refused:
                _code, headers, body = answers[i]
                assert headers["content-type"] == "application/json", headers
                err = json.loads(body)
                assert err["error"] == "RateLimitExceeded" and err["message"], err
                assert headers.get("strict-transport-security") == HSTS
                assert headers.get("server") == "nginx" and headers.get("retry-after")
            # Normal traffic goes on, and so does a limited route with its own budget.
            assert http.get("/xrpc/_health").status_code == 200
            assert http.get("/xrpc/com.atproto.server.describeServer").status_code == 200
            r = http.get("/xrpc/com.atproto.repo.describeRepo", params={"repo": acct["did"]})
            assert r.status_code == 200, r.text
        # The 429s are nginx's own: the app never saw them.
        for line in map(parse_ops_line, s.nginx.access_log()):
            if line["status"] == 429:
                assert line["upstatus"] == "-", line
    finally:
        s.close()
