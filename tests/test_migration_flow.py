"""Account migration end to end, as the official flow does it: two `pds serve --workers 2`
(A: `.a.test` handles, B: `.b.test`) on one local official PLC directory, both mailing
through a real SMTP server (aiosmtpd). An account with posts, follows, a profile with an
avatar, image posts and preferences moves A -> B with `@atproto/api`
(tests/node/migrate_flow.mjs: getServiceAuth, createAccount with the DID, getRepo and
importRepo, the missing blobs, preferences, the emailed PLC token, signPlcOperation,
submitPlcOperation, activateAccount, deactivateAccount), is deleted on A with the
emailed token, then moves back B -> A. After each leg: the PLC document names the new PDS
and its keys, `@atproto/repo` verifies the repo there (tests/node/repo_verify.mjs), every
record and blob is there, the old PDS refuses writes and still serves the repo and blobs
to the account, the new one takes writes, and the new PDS's firehose carried #identity,
#account and #sync, then a #commit."""

from __future__ import annotations

import contextlib
from pathlib import Path

import httpx
import pytest
from harness import free_port, init_data_dir, serving
from mail_util import SmtpServer, token_of
from server_util import Api, decode_frame, err, ok, seq_events, subscribe_url, ws_connect
from test_interop_api import PNG_1x1, last_json_line, run_script

pytestmark = pytest.mark.slow

PASSWORD = "migrating password"
TS = "2026-01-01T00:00:00.000Z"


def _seed(api: Api) -> tuple[str, str]:
    """The account on A with something of everything; (did, access token)."""
    acct = ok(api.post("com.atproto.server.createAccount", {
        "handle": "mover.a.test", "email": "mover@example.com", "password": PASSWORD}))
    did, tok = acct["did"], acct["accessJwt"]

    def upload(data: bytes) -> dict:
        return ok(api.post("com.atproto.repo.uploadBlob", token=tok, content=data,
                           headers={"Content-Type": "image/png"}))["blob"]

    def create(collection: str, value: dict, rkey: str | None = None) -> dict:
        body = {"repo": did, "collection": collection,
                "record": {"$type": collection, **value}}
        if rkey:
            body["rkey"] = rkey
        return ok(api.post("com.atproto.repo.createRecord", body, token=tok))

    avatar = upload(PNG_1x1)
    create("app.bsky.actor.profile", {"displayName": "Mover", "avatar": avatar}, "self")
    for i in range(12):
        create("app.bsky.feed.post", {"text": f"post {i}", "createdAt": TS})
    for i in range(3):
        img = upload(PNG_1x1 + bytes([i]) * 16)  # distinct blobs
        create("app.bsky.feed.post", {"text": f"image {i}", "createdAt": TS, "embed": {
            "$type": "app.bsky.embed.images",
            "images": [{"alt": f"picture {i}", "image": img}]}})
    for c in "bcdef":
        create("app.bsky.graph.follow", {"subject": f"did:plc:{'a' * 23}{c}",
                                         "createdAt": TS})
    ok(api.post("app.bsky.actor.putPreferences", {"preferences": [
        {"$type": "app.bsky.actor.defs#adultContentPref", "enabled": False},
        {"$type": "app.bsky.actor.defs#savedFeedsPrefV2", "items": []}]}, token=tok))
    return did, tok


def _records(api: Api, did: str, tok: str) -> dict[str, str]:
    """uri -> cid of every record (read with the account's own token)."""
    out: dict[str, str] = {}
    desc = ok(api.get("com.atproto.repo.describeRepo", repo=did, token=tok))
    for coll in desc["collections"]:
        for r in ok(api.get("com.atproto.repo.listRecords", repo=did, collection=coll,
                            limit=100, token=tok))["records"]:
            out[r["uri"]] = r["cid"]
    return out


def _blobs(api: Api, did: str, tok: str) -> list[str]:
    return ok(api.get("com.atproto.sync.listBlobs", did=did, token=tok))["cids"]


def _login(api: Api, did: str) -> str:
    return ok(api.post("com.atproto.server.createSession",
                       {"identifier": did, "password": PASSWORD}))["accessJwt"]


def _firehose(api: Api, did: str) -> list[str]:
    """The event types of `did` that subscribeRepos replays from the start."""
    types: list[str] = []
    last = max(s for s, _h, _p in seq_events(api.server.data_dir))
    with ws_connect(subscribe_url(api.server.url, 0)) as ws:
        while True:
            header, payload = decode_frame(ws.recv(timeout=30))
            if payload.get("did", payload.get("repo")) == did:
                types.append(header["t"])
            if payload.get("seq", 0) >= last:
                return types


def _leg(node: str, old: Api, new: Api, plc_url: str, maildir: Path, did: str,
         handle: str, email: str, old_email: str) -> dict:
    out = last_json_line(run_script(
        node, new.server, "migrate_flow.mjs", "--from", old.server.url, "--to",
        new.server.url, "--did", did, "--password", PASSWORD, "--handle", handle,
        "--email", email, "--old-email", old_email, "--maildir", str(maildir)))
    assert out["did"] == did
    return out


