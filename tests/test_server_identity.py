"""Identity and server description over HTTP: describeServer, describeRepo, handles (resolve,
update, well-known files per Host), did:web documents, service-auth JWTs, CORS."""

from __future__ import annotations

import base64
import hashlib
import json
import time

import pytest
from server_util import Api, api_fixture, err, jwt_parts, ok

from pds.repo.keys import parse_did_key

api = api_fixture()


@pytest.fixture(scope="module")
def alice(api):
    return api.create_account("alice")


def did_doc(api: Api, host: str):
    return api.http.get("/.well-known/did.json", headers={"Host": host})


def test_describe_server(api):
    d = ok(api.get("com.atproto.server.describeServer"))
    assert d["did"] == api.service_did
    assert d["availableUserDomains"] == [".test"]
    assert d["inviteCodeRequired"] is False
    # The service DID document is served for the PDS's own host.
    r = did_doc(api, api.host)
    assert r.status_code == 200
    doc = r.json()
    assert doc["id"] == api.service_did
    assert doc["service"][0]["serviceEndpoint"] == f"http://{api.host}"


def test_health(api):
    r = api.http.get("/xrpc/_health")
    assert r.status_code == 200 and "version" in r.json()


def test_describe_repo_lists_collections(api):
    acct = api.create_account("collector")
    for coll in ("com.example.b", "com.example.a", "com.example.a", "app.bsky.feed.post"):
        # (a post must be a valid one: its lexicon is known)
        ok(api.create_record(acct, {"x": 1, "text": "hi", "createdAt": "2026-01-01T00:00:00Z"},
                             collection=coll))
    d = ok(api.get("com.atproto.repo.describeRepo", repo=acct.handle))
    assert d["did"] == acct.did and d["handle"] == acct.handle
    assert d["collections"] == ["app.bsky.feed.post", "com.example.a", "com.example.b"]
    assert d["handleIsCorrect"] is True
    assert d["didDoc"]["id"] == acct.did
    assert ok(api.get("com.atproto.repo.describeRepo", repo=acct.did))["collections"] == \
        d["collections"]
    err(api.get("com.atproto.repo.describeRepo", repo="nobody.test"), 400, "RepoNotFound")


def test_resolve_handle(api, alice):
    assert ok(api.get("com.atproto.identity.resolveHandle", handle=alice.handle)) == \
        {"did": alice.did}
    assert ok(api.get("com.atproto.identity.resolveHandle",
                      handle=alice.handle.upper()))["did"] == alice.did


def test_well_known_files_per_host(api, alice):
    r = api.http.get("/.well-known/atproto-did", headers={"Host": alice.handle})
    assert r.status_code == 200 and r.text.strip() == alice.did
    doc = did_doc(api, alice.handle).json()
    assert doc["id"] == alice.did
    assert doc["alsoKnownAs"] == [f"at://{alice.handle}"]
    [vm] = doc["verificationMethod"]
    assert vm["id"] == f"{alice.did}#atproto" and vm["type"] == "Multikey"
    r = api.http.get("/.well-known/atproto-did", headers={"Host": "nobody.test"})
    assert r.status_code == 404
    # The PDS's own host has a DID document but names no account.
    assert api.http.get("/.well-known/atproto-did",
                        headers={"Host": api.host}).status_code == 404


