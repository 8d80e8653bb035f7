"""Attacks on sign-up by migration, against two real `pds serve --workers 2` sharing a
local official PLC directory: PDS A hosts the attacker's did:plc account (handles
`.a.test`); PDS B (handles `.b.test`, invites required) is attacked with createAccount
service tokens A mints. Each attack asserts the refusal and that B's data dir is
unchanged.

- A service token is no invite: every sign-up needs one, as in the reference PDS.
- The handle a migrating account asks for meets the same rules as any other: a hosted
  one is checked (reserved names, length); an external one must resolve to the DID.
- A DID that comes back (deleted here, migrated in again by its owner) is a new account:
  the tokens of its earlier life here are dead.
"""

from __future__ import annotations

import json
import time

import pytest
from harness import free_port, init_data_dir, start_server
from server_util import Api, diff_snapshots, err, ok, snapshot

CREATE = "com.atproto.server.createAccount"


def _serve(base, plc_url: str, domains: str, env: dict | None = None):
    data, port = base / "data", free_port()
    init_data_dir(data, port, plc_url=plc_url, did_method="plc", handle_domains=domains)
    return start_server(data, port, env=env)


@pytest.fixture(scope="module")
def pdses(tmp_path_factory, plc_url):
    a = _serve(tmp_path_factory.mktemp("pds-a"), plc_url, ".a.test")
    b = _serve(tmp_path_factory.mktemp("pds-b"), plc_url, ".b.test",
               env={"PDS_INVITE_REQUIRED": "true"})
    api_a, api_b = Api(a), Api(b)
    try:
        yield api_a, api_b
    finally:
        for api in (api_a, api_b):
            api.close()
            api.server.stop()
            assert "unhandled error" not in api.server.log()


def _sign_up(api: Api, name: str, domain: str, **extra) -> dict:
    return ok(api.post(CREATE, {"handle": name + domain, "email": f"{name}@example.com",
                                "password": "pw " + name, **extra}))


def _invite(api: Api) -> str:
    return ok(api.post("com.atproto.server.createInviteCode", {"useCount": 1},
                       headers=api.admin_headers()))["code"]


def _move_token(api_a: Api, session: dict, api_b: Api) -> str:
    """A createAccount service token for B, minted by A for the account of `session`."""
    return ok(api_a.get("com.atproto.server.getServiceAuth", token=session["accessJwt"],
                        aud=api_b.service_did, lxm=CREATE,
                        exp=int(time.time()) + 600))["token"]


def _migrate(api_b: Api, token: str, did: str, handle: str, **extra):
    body = {"did": did, "handle": handle, "email": f"m{time.time_ns()}@example.com",
            "password": "migrated pw", **extra}
    return api_b.post(CREATE, body, token=token)


def test_migration_token_is_no_invite_and_no_handle_pass(pdses):
    api_a, api_b = pdses
    mallory = _sign_up(api_a, "mallory", ".a.test")
    alice = _sign_up(api_a, "alice", ".a.test")
    assert mallory["did"].startswith("did:plc:")
    token = _move_token(api_a, mallory, api_b)
    code = _invite(api_b)
    root = api_b.server.data_dir
    before = snapshot(root)

    # No invite, or a made-up one.
    err(_migrate(api_b, token, mallory["did"], "mallory.b.test"), 400, "InvalidInviteCode")
    err(_migrate(api_b, token, mallory["did"], "mallory.b.test", inviteCode="nope-nope"),
        400, "InvalidInviteCode")
    # A hosted handle meets the usual rules: reserved names, length.
    for handle, name in (("admin.b.test", "HandleNotAvailable"),
                         ("support.b.test", "HandleNotAvailable"),
                         ("ab.b.test", "InvalidHandle")):
        err(_migrate(api_b, token, mallory["did"], handle, inviteCode=code), 400, name)
    # An external handle must resolve to the DID: someone else's doesn't, nor does one
    # that resolves nowhere.
    for handle in (alice["handle"], "nobody.example.org"):
        err(_migrate(api_b, token, mallory["did"], handle, inviteCode=code), 400,
            "InvalidHandle")
    # The token names mallory's DID: it is no pass for alice's.
    err(_migrate(api_b, token, alice["did"], "alice.b.test", inviteCode=code), 401)
    assert diff_snapshots(before, snapshot(root)) == []
    assert not (root / "well-known" / "admin.b.test").exists()
    assert json.loads((root / "invites" / f"{code}.json").read_text())["uses"] == []

    # With the invite and a fair handle, the migration goes ahead (deactivated).
    moved = ok(_migrate(api_b, token, mallory["did"], "mallory.b.test", inviteCode=code))
    assert moved["did"] == mallory["did"] and moved["handle"] == "mallory.b.test"
    me = ok(api_b.get("com.atproto.server.getSession", token=moved["accessJwt"]))
    assert me["active"] is False and me["status"] == "deactivated"
    uses = json.loads((root / "invites" / f"{code}.json").read_text())["uses"]
    assert [u["usedBy"] for u in uses] == [mallory["did"]]


