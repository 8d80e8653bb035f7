"""Identifiers too long to be a file name never reach the filesystem.

Every DID, handle, email, invite code and host a request names becomes a path in the data
dir (`accounts/<did>/`, `handles/<handle>`, `emails/<email>`, `invites/<code>.json`,
`well-known/<host>/`). A file name holds at most 255 bytes, while a DID may have 2048
characters: such a name is refused before any path is built (a valid DID too long to be
hosted here is simply not an account here: RepoNotFound, AccountNotFound...), never a 500
(ENAMETOOLONG), and nothing on disk changes.
"""

from __future__ import annotations

import base64
import json

import pytest
from server_util import Api, diff_snapshots, err, ok, running_server, snapshot

from pds.errors import InvalidName
from pds.repo.syntax import is_valid_did, is_valid_handle
from pds.store.layout import NAME_MAX, DataDir, file_name

COLL = "com.example.note"
GOOD_CID = "bafyreibcwoiemnvsleiph4pljrvq5vntcvm7ns2odgvv7cj2axpiqcm3jy"
BLOB_CID = "bafkreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm"
LONG_WEB = "did:web:" + "a" * 300              # a valid DID, over 255 bytes
LONG_PLC = "did:plc:" + "b" * 2040             # 2048 characters: the longest valid DID
TOO_LONG = "did:web:" + "c" * 2100             # not a DID: over the spec's 2048
LONG_NAME = "x" * 400                          # neither a DID nor a handle
# A valid handle of 253 characters: the longest there is, and short enough for a file.
LONG_HANDLE = ".".join(["h" * 62] * 3) + "." + "h" * 59 + ".test"
WIDE_EMAIL = "é" * 130 + "@example.com"        # 142 characters, 272 bytes
CODES = ("nothing", "n" * 300, "é" * 200)      # invite codes


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    env = {"PDS_RATE_LIMITS": "true", "PDS_INVITE_REQUIRED": "true"}
    with running_server(tmp_path_factory.mktemp("names"), env=env) as server:
        client = Api(server)
        yield client
        client.close()


def test_the_names_are_what_they_claim():
    assert is_valid_did(LONG_WEB) and len(LONG_WEB.encode()) > NAME_MAX
    assert is_valid_did(LONG_PLC) and len(LONG_PLC) == 2048
    assert not is_valid_did(TOO_LONG)
    assert is_valid_handle(LONG_HANDLE) and len(LONG_HANDLE) == 253
    assert len(WIDE_EMAIL) < 254 < len(WIDE_EMAIL.encode())


def test_the_layout_refuses_names_no_file_can_have(tmp_path):
    data = DataDir(tmp_path)
    for did in (LONG_WEB, LONG_PLC, TOO_LONG, "did:web:a\x00b", "did:web:a/b", "alice"):
        with pytest.raises(InvalidName):
            data.account(did)
    assert data.account("did:web:alice.test") == tmp_path / "accounts" / "did:web:alice.test"
    assert data.handle(LONG_HANDLE).name == LONG_HANDLE
    for bad in ("", ".", "..", "a/b", "a\x00b", "\ud800", "x" * 256, "é" * 128):
        with pytest.raises(InvalidName):
            file_name(bad)
    assert file_name("x" * 255) == "x" * 255
    with pytest.raises(InvalidName):  # the suffix counts
        data.invite("x" * 251)
    assert data.invite("x" * 250).name == "x" * 250 + ".json"
    with pytest.raises(InvalidName):
        data.email(WIDE_EMAIL)
    with pytest.raises(InvalidName):
        data.well_known("h" * 256)
    # Lookups read a refused name as "no such thing"; an InvalidName is a ValueError too.
    assert issubclass(InvalidName, ValueError)


