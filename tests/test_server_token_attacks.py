"""Attacks with credentials against a real `pds serve --workers 2`: each asserts the
refusal and that nothing in the data dir changed.

- A deleted did:web is never handed out again, and the deleted account's tokens (access,
  refresh) open nothing: not a new account of the same name, not anything.
- A taken-down account mints no service tokens and uploads no blobs with one it minted
  before the takedown; a deactivated (migrating) account still uploads blobs, sets its
  preferences and changes its handle.
- App passwords get no service token for a privileged method (createAccount: moving the
  account away; chat.bsky.*) unless privileged, and nobody gets one for a protected one.
"""

from __future__ import annotations

import time

from mail_util import spooled_token
from server_util import Api, api_fixture, diff_snapshots, err, ok, snapshot

COLL = "com.example.note"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(100)


api = api_fixture()


def _takedown(api: Api, did: str, applied: bool) -> None:
    ok(api.post("com.atproto.admin.updateSubjectStatus",
                {"subject": {"$type": "com.atproto.admin.defs#repoRef", "did": did},
                 "takedown": {"applied": applied}}, headers=api.admin_headers()))


def _login(api: Api, identifier: str, password: str, **extra) -> dict:
    return ok(api.post("com.atproto.server.createSession",
                       {"identifier": identifier, "password": password, **extra}))


def _service_token(api: Api, access: str, lxm: str, aud: str | None = None):
    return api.get("com.atproto.server.getServiceAuth", token=access,
                   aud=aud or api.service_did, lxm=lxm, exp=int(time.time()) + 1800)


def _upload(api: Api, token: str):
    return api.post("com.atproto.repo.uploadBlob", token=token, content=PNG,
                    headers={"Content-Type": "image/png"})


# --- 2: a deleted did:web is never reissued; its tokens die with it -----------------------------


def test_deleted_did_web_is_not_reissued_and_its_tokens_are_dead(api):
    root = api.server.data_dir
    old = api.create_account("reborn")
    ok(api.create_record(old, {"text": "first life"}, rkey="a"))
    ok(api.post("com.atproto.admin.deleteAccount", {"did": old.did},
                headers=api.admin_headers()))
    before = snapshot(root)

    # Same handle again: the DID it would get is the deleted one's, so it is refused.
    r = api.post("com.atproto.server.createAccount",
                 {"handle": old.handle, "email": "second@example.com",
                  "password": "another password"})
    body = err(r, 400, "HandleNotAvailable")
    assert "did" not in body

    # The old tokens open nothing: reads, writes, app passwords, preferences, refresh.
    tok = old.access
    err(api.get("com.atproto.server.getSession", token=tok), 401, "AccountNotFound")
    err(api.get("app.bsky.actor.getPreferences", token=tok), 401, "AccountNotFound")
    err(api.create_record(old, {"text": "second life"}), 401, "AccountNotFound")
    err(api.post("com.atproto.server.createAppPassword", {"name": "forever"}, token=tok),
        401, "AccountNotFound")
    err(api.get("com.atproto.server.getServiceAuth", token=tok, aud=api.service_did), 401,
        "AccountNotFound")
    err(api.post("com.atproto.server.refreshSession", token=old.refresh), 400)
    assert diff_snapshots(before, snapshot(root)) == []
    # The tombstone says why; the handle's other traces are gone.
    assert (root / "tombstones" / old.did).is_file()
    assert not (root / "well-known" / old.handle).exists()
    err(api.get("com.atproto.repo.describeRepo", repo=old.did), 400, "RepoNotFound")


def test_deleted_account_by_token_tombstoned_too(api):
    """Deletion by the account itself (emailed token) goes the same way."""
    root = api.server.data_dir
    acct = api.create_account("leaver")
    ok(api.post("com.atproto.server.requestAccountDelete", {}, token=acct.access))
    token = spooled_token(root, acct.email)  # no SMTP here: the mail stays in the spool
    ok(api.post("com.atproto.server.deleteAccount",
                {"did": acct.did, "password": acct.password, "token": token}))
    before = snapshot(root)
    err(api.post("com.atproto.server.createAccount",
                 {"handle": acct.handle, "email": acct.email, "password": "pw again"}), 400,
        "HandleNotAvailable")
    err(api.post("com.atproto.server.createAppPassword", {"name": "x"}, token=acct.access),
        401, "AccountNotFound")
    assert diff_snapshots(before, snapshot(root)) == []
    # The email was released with the account: another handle may use it.
    again = api.create_account("leaver2", email=acct.email)
    assert again.did != acct.did


# --- 4: taken-down accounts stop acting, deactivated ones keep migrating ------------------------


