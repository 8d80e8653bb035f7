"""Accounts over HTTP: sessions and their tokens, app passwords, getSession, preferences,
deactivation and activation, deletion by emailed token, checkAccountStatus."""

from __future__ import annotations

import json

import pytest
from mail_util import spooled_token
from server_util import Api, api_fixture, err, jwt_parts, ok

COLL = "com.example.note"


api = api_fixture()


@pytest.fixture(scope="module")
def alice(api):
    return api.create_account("alice")


def login(api: Api, identifier: str, password: str) -> dict:
    return ok(api.post("com.atproto.server.createSession",
                       {"identifier": identifier, "password": password}))


# --- sessions ------------------------------------------------------------------------------


def test_create_account_answer(api):
    acct = api.create_account("fresh")
    h, p = jwt_parts(acct.access)
    assert h["typ"] == "at+jwt" and h["alg"] == "HS256"
    assert p["scope"] == "com.atproto.access" and p["sub"] == acct.did
    assert p["aud"] == api.service_did
    h, p = jwt_parts(acct.refresh)
    assert h["typ"] == "refresh+jwt" and p["scope"] == "com.atproto.refresh" and p["jti"]
    # The account is on disk where the README says.
    root = api.server.data_dir
    assert (root / "handles" / "fresh.test").read_text().strip() == acct.did
    assert (root / "emails" / "fresh@example.com").read_text().strip() == acct.did
    stored = json.loads((root / "accounts" / acct.did / "account.json").read_text())
    assert stored["handle"] == "fresh.test" and "correct horse" not in json.dumps(stored)


@pytest.mark.parametrize("which", ["handle", "email", "did", "HANDLE"])
def test_create_session_by_handle_email_or_did(api, alice, which):
    identifier = {"handle": alice.handle, "email": alice.email, "did": alice.did,
                  "HANDLE": alice.handle.upper()}[which]
    s = login(api, identifier, alice.password)
    assert s["did"] == alice.did and s["handle"] == alice.handle
    assert s["email"] == alice.email and s["active"] is True
    assert s["didDoc"]["id"] == alice.did
    assert jwt_parts(s["accessJwt"])[1]["scope"] == "com.atproto.access"
    me = ok(api.get("com.atproto.server.getSession", token=s["accessJwt"]))
    assert me["did"] == alice.did


def test_wrong_password_and_unknown_account(api, alice):
    err(api.post("com.atproto.server.createSession",
                 {"identifier": alice.handle, "password": "nope"}), 401,
        "AuthenticationRequired")
    err(api.post("com.atproto.server.createSession",
                 {"identifier": "nobody.test", "password": alice.password}), 401,
        "AuthenticationRequired")


def test_get_session_fields(api, alice):
    me = ok(api.get("com.atproto.server.getSession", token=alice.access))
    assert me["did"] == alice.did and me["handle"] == alice.handle
    assert me["email"] == alice.email and me["emailConfirmed"] is False
    assert me["active"] is True and "status" not in me
    doc = me["didDoc"]
    assert doc["id"] == alice.did and doc["alsoKnownAs"] == [f"at://{alice.handle}"]
    [service] = doc["service"]
    assert service["id"] == "#atproto_pds"
    assert service["serviceEndpoint"] == f"http://{api.host}"
    err(api.get("com.atproto.server.getSession"), 401, "AuthenticationRequired")


def test_refresh_rotation(api, alice):
    s = login(api, alice.handle, alice.password)
    r1 = s["refreshJwt"]
    n1 = ok(api.post("com.atproto.server.refreshSession", token=r1))
    assert n1["did"] == alice.did and n1["refreshJwt"] != r1
    ok(api.get("com.atproto.server.getSession", token=n1["accessJwt"]))
    # A client that lost the answer may present r1 again (grace): the same successor.
    again = ok(api.post("com.atproto.server.refreshSession", token=r1))
    assert jwt_parts(again["refreshJwt"])[1]["jti"] == jwt_parts(n1["refreshJwt"])[1]["jti"]
    # Once the successor is used, the old token is dead.
    n2 = ok(api.post("com.atproto.server.refreshSession", token=n1["refreshJwt"]))
    err(api.post("com.atproto.server.refreshSession", token=r1), 400, "ExpiredToken")
    ok(api.post("com.atproto.server.refreshSession", token=n2["refreshJwt"]))