def battery(api: Api, alice: dict):
    did, tok = alice["did"], alice["accessJwt"]
    admin = api.admin_headers()

    def get(nsid, status, names, token=None, headers=None, **params):
        return (f"GET {nsid} {sorted(params)}", status, names,
                lambda: api.get(nsid, token=token, headers=headers, **params))

    def post(nsid, body, status, names, token=None, headers=None):
        # json.dumps escapes lone surrogates as JSON allows ("\ud800"); httpx can't.
        content = json.dumps(body).encode()
        headers = {**(headers or {}), "Content-Type": "application/json"}
        return (f"POST {nsid} {sorted(body)}", status, names,
                lambda: api.post(nsid, token=token, headers=headers, content=content))

    cases = []
    for d in (LONG_WEB, LONG_PLC):
        cases += [get(n, 400, "RepoNotFound", did=d) for n in (
            "com.atproto.sync.getRepo", "com.atproto.sync.getCheckout",
            "com.atproto.sync.getLatestCommit", "com.atproto.sync.getRepoStatus",
            "com.atproto.sync.listBlobs")]
        cases += [
            get("com.atproto.sync.getHead", 400, ("RepoNotFound", "HeadNotFound"), did=d),
            get("com.atproto.sync.getBlob", 400, "RepoNotFound", did=d, cid=BLOB_CID),
            get("com.atproto.sync.getBlocks", 400, "RepoNotFound", did=d, cids=GOOD_CID),
            get("com.atproto.sync.getRecord", 400, "RepoNotFound", did=d, collection=COLL,
                rkey="self"),
            get("com.atproto.sync.getRepo", 400, "RepoNotFound", token=tok, did=d),
            get("com.atproto.sync.getRepo", 400, "RepoNotFound", headers=admin, did=d),
            get("com.atproto.admin.getAccountInfo", 400, "AccountNotFound", headers=admin,
                did=d),
            get("com.atproto.admin.getSubjectStatus", 400, "AccountNotFound",
                headers=admin, did=d),
            post("com.atproto.admin.updateSubjectStatus",
                 {"subject": {"$type": "com.atproto.admin.defs#repoRef", "did": d},
                  "takedown": {"applied": True}}, 400, "AccountNotFound", headers=admin),
            post("com.atproto.admin.deleteAccount", {"did": d}, 400, "AccountNotFound",
                 headers=admin),
            post("com.atproto.admin.updateAccountPassword", {"did": d, "password": "pw"},
                 400, "AccountNotFound", headers=admin),
            post("com.atproto.admin.disableAccountInvites", {"account": d}, 400,
                 "AccountNotFound", headers=admin),
            post("com.atproto.admin.updateAccountEmail", {"account": d,
                                                          "email": "x@example.com"},
                 400, "AccountNotFound", headers=admin),
            post("com.atproto.server.deleteAccount", {"did": d, "password": "pw",
                                                      "token": "AAAAA-BBBBB"},
                 400, ("AccountNotFound", "InvalidToken"), None),
            post("com.atproto.server.createSession", {"identifier": d, "password": "pw"},
                 401, "AuthenticationRequired"),
        ]
    for repo in (LONG_WEB, LONG_PLC, LONG_NAME, LONG_HANDLE, TOO_LONG):
        names = ("RepoNotFound", "InvalidRequest")
        cases += [
            get("com.atproto.repo.describeRepo", 400, names, repo=repo),
            get("com.atproto.repo.listRecords", 400, names, repo=repo, collection=COLL),
            get("com.atproto.repo.getRecord", 400, names, repo=repo, collection=COLL,
                rkey="self"),
            post("com.atproto.repo.createRecord", {"repo": repo, "collection": COLL,
                                                   "record": {"$type": COLL}},
                 400, names, token=tok),
            post("com.atproto.repo.putRecord", {"repo": repo, "collection": COLL,
                                                "rkey": "self", "record": {"$type": COLL}},
                 400, names, token=tok),
            post("com.atproto.repo.deleteRecord", {"repo": repo, "collection": COLL,
                                                   "rkey": "self"}, 400, names, token=tok),
            post("com.atproto.repo.applyWrites", {"repo": repo, "writes": []}, 400, names,
                 token=tok),
        ]
    for ident in (LONG_NAME, LONG_HANDLE, TOO_LONG, WIDE_EMAIL, "é" * 300):
        cases.append(post("com.atproto.server.createSession",
                          {"identifier": ident, "password": "pw"}, 401,
                          "AuthenticationRequired"))
    # Strings no UTF-8 (so no file name) can hold: the body itself is refused.
    for ident in ("\ud800", "\ud800@example.com", "did:web:\ud800"):
        cases.append(post("com.atproto.server.createSession",
                          {"identifier": ident, "password": "pw"}, 400, "InvalidRequest"))
    for d in (TOO_LONG, "did:web:" + "a" * 2041):
        cases.append(get("com.atproto.sync.getRepo", 400, "InvalidRequest", did=d))
    cases += [
        get("com.atproto.identity.resolveHandle", 400, ("InvalidRequest", "HandleNotFound"),
            handle=LONG_NAME + ".test"),
        # not an at-identifier (its lexicon's format): refused before any lookup
        post("com.atproto.admin.updateAccountEmail", {"account": LONG_NAME,
                                                      "email": "x@example.com"},
             400, ("AccountNotFound", "InvalidRequest"), headers=admin),
        post("com.atproto.admin.updateAccountEmail", {"account": did, "email": WIDE_EMAIL},
             400, ("InvalidEmail", "InvalidRequest"), headers=admin),
        get("com.atproto.admin.getAccountInfos", 200, None, headers=admin,
            dids=[LONG_WEB, LONG_PLC]),
    ]
    for code in CODES:
        cases.append(post("com.atproto.server.createAccount",
                          {"handle": "newcomer.test", "email": "new@example.com",
                           "password": "pw", "inviteCode": code},
                          400, "InvalidInviteCode"))
    return cases