def test_takendown_account_mints_no_service_tokens_and_uploads_nothing(api):
    root = api.server.data_dir
    acct = api.create_account("downed")
    # Minted while the account was fine: good for 30 minutes.
    upload_token = ok(_service_token(api, acct.access, "com.atproto.repo.uploadBlob"))["token"]
    _takedown(api, acct.did, True)
    down = _login(api, acct.handle, acct.password, allowTakendown=True)["accessJwt"]
    before = snapshot(root)

    for lxm in ("com.atproto.repo.uploadBlob", "com.atproto.repo.createRecord",
                "app.bsky.feed.getFeedSkeleton", "com.atproto.server.createAccount"):
        err(_service_token(api, down, lxm), 400, "InvalidToken")
        err(_service_token(api, down, lxm, aud="did:web:feeds.example.com"), 400,
            "InvalidToken")
    err(api.get("com.atproto.server.getServiceAuth", token=down, aud=api.service_did), 400,
        "InvalidToken")
    # The old access token is refused outright; so is the service token minted before.
    err(_service_token(api, acct.access, "com.atproto.repo.uploadBlob"), 401,
        "AccountTakedown")
    err(_upload(api, upload_token), 401, "AccountTakedown")
    err(_upload(api, down), 400, "InvalidToken")
    assert diff_snapshots(before, snapshot(root)) == []

    # Restored, the same service token works again (it was never the token's fault).
    _takedown(api, acct.did, False)
    ok(_upload(api, upload_token))


def test_deactivated_account_keeps_migrating(api):
    """A deactivated account is what a migration creates: it uploads blobs (with its
    session or a service token), sets preferences and changes its handle, but doesn't
    write records."""
    acct = api.create_account("mover")
    ok(api.post("com.atproto.server.deactivateAccount", {}, token=acct.access))
    service = ok(_service_token(api, acct.access, "com.atproto.repo.uploadBlob"))["token"]
    ok(_upload(api, acct.access))
    ok(_upload(api, service))
    prefs = [{"$type": "app.bsky.actor.defs#adultContentPref", "enabled": False}]
    ok(api.post("app.bsky.actor.putPreferences", {"preferences": prefs}, token=acct.access))
    ok(api.post("com.atproto.identity.updateHandle", {"handle": "mover2.test"},
                token=acct.access))
    assert ok(api.get("com.atproto.server.getSession", token=acct.access))["handle"] == \
        "mover2.test"
    err(api.create_record(acct, {"text": "not yet"}), 400, "AccountDeactivated")


# --- 5: privileged and protected methods ---------------------------------------------------------


def test_app_passwords_and_service_tokens_for_privileged_methods(api):
    root = api.server.data_dir
    acct = api.create_account("apppasses")
    plain = ok(api.post("com.atproto.server.createAppPassword", {"name": "plain"},
                        token=acct.access))["password"]
    priv = ok(api.post("com.atproto.server.createAppPassword",
                       {"name": "dms", "privileged": True}, token=acct.access))["password"]
    s_plain = _login(api, acct.handle, plain)["accessJwt"]
    s_priv = _login(api, acct.handle, priv)["accessJwt"]
    other_pds = "did:web:elsewhere.example"
    before = snapshot(root)

    # A plain app password may not move the account away, nor read DMs; in any spelling.
    for lxm in ("com.atproto.server.createAccount", "com.atproto.server.CREATEACCOUNT",
                "COM.ATPROTO.SERVER.createAccount", "chat.bsky.convo.getLog",
                "chat.bsky.convo.sendMessage"):
        err(_service_token(api, s_plain, lxm, aud=other_pds), 400, "InvalidRequest")
    # Protected methods: for nobody, whatever the spelling.
    for token in (s_plain, s_priv, acct.access):
        for lxm in ("com.atproto.server.createAppPassword",
                    "com.atproto.server.createappPassword",
                    "com.atproto.identity.signPlcOperation",
                    "com.atproto.server.getSession"):
            err(_service_token(api, token, lxm, aud=other_pds), 400, "InvalidRequest")
    assert diff_snapshots(before, snapshot(root)) == []

    # What they may have: the privileged password and the full session get both kinds;
    # the plain password gets ordinary methods.
    for token in (s_priv, acct.access):
        ok(_service_token(api, token, "com.atproto.server.createAccount", aud=other_pds))
        ok(_service_token(api, token, "chat.bsky.convo.getLog", aud=other_pds))
    ok(_service_token(api, s_plain, "com.atproto.repo.uploadBlob"))
    ok(_service_token(api, s_plain, "app.bsky.feed.getFeedSkeleton", aud=other_pds))