def test_delete_session(api, alice):
    s = login(api, alice.handle, alice.password)
    ok(api.post("com.atproto.server.deleteSession", token=s["refreshJwt"]))
    err(api.post("com.atproto.server.refreshSession", token=s["refreshJwt"]), 400,
        "ExpiredToken")
    err(api.post("com.atproto.server.deleteSession", token=s["refreshJwt"]), 400,
        "ExpiredToken")


# --- app passwords ---------------------------------------------------------------------------


def test_app_passwords(api):
    acct = api.create_account("apppw")
    plain = ok(api.post("com.atproto.server.createAppPassword", {"name": "plain"},
                        token=acct.access))
    assert plain["name"] == "plain" and plain["privileged"] is False
    assert len(plain["password"]) == 19 and plain["password"].count("-") == 3
    priv = ok(api.post("com.atproto.server.createAppPassword",
                       {"name": "dms", "privileged": True}, token=acct.access))
    assert priv["privileged"] is True
    err(api.post("com.atproto.server.createAppPassword", {"name": "plain"},
                 token=acct.access), 400, "DuplicateAppPassword")

    listed = ok(api.get("com.atproto.server.listAppPasswords", token=acct.access))
    assert {(p["name"], p["privileged"]) for p in listed["passwords"]} == \
        {("plain", False), ("dms", True)}
    assert all("password" not in p for p in listed["passwords"])

    s_plain = login(api, acct.handle, plain["password"])
    assert jwt_parts(s_plain["accessJwt"])[1]["scope"] == "com.atproto.appPass"
    s_priv = login(api, acct.email, priv["password"])
    assert jwt_parts(s_priv["accessJwt"])[1]["scope"] == "com.atproto.appPassPrivileged"
    # App passwords write records, but cannot manage the account.
    body = {"repo": acct.did, "collection": COLL, "record": {"$type": COLL, "t": 1}}
    ok(api.post("com.atproto.repo.createRecord", body, token=s_plain["accessJwt"]))
    for session in (s_plain, s_priv):
        err(api.post("com.atproto.server.createAppPassword", {"name": "more"},
                     token=session["accessJwt"]), 400, "InvalidToken")
        err(api.get("com.atproto.server.listAppPasswords", token=session["accessJwt"]), 400,
            "InvalidToken")
        err(api.post("com.atproto.server.deactivateAccount", {},
                     token=session["accessJwt"]), 400, "InvalidToken")
    # Refreshing keeps the app-password scope.
    n = ok(api.post("com.atproto.server.refreshSession", token=s_plain["refreshJwt"]))
    assert jwt_parts(n["accessJwt"])[1]["scope"] == "com.atproto.appPass"

    ok(api.post("com.atproto.server.revokeAppPassword", {"name": "plain"}, token=acct.access))
    listed = ok(api.get("com.atproto.server.listAppPasswords", token=acct.access))
    assert [p["name"] for p in listed["passwords"]] == ["dms"]
    err(api.post("com.atproto.server.createSession",
                 {"identifier": acct.handle, "password": plain["password"]}), 401)
    # The revoked password's sessions are gone too.
    err(api.post("com.atproto.server.refreshSession", token=n["refreshJwt"]), 400,
        "ExpiredToken")
    login(api, acct.handle, priv["password"])


# --- preferences -----------------------------------------------------------------------------


