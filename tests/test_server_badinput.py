"""Bad input gets an XRPC error with the right status (never a 500, never a traceback) and
changes nothing on disk: the data dir is snapshotted around a battery of bad requests."""

from __future__ import annotations

import base64
import json
import time

import httpx
import jwt
import pytest
from server_util import Api, api_fixture, blob_ref, diff_snapshots, err, ok, snapshot

from pds.config import parse_env_file

BLOB_LIMIT = 4096
JSON_LIMIT = 5 * 1024 * 1024
COLL = "com.example.note"
# A well-formed CID of a block no repo here holds.
GOOD_CID = "bafyreibcwoiemnvsleiph4pljrvq5vntcvm7ns2odgvv7cj2axpiqcm3jy"


api = api_fixture(env={"PDS_BLOB_LIMIT": str(BLOB_LIMIT)})


@pytest.fixture(scope="module")
def alice(api):
    acct = api.create_account("alice")
    ok(api.create_record(acct, {"text": "hello"}, rkey="first"))
    blob = ok(api.post("com.atproto.repo.uploadBlob", token=acct.access,
                       content=b"\x89PNG" + bytes(200), headers={"Content-Type": "image/png"}))
    ok(api.create_record(acct, {"file": blob_ref(blob["blob"])}, rkey="withblob"))
    return acct


def _secret(api: Api) -> str:
    return parse_env_file(api.server.data_dir / "pds.env")["PDS_JWT_SECRET"]