def _check_leg(node: str, old: Api, new: Api, plc_url: str, did: str, handle: str,
               records: dict[str, str], blobs: list[str]) -> str:
    """What must hold after a leg; returns an access token on the new PDS."""
    new_url = f"http://localhost:{new.server.port}"
    doc = httpx.get(f"{plc_url}/{did}/data", timeout=30).json()
    creds = ok(new.get("com.atproto.identity.getRecommendedDidCredentials",
                       token=_login(new, did)))
    assert doc["services"]["atproto_pds"]["endpoint"] == new_url
    assert doc["verificationMethods"] == creds["verificationMethods"]
    assert doc["rotationKeys"] == creds["rotationKeys"]
    assert doc["alsoKnownAs"] == [f"at://{handle}"]
    verified = last_json_line(run_script(node, new.server, "repo_verify.mjs", "--pds",
                                         new.server.url, "--plc", plc_url, "--did", did))
    assert verified["verified"] == [did]
    tok = _login(new, did)
    assert _records(new, did, tok) == records
    assert sorted(_blobs(new, did, tok)) == sorted(blobs)
    for cid in blobs:
        r = new.get("com.atproto.sync.getBlob", did=did, cid=cid)
        assert r.status_code == 200 and r.content
    # The old PDS: deactivated, refuses writes, still serves the repo and blobs to the
    # account itself (as the reference does: the destination copies from it).
    old_tok = _login(old, did)
    err(old.post("com.atproto.repo.createRecord", {
        "repo": did, "collection": "app.bsky.feed.post",
        "record": {"text": "stale", "createdAt": TS}}, token=old_tok), 400,
        "AccountDeactivated")
    assert old.get("com.atproto.sync.getRepo", did=did, token=old_tok).status_code == 200
    assert sorted(_blobs(old, did, old_tok)) == sorted(blobs)
    got = old.get("com.atproto.sync.getBlob", did=did, cid=blobs[0], token=old_tok)
    assert got.status_code == 200
    # The new PDS takes writes, and its firehose told of the move, then the write.
    ok(new.post("com.atproto.repo.createRecord", {
        "repo": did, "collection": "app.bsky.feed.post",
        "record": {"text": "moved in", "createdAt": TS}}, token=tok))
    # createAccount: #identity, #account (deactivated); submitPlcOperation: #identity;
    # activateAccount: #account, #identity, #sync; then the write's #commit.
    types = _firehose(new, did)
    assert types[-7:] == ["#identity", "#account", "#identity", "#account", "#identity",
                          "#sync", "#commit"], types
    return tok


def _delete_on(api: Api, did: str, smtp: SmtpServer, address: str) -> None:
    """Delete the (deactivated) account by the emailed token."""
    tok = _login(api, did)
    before = len(smtp.inbox.to(address))
    ok(api.post("com.atproto.server.requestAccountDelete", {}, token=tok))
    token = token_of(smtp.inbox.wait(address, before + 1)[-1])
    ok(api.post("com.atproto.server.deleteAccount",
                {"did": did, "password": PASSWORD, "token": token}))


@contextlib.contextmanager
def _pds(base: Path, plc_url: str, domains: str, smtp: SmtpServer):
    data, port = base / "data", free_port()
    init_data_dir(data, port, plc_url=plc_url, did_method="plc", handle_domains=domains)
    env = {"PDS_EMAIL_SMTP_URL": smtp.url, "PDS_EMAIL_FROM_ADDRESS": "pds@example.com",
           "PDS_VALIDATE_OUTPUT": "true"}
    with serving(data, port, env=env) as server, Api(server) as api:
        yield api


def test_official_migration_both_ways(tmp_path: Path, plc_url: str, node: str) -> None:
    maildir = tmp_path / "maildir"
    maildir.mkdir()
    smtp = SmtpServer(save_dir=maildir).start()
    try:
        with _pds(tmp_path / "a", plc_url, ".a.test", smtp) as a, \
                _pds(tmp_path / "b", plc_url, ".b.test", smtp) as b:
            did, tok = _seed(a)
            records, blobs = _records(a, did, tok), _blobs(a, did, tok)
            assert len(blobs) == 4 and len(records) == 21

            out = _leg(node, a, b, plc_url, maildir, did, "mover.b.test",
                       "mover-b@example.com", "mover@example.com")
            assert out["blobs"] == 4 and out["preferences"] == 2
            tok_b = _check_leg(node, a, b, plc_url, did, "mover.b.test", records, blobs)
            prefs = ok(b.get("app.bsky.actor.getPreferences", token=tok_b))["preferences"]
            assert {p["$type"] for p in prefs} >= {"app.bsky.actor.defs#adultContentPref"}

            # Leaving A for good: the deactivated account is deleted by its emailed token.
            _delete_on(a, did, smtp, "mover@example.com")
            err(a.get("com.atproto.sync.getRepo", did=did), 400, "RepoNotFound")

            records = _records(b, did, tok_b)
            out = _leg(node, b, a, plc_url, maildir, did, "mover.a.test",
                       "mover-a@example.com", "mover-b@example.com")
            assert out["blobs"] == 4
            _check_leg(node, b, a, plc_url, did, "mover.a.test", records, blobs)
    finally:
        smtp.stop()