def test_over_long_identifiers_are_refused_and_change_nothing(api):
    code = ok(api.post("com.atproto.server.createInviteCode", {"useCount": 2},
                       headers=api.admin_headers()))["code"]
    alice = ok(api.post("com.atproto.server.createAccount",
                        {"handle": "alice.test", "email": "alice@example.com",
                         "password": "alice's password", "inviteCode": code}))
    root = api.server.data_dir
    cases = battery(api, alice)
    before = snapshot(root)
    failures = []
    for label, status, names, thunk in cases:
        try:
            resp = thunk()
            if status == 200:
                ok(resp)
            else:
                err(resp, status, names)
        except AssertionError as e:
            failures.append(f"{label}: {e}"[:600])
    assert not failures, f"{len(failures)} of {len(cases)}:\n" + "\n".join(failures)
    assert diff_snapshots(before, snapshot(root)) == []
    # A sign-up with an email no file can be named takes nothing (the handle it claimed
    # on the way is given back), and the invite code is not spent.
    err(api.post("com.atproto.server.createAccount",
                 {"handle": "wide.test", "email": WIDE_EMAIL, "password": "pw",
                  "inviteCode": code}), 400, ("InvalidEmail", "InvalidRequest"))
    assert diff_snapshots(before, snapshot(root)) == []
    # The Host of a well-known request is a directory name too.
    for host in ("h" * 300 + ".test", "a" * 256):
        r = api.http.get("/.well-known/atproto-did", headers={"Host": host})
        assert r.status_code == 404, r.text
    # A login and a write still work.
    ok(api.post("com.atproto.server.createSession",
                {"identifier": "alice.test", "password": "alice's password"}))
    ok(api.post("com.atproto.repo.createRecord",
                {"repo": alice["did"], "collection": COLL, "record": {"$type": COLL}},
                token=alice["accessJwt"]))


def test_admin_basic_auth_with_over_long_or_odd_credentials(api):
    for raw in ("admin:" + "p" * 3000, "a" * 3000, "admin:\x00", "\xff:\xfe"):
        header = "Basic " + base64.b64encode(raw.encode()).decode()
        err(api.get("com.atproto.admin.getInviteCodes", headers={"Authorization": header}),
            401, "AuthenticationRequired")