def _b64raw(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64(d: dict) -> str:
    return _b64raw(json.dumps(d).encode())


def _chunks(data: bytes, size: int = 65536):
    for i in range(0, len(data), size):
        yield data[i:i + size]


def battery(api: Api, alice) -> list[tuple[str, object, int, tuple[str, ...] | str | None]]:
    """(label, thunk returning a response, status, error name(s)) for every bad request."""
    did, tok = alice.did, alice.access
    secret = _secret(api)
    now = int(time.time())
    expired = jwt.encode({"scope": "com.atproto.access", "sub": did, "aud": api.service_did,
                          "iat": now - 7300, "exp": now - 100}, secret, algorithm="HS256",
                         headers={"typ": "at+jwt"})
    foreign = jwt.encode({"scope": "com.atproto.access", "sub": did, "aud": api.service_did,
                          "iat": now, "exp": now + 600}, "another server's secret, " * 2,
                         algorithm="HS256", headers={"typ": "at+jwt"})
    wrong_aud = jwt.encode({"scope": "com.atproto.access", "sub": did, "aud": "did:web:evil",
                            "iat": now, "exp": now + 600}, secret, algorithm="HS256",
                           headers={"typ": "at+jwt"})
    traversal_sub = jwt.encode({"scope": "com.atproto.access", "sub": "../../etc",
                                "aud": api.service_did, "iat": now, "exp": now + 600}, secret,
                               algorithm="HS256", headers={"typ": "at+jwt"})
    refresh_no_session = jwt.encode({"scope": "com.atproto.refresh", "sub": did,
                                     "aud": api.service_did, "jti": "../../account.json",
                                     "iat": now, "exp": now + 600}, secret, algorithm="HS256",
                                    headers={"typ": "refresh+jwt"})
    unsigned = _b64({"alg": "none", "typ": "at+jwt"}) + "." + _b64(
        {"scope": "com.atproto.access", "sub": did, "aud": api.service_did, "exp": now + 600}) + "."
    service = ok(api.get("com.atproto.server.getServiceAuth", token=tok, aud=api.service_did,
                         lxm="com.atproto.repo.createRecord"))["token"]
    upload_other_lxm = ok(api.get("com.atproto.server.getServiceAuth", token=tok,
                                  aud=api.service_did, lxm="com.atproto.repo.getRecord"))["token"]
    upload_other_aud = ok(api.get("com.atproto.server.getServiceAuth", token=tok,
                                  aud="did:web:elsewhere.example",
                                  lxm="com.atproto.repo.uploadBlob"))["token"]
    json_h = {"Content-Type": "application/json"}
    good_record = {"$type": COLL, "text": "x"}

    def create(body, token=tok, **kw):
        return lambda: api.post("com.atproto.repo.createRecord", body, token=token, **kw)

    def cr(**fields):
        body = {"repo": did, "collection": COLL, "record": good_record}
        body.update(fields)
        return create({k: v for k, v in body.items() if v is not None})

    def get(nsid, token=None, headers=None, **params):
        return lambda: api.get(nsid, token=token, headers=headers, **params)

    def post(nsid, body=None, token=None, headers=None, content=None):
        return lambda: api.post(nsid, body, token=token, headers=headers, content=content)

    def raw(method, path, headers=None, content=None):
        return lambda: api.http.request(method, path, headers=headers, content=content)

    deep_json = b'{"repo":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    deep_jwt = _b64raw(b"[" * 2000 + b"]" * 2000) + "." + _b64({"iss": did}) + ".c2ln"
    big_json = b'{"repo":"' + did.encode() + b'","junk":"' + b"x" * JSON_LIMIT + b'"}'
    big_blob = b"z" * (BLOB_LIMIT + 1)
    cases = [
        # --- malformed bodies ------------------------------------------------------------
        ("malformed JSON", post("com.atproto.repo.createRecord", token=tok, headers=json_h,
                                content=b'{"repo": '), 400, "InvalidRequest"),
        ("JSON not an object", post("com.atproto.repo.createRecord", token=tok,
                                    headers=json_h, content=b"[1,2]"), 400, "InvalidRequest"),
        ("invalid UTF-8", post("com.atproto.server.createSession", headers=json_h,
                               content=b'{"identifier":"\xff\xfe"}'), 400, "InvalidRequest"),
        ("deeply nested JSON", post("com.atproto.repo.createRecord", token=tok,
                                    headers=json_h, content=deep_json), 400, "InvalidRequest"),
        ("deeply nested JSON, public", post("com.atproto.server.createSession",
                                            headers=json_h, content=deep_json), 400,
         "InvalidRequest"),
        ("record over 1 MB", cr(record={"$type": COLL, "text": "x" * 1_100_000}), 400,
         "RecordTooBig"),
        ("wrong content-type", post("com.atproto.repo.createRecord", token=tok,
                                    headers={"Content-Type": "text/plain"},
                                    content=json.dumps({"repo": did, "collection": COLL,
                                                        "record": good_record}).encode()),
         400, "InvalidRequest"),
        ("form content-type", post("com.atproto.server.createSession",
                                   headers={"Content-Type": "application/x-www-form-urlencoded"},
                                   content=b"identifier=alice.test&password=x"),
         400, "InvalidRequest"),
        ("empty body", post("com.atproto.repo.createRecord", token=tok, headers=json_h,
                            content=b""), 400, "InvalidRequest"),
        ("oversized JSON (Content-Length)",
         post("com.atproto.repo.createRecord", token=tok, headers=json_h, content=big_json),
         413, "PayloadTooLarge"),
        ("oversized JSON (chunked)",
         post("com.atproto.repo.createRecord", token=tok, headers=json_h,
              content=_chunks(big_json)), 413, "PayloadTooLarge"),
        ("oversized JSON to a public method",
         post("com.atproto.server.createAccount", headers=json_h, content=big_json),
         413, "PayloadTooLarge"),
        # --- missing fields and wrong types ------------------------------------------------
        ("createRecord without collection", cr(collection=None), 400, "InvalidRequest"),
        ("createRecord without record", cr(record=None), 400, "InvalidRequest"),
        ("createRecord without repo", cr(repo=None), 400, "InvalidRequest"),
        ("record not an object", cr(record="text"), 400, ("InvalidRequest", "InvalidRecord")),
        ("record $type mismatch", cr(record={"$type": "com.example.other"}), 400,
         ("InvalidRequest", "InvalidRecord")),
        ("record with a float", cr(record={"$type": COLL, "n": 1.5}), 400,
         ("InvalidRequest", "InvalidRecord")),
        ("record with a bad blob ref", cr(record={"$type": COLL, "f": {
            "$type": "blob", "ref": {"$link": "nope"}, "mimeType": "a/b", "size": 1}}),
         400, ("InvalidRequest", "InvalidRecord")),
        ("record with a bad $link", cr(record={"$type": COLL, "l": {"$link": "../../x"}}),
         400, ("InvalidRequest", "InvalidRecord")),
        ("repo not a string", cr(repo=123), 400, "InvalidRequest"),
        ("rkey not a string", cr(rkey=7), 400, "InvalidRequest"),
        ("collection not a string", cr(collection=["a"]), 400, "InvalidRequest"),
        ("swapCommit not a CID", cr(swapCommit="xyz"), 400, "InvalidRequest"),
        ("swapCommit stale", cr(swapCommit=GOOD_CID), 400, "InvalidSwap"),
        ("validate true", cr(validate=True), 400, "InvalidRequest"),
        ("record already exists", cr(rkey="first"), 400, ("InvalidRequest", "RecordExists")),
        ("createSession without password",
         post("com.atproto.server.createSession", {"identifier": "alice.test"}),
         400, "InvalidRequest"),
        ("createSession identifier wrong type",
         post("com.atproto.server.createSession", {"identifier": ["alice.test"],
                                                    "password": "x"}), 400, "InvalidRequest"),
        ("createSession wrong password",
         post("com.atproto.server.createSession", {"identifier": "alice.test",
                                                    "password": "wrong"}),
         401, "AuthenticationRequired"),
        ("createAccount empty", post("com.atproto.server.createAccount", {}), 400, None),
        ("createAccount handle wrong type",
         post("com.atproto.server.createAccount", {"handle": 5, "email": "x@example.com",
                                                    "password": "pw"}), 400, "InvalidRequest"),
        ("createAccount bad email",
         post("com.atproto.server.createAccount", {"handle": "emailless.test",
                                                    "email": "nope", "password": "pw"}),
         400, "InvalidEmail"),
        ("createAccount taken handle",
         post("com.atproto.server.createAccount", {"handle": "alice.test",
                                                    "email": "other@example.com",
                                                    "password": "pw"}),
         400, "HandleNotAvailable"),
        ("createAccount taken email",
         post("com.atproto.server.createAccount", {"handle": "another.test",
                                                    "email": "alice@example.com",
                                                    "password": "pw"}),
         400, "InvalidEmail"),
        ("createAccount foreign domain",
         post("com.atproto.server.createAccount", {"handle": "bob.example.com",
                                                    "email": "bob@example.com",
                                                    "password": "pw"}),
         400, "UnsupportedDomain"),
        ("createAccount password wrong type",
         post("com.atproto.server.createAccount", {"handle": "carol.test",
                                                    "email": "carol@example.com",
                                                    "password": 12345}), 400, None),
        ("putPreferences not a list",
         post("app.bsky.actor.putPreferences", {"preferences": {"a": 1}}, token=tok),
         400, "InvalidRequest"),
        ("putPreferences foreign namespace",
         post("app.bsky.actor.putPreferences", {"preferences": [{"$type": "com.x.y"}]},
              token=tok), 400, "InvalidRequest"),
        ("applyWrites unknown $type",
         post("com.atproto.repo.applyWrites", {"repo": did, "writes": [{"$type": "x"}]},
              token=tok), 400, "InvalidRequest"),
        ("applyWrites too many",
         post("com.atproto.repo.applyWrites", {"repo": did, "writes": [
             {"$type": "com.atproto.repo.applyWrites#create", "collection": COLL,
              "value": good_record}] * 201}, token=tok), 400, "InvalidRequest"),
        ("applyWrites half bad",
         post("com.atproto.repo.applyWrites", {"repo": did, "writes": [
             {"$type": "com.atproto.repo.applyWrites#create", "collection": COLL,
              "rkey": "fine", "value": good_record},
             {"$type": "com.atproto.repo.applyWrites#delete", "collection": COLL,
              "rkey": "missing"}]}, token=tok), 400, ("InvalidRequest", "RecordNotFound")),
        ("putRecord swapRecord mismatch",
         post("com.atproto.repo.putRecord", {"repo": did, "collection": COLL, "rkey": "first",
                                             "record": good_record, "swapRecord": GOOD_CID},
              token=tok), 400, "InvalidSwap"),
        ("deleteRecord swapRecord mismatch",
         post("com.atproto.repo.deleteRecord", {"repo": did, "collection": COLL,
                                                "rkey": "first", "swapRecord": GOOD_CID},
              token=tok), 400, "InvalidSwap"),
        ("write to another repo", cr(repo="did:web:nobody.test"), 400, "RepoNotFound"),
        ("getServiceAuth exp not a number",
         get("com.atproto.server.getServiceAuth", token=tok, aud=api.service_did, exp="soon"),
         400, "InvalidRequest"),
        ("listRecords limit not a number",
         get("com.atproto.repo.listRecords", repo=did, collection=COLL, limit="ten"),
         400, "InvalidRequest"),
        ("listRecords limit out of range",
         get("com.atproto.repo.listRecords", repo=did, collection=COLL, limit=1000),
         400, "InvalidRequest"),
        ("listRecords reverse not a bool",
         get("com.atproto.repo.listRecords", repo=did, collection=COLL, reverse="yes"),
         400, "InvalidRequest"),
        ("getRecord without rkey",
         get("com.atproto.repo.getRecord", repo=did, collection=COLL), 400, "InvalidRequest"),
        ("getRecord missing", get("com.atproto.repo.getRecord", repo=did, collection=COLL,
                                  rkey="nope"), 400, "RecordNotFound"),
        # --- invalid identifiers ---------------------------------------------------------
        ("getRepo bad DID", get("com.atproto.sync.getRepo", did="alice"), 400,
         "InvalidRequest"),
        ("getRepo unknown DID", get("com.atproto.sync.getRepo", did="did:web:nobody.test"),
         400, "RepoNotFound"),
        ("getRepo since not a TID", get("com.atproto.sync.getRepo", did=did, since="abc"),
         400, "InvalidRequest"),
        ("resolveHandle bad handle", get("com.atproto.identity.resolveHandle", handle="no"),
         400, "InvalidRequest"),
        ("resolveHandle missing", get("com.atproto.identity.resolveHandle"), 400,
         "InvalidRequest"),
        ("listRecords bad NSID", get("com.atproto.repo.listRecords", repo=did,
                                     collection="not an nsid"), 400, "InvalidRequest"),
        ("createRecord bad NSID", cr(collection="com.example"), 400, "InvalidRequest"),
        ("createRecord rkey '.'", cr(rkey="."), 400, "InvalidRequest"),
        ("createRecord rkey with space", cr(rkey="a b"), 400, "InvalidRequest"),
        ("getRecord bad CID", get("com.atproto.repo.getRecord", repo=did, collection=COLL,
                                  rkey="first", cid="bafy-nope"), 400, "InvalidRequest"),
        ("getBlob bad CID", get("com.atproto.sync.getBlob", did=did, cid="xyz"), 400,
         "InvalidRequest"),
        ("getBlob unknown CID", get("com.atproto.sync.getBlob", did=did,
                                    cid="bafkreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm"),
         400, "BlobNotFound"),
        ("getBlocks bad CID", get("com.atproto.sync.getBlocks", did=did, cids="nope"), 400,
         "InvalidRequest"),
        ("getBlocks missing block", get("com.atproto.sync.getBlocks", did=did, cids=GOOD_CID),
         400, "BlockNotFound"),
        ("createInviteCode forAccount not a DID",
         post("com.atproto.server.createInviteCode", {"useCount": 1, "forAccount": "x"},
              headers=api.admin_headers()), 400, "InvalidRequest"),
        ("createInviteCode useCount wrong type",
         post("com.atproto.server.createInviteCode", {"useCount": "1"},
              headers=api.admin_headers()), 400, "InvalidRequest"),
        ("createInviteCode useCount zero",
         post("com.atproto.server.createInviteCode", {"useCount": 0},
              headers=api.admin_headers()), 400, "InvalidRequest"),
        # The lexicon's format check comes first, as in the reference: InvalidRequest.
        ("updateHandle invalid", post("com.atproto.identity.updateHandle", {"handle": "x"},
                                      token=tok), 400, "InvalidRequest"),
        ("deleteAccount bad password",
         post("com.atproto.server.deleteAccount", {"did": did, "password": "nope",
                                                   "token": "AAAAA-BBBBB"}), 401, None),
        ("deleteAccount no token requested",
         post("com.atproto.server.deleteAccount", {"did": did, "password": alice.password,
                                                   "token": "AAAAA-BBBBB"}),
         400, "InvalidToken"),
        # --- path traversal in every parameter that names a file ---------------------------
        ("getRepo did=../../etc", get("com.atproto.sync.getRepo", did="../../etc"), 400,
         None),
        ("getRepo did:web:..", get("com.atproto.sync.getRepo", did="did:web:.."), 400, None),
        ("getRepo did:plc:../..", get("com.atproto.sync.getRepo", did="did:plc:../../etc"),
         400, None),
        ("getRepoStatus did=../..", get("com.atproto.sync.getRepoStatus", did="../.."), 400,
         None),
        ("getLatestCommit did=%2e%2e", get("com.atproto.sync.getLatestCommit",
                                           did="did:web:%2e%2e"), 400, None),
        ("getBlob did=../../etc", get("com.atproto.sync.getBlob", did="../../etc",
                                      cid=GOOD_CID), 400, None),
        ("getBlob cid=..", get("com.atproto.sync.getBlob", did=did, cid=".."), 400, None),
        ("getBlob cid=../../pds.env", get("com.atproto.sync.getBlob", did=did,
                                          cid="../../../../pds.env"), 400, None),
        ("listBlobs did=../..", get("com.atproto.sync.listBlobs", did="../../accounts"), 400,
         None),
        ("getRecord repo=../../etc", get("com.atproto.repo.getRecord", repo="../../etc",
                                         collection=COLL, rkey="first"), 400, None),
        ("getRecord rkey=..", get("com.atproto.repo.getRecord", repo=did, collection=COLL,
                                  rkey=".."), 400, "InvalidRequest"),
        ("getRecord rkey=../../x", get("com.atproto.repo.getRecord", repo=did,
                                       collection=COLL, rkey="../../x"), 400, None),
        ("getRecord collection=../..", get("com.atproto.repo.getRecord", repo=did,
                                           collection="../..", rkey="first"), 400, None),
        ("sync.getRecord rkey=..", get("com.atproto.sync.getRecord", did=did,
                                       collection=COLL, rkey=".."), 400, None),
        ("listRecords cursor=../..", get("com.atproto.repo.listRecords", repo=did,
                                         collection=COLL, cursor="../.."), 400, None),
        ("describeRepo repo=../../etc", get("com.atproto.repo.describeRepo",
                                            repo="../../etc"), 400, None),
        ("describeRepo repo=did:web:..", get("com.atproto.repo.describeRepo",
                                             repo="did:web:.."), 400, None),
        ("describeRepo repo=a/b.test", get("com.atproto.repo.describeRepo",
                                           repo="a/b.test"), 400, None),
        ("createRecord rkey ..", cr(rkey=".."), 400, "InvalidRequest"),
        ("createRecord rkey ../x", cr(rkey="../x"), 400, "InvalidRequest"),
        ("createRecord collection ../x", cr(collection="../x.y.z"), 400, "InvalidRequest"),
        ("createRecord repo ../..", cr(repo="../../etc"), 400, None),
        ("deleteRecord rkey ..",
         post("com.atproto.repo.deleteRecord", {"repo": did, "collection": COLL, "rkey": ".."},
              token=tok), 400, "InvalidRequest"),
        ("resolveHandle with /", get("com.atproto.identity.resolveHandle",
                                     handle="../../etc/x.test"), 400, None),
        ("resolveHandle a/b", get("com.atproto.identity.resolveHandle", handle="a/b.test"),
         400, None),
        ("createSession identifier ../..",
         post("com.atproto.server.createSession", {"identifier": "../../pds.env",
                                                    "password": "x"}), 401, None),
        ("createSession identifier did traversal",
         post("com.atproto.server.createSession", {"identifier": "did:web:..",
                                                    "password": "x"}), 401, None),
        ("createSession email traversal",
         post("com.atproto.server.createSession", {"identifier": "../../x@y.z",
                                                    "password": "x"}), 401, None),
        ("createAccount handle with /",
         post("com.atproto.server.createAccount", {"handle": "../../evil.test",
                                                    "email": "e@example.com",
                                                    "password": "pw"}), 400, "InvalidRequest"),
        ("createAccount email ../",
         post("com.atproto.server.createAccount", {"handle": "mallory.test",
                                                    "email": "../../etc@example.com",
                                                    "password": "pw"}), 400, "InvalidEmail"),
        ("createAccount email with /",
         post("com.atproto.server.createAccount", {"handle": "mallory.test",
                                                    "email": "a/b@example.com",
                                                    "password": "pw"}), 400, "InvalidEmail"),
        ("createAccount did ../..",
         post("com.atproto.server.createAccount", {"handle": "mallory.test",
                                                    "did": "../../etc",
                                                    "email": "m@example.com",
                                                    "password": "pw"}), 400, "InvalidRequest"),
        ("updateHandle with /", post("com.atproto.identity.updateHandle",
                                     {"handle": "../../x.test"}, token=tok), 400,
         "InvalidRequest"),
        ("deleteAccount did ../..",
         post("com.atproto.server.deleteAccount", {"did": "../../etc", "password": "x",
                                                   "token": "x"}), 400, None),
        ("revokeAppPassword name ../..",
         post("com.atproto.server.revokeAppPassword", {"name": "../../account.json"},
              token=tok), 200, None),
        ("getServiceAuth aud ../..", get("com.atproto.server.getServiceAuth", token=tok,
                                         aud="../../etc"), 400, "InvalidRequest"),
        ("well-known Host ../..", raw("GET", "/.well-known/atproto-did",
                                      headers={"Host": "../.."}), 404, None),
        ("well-known Host accounts", raw("GET", "/.well-known/did.json",
                                         headers={"Host": "..%2f..%2faccounts"}), 404, None),
        # NUL bytes make the OS refuse a path outright: that must not become a 500.
        ("createSession handle with NUL",
         post("com.atproto.server.createSession", {"identifier": "ali\x00ce.test",
                                                    "password": "x"}), 401, None),
        ("createSession email with NUL",
         post("com.atproto.server.createSession", {"identifier": "a\x00@example.com",
                                                    "password": "x"}), 401, None),
        ("createSession DID with NUL",
         post("com.atproto.server.createSession", {"identifier": "did:web:a\x00b",
                                                    "password": "x"}), 401, None),
        ("describeRepo handle with NUL", get("com.atproto.repo.describeRepo",
                                             repo="alice\x00.test"), 400, None),
        ("getRepo DID with NUL", get("com.atproto.sync.getRepo", did="did:web:a\x00b"), 400,
         None),
        ("createAccount email with NUL",
         post("com.atproto.server.createAccount", {"handle": "mallory.test",
                                                    "email": "m\x00@example.com",
                                                    "password": "pw"}), 400, "InvalidEmail"),
        ("refresh jti ../..", post("com.atproto.server.refreshSession",
                                   token=refresh_no_session), 400, None),
        # --- blobs -------------------------------------------------------------------------
        ("oversized blob (Content-Length)",
         post("com.atproto.repo.uploadBlob", token=tok, content=big_blob,
              headers={"Content-Type": "image/png"}), 413, "PayloadTooLarge"),
        ("oversized blob (chunked)",
         post("com.atproto.repo.uploadBlob", token=tok, content=_chunks(big_blob, 1000),
              headers={"Content-Type": "image/png"}), 413, "PayloadTooLarge"),
        ("empty blob", post("com.atproto.repo.uploadBlob", token=tok, content=b"",
                            headers={"Content-Type": "image/png"}), 400, "InvalidRequest"),
        ("blob without auth", post("com.atproto.repo.uploadBlob", content=b"abc",
                                   headers={"Content-Type": "image/png"}), 401, None),
        ("blob with a service JWT for another method",
         post("com.atproto.repo.uploadBlob", token=upload_other_lxm, content=b"abc",
              headers={"Content-Type": "image/png"}), 401, "BadJwtLexiconMethod"),
        ("blob with a service JWT for another audience",
         post("com.atproto.repo.uploadBlob", token=upload_other_aud, content=b"abc",
              headers={"Content-Type": "image/png"}), 401, "BadJwtAudience"),
        # --- strings no UTF-8 can hold, and fields of the wrong type -----------------------
        # (JSON can spell a lone surrogate; json.dumps does so, httpx's json= can't.)
        ("lone surrogate in a name",
         post("com.atproto.server.createAppPassword", token=tok, headers=json_h,
              content=json.dumps({"name": "\ud800"}).encode()), 400, "InvalidRequest"),
        ("lone surrogate in a repo",
         post("com.atproto.repo.createRecord", token=tok, headers=json_h,
              content=json.dumps({"repo": "\udfff", "collection": COLL,
                                  "record": good_record}).encode()), 400, "InvalidRequest"),
        ("lone surrogate in a record",
         post("com.atproto.repo.createRecord", token=tok, headers=json_h,
              content=json.dumps({"repo": did, "collection": COLL,
                                  "record": {**good_record, "text": "a\ud800"}}).encode()),
         400, "InvalidRequest"),
        ("lone surrogate in an admin password",
         post("com.atproto.admin.updateAccountPassword", headers={
             **json_h, **api.admin_headers()}, content=json.dumps(
             {"did": did, "password": "\ud800"}).encode()), 400, "InvalidRequest"),
        ("validate not a boolean", cr(validate="yes"), 400, "InvalidRequest"),
        ("deleteAfter not a datetime",
         post("com.atproto.server.deactivateAccount", {"deleteAfter": "soon\x00"}, token=tok),
         400, "InvalidRequest"),
        ("deleteAfter not a string",
         post("com.atproto.server.deactivateAccount", {"deleteAfter": 5}, token=tok),
         400, "InvalidRequest"),
        ("updateSubjectStatus deactivated not an object",
         post("com.atproto.admin.updateSubjectStatus",
              {"subject": {"$type": "com.atproto.admin.defs#repoRef", "did": did},
               "deactivated": 5}, headers=api.admin_headers()), 400, "InvalidRequest"),
        ("enableAccountInvites note not a string",
         post("com.atproto.admin.enableAccountInvites", {"account": did, "note": 5},
              headers=api.admin_headers()), 400, "InvalidRequest"),
        ("getAccountInviteCodes includeUsed not a boolean",
         get("com.atproto.server.getAccountInviteCodes", token=tok, includeUsed="maybe"),
         400, "InvalidRequest"),
        # --- unknown methods and wrong verbs ----------------------------------------------
        # Not served here: forwarded, for a session only (test_server_proxy).
        ("unknown method GET", get("com.example.nothing.here"), 401,
         "AuthenticationRequired"),
        ("unknown method POST", post("com.example.nothing.here", {}), 401,
         "AuthenticationRequired"),
        ("not an NSID", raw("GET", "/xrpc/..%2F..%2Fpds.env"), 404, "NotFound"),
        ("GET on a procedure", get("com.atproto.repo.createRecord", token=tok), 400,
         "InvalidRequest"),
        ("POST on a query", post("com.atproto.repo.listRecords", {}), 400, "InvalidRequest"),
        ("PUT", raw("PUT", "/xrpc/com.atproto.repo.createRecord", content=b"{}"), 405,
         None),
        ("importRepo", post("com.atproto.repo.importRepo", token=tok,
                            headers={"Content-Type": "application/vnd.ipld.car"},
                            content=b"\x00"), 400, "InvalidRequest"),
        # --- tokens --------------------------------------------------------------------------
        ("no token", create({"repo": did, "collection": COLL, "record": good_record},
                            token=None), 401, "AuthenticationRequired"),
        ("garbage token", create({"repo": did, "collection": COLL, "record": good_record},
                                 token="garbage"), 401, "InvalidToken"),
        ("unsigned token", create({"repo": did, "collection": COLL, "record": good_record},
                                  token=unsigned), 401, "InvalidToken"),
        ("token of another secret",
         create({"repo": did, "collection": COLL, "record": good_record}, token=foreign),
         401, "InvalidToken"),
        ("token for another audience",
         create({"repo": did, "collection": COLL, "record": good_record}, token=wrong_aud),
         401, "InvalidToken"),
        ("token with a traversal sub",
         create({"repo": did, "collection": COLL, "record": good_record},
                token=traversal_sub), 401, "InvalidToken"),
        ("expired token", create({"repo": did, "collection": COLL, "record": good_record},
                                 token=expired), 400, "ExpiredToken"),
        ("refresh token as access",
         create({"repo": did, "collection": COLL, "record": good_record},
                token=alice.refresh), 400, "InvalidToken"),
        ("access token as refresh", post("com.atproto.server.refreshSession", token=tok),
         400, "InvalidToken"),
        ("access token to deleteSession", post("com.atproto.server.deleteSession",
                                               token=tok), 400, "InvalidToken"),
        ("deeply nested JWT header to uploadBlob",
         post("com.atproto.repo.uploadBlob", token=deep_jwt, content=b"abc",
              headers={"Content-Type": "image/png"}), 401, None),
        ("deeply nested JWT header to createAccount",
         post("com.atproto.server.createAccount", {"handle": "deep.test"}, token=deep_jwt),
         401, None),
        ("deeply nested JWT header as access",
         create({"repo": did, "collection": COLL, "record": good_record}, token=deep_jwt),
         401, "InvalidToken"),
        ("service JWT as access",
         create({"repo": did, "collection": COLL, "record": good_record}, token=service),
         401, "InvalidToken"),
        ("Basic auth to a user method",
         lambda: api.post("com.atproto.repo.createRecord",
                          {"repo": did, "collection": COLL, "record": good_record},
                          headers=api.admin_headers()), 401, "InvalidToken"),
        # --- admin -------------------------------------------------------------------------
        ("admin without auth", post("com.atproto.server.createInviteCode", {"useCount": 1}),
         401, "AuthenticationRequired"),
        ("admin wrong password", post("com.atproto.server.createInviteCode", {"useCount": 1},
                                      headers=api.admin_headers("wrong")), 401, None),
        ("admin wrong user", post("com.atproto.server.createInviteCodes", {"useCount": 1},
                                  headers=api.admin_headers(user="root")), 401, None),
        ("admin empty password", post("com.atproto.server.createInviteCodes",
                                      {"useCount": 1}, headers=api.admin_headers("")),
         401, None),
        ("admin garbage Basic", post("com.atproto.server.createInviteCode", {"useCount": 1},
                                     headers={"Authorization": "Basic !!!notbase64"}),
         401, None),
        ("admin with a user token", post("com.atproto.server.createInviteCode",
                                         {"useCount": 1}, token=tok), 401, None),
    ]
    return cases


def test_bad_requests_get_errors_and_change_nothing(api, alice):
    cases = battery(api, alice)
    root = api.server.data_dir
    before = snapshot(root)
    failures = []
    for label, thunk, status, names in cases:
        try:
            resp = thunk()
            if status == 200:
                ok(resp)
            elif resp.request.url.path.startswith("/xrpc/"):
                err(resp, status, names)
            else:
                assert resp.status_code == status, resp.text
        except (AssertionError, httpx.HTTPError) as e:
            failures.append(f"{label}: {e!r}")
    assert not failures, "\n".join(failures)
    after = snapshot(root)
    assert diff_snapshots(before, after) == []
    # Nothing escaped the data dir either, and the account still works.
    assert ok(api.get("com.atproto.repo.getRecord", repo=alice.did, collection=COLL,
                      rkey="first"))["value"]["text"] == "hello"
    assert len(api.list_records(alice.did)) == 2


def test_error_bodies_are_xrpc_json_with_cors(api):
    r = api.get("com.example.nothing.here", headers={"Origin": "https://app.example"})
    body = err(r, 401, "AuthenticationRequired")
    assert set(body) == {"error", "message"}
    assert r.headers["access-control-allow-origin"] == "*"
    r = api.post("com.atproto.repo.createRecord", {})
    assert "www-authenticate" in r.headers
    err(r, 401)


def test_errors_before_the_body_is_read_close_the_connection_openly(api, alice):
    """An answer sent without reading a large body ends the connection: the server must
    say so (`Connection: close`), or a client reusing the connection fails."""
    big = b"x" * (JSON_LIMIT + 10)
    r = api.post("com.atproto.repo.createRecord", token=alice.access, content=big,
                 headers={"Content-Type": "application/json"})
    err(r, 413, "PayloadTooLarge")
    assert r.headers.get("connection") == "close"
    r = api.post("com.atproto.repo.uploadBlob", content=b"y" * 1_000_000,
                 headers={"Content-Type": "image/png"})
    err(r, 401)
    assert r.headers.get("connection") == "close"
    # A small unread body is drained instead: the connection stays open.
    r = api.post("com.atproto.repo.uploadBlob", content=b"z" * 1000,
                 headers={"Content-Type": "image/png"})
    err(r, 401)
    assert r.headers.get("connection") != "close"
    # And the client goes on working either way.
    ok(api.get("com.atproto.server.describeServer"))
