"""Administration, from the command line and over XRPC (HTTP Basic, user `admin`).

CLI, run against the data dir of a live `pds serve` (the data dir is the database, so the
running server sees every change): `pds account list|create|delete|takedown|untakedown|
reset-password`, `pds invite create` (the code then works for sign-up on a server with
PDS_INVITE_REQUIRED=true), and `pds request-crawl URL` against a local relay stand-in.

XRPC: getAccountInfo(s), updateSubjectStatus (a takedown emits `#account` inactive with
status takendown, seen in `seq/` and by a firehose subscriber, and stops the repo, its
records and blobs being served; the reverse restores them), deleteAccount,
updateAccountHandle, updateAccountEmail, updateAccountPassword, getInviteCodes and
disableInviteCodes; every admin method refuses a call without the password or with a
wrong one (401).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from harness import Server, run_pds, running_server
from server_util import (
    PASSWORD,
    Account,
    Api,
    account_events,
    blob_ref,
    decode_frame,
    err,
    ok,
    seq_events,
    subscribe_url,
    ws_connect,
)

pytestmark = pytest.mark.slow  # `pds` commands against a live server

REPO_REF = "com.atproto.admin.defs#repoRef"
NOTE = "com.example.note"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for the module, with sign-up by invite only."""
    with running_server(tmp_path_factory.mktemp("admin"), env={"PDS_INVITE_REQUIRED": "true"},
                        wait=60) as srv:
        yield srv


@pytest.fixture
def api(server: Server) -> Iterator[Api]:
    with Api(server) as a:
        yield a


def pds(server: Server, *args: str, check: bool = True):
    """`pds ARGS... --data-dir <the server's data dir>`, with the server's settings (an
    operator's CLI reads the same pds.env as the server)."""
    return run_pds(*args, "--data-dir", str(server.data_dir), check=check,
                   env={"PDS_INVITE_REQUIRED": "true"})


def invite(server: Server, uses: int = 1) -> str:
    out = pds(server, "invite", "create", "--uses", str(uses)).stdout.split()
    assert len(out) == 1, out
    return out[0]


def sign_up(api: Api, name: str, code: str | None = None) -> Account:
    """An account made over XRPC with a fresh invite code from the CLI."""
    return api.create_account(name, inviteCode=code or invite(api.server))


def login(api: Api, ident: str, password: str) -> httpx.Response:
    return api.post("com.atproto.server.createSession",
                    {"identifier": ident, "password": password})


def takedown(api: Api, did: str, applied: bool, ref: str | None = None) -> dict:
    body: dict = {"applied": applied}
    if ref is not None:
        body["ref"] = ref
    return ok(api.post("com.atproto.admin.updateSubjectStatus",
                       {"subject": {"$type": REPO_REF, "did": did}, "takedown": body},
                       headers=api.admin_headers()))


def cli_accounts(server: Server) -> dict[str, list[str]]:
    """`pds account list` as {did: [handle, email, status]}."""
    out = pds(server, "account", "list").stdout
    return {ln.split("\t")[0]: ln.split("\t")[1:] for ln in out.splitlines() if ln}


# --- the command line ------------------------------------------------------------------------