def test_a_returning_did_does_not_revive_old_tokens(pdses):
    api_a, api_b = pdses
    carol = _sign_up(api_a, "carol", ".a.test")
    first = ok(_migrate(api_b, _move_token(api_a, carol, api_b), carol["did"],
                        "carol.b.test", inviteCode=_invite(api_b)))
    old_access, old_refresh = first["accessJwt"], first["refreshJwt"]
    ok(api_b.get("com.atproto.server.getSession", token=old_access))
    ok(api_b.post("com.atproto.admin.deleteAccount", {"did": carol["did"]},
                  headers=api_b.admin_headers()))

    # Carol (who controls the DID) moves in again: a new account, with a new life.
    second = ok(_migrate(api_b, _move_token(api_a, carol, api_b), carol["did"],
                         "carol.b.test", inviteCode=_invite(api_b)))
    assert second["did"] == carol["did"]
    root = api_b.server.data_dir
    before = snapshot(root)
    err(api_b.get("com.atproto.server.getSession", token=old_access), 401, "AccountNotFound")
    err(api_b.post("com.atproto.server.createAppPassword", {"name": "outlives"},
                   token=old_access), 401, "AccountNotFound")
    err(api_b.post("app.bsky.actor.putPreferences", {"preferences": []}, token=old_access),
        401, "AccountNotFound")
    err(api_b.post("com.atproto.repo.uploadBlob", token=old_access, content=b"x",
                   headers={"Content-Type": "text/plain"}), 401, "AccountNotFound")
    err(api_b.post("com.atproto.server.refreshSession", token=old_refresh), 400)
    assert diff_snapshots(before, snapshot(root)) == []
    ok(api_b.get("com.atproto.server.getSession", token=second["accessJwt"]))


def test_a_returning_did_signs_with_its_new_key_in_every_worker(pdses):
    """Each worker caches an account's signing key and repo: after the account is deleted
    and made again (a new key), no worker may sign with the old one."""
    from pds.repo.keys import parse_did_key
    from pds.services.auth import parse_unverified

    api_a, api_b = pdses

    def signers(session: dict) -> set[str]:
        """The key each of 12 service tokens (served by either worker) verifies under,
        of the account's recommended key and the others seen."""
        key = ok(api_b.get("com.atproto.identity.getRecommendedDidCredentials",
                           token=session["accessJwt"]))["verificationMethods"]["atproto"]
        out = set()
        for _ in range(12):
            # A new connection each time: either worker may take it.
            token = ok(api_b.get("com.atproto.server.getServiceAuth",
                                 token=session["accessJwt"], aud=api_a.service_did,
                                 headers={"Connection": "close"}))["token"]
            _h, _p, signing_input, sig = parse_unverified(token)
            out.add("current" if parse_did_key(key).verify(signing_input, sig) else "stale")
        return out

    dave = _sign_up(api_a, "dave", ".a.test")
    first = ok(_migrate(api_b, _move_token(api_a, dave, api_b), dave["did"], "dave.b.test",
                        inviteCode=_invite(api_b)))
    assert signers(first) == {"current"}
    ok(api_b.post("com.atproto.admin.deleteAccount", {"did": dave["did"]},
                  headers=api_b.admin_headers()))
    second = ok(_migrate(api_b, _move_token(api_a, dave, api_b), dave["did"], "dave.b.test",
                         inviteCode=_invite(api_b)))
    assert signers(second) == {"current"}