def test_update_handle(api):
    acct = api.create_account("renamer")
    ok(api.post("com.atproto.identity.updateHandle", {"handle": "renamed.test"},
                token=acct.access))
    # The new handle resolves, the old one is free.
    assert ok(api.get("com.atproto.identity.resolveHandle",
                      handle="renamed.test"))["did"] == acct.did
    err(api.get("com.atproto.identity.resolveHandle", handle=acct.handle), 400,
        "HandleNotFound")
    root = api.server.data_dir
    assert not (root / "handles" / acct.handle).exists()
    assert (root / "handles" / "renamed.test").read_text().strip() == acct.did
    # The did:web document (still at the DID's host) names the new handle.
    doc = did_doc(api, acct.handle).json()
    assert doc["id"] == acct.did and doc["alsoKnownAs"] == ["at://renamed.test"]
    assert api.http.get("/.well-known/atproto-did",
                        headers={"Host": "renamed.test"}).text.strip() == acct.did
    assert api.http.get("/.well-known/atproto-did",
                        headers={"Host": acct.handle}).status_code == 404
    me = ok(api.get("com.atproto.server.getSession", token=acct.access))
    assert me["handle"] == "renamed.test"
    assert me["didDoc"]["alsoKnownAs"] == ["at://renamed.test"]
    assert ok(api.get("com.atproto.repo.describeRepo", repo="renamed.test"))["did"] == acct.did
    # Someone else can't take the new handle, and can't take the old one either: it is
    # still the name of this account's did:web (its key and document stay untouched).
    key_before = (root / "accounts" / acct.did / "signing.key").read_bytes()
    err(api.post("com.atproto.server.createAccount",
                 {"handle": "renamed.test", "email": "x1@example.com",
                  "password": "pw"}), 400, "HandleNotAvailable")
    err(api.post("com.atproto.server.createAccount",
                 {"handle": acct.handle, "email": "x2@example.com",
                  "password": "pw"}), 400, "HandleNotAvailable")
    assert did_doc(api, acct.handle).json()["alsoKnownAs"] == ["at://renamed.test"]
    assert (root / "accounts" / acct.did / "signing.key").read_bytes() == key_before
    assert not (root / "handles" / acct.handle).exists()
    # Taking a handle another account holds fails and changes nothing.
    other = api.create_account("holder")
    err(api.post("com.atproto.identity.updateHandle", {"handle": other.handle},
                 token=acct.access), 400, "HandleNotAvailable")
    assert ok(api.get("com.atproto.identity.resolveHandle",
                      handle="renamed.test"))["did"] == acct.did


# --- service auth ------------------------------------------------------------------------------


def _verify_service_jwt(api: Api, token: str, did: str) -> tuple[dict, dict]:
    header, payload = jwt_parts(token)
    doc = did_doc(api, did.removeprefix("did:web:")).json()
    [vm] = doc["verificationMethod"]
    key = parse_did_key("did:key:" + vm["publicKeyMultibase"])
    signing_input, _, sig = token.rpartition(".")
    raw = base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4))
    assert len(raw) == 64
    assert key.verify(signing_input.encode(), raw)
    # A byte flipped in the payload breaks it.
    h, p, _ = token.split(".")
    forged = json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)))
    forged["aud"] = "did:web:evil.example"
    p2 = base64.urlsafe_b64encode(json.dumps(forged).encode()).rstrip(b"=").decode()
    assert not key.verify(f"{h}.{p2}".encode(), raw)
    return header, payload


def test_get_service_auth(api, alice):
    aud = "did:web:feeds.example.com#bsky_fg"
    exp = int(time.time()) + 1800
    token = ok(api.get("com.atproto.server.getServiceAuth", token=alice.access, aud=aud,
                       lxm="app.bsky.feed.getFeedSkeleton", exp=exp))["token"]
    header, payload = _verify_service_jwt(api, token, alice.did)
    assert header["alg"] == "ES256K" and header["typ"] == "JWT"
    assert payload["iss"] == alice.did and payload["aud"] == aud
    assert payload["lxm"] == "app.bsky.feed.getFeedSkeleton" and payload["exp"] == exp
    assert payload["jti"]
    # Defaults: a minute, and no lxm when none was asked for.
    token = ok(api.get("com.atproto.server.getServiceAuth", token=alice.access,
                       aud="did:web:feeds.example.com"))["token"]
    _, payload = _verify_service_jwt(api, token, alice.did)
    assert "lxm" not in payload and 0 < payload["exp"] - time.time() <= 61