def test_cli_account_create_list_takedown_reset_delete(server: Server, api: Api) -> None:
    res = pds(server, "account", "create", "--handle", "clia.test",
              "--email", "clia@example.com")
    made = json.loads(res.stdout)
    did, password = made["did"], made["password"]
    assert made["handle"] == "clia.test" and did == "did:web:clia.test"
    assert ok(login(api, "clia.test", password))["did"] == did
    assert cli_accounts(server)[did] == ["clia.test", "clia@example.com", "active"]

    # The same handle again: refused, non-zero exit, a reason.
    again = pds(server, "account", "create", "--handle", "clia.test",
                "--email", "other@example.com", check=False)
    assert again.returncode != 0 and "handle" in again.stderr.lower(), again.stderr

    # A record and a blob, to see them stop being served.
    token = ok(login(api, did, password))["accessJwt"]
    acct = Account(did, "clia.test", "clia@example.com", password, token, "")
    rec = ok(api.create_record(acct, {"text": "hi"}, NOTE, rkey="one"))
    data = os.urandom(2000)
    up = ok(api.post("com.atproto.repo.uploadBlob", content=data, token=token,
                     headers={"Content-Type": "image/png"}))["blob"]
    ok(api.create_record(acct, {"image": blob_ref(up)}, "com.example.pic", rkey="pic"))

    pds(server, "account", "takedown", "clia.test", "--ref", "cli-test")
    assert cli_accounts(server)[did][2] == "takendown"
    err(api.get("com.atproto.sync.getRepo", did=did), 400, "RepoTakendown")
    err(api.get("com.atproto.repo.getRecord", repo=did, collection=NOTE, rkey="one"), 400,
        "RepoTakendown")
    err(api.get("com.atproto.sync.getBlob", did=did, cid=up["ref"]["$link"]), 400,
        "RepoTakendown")
    err(login(api, did, password), 401, "AccountTakedown")
    last = account_events(server.data_dir, did)[-1]
    assert last["active"] is False and last["status"] == "takendown", last
    status = ok(api.get("com.atproto.admin.getSubjectStatus", did=did,
                        headers=api.admin_headers()))
    assert status["takedown"]["applied"] is True and status["takedown"]["ref"] == "cli-test"

    pds(server, "account", "untakedown", did)
    assert cli_accounts(server)[did][2] == "active"
    assert account_events(server.data_dir, did)[-1]["active"] is True
    got = ok(api.get("com.atproto.repo.getRecord", repo=did, collection=NOTE, rkey="one"))
    assert got["cid"] == rec["cid"]
    assert api.http.get("/xrpc/com.atproto.sync.getBlob",
                        params={"did": did, "cid": up["ref"]["$link"]}).content == data

    # reset-password: a generated one is printed; a given one is not.
    new = pds(server, "account", "reset-password", did).stdout.strip()
    assert new and new != password
    err(login(api, did, password), 401)
    ok(login(api, did, new))
    quiet = pds(server, "account", "reset-password", "clia.test", "--password", "chosen one 1")
    assert quiet.stdout.strip() == ""
    err(login(api, did, new), 401)
    ok(login(api, did, "chosen one 1"))

    pds(server, "account", "delete", did, "--yes")
    assert did not in cli_accounts(server)
    err(api.get("com.atproto.sync.getRepo", did=did), 400, "RepoNotFound")
    err(login(api, "clia.test", "chosen one 1"), 401)
    last = account_events(server.data_dir, did)[-1]
    assert last["active"] is False and last["status"] == "deleted", last
    # The handle is free again, and a missing account is an error.
    missing = pds(server, "account", "takedown", did, check=False)
    assert missing.returncode != 0 and "no such account" in missing.stderr


def test_cli_invite_codes_gate_sign_up(server: Server, api: Api) -> None:
    r = api.post("com.atproto.server.createAccount",
                 {"handle": "noinvite.test", "email": "noinvite@example.com",
                  "password": PASSWORD})
    err(r, 400, "InvalidInviteCode")
    code = invite(server)
    acct = api.create_account("invited", inviteCode=code)
    assert acct.did == "did:web:invited.test"
    # One use only.
    r = api.post("com.atproto.server.createAccount",
                 {"handle": "invited2.test", "email": "invited2@example.com",
                  "password": PASSWORD, "inviteCode": code})
    err(r, 400, "InvalidInviteCode")
    codes = pds(server, "invite", "create", "--uses", "2", "--count", "3").stdout.split()
    assert len(codes) == 3 and len(set(codes)) == 3
    api.create_account("multi1", inviteCode=codes[0])
    api.create_account("multi2", inviteCode=codes[0])
    err(api.post("com.atproto.server.createAccount",
                 {"handle": "multi3.test", "email": "multi3@example.com",
                  "password": PASSWORD, "inviteCode": codes[0]}), 400, "InvalidInviteCode")
    info = ok(api.get("com.atproto.admin.getAccountInfo", did="did:web:invited.test",
                      headers=api.admin_headers()))
    assert info["invitedBy"]["code"] == code


