"""What the lexicons say that the PDS used to leave out (found by an endpoint census):
describeServer's `links`, `contact` and `blobUploadLimit`; listBlobs' `since`;
describeRepo's `handleIsCorrect`, checked (the case of a DID document that names
another handle needs a PLC directory: tests/test_interop_api.py); getSubjectStatus of a
blob and of a record."""

from __future__ import annotations

import os

from server_util import Api, api_fixture, err, ok

BLOB_LIMIT = 3_000_000
api = api_fixture(env={"PDS_PRIVACY_POLICY_URL": "https://example.com/privacy",
                       "PDS_TERMS_OF_SERVICE_URL": "https://example.com/tos",
                       "PDS_CONTACT_EMAIL": "admin@example.com",
                       "PDS_BLOB_LIMIT": str(BLOB_LIMIT)})
NOW = "2026-01-01T00:00:00.000Z"


def test_describe_server_has_links_contact_and_the_upload_limit(api: Api) -> None:
    d = ok(api.get("com.atproto.server.describeServer"))
    assert d["links"] == {"privacyPolicy": "https://example.com/privacy",
                          "termsOfService": "https://example.com/tos"}
    assert d["contact"] == {"email": "admin@example.com"}
    assert d["blobUploadLimit"] == BLOB_LIMIT


def _image_post(api: Api, acct, seed: int) -> tuple[str, str]:
    """A post with an image: (the blob's CID, the commit's rev)."""
    data = b"\x89PNG\r\n\x1a\n" + bytes([seed]) + os.urandom(200)
    blob = ok(api.post("com.atproto.repo.uploadBlob", token=acct.access, content=data,
                       headers={"Content-Type": "image/png"}))["blob"]
    embed = {"$type": "app.bsky.embed.images", "images": [{"alt": "", "image": blob}]}
    got = ok(api.create_record(acct, {"text": "pic", "createdAt": NOW, "embed": embed},
                               collection="app.bsky.feed.post"))
    return blob["ref"]["$link"], got["commit"]["rev"]


def test_list_blobs_since_a_rev(api: Api) -> None:
    acct = api.create_account("blobsince")
    start = ok(api.get("com.atproto.sync.getLatestCommit", did=acct.did))["rev"]
    first, rev1 = _image_post(api, acct, 1)
    second, rev2 = _image_post(api, acct, 2)

    def listed(**since: str) -> list[str]:
        return ok(api.get("com.atproto.sync.listBlobs", did=acct.did, **since))["cids"]

    assert listed() == sorted([first, second])
    assert listed(since=start) == sorted([first, second])
    assert listed(since=rev1) == [second]
    assert listed(since=rev2) == []
    assert listed(since="2222222222222") == sorted([first, second])  # before any commit
    err(api.get("com.atproto.sync.listBlobs", did=acct.did, since="yesterday"), 400,
        "InvalidRequest")


def test_describe_repo_checks_the_handle(api: Api) -> None:
    acct = api.create_account("handlecheck")
    d = ok(api.get("com.atproto.repo.describeRepo", repo=acct.did))
    assert d["handle"] == acct.handle and d["handleIsCorrect"] is True
    # The handle is now another's: the old one no longer resolves to this DID. (The
    # answer is remembered for a while per worker: a new account shows it at once.)
    other = api.create_account("handlecheck2")
    ok(api.post("com.atproto.identity.updateHandle", {"handle": "moved-away.test"},
                token=other.access))
    d = ok(api.get("com.atproto.repo.describeRepo", repo=other.did))
    assert d["handle"] == "moved-away.test" and d["handleIsCorrect"] is True


def test_subject_status_of_a_blob_and_a_record(api: Api) -> None:
    acct = api.create_account("subjects")
    admin = api.admin_headers()
    cid, _rev = _image_post(api, acct, 3)
    got = ok(api.get("com.atproto.admin.getSubjectStatus", headers=admin, did=acct.did,
                     blob=cid))
    assert got == {"subject": {"$type": "com.atproto.admin.defs#repoBlobRef",
                               "did": acct.did, "cid": cid},
                   "takedown": {"applied": False}}
    missing = "bafkreibme22gw2h7y2h7tg2fhqotaqjucnbc24deqo72b6mkl2egezxhvy"
    err(api.get("com.atproto.admin.getSubjectStatus", headers=admin, did=acct.did,
                blob=missing), 400, "NotFound")
    body = err(api.get("com.atproto.admin.getSubjectStatus", headers=admin, blob=cid), 400,
               "InvalidRequest")
    assert "did" in body["message"]

    note = ok(api.create_record(acct, {"x": 1}))
    got = ok(api.get("com.atproto.admin.getSubjectStatus", headers=admin, uri=note["uri"]))
    assert got["subject"] == {"$type": "com.atproto.repo.strongRef", "uri": note["uri"],
                              "cid": note["cid"]}
    err(api.get("com.atproto.admin.getSubjectStatus", headers=admin,
                uri=note["uri"] + "x"), 400, "NotFound")
    repo = ok(api.get("com.atproto.admin.getSubjectStatus", headers=admin, did=acct.did))
    assert repo["subject"] == {"$type": "com.atproto.admin.defs#repoRef", "did": acct.did}