def test_get_service_auth_limits(api, alice):
    now = int(time.time())
    tok = alice.access
    err(api.get("com.atproto.server.getServiceAuth", token=tok, aud="did:web:x.example",
                lxm="com.atproto.repo.uploadBlob", exp=now + 3700), 400, "BadExpiration")
    err(api.get("com.atproto.server.getServiceAuth", token=tok, aud="did:web:x.example",
                exp=now + 120), 400, "BadExpiration")
    err(api.get("com.atproto.server.getServiceAuth", token=tok, aud="did:web:x.example",
                exp=now - 10), 400, "BadExpiration")
    for protected in ("com.atproto.server.createAppPassword",
                      "com.atproto.identity.updateHandle",
                      "com.atproto.server.deactivateAccount"):
        err(api.get("com.atproto.server.getServiceAuth", token=tok, aud="did:web:x.example",
                    lxm=protected), 400, "InvalidRequest")
    err(api.get("com.atproto.server.getServiceAuth", token=tok, aud="not a did"), 400,
        "InvalidRequest")
    err(api.get("com.atproto.server.getServiceAuth", aud="did:web:x.example"), 401)
    # An hour with lxm, and a minute without, are fine.
    ok(api.get("com.atproto.server.getServiceAuth", token=tok, aud="did:web:x.example",
               lxm="com.atproto.repo.uploadBlob", exp=now + 3590))
    ok(api.get("com.atproto.server.getServiceAuth", token=tok, aud="did:web:x.example",
               exp=now + 50))


def test_upload_blob_with_service_auth(api):
    acct = api.create_account("videoapp")
    token = ok(api.get("com.atproto.server.getServiceAuth", token=acct.access,
                       aud=api.service_did, lxm="com.atproto.repo.uploadBlob",
                       exp=int(time.time()) + 1800))["token"]
    data = b"\x00\x00\x00\x18ftypmp42" + bytes(range(200))
    blob = ok(api.post("com.atproto.repo.uploadBlob", token=token, content=data,
                       headers={"Content-Type": "video/mp4"}))["blob"]
    assert blob["mimeType"] == "video/mp4" and blob["size"] == len(data)
    digest = hashlib.sha256(data).digest()
    from pds.repo.codec import raw_cid_for
    assert blob["ref"]["$link"] == raw_cid_for(data).encode()
    assert raw_cid_for(data).cid_bytes.endswith(digest)
    # The blob landed in this account's store.
    shard = blob["ref"]["$link"][-2:]
    assert (api.server.data_dir / "accounts" / acct.did / "blobs" / shard /
            blob["ref"]["$link"]).read_bytes() == data
    # The same audience works with the #atproto_pds fragment; another method's token not.
    token2 = ok(api.get("com.atproto.server.getServiceAuth", token=acct.access,
                        aud=api.service_did + "#atproto_pds",
                        lxm="com.atproto.repo.uploadBlob"))["token"]
    ok(api.post("com.atproto.repo.uploadBlob", token=token2, content=b"abc",
                headers={"Content-Type": "text/plain"}))
    token3 = ok(api.get("com.atproto.server.getServiceAuth", token=acct.access,
                        aud=api.service_did, lxm="com.atproto.repo.createRecord"))["token"]
    err(api.post("com.atproto.repo.uploadBlob", token=token3, content=b"abc",
                 headers={"Content-Type": "text/plain"}), 401, "BadJwtLexiconMethod")
    # A service JWT is no access token.
    err(api.get("com.atproto.server.getSession", token=token), 401)


# --- CORS ----------------------------------------------------------------------------------------


def test_cors_preflight_and_simple_requests(api):
    r = api.http.options("/xrpc/com.atproto.repo.createRecord", headers={
        "Origin": "https://bsky.app",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type,atproto-proxy",
    })
    assert r.status_code in (200, 204)
    assert r.headers["access-control-allow-origin"] == "*"
    allowed = {h.strip().lower() for h in r.headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "content-type", "atproto-proxy"} <= allowed
    assert "POST" in r.headers["access-control-allow-methods"]

    r = api.get("com.atproto.server.describeServer", headers={"Origin": "https://bsky.app"})
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "*"
    exposed = r.headers["access-control-expose-headers"].lower()
    assert "ratelimit-remaining" in exposed and "retry-after" in exposed
