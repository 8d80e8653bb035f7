"""Service proxying (issue 13): methods the PDS does not serve go to the AppView, the
report service, or the service an `atproto-proxy` header names, each call carrying a fresh
service-auth JWT that the stand-in services check with the official verifier
(`@atproto/xrpc-server` verifyJwt, keys resolved by `@atproto/identity`).

One `pds serve --workers 2` on did:plc accounts (the local PLC directory), three stand-ins
(tests/node/proxy_stub.mjs: AppView, chat, report service), each a did:web on localhost.
"""

from __future__ import annotations

import gzip
import json
import secrets
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
from harness import free_port, running_server
from server_util import PASSWORD, Api, blob_ref, err, jwt_parts, ok

pytestmark = pytest.mark.slow

NODE_DIR = Path(__file__).resolve().parent / "node"


@dataclass
class Stub:
    name: str
    did: str
    url: str
    proc: subprocess.Popen

    def log(self) -> list[dict]:
        return httpx.get(self.url + "/_log", timeout=10).json()

    def connections(self) -> int:
        """TCP connections it accepted (this question's own among them)."""
        return int(httpx.get(self.url + "/_connections", timeout=10).json()["count"])

    def calls(self, nsid: str) -> list[dict]:
        return [e for e in self.log() if e["nsid"] == nsid]