def test_preferences_round_trip_and_app_password_limits(api):
    acct = api.create_account("prefs")
    assert ok(api.get("app.bsky.actor.getPreferences", token=acct.access)) == \
        {"preferences": []}
    prefs = [
        {"$type": "app.bsky.actor.defs#adultContentPref", "enabled": False},
        {"$type": "app.bsky.actor.defs#personalDetailsPref", "birthDate": "1990-01-01"},
        {"$type": "app.bsky.actor.defs#savedFeedsPrefV2", "items": [
            {"id": "3l", "type": "timeline", "value": "following", "pinned": True}]},
    ]
    ok(api.post("app.bsky.actor.putPreferences", {"preferences": prefs}, token=acct.access))
    # The declared age is computed from the birth date (read-only, as the reference).
    age = {"$type": "app.bsky.actor.defs#declaredAgePref", "isOverAge13": True,
           "isOverAge16": True, "isOverAge18": True}
    assert ok(api.get("app.bsky.actor.getPreferences", token=acct.access))["preferences"] == \
        [*prefs, age]
    err(api.get("app.bsky.actor.getPreferences"), 401)

    pw = ok(api.post("com.atproto.server.createAppPassword", {"name": "app"},
                     token=acct.access))["password"]
    app = login(api, acct.handle, pw)["accessJwt"]
    seen = ok(api.get("app.bsky.actor.getPreferences", token=app))["preferences"]
    assert [p["$type"] for p in seen] == [prefs[0]["$type"], prefs[2]["$type"], age["$type"]]
    err(api.post("app.bsky.actor.putPreferences", {"preferences": prefs}, token=app), 400,
        "InvalidRequest")
    # What an app password may set replaces the rest, and keeps what it cannot see.
    ok(api.post("app.bsky.actor.putPreferences", {"preferences": [prefs[0]]}, token=app))
    full = ok(api.get("app.bsky.actor.getPreferences", token=acct.access))["preferences"]
    assert sorted(p["$type"] for p in full) == sorted([prefs[0]["$type"], prefs[1]["$type"],
                                                      age["$type"]])
    # Sent back (as clients do), it is not stored: it follows the birth date.
    young = {**prefs[1], "birthDate": "2015-06-01T00:00:00.000Z"}
    ok(api.post("app.bsky.actor.putPreferences",
                {"preferences": [young, {**age, "isOverAge18": False}]}, token=acct.access))
    assert ok(api.get("app.bsky.actor.getPreferences", token=acct.access))["preferences"] == [
        young, {**age, "isOverAge13": False, "isOverAge16": False, "isOverAge18": False}]


# --- account status ----------------------------------------------------------------------------


def test_deactivate_and_activate(api):
    acct = api.create_account("sleepy")
    ok(api.create_record(acct, {"text": "before"}, rkey="a"))
    status = ok(api.get("com.atproto.sync.getRepoStatus", did=acct.did))
    assert status["active"] is True and "rev" in status

    ok(api.post("com.atproto.server.deactivateAccount", {}, token=acct.access))
    status = ok(api.get("com.atproto.sync.getRepoStatus", did=acct.did))
    assert status == {"did": acct.did, "active": False, "status": "deactivated"}
    err(api.get("com.atproto.sync.getRepo", did=acct.did), 400, "RepoDeactivated")
    err(api.get("com.atproto.sync.getLatestCommit", did=acct.did), 400, "RepoDeactivated")
    err(api.get("com.atproto.repo.getRecord", repo=acct.did, collection=COLL, rkey="a"), 400,
        "RepoDeactivated")
    err(api.create_record(acct, {"text": "while asleep"}, rkey="b"), 400)
    revs = (api.server.data_dir / "accounts" / acct.did / "revs").read_text()
    assert len(revs.splitlines()) == 2
    me = ok(api.get("com.atproto.server.getSession", token=acct.access))
    assert me["active"] is False and me["status"] == "deactivated"
    listed = ok(api.get("com.atproto.sync.listRepos"))["repos"]
    assert {"did": acct.did, "active": False, "status": "deactivated"}.items() <= \
        next(r for r in listed if r["did"] == acct.did).items()
    report = ok(api.get("com.atproto.server.checkAccountStatus", token=acct.access))
    assert report["activated"] is False

    ok(api.post("com.atproto.server.activateAccount", {}, token=acct.access))
    status = ok(api.get("com.atproto.sync.getRepoStatus", did=acct.did))
    assert status["active"] is True and "status" not in status
    r = api.get("com.atproto.sync.getRepo", did=acct.did)
    assert r.status_code == 200 and r.headers["content-type"] == "application/vnd.ipld.car"
    ok(api.create_record(acct, {"text": "awake"}, rkey="b"))
    assert len(api.list_records(acct.did)) == 2