class Relay(BaseHTTPRequestHandler):
    """Records requestCrawl calls (path and JSON body); answers 200 or `status`."""

    calls: list[tuple[str, dict]] = []
    status = 200

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        type(self).calls.append((self.path, json.loads(body or b"{}")))
        self.send_response(type(self).status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def relay() -> Iterator[tuple[str, type[Relay]]]:
    handler = type("RelayHandler", (Relay,), {"calls": [], "status": 200})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", handler
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_cli_request_crawl(server: Server, relay: tuple[str, type[Relay]]) -> None:
    url, handler = relay
    res = pds(server, "request-crawl", url)
    assert res.returncode == 0 and url in res.stdout, res.stdout
    assert handler.calls == [("/xrpc/com.atproto.sync.requestCrawl",
                              {"hostname": "localhost"})], handler.calls
    # A relay that refuses: reported, non-zero exit.
    handler.status = 400
    res = pds(server, "request-crawl", url + "/", check=False)
    assert res.returncode == 1 and "400" in res.stdout, res.stdout
    assert len(handler.calls) == 2
    # No relay at all: a clear refusal.
    res = pds(server, "request-crawl", check=False)
    assert res.returncode != 0 and "PDS_CRAWLERS" in res.stderr, res.stderr


# --- XRPC admin --------------------------------------------------------------------------------


def test_get_account_info_and_infos(api: Api) -> None:
    a, b = sign_up(api, "infoa"), sign_up(api, "infob")
    admin = api.admin_headers()
    info = ok(api.get("com.atproto.admin.getAccountInfo", did=a.did, headers=admin))
    assert info["did"] == a.did and info["handle"] == a.handle and info["email"] == a.email
    assert info["indexedAt"]
    infos = ok(api.http.get("/xrpc/com.atproto.admin.getAccountInfos",
                            params=[("dids", a.did), ("dids", b.did),
                                    ("dids", "did:web:nobody.test")], headers=admin))["infos"]
    assert sorted(i["did"] for i in infos) == sorted([a.did, b.did])
    err(api.get("com.atproto.admin.getAccountInfo", did="did:web:nobody.test",
                headers=admin), 400, "AccountNotFound")


def test_takedown_emits_account_event_and_stops_serving(api: Api, server: Server) -> None:
    acct = sign_up(api, "downed")
    rec = ok(api.create_record(acct, {"text": "soon gone"}, NOTE, rkey="r1"))
    data = os.urandom(3000)
    up = ok(api.post("com.atproto.repo.uploadBlob", content=data, token=acct.access,
                     headers={"Content-Type": "image/jpeg"}))["blob"]
    ok(api.create_record(acct, {"image": blob_ref(up)}, "com.example.pic", rkey="p1"))
    cid = up["ref"]["$link"]
    assert api.get("com.atproto.sync.getRepo", did=acct.did).status_code == 200

    with ws_connect(subscribe_url(server.url), compression="deflate") as ws:
        takedown(api, acct.did, True, "mod-1")

        def next_account_event():
            while True:
                header, body = decode_frame(ws.recv(timeout=60))
                if header.get("t") == "#account" and body["did"] == acct.did:
                    return body

        live = next_account_event()
        assert live["active"] is False and live["status"] == "takendown", live
        logged = account_events(server.data_dir, acct.did)[-1]
        assert logged["seq"] == live["seq"] and logged["status"] == "takendown"

        err(api.get("com.atproto.sync.getRepo", did=acct.did), 400, "RepoTakendown")
        err(api.get("com.atproto.sync.getRecord", did=acct.did, collection=NOTE, rkey="r1"),
            400, "RepoTakendown")
        err(api.get("com.atproto.repo.getRecord", repo=acct.did, collection=NOTE, rkey="r1"),
            400, "RepoTakendown")
        err(api.get("com.atproto.sync.getBlob", did=acct.did, cid=cid), 400, "RepoTakendown")
        err(api.get("com.atproto.sync.getLatestCommit", did=acct.did), 400, "RepoTakendown")
        status = ok(api.get("com.atproto.sync.getRepoStatus", did=acct.did))
        assert status == {"did": acct.did, "active": False, "status": "takendown"}
        # Its sessions died with it.
        r = api.post("com.atproto.repo.createRecord",
                     {"repo": acct.did, "collection": NOTE,
                      "record": {"$type": NOTE, "text": "x"}}, token=acct.access)
        assert r.status_code in (400, 401), r.text
        # The admin still reads it.
        assert api.get("com.atproto.sync.getRepo", did=acct.did,
                       headers=api.admin_headers()).status_code == 200

        takedown(api, acct.did, False)
        live = next_account_event()
        assert live["active"] is True and "status" not in live, live
    car = api.get("com.atproto.sync.getRecord", did=acct.did, collection=NOTE, rkey="r1")
    assert car.status_code == 200
    assert car.headers["content-type"] == "application/vnd.ipld.car"
    assert ok(api.get("com.atproto.repo.getRecord", repo=acct.did, collection=NOTE,
                      rkey="r1"))["cid"] == rec["cid"]
    assert api.http.get("/xrpc/com.atproto.sync.getBlob",
                        params={"did": acct.did, "cid": cid}).content == data
    status = ok(api.get("com.atproto.admin.getSubjectStatus", did=acct.did,
                        headers=api.admin_headers()))
    assert status["takedown"]["applied"] is False


def test_delete_account(api: Api, server: Server) -> None:
    acct = sign_up(api, "deleteme")
    ok(api.create_record(acct, {"text": "bye"}, NOTE))
    ok(api.post("com.atproto.admin.deleteAccount", {"did": acct.did},
                headers=api.admin_headers()))
    err(api.get("com.atproto.sync.getRepo", did=acct.did), 400, "RepoNotFound")
    err(api.get("com.atproto.admin.getAccountInfo", did=acct.did,
                headers=api.admin_headers()), 400, "AccountNotFound")
    err(login(api, acct.handle, acct.password), 401)
    last = account_events(server.data_dir, acct.did)[-1]
    assert last["active"] is False and last["status"] == "deleted"
    assert not (server.data_dir / "accounts" / acct.did).exists()
    r = api.get("com.atproto.identity.resolveHandle", handle=acct.handle)
    assert r.status_code == 400


def test_update_handle_email_password(api: Api, server: Server) -> None:
    acct = sign_up(api, "renamer")
    admin = api.admin_headers()
    ok(api.post("com.atproto.admin.updateAccountHandle",
                {"did": acct.did, "handle": "renamed.test"}, headers=admin))
    info = ok(api.get("com.atproto.admin.getAccountInfo", did=acct.did, headers=admin))
    assert info["handle"] == "renamed.test"
    assert ok(api.get("com.atproto.identity.resolveHandle",
                      handle="renamed.test"))["did"] == acct.did
    assert api.get("com.atproto.identity.resolveHandle",
                   handle=acct.handle).status_code == 400
    wk = server.data_dir / "well-known"
    assert (wk / "renamed.test" / "atproto-did").read_text().strip() == acct.did
    assert not (wk / acct.handle / "atproto-did").exists()
    ident = [p for _s, h, p in _events(server) if h.get("t") == "#identity"
             and p["did"] == acct.did]
    assert ident and ident[-1].get("handle") == "renamed.test"

    ok(api.post("com.atproto.admin.updateAccountEmail",
                {"account": acct.did, "email": "new-renamer@example.com"}, headers=admin))
    info = ok(api.get("com.atproto.admin.getAccountInfo", did=acct.did, headers=admin))
    assert info["email"] == "new-renamer@example.com"
    ok(login(api, "new-renamer@example.com", acct.password))

    ok(api.post("com.atproto.admin.updateAccountPassword",
                {"did": acct.did, "password": "a brand new one"}, headers=admin))
    err(login(api, acct.did, acct.password), 401)
    ok(login(api, acct.did, "a brand new one"))
    # Existing sessions were revoked with the old password.
    r = api.post("com.atproto.server.refreshSession", token=acct.refresh)
    assert r.status_code in (400, 401), r.text


def _events(server: Server):
    return seq_events(server.data_dir)


def test_invite_codes_listed_and_disabled(api: Api, server: Server) -> None:
    admin = api.admin_headers()
    code = invite(server)
    listed = {c["code"]: c for c in _all_codes(api)}
    assert code in listed and listed[code]["disabled"] is False
    assert listed[code]["available"] == 1
    ok(api.post("com.atproto.admin.disableInviteCodes", {"codes": [code]}, headers=admin))
    listed = {c["code"]: c for c in _all_codes(api)}
    assert listed[code]["disabled"] is True
    err(api.post("com.atproto.server.createAccount",
                 {"handle": "disabled1.test", "email": "disabled1@example.com",
                  "password": PASSWORD, "inviteCode": code}), 400, "InvalidInviteCode")


def _all_codes(api: Api) -> list[dict]:
    out, cursor = [], None
    while True:
        params = {"limit": 100, **({"cursor": cursor} if cursor else {})}
        page = ok(api.get("com.atproto.admin.getInviteCodes", headers=api.admin_headers(),
                          **params))
        out += page["codes"]
        cursor = page.get("cursor")
        if not cursor or not page["codes"]:
            return out


ADMIN_CALLS = [
    ("GET", "getAccountInfo", {"did": "did:web:someone.test"}),
    ("GET", "getAccountInfos", {"dids": "did:web:someone.test"}),
    ("GET", "getSubjectStatus", {"did": "did:web:someone.test"}),
    ("GET", "searchAccounts", {}),
    ("GET", "getInviteCodes", {}),
    ("POST", "updateSubjectStatus", {"subject": {"$type": REPO_REF,
                                                 "did": "did:web:someone.test"},
                                     "takedown": {"applied": True}}),
    ("POST", "deleteAccount", {"did": "did:web:someone.test"}),
    ("POST", "updateAccountHandle", {"did": "did:web:someone.test", "handle": "x1.test"}),
    ("POST", "updateAccountEmail", {"account": "did:web:someone.test",
                                    "email": "x@example.com"}),
    ("POST", "updateAccountPassword", {"did": "did:web:someone.test", "password": "pw"}),
    ("POST", "disableInviteCodes", {"codes": ["x"]}),
    ("POST", "disableAccountInvites", {"account": "did:web:someone.test"}),
    ("POST", "enableAccountInvites", {"account": "did:web:someone.test"}),
]


@pytest.mark.parametrize("method,name,args", ADMIN_CALLS, ids=[c[1] for c in ADMIN_CALLS])
def test_admin_methods_refuse_without_the_password(api: Api, method: str, name: str,
                                                   args: dict) -> None:
    user = sign_up(api, "u" + os.urandom(4).hex())
    wrong = [
        {},                                             # no credentials
        api.admin_headers("not the password"),          # wrong password
        api.admin_headers(user="root"),                 # right password, wrong user
        api.admin_headers(""),                          # empty password
        {"Authorization": "Basic !!!not-base64"},       # garbage
        {"Authorization": f"Bearer {user.access}"},     # a user's session
    ]
    for headers in wrong:
        if method == "GET":
            r = api.get("com.atproto.admin." + name, headers=headers, **args)
        else:
            r = api.post("com.atproto.admin." + name, args, headers=headers)
        assert r.status_code == 401, (name, headers, r.status_code, r.text)
        assert r.json()["error"] in ("AuthenticationRequired", "InvalidToken"), r.text
    # Nothing happened to the user either.
    ok(login(api, user.did, user.password))