def start_stub(name: str, plc: str) -> Stub:
    port = free_port()
    proc = subprocess.Popen(
        [shutil.which("node") or "node", str(NODE_DIR / "proxy_stub.mjs"), str(port), plc,
         name], cwd=NODE_DIR, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    lines: list[str] = []
    got = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            got.set()
        got.set()

    threading.Thread(target=read, daemon=True).start()
    got.wait(30)
    assert lines and lines[0].startswith("STUB_READY "), lines
    return Stub(name, lines[0].split()[1], f"http://localhost:{port}", proc)


@pytest.fixture(scope="module")
def stubs(plc_url: str) -> Iterator[dict[str, Stub]]:
    made = {n: start_stub(n, plc_url) for n in ("appview", "chat", "report")}
    yield made
    for stub in made.values():
        stub.proc.kill()
        stub.proc.wait()


def service_env(stubs: dict[str, Stub]) -> dict[str, str]:
    return {"PDS_BSKY_APP_VIEW_URL": stubs["appview"].url,
            "PDS_BSKY_APP_VIEW_DID": stubs["appview"].did,
            "PDS_REPORT_SERVICE_URL": stubs["report"].url,
            "PDS_REPORT_SERVICE_DID": stubs["report"].did}


@pytest.fixture(scope="module")
def api(stubs: dict[str, Stub], plc_url: str,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    base = tmp_path_factory.mktemp("proxy")
    with running_server(base, env=service_env(stubs), did_method="plc",
                        plc_url=plc_url) as server, Api(server) as client:
        yield client


@dataclass
class User:
    did: str
    handle: str
    access: str


def sign_up(api: Api) -> User:
    name = "p" + secrets.token_hex(4)
    body = ok(api.post("com.atproto.server.createAccount",
                       {"handle": f"{name}.test", "email": f"{name}@example.com",
                        "password": PASSWORD}))
    assert body["did"].startswith("did:plc:")
    return User(body["did"], body["handle"], body["accessJwt"])


@pytest.fixture(scope="module")
def user(api: Api) -> User:
    return sign_up(api)


def app_password_session(api: Api, user: User, privileged: bool) -> str:
    pw = ok(api.post("com.atproto.server.createAppPassword",
                     {"name": secrets.token_hex(4), "privileged": privileged},
                     token=user.access))["password"]
    return ok(api.post("com.atproto.server.createSession",
                       {"identifier": user.handle, "password": pw}))["accessJwt"]


def assert_verified(entries: list[dict], iss: str, aud: str, lxm: str) -> None:
    """Every call the stand-in got passed the official verifier, from `iss` for `lxm`."""
    assert entries, f"no call of {lxm} reached the service"
    for e in entries:
        assert "verifyError" not in e, e
        assert e["payload"]["iss"] == iss and e["payload"]["aud"] == aud
        assert e["payload"]["lxm"] == lxm
        header, payload = jwt_parts(e["headers"]["authorization"][7:])
        assert payload["exp"] - payload["iat"] <= 60 and payload.get("jti")


# --- the official client ---------------------------------------------------------------------


def test_official_client_through_the_pds(api: Api, user: User, stubs: dict[str, Stub],
                                         node_modules: Path) -> None:
    res = subprocess.run(
        ["node", str(NODE_DIR / "proxy_flow.mjs"), api.server.url, user.handle, PASSWORD,
         stubs["chat"].did], cwd=NODE_DIR, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["profile"]["stub"] == "appview" and out["profile"]["did"] == user.did
    assert out["timeline"]["stub"] == "appview" and out["timeline"]["query"] == {"limit": "5"}
    assert out["report"]["stub"] == "report" and out["report"]["reportedBy"] == user.did
    assert out["convos"]["stub"] == "chat"
    appview, report, chat = stubs["appview"], stubs["report"], stubs["chat"]
    for nsid in ("app.bsky.actor.getProfile", "app.bsky.feed.getTimeline",
                 "app.bsky.graph.muteActor"):
        assert_verified(appview.calls(nsid), user.did, appview.did, nsid)
    assert_verified(report.calls("com.atproto.moderation.createReport"), user.did,
                    report.did, "com.atproto.moderation.createReport")
    assert_verified(chat.calls("chat.bsky.convo.listConvos"), user.did, chat.did,
                    "chat.bsky.convo.listConvos")
    # The POST's body went upstream unchanged, with its content type.
    mute = appview.calls("app.bsky.graph.muteActor")[-1]
    assert json.loads(mute["body"]) == {"actor": "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa"}
    assert mute["headers"]["content-type"].startswith("application/json")
    # Headers the reference passes did; the session token and the proxy header did not.
    profile = appview.calls("app.bsky.actor.getProfile")[-1]
    assert "atproto-accept-labelers" in profile["headers"]
    assert "atproto-proxy" not in chat.calls("chat.bsky.convo.listConvos")[-1]["headers"]
    tokens = {e["headers"]["authorization"] for s in stubs.values() for e in s.log()}
    assert all(jwt_parts(t[7:])[0]["alg"] == "ES256K" for t in tokens)


# --- headers, bodies, streaming --------------------------------------------------------------


def test_headers_pass_as_the_reference_passes_them(api: Api, user: User,
                                                   stubs: dict[str, Stub]) -> None:
    r = api.get("com.example.stub.headers", user.access, headers={
        "accept-language": "fr", "atproto-accept-labelers": "did:plc:x", "x-bsky-topics": "t",
        "cookie": "secret=1", "x-forwarded-for": "10.0.0.1", "x-custom": "no"})
    seen = ok(r)["headers"]
    assert seen["accept-language"] == "fr" and seen["atproto-accept-labelers"] == "did:plc:x"
    assert seen["x-bsky-topics"] == "t" and seen["accept-encoding"]
    for dropped in ("cookie", "x-forwarded-for", "x-custom", "atproto-proxy"):
        assert dropped not in seen
    assert seen["authorization"] != f"Bearer {user.access}"
    # The answer's headers: the reference's list (the repo rev among them).
    r = api.get("app.bsky.actor.getProfile", user.access, actor=user.did)
    assert ok(r)["stub"] == "appview" and r.headers["atproto-repo-rev"] == "2222222222222"


def test_a_large_answer_streams(api: Api, user: User) -> None:
    # The stand-in sends its first bytes, waits 3 s, then sends the rest: they reach the
    # client before the upstream is done, so nothing waits for the whole body.
    size = 8 * 1024 * 1024
    with httpx.Client(base_url=api.server.url, timeout=60) as http, http.stream(
            "GET", "/xrpc/com.example.stub.big", params={"size": size, "delay": 3000},
            headers={"Authorization": f"Bearer {user.access}"}) as r:
        assert r.status_code == 200
        t0 = time.monotonic()
        chunks = r.iter_raw()
        first = next(chunks)
        assert first.startswith(b'{"pad":"') and time.monotonic() - t0 < 2.0
        got = len(first) + sum(len(c) for c in chunks)
    assert got == size


def test_compressed_answers_pass_compressed(api: Api, user: User) -> None:
    with httpx.Client(base_url=api.server.url, timeout=60) as http, http.stream(
            "GET", "/xrpc/com.example.stub.gzip",
            headers={"Authorization": f"Bearer {user.access}", "Accept-Encoding": "gzip"}) as r:
        raw = b"".join(r.iter_raw())
    assert r.headers["content-encoding"] == "gzip"
    assert json.loads(gzip.decompress(raw))["zipped"] is True


# --- refusals ------------------------------------------------------------------------------


def test_no_session_refused(api: Api, stubs: dict[str, Stub]) -> None:
    before = len(stubs["appview"].log())
    err(api.get("app.bsky.actor.getProfile", actor="did:plc:x"), 401)
    err(api.get("app.bsky.actor.getProfile", "not-a-token", actor="did:plc:x"), 401)
    assert len(stubs["appview"].log()) == before


def test_protected_methods_never_forwarded(api: Api, user: User) -> None:
    # Served by another name (protected names compare case-insensitively), account
    # management is never forwarded; by its own, it is the admin's here.
    for nsid in ("COM.ATPROTO.ADMIN.SENDEMAIL", "Com.Atproto.Server.GetSession"):
        err(api.post(nsid, {}, user.access), 400, "InvalidToken")
    err(api.post("com.atproto.admin.sendEmail", {}, user.access), 401)


def test_app_password_reaches_chat_only_when_privileged(api: Api, user: User,
                                                        stubs: dict[str, Stub]) -> None:
    chat = {"atproto-proxy": stubs["chat"].did + "#bsky_chat"}
    plain = app_password_session(api, user, privileged=False)
    before = len(stubs["chat"].log())
    err(api.get("chat.bsky.convo.listConvos", plain, headers=chat), 400, "InvalidToken")
    assert len(stubs["chat"].log()) == before
    assert ok(api.get("app.bsky.feed.getTimeline", plain))["stub"] == "appview"
    privileged = app_password_session(api, user, privileged=True)
    assert ok(api.get("chat.bsky.convo.listConvos", privileged, headers=chat))["stub"] == \
        "chat"


@pytest.mark.parametrize(("header", "message"), [
    ("#bsky_chat", "no did specified"),
    ("did:plc:aaaaaaaaaaaaaaaaaaaaaaaa", "no service id"),
    ("did:plc:aaaaaaaaaaaaaaaaaaaaaaaa#", "no service id"),
    ("did:plc:aaaaaaaaaaaaaaaaaaaaaaaa#a#b", "invalid proxy header"),
    ("did:plc:aaaaaaaaaaaaaaaaaaaaaaaa#bsky chat", "spaces"),
    ("did:plc:aaaaaaaaaaaaaaaaaaaaaaaa#bsky_chat", "could not resolve proxy did"),
    ("did:web:nowhere.invalid#bsky_chat", "could not resolve proxy did"),
    ("not-a-did#bsky_chat", "could not resolve proxy did"),
    ("x" * 5000 + "#a", "invalid proxy header"),
])
def test_bad_proxy_headers_are_4xx(api: Api, user: User, header: str, message: str) -> None:
    body = err(api.get("chat.bsky.convo.listConvos", user.access,
                       headers={"atproto-proxy": header}), 400, "InvalidRequest")
    assert message in body["message"]


def test_missing_service_entry_is_4xx(api: Api, user: User, stubs: dict[str, Stub]) -> None:
    body = err(api.get("chat.bsky.convo.listConvos", user.access,
                       headers={"atproto-proxy": stubs["chat"].did + "#atproto_nothing"}),
               400, "InvalidRequest")
    assert "service url" in body["message"]


# --- upstream failures -----------------------------------------------------------------------


def test_upstream_errors_pass_through(api: Api, user: User) -> None:
    r = api.get("com.example.stub.fail", user.access, status=404)
    assert err(r, 404, "StubError")["message"] == "failed with 404"
    assert r.headers["retry-after"] == "7"
    err(api.get("com.example.stub.fail", user.access, status=429), 429, "StubError")
    # An upstream 500 is ours to report as the upstream's failure.
    err(api.http.get("/xrpc/com.example.stub.fail", params={"status": 500},
                     headers={"Authorization": f"Bearer {user.access}"}), 502, "StubError")


def test_garbage_and_down_upstreams_are_502(api: Api, user: User, stubs: dict[str, Stub],
                                            plc_url: str) -> None:
    err(api.get("com.example.stub.garbage", user.access), 502, "UpstreamFailure")
    dead = start_stub("dead", plc_url)
    dead.proc.kill()
    dead.proc.wait()
    # Its DID document is gone with it: the header names a service that can't be resolved.
    err(api.get("com.example.stub.headers", user.access,
                headers={"atproto-proxy": dead.did + "#bsky_appview"}), 400)


@pytest.mark.parametrize("kind", ["bare-cr", "bare-lf", "nul", "two-lengths", "coding",
                                  "chunk-overflow", "switch", "long-head"])
def test_answers_http_forbids_are_502(api: Api, user: User, kind: str) -> None:
    # Each refused by the HTTP/1.1 parser (h11) before anything is passed on.
    err(api.get("com.example.stub.hostile", user.access, kind=kind), 502, "UpstreamFailure")
    assert ok(api.get("app.bsky.feed.getTimeline", user.access))["stub"] == "appview"


def test_a_hanging_upstream_times_out(api: Api, user: User) -> None:
    t0 = time.monotonic()
    err(api.get("com.example.stub.hang", user.access), 504, "UpstreamTimeout")
    assert time.monotonic() - t0 < 20
    # The worker is still fine.
    assert ok(api.get("app.bsky.feed.getTimeline", user.access))["stub"] == "appview"


def test_no_new_upstream_connection_per_request(api: Api, user: User,
                                                stubs: dict[str, Stub]) -> None:
    before = len(stubs["appview"].log())
    for _ in range(20):
        ok(api.get("app.bsky.feed.getTimeline", user.access))
    ports = {e["remotePort"] for e in stubs["appview"].log()[before:]}
    assert len(ports) <= 4, ports  # kept-alive connections of two workers, not twenty


# --- SSRF ------------------------------------------------------------------------------------


def plc_service_did(plc: str, endpoints: dict[str, str]) -> str:
    """A did:plc registered at the local directory whose services are `endpoints`."""
    from pds.repo.plc import plc_did_for_genesis, sign_plc_op
    from pds.repo.signing_keys import generate_signing_key
    key = generate_signing_key()
    did_key = key.public_key().did_key()
    op = sign_plc_op({
        "type": "plc_operation", "rotationKeys": [did_key],
        "verificationMethods": {"atproto": did_key}, "alsoKnownAs": [],
        "services": {sid: {"type": "BskyAppView", "endpoint": url}
                     for sid, url in endpoints.items()},
        "prev": None}, key)
    did = plc_did_for_genesis(op)
    httpx.post(f"{plc}/{did}", json=op, timeout=10).raise_for_status()
    return did


def test_ssrf_proxy_targets_refused_outside_dev(stubs: dict[str, Stub], plc_url: str,
                                                 tmp_path_factory: pytest.TempPathFactory
                                                 ) -> None:
    target = stubs["chat"]
    port = target.url.rsplit(":", 1)[1]
    did = plc_service_did(plc_url, {
        "loopback": f"https://localhost:{port}", "ip": f"https://127.0.0.1:{port}",
        "plain": target.url, "private": "https://10.20.30.40", "linklocal":
        "https://169.254.169.254", "v6": f"https://[::1]:{port}"})
    base = tmp_path_factory.mktemp("proxy-ssrf")
    env = {**service_env(stubs), "PDS_DEV": "false"}
    with running_server(base, env=env, did_method="plc", plc_url=plc_url) as server, \
            Api(server) as client:
        user = sign_up(client)
        before, app_before = target.connections(), stubs["appview"].connections()
        for sid in ("loopback", "ip", "plain", "private", "linklocal", "v6"):
            t0 = time.monotonic()
            err(client.get("chat.bsky.convo.listConvos", user.access,
                           headers={"atproto-proxy": f"{did}#{sid}"}), 502, "UpstreamFailure")
            assert time.monotonic() - t0 < 5, sid  # refused, not attempted
        # The configured AppView on loopback is no exception outside dev.
        err(client.get("app.bsky.feed.getTimeline", user.access), 502, "UpstreamFailure")
        # Nothing connected to either (the only new connections: these two questions).
        assert target.connections() == before + 1
        assert stubs["appview"].connections() == app_before + 1


# --- the app.bsky methods the PDS answers itself -----------------------------------------------


def test_get_feed_goes_with_a_token_for_the_feed_generator(api: Api, user: User,
                                                           stubs: dict[str, Stub]) -> None:
    feed = "at://did:plc:aaaaaaaaaaaaaaaaaaaaaaaa/app.bsky.feed.generator/hot"
    body = ok(api.get("app.bsky.feed.getFeed", user.access, feed=feed, limit=5))
    assert body["stub"] == "appview" and body["feed"] == []
    call = stubs["appview"].calls("app.bsky.feed.getFeed")[-1]
    assert "verifyError" not in call, call
    # As the reference: the generator's DID (from its record) is the audience, and the
    # method the skeleton's; the query went on unchanged.
    assert call["payload"]["aud"] == "did:web:feedgen.example.com"
    assert call["payload"]["lxm"] == "app.bsky.feed.getFeedSkeleton"
    assert call["payload"]["iss"] == user.did and "limit=5" in call["path"]
    err(api.get("app.bsky.feed.getFeed", user.access,
                feed=feed.replace("/hot", "/nodid")), 400, "UnknownFeed")
    err(api.get("app.bsky.feed.getFeed", user.access,
                feed=feed.replace("/hot", "/missing")), 400, "UnknownFeed")
    err(api.get("app.bsky.feed.getFeed", user.access, feed="not-a-uri"), 400)
    err(api.get("app.bsky.feed.getFeed", feed=feed), 401)


def test_push_registration_reaches_the_notification_service(api: Api, user: User,
                                                        stubs: dict[str, Stub]) -> None:
    for stub in (stubs["appview"], stubs["chat"]):  # the AppView; a DID's #bsky_notif
        push = {"serviceDid": stub.did, "token": "device-token", "platform": "web",
                "appId": "xyz.blueskyweb.app"}
        for nsid in ("app.bsky.notification.registerPush",
                     "app.bsky.notification.unregisterPush"):
            assert ok(api.post(nsid, push, user.access)) is None
            calls = stub.calls(nsid)
            assert_verified(calls, user.did, stub.did, nsid)
            assert json.loads(calls[-1]["body"]) == push
    for nsid in ("app.bsky.notification.registerPush", "app.bsky.notification.unregisterPush"):
        err(api.post(nsid, {"serviceDid": "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa", "token": "t",
                            "platform": "web", "appId": "x"}, user.access), 400)
        err(api.post(nsid, {"serviceDid": stubs["appview"].did, "token": "t",
                            "platform": "web", "appId": "x"}), 401)


# --- read-after-write ----------------------------------------------------------------------------


def test_read_after_write_new_post_and_profile_edit(api: Api, stubs: dict[str, Stub]) -> None:
    me = sign_up(api)
    # The "AppView" has indexed the repo up to this rev (it answers with it: `_rev`).
    seen = ok(api.get("com.atproto.sync.getLatestCommit", did=me.did))["rev"]
    post = {"$type": "app.bsky.feed.post", "text": "hello at once",
            "createdAt": "2026-01-01T00:00:00Z"}
    made = ok(api.post("com.atproto.repo.createRecord",
                       {"repo": me.did, "collection": "app.bsky.feed.post", "record": post},
                       me.access))
    ok(api.post("com.atproto.repo.putRecord", {
        "repo": me.did, "collection": "app.bsky.actor.profile", "rkey": "self",
        "record": {"$type": "app.bsky.actor.profile", "displayName": "Fresh Name",
                   "description": "edited just now"}}, me.access))

    r = api.get("app.bsky.feed.getTimeline", me.access, _rev=seen)
    feed = ok(r)["feed"]
    assert [i["post"]["uri"] for i in feed] == [made["uri"]]
    view = feed[0]["post"]
    assert view["cid"] == made["cid"] and view["record"]["text"] == "hello at once"
    assert view["author"] == {"did": me.did, "handle": me.handle, "displayName": "Fresh Name"}
    assert view["likeCount"] == 0 and int(r.headers["atproto-upstream-lag"]) >= 0

    profile = ok(api.get("app.bsky.actor.getProfile", me.access, actor=me.did, _rev=seen))
    assert profile["displayName"] == "Fresh Name"
    assert profile["description"] == "edited just now"
    profiles = ok(api.get("app.bsky.actor.getProfiles", me.access, actors=me.did, _rev=seen))
    assert profiles["stub"] == "appview"  # the stand-in's getProfiles has no list: as is

    # An AppView that is up to date gets its answer passed as it is.
    head = ok(api.get("com.atproto.sync.getLatestCommit", did=me.did))["rev"]
    assert ok(api.get("app.bsky.feed.getTimeline", me.access, _rev=head))["feed"] == []
    assert "displayName" not in ok(api.get("app.bsky.actor.getProfile", me.access,
                                           actor=me.did, _rev=head))
    # Someone else's profile is not touched.
    other = ok(api.get("app.bsky.actor.getProfile", me.access, actor="did:plc:x", _rev=seen))
    assert "displayName" not in other


def test_read_after_write_embeds_replies_and_new_threads(api: Api,
                                                          stubs: dict[str, Stub]) -> None:
    """Merged posts carry their embeds as the reference renders them (images at this
    PDS's getBlob, a quoted post and feed as the AppView shows them, asked with the
    caller's service auth); getPostThread gets the caller's new replies, and a thread of
    the caller's post the AppView doesn't know yet is built here with its parent."""
    me = sign_up(api)
    seen = ok(api.get("com.atproto.sync.getLatestCommit", did=me.did))["rev"]
    blob = ok(api.post("com.atproto.repo.uploadBlob", token=me.access,
                       content=b"\x89PNG\r\n\x1a\n" + secrets.token_bytes(64),
                       headers={"content-type": "image/png"}))["blob"]
    cid = blob["ref"]["$link"]
    quoted = "at://did:plc:stubauthor/app.bsky.feed.post/3quoted"
    feed_uri = "at://did:plc:stubauthor/app.bsky.feed.generator/feed1"
    root = "at://did:plc:stubauthor/app.bsky.feed.post/3root"
    strong = {"uri": root, "cid": "bafyreib2rxk3rybk3aobmv5cjuql3bm2twh4jo5uxgf5iohpidnmqanwoa"}

    def create(record: dict) -> dict:
        return ok(api.post("com.atproto.repo.createRecord", {
            "repo": me.did, "collection": "app.bsky.feed.post",
            "record": {"$type": "app.bsky.feed.post", "createdAt": "2026-01-01T00:00:00Z",
                       **record}}, me.access))

    pictured = create({"text": "a picture and a quote", "embed": {
        "$type": "app.bsky.embed.recordWithMedia",
        "record": {"$type": "app.bsky.embed.record", "record": {**strong, "uri": quoted}},
        "media": {"$type": "app.bsky.embed.images", "images": [
            {"image": blob_ref(blob), "alt": "a pixel",
             "aspectRatio": {"width": 1, "height": 1}}]}}})
    linked = create({"text": "a link and a feed", "embed": {
        "$type": "app.bsky.embed.external", "external": {
            "uri": "https://example.com/", "title": "Example", "description": "d",
            "thumb": blob_ref(blob)}}})
    shared = create({"text": "a feed", "embed": {
        "$type": "app.bsky.embed.record", "record": {**strong, "uri": feed_uri}}})
    reply = create({"text": "my reply", "reply": {"root": strong, "parent": strong}})
    before = len(stubs["appview"].log())

    feed = ok(api.get("app.bsky.feed.getTimeline", me.access, _rev=seen))["feed"]
    views = {i["post"]["uri"]: i["post"] for i in feed}
    assert list(views) == [reply["uri"], shared["uri"], linked["uri"], pictured["uri"]]
    blob_path = f"/xrpc/com.atproto.sync.getBlob?did={me.did}&cid={cid}"
    media = views[pictured["uri"]]["embed"]
    assert media["$type"] == "app.bsky.embed.recordWithMedia#view"
    image = media["media"]["images"][0]
    assert media["media"]["$type"] == "app.bsky.embed.images#view"
    assert image["thumb"].endswith(blob_path) and image["fullsize"].endswith(blob_path)
    assert image["alt"] == "a pixel" and image["aspectRatio"] == {"width": 1, "height": 1}
    # The image URL is this PDS's: it serves the blob.
    assert api.http.get(image["thumb"][image["thumb"].index("/xrpc/"):]).status_code == 200
    record = media["record"]
    assert record["$type"] == "app.bsky.embed.record#view"
    assert record["record"]["$type"] == "app.bsky.embed.record#viewRecord"
    assert record["record"]["uri"] == quoted
    assert record["record"]["value"]["text"] == f"quoted {quoted}"
    external = views[linked["uri"]]["embed"]
    assert external["$type"] == "app.bsky.embed.external#view"
    assert external["external"]["uri"] == "https://example.com/"
    assert external["external"]["thumb"].endswith(blob_path)
    generator = views[shared["uri"]]["embed"]["record"]
    assert generator["$type"] == "app.bsky.feed.defs#generatorView"
    assert generator["uri"] == feed_uri
    assert "embed" not in views[reply["uri"]]
    # The embedded records were asked of the AppView as the caller, one call each.
    asked = stubs["appview"].log()[before:]
    assert_verified([e for e in asked if e["nsid"] == "app.bsky.feed.getPosts"], me.did,
                    stubs["appview"].did, "app.bsky.feed.getPosts")
    assert_verified([e for e in asked if e["nsid"] == "app.bsky.feed.getFeedGenerator"],
                    me.did, stubs["appview"].did, "app.bsky.feed.getFeedGenerator")

    # The thread of the post replied to gets the reply, first among its replies.
    thread = ok(api.get("app.bsky.feed.getPostThread", me.access, uri=root,
                        _rev=seen))["thread"]
    assert thread["post"]["uri"] == root
    assert [r["post"]["uri"] for r in thread["replies"]] == [reply["uri"]]
    assert thread["replies"][0]["$type"] == "app.bsky.feed.defs#threadViewPost"
    assert thread["replies"][0]["post"]["author"]["did"] == me.did
    # Up to date: the AppView's thread as it is.
    head = ok(api.get("com.atproto.sync.getLatestCommit", did=me.did))["rev"]
    assert ok(api.get("app.bsky.feed.getPostThread", me.access, uri=root,
                      _rev=head))["thread"]["replies"] == []

    # The reply's own thread, which the AppView doesn't have yet: built here, its parent
    # as the AppView shows it.
    r = api.get("app.bsky.feed.getPostThread", me.access, uri=reply["uri"], _rev=seen,
                _missing="1", parentHeight="5")
    own = ok(r)["thread"]
    assert own["$type"] == "app.bsky.feed.defs#threadViewPost"
    assert own["post"]["uri"] == reply["uri"] and own["post"]["record"]["text"] == "my reply"
    assert own["parent"]["post"]["uri"] == root
    assert int(r.headers["atproto-upstream-lag"]) >= 0
    parent_call = stubs["appview"].calls("app.bsky.feed.getPostThread")[-1]
    query = dict(parse_qsl(urlsplit(parent_call["path"]).query))
    assert query == {"uri": root, "depth": "0", "parentHeight": "5"}
    assert_verified([parent_call], me.did, stubs["appview"].did, "app.bsky.feed.getPostThread")
    # By handle too; someone else's missing post stays missing.
    by_handle = reply["uri"].replace(me.did, me.handle)
    assert ok(api.get("app.bsky.feed.getPostThread", me.access, uri=by_handle, _rev=seen,
                      _missing="1"))["thread"]["post"]["uri"] == reply["uri"]
    err(api.get("app.bsky.feed.getPostThread", me.access, uri=root, _rev=seen,
                _missing="1"), 400, "NotFound")