def test_check_account_status(api):
    acct = api.create_account("checker")
    for i in range(3):
        ok(api.create_record(acct, {"i": i}))
    report = ok(api.get("com.atproto.server.checkAccountStatus", token=acct.access))
    head = ok(api.get("com.atproto.sync.getLatestCommit", did=acct.did))
    assert report["activated"] is True and report["validDid"] is True
    assert report["repoCommit"] == head["cid"] and report["repoRev"] == head["rev"]
    assert report["indexedRecords"] == 3
    assert report["repoBlocks"] >= 4 + 3  # four commits and three records, at least
    assert report["expectedBlobs"] == 0 and report["importedBlobs"] == 0
    assert report["privateStateValues"] == 0
    err(api.get("com.atproto.server.checkAccountStatus"), 401)


def test_the_signup_queue_the_app_asks_about_is_empty(api, alice):
    """com.atproto.temp.checkSignupQueue (the Bluesky app asks after sign-up): no queue
    here, an account is active from its creation; a caller must still be one."""
    assert ok(api.get("com.atproto.temp.checkSignupQueue", token=alice.access)) == \
        {"activated": True}
    err(api.get("com.atproto.temp.checkSignupQueue"), 401)
    err(api.get("com.atproto.temp.checkSignupQueue", token=alice.refresh), 400)


# --- deletion ----------------------------------------------------------------------------------


def test_delete_account_with_emailed_token(api):
    acct = api.create_account("leaving")
    ok(api.create_record(acct, {"text": "bye"}))
    root = api.server.data_dir
    ok(api.post("com.atproto.server.requestAccountDelete", {}, token=acct.access))
    token = spooled_token(root, acct.email)  # no SMTP here: the mail stays in the spool
    assert token

    err(api.post("com.atproto.server.deleteAccount",
                 {"did": acct.did, "password": acct.password, "token": "WRONG-TOKEN"}), 400,
        "InvalidToken")
    err(api.post("com.atproto.server.deleteAccount",
                 {"did": acct.did, "password": "not it", "token": token}), 401)
    assert ok(api.get("com.atproto.repo.describeRepo", repo=acct.did))["did"] == acct.did

    ok(api.post("com.atproto.server.deleteAccount",
                {"did": acct.did, "password": acct.password, "token": token}))
    err(api.get("com.atproto.repo.describeRepo", repo=acct.did), 400, "RepoNotFound")
    err(api.get("com.atproto.sync.getRepoStatus", did=acct.did), 400, "RepoNotFound")
    err(api.get("com.atproto.identity.resolveHandle", handle=acct.handle), 400,
        "HandleNotFound")
    err(api.post("com.atproto.server.createSession",
                 {"identifier": acct.handle, "password": acct.password}), 401)
    err(api.get("com.atproto.server.getSession", token=acct.access), 401, "AccountNotFound")
    err(api.post("com.atproto.server.refreshSession", token=acct.refresh), 400)
    assert not (root / "accounts" / acct.did).exists()
    assert not (root / "handles" / acct.handle).exists()
    assert not (root / "emails" / acct.email).exists()
    # The token is spent with the account: presenting it again finds nothing.
    err(api.post("com.atproto.server.deleteAccount",
                 {"did": acct.did, "password": acct.password, "token": token}), 400)

    # The email is free again; the handle is not, on a did:web PDS: it would hand the
    # deleted account's DID out again (see test_server_token_attacks.py).
    assert (root / "tombstones" / acct.did).is_file()
    err(api.post("com.atproto.server.createAccount",
                 {"handle": acct.handle, "email": "x@example.com", "password": "pw"}), 400,
        "HandleNotAvailable")
    again = api.create_account("leaving2", email=acct.email)
    assert again.did != acct.did
