"""Blobs over HTTP: streamed upload, temporary vs referenced blobs, getBlob's headers and
ranges, references kept in step with records, listMissingBlobs, per-account isolation;
and the store's garbage collection of stale temporary uploads (in process)."""

from __future__ import annotations

import hashlib
import os
import time

from server_util import Api, api_fixture, blob_ref, diff_snapshots, err, ok, snapshot

from pds.repo.codec import raw_cid_for
from pds.store.blobs import TEMP_GRACE, BlobStore

COLL = "com.example.photo"


api = api_fixture()


def upload(api: Api, acct, data: bytes, mime: str = "image/png", chunked: bool = True) -> dict:
    content = (data[i:i + 1000] for i in range(0, len(data), 1000)) if chunked else data
    return ok(api.post("com.atproto.repo.uploadBlob", token=acct.access, content=content,
                       headers={"Content-Type": mime}))["blob"]


def blob_files(api: Api, did: str, cid: str) -> tuple:
    p = api.server.data_dir / "accounts" / did / "blobs" / cid[-2:] / cid
    return p, p.with_name(cid + ".json")


def referencing(api: Api, acct, blob: dict, rkey: str):
    return api.create_record(acct, {"image": blob_ref(blob), "alt": rkey}, collection=COLL,
                             rkey=rkey)


def test_upload_and_serve_lifecycle(api):
    acct = api.create_account("photog")
    data = os.urandom(5000) + b"tail"
    blob = upload(api, acct, data, "image/webp")
    cid = raw_cid_for(data).encode()
    assert blob == {"$type": "blob", "ref": {"$link": cid}, "mimeType": "image/webp",
                    "size": len(data)}
    assert cid.startswith("bafkrei")  # CIDv1, raw codec, sha2-256
    assert raw_cid_for(data).cid_bytes[-32:] == hashlib.sha256(data).digest()
    path, meta = blob_files(api, acct.did, cid)
    assert path.read_bytes() == data and meta.exists()

    # Unreferenced: a temporary upload, not served and not listed.
    err(api.get("com.atproto.sync.getBlob", did=acct.did, cid=cid), 400, "BlobNotFound")
    assert ok(api.get("com.atproto.sync.listBlobs", did=acct.did))["cids"] == []

    ok(referencing(api, acct, blob, "one"))
    assert ok(api.get("com.atproto.sync.listBlobs", did=acct.did))["cids"] == [cid]
    r = api.get("com.atproto.sync.getBlob", did=acct.did, cid=cid)
    assert r.status_code == 200 and r.content == data
    assert r.headers["content-type"] == "image/webp"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["content-disposition"].startswith("attachment")
    assert r.headers["content-security-policy"] == "default-src 'none'; sandbox"
    assert int(r.headers["content-length"]) == len(data)

    r = api.get("com.atproto.sync.getBlob", did=acct.did, cid=cid,
                headers={"Range": "bytes=10-19"})
    assert r.status_code == 206 and r.content == data[10:20]
    assert r.headers["content-range"] == f"bytes 10-19/{len(data)}"
    assert r.headers["content-security-policy"] == "default-src 'none'; sandbox"
    r = api.get("com.atproto.sync.getBlob", did=acct.did, cid=cid,
                headers={"Range": "bytes=-4"})
    assert r.status_code == 206 and r.content == b"tail"
    r = api.get("com.atproto.sync.getBlob", did=acct.did, cid=cid,
                headers={"Range": f"bytes={len(data) + 5}-"})
    assert r.status_code == 416

    # A second record shares the blob; it goes only when the last reference goes.
    ok(referencing(api, acct, blob, "two"))
    ok(api.post("com.atproto.repo.deleteRecord",
                {"repo": acct.did, "collection": COLL, "rkey": "one"}, token=acct.access))
    assert api.get("com.atproto.sync.getBlob", did=acct.did, cid=cid).content == data
    # Replacing the record with one that no longer names the blob drops the last one.
    ok(api.post("com.atproto.repo.putRecord",
                {"repo": acct.did, "collection": COLL, "rkey": "two",
                 "record": {"$type": COLL, "alt": "no image now"}}, token=acct.access))
    err(api.get("com.atproto.sync.getBlob", did=acct.did, cid=cid), 400, "BlobNotFound")
    assert not path.exists() and not meta.exists()
    assert ok(api.get("com.atproto.sync.listBlobs", did=acct.did))["cids"] == []


def test_delete_last_reference_removes_files(api):
    acct = api.create_account("deleter")
    data = b"GIF89a" + os.urandom(300)
    blob = upload(api, acct, data, "image/gif", chunked=False)
    cid = blob["ref"]["$link"]
    ok(referencing(api, acct, blob, "only"))
    path, meta = blob_files(api, acct.did, cid)
    assert path.exists() and meta.exists()
    ok(api.post("com.atproto.repo.deleteRecord",
                {"repo": acct.did, "collection": COLL, "rkey": "only"}, token=acct.access))
    assert not path.exists() and not meta.exists()
    err(api.get("com.atproto.sync.getBlob", did=acct.did, cid=cid), 400, "BlobNotFound")


def test_reference_to_a_blob_never_uploaded(api):
    acct = api.create_account("dreamer")
    ghost = raw_cid_for(b"never uploaded").encode()
    root = api.server.data_dir
    before = snapshot(root)
    record = {"image": {"$type": "blob", "ref": {"$link": ghost}, "mimeType": "image/png",
                        "size": 14}}
    err(api.create_record(acct, record, collection=COLL), 400,
        ("BlobNotFound", "InvalidRequest"))
    err(api.post("com.atproto.repo.applyWrites", {"repo": acct.did, "writes": [
        {"$type": "com.atproto.repo.applyWrites#create", "collection": COLL, "rkey": "fine",
         "value": {"$type": COLL, "alt": "ok"}},
        {"$type": "com.atproto.repo.applyWrites#create", "collection": COLL, "rkey": "bad",
         "value": {"$type": COLL, **record}}]}, token=acct.access), 400,
        ("BlobNotFound", "InvalidRequest"))
    assert diff_snapshots(before, snapshot(root)) == []
    assert api.list_records(acct.did, COLL) == []


def test_blob_of_another_account_cannot_be_referenced(api):
    owner = api.create_account("blobowner")
    thief = api.create_account("thief")
    data = b"owned bytes " + os.urandom(64)
    blob = upload(api, owner, data)
    root = api.server.data_dir
    before = snapshot(root)
    err(referencing(api, thief, blob, "stolen"), 400, ("BlobNotFound", "InvalidRequest"))
    assert diff_snapshots(before, snapshot(root)) == []
    err(api.get("com.atproto.sync.getBlob", did=thief.did, cid=blob["ref"]["$link"]), 400,
        "BlobNotFound")
    # The owner's temporary upload is still not served from its own repo either.
    err(api.get("com.atproto.sync.getBlob", did=owner.did, cid=blob["ref"]["$link"]), 400,
        "BlobNotFound")
    ok(referencing(api, owner, blob, "mine"))
    assert api.get("com.atproto.sync.getBlob", did=owner.did,
                   cid=blob["ref"]["$link"]).content == data


def test_list_missing_blobs(api):
    acct = api.create_account("migrant")
    data = b"\xff\xd8\xff" + os.urandom(100)
    blob = upload(api, acct, data, "image/jpeg")
    cid = blob["ref"]["$link"]
    created = ok(referencing(api, acct, blob, "pic"))
    assert ok(api.get("com.atproto.repo.listMissingBlobs", token=acct.access)) == \
        {"blobs": []}
    status = ok(api.get("com.atproto.server.checkAccountStatus", token=acct.access))
    assert status["expectedBlobs"] == 1 and status["importedBlobs"] == 1

    # As after a repo import: the record is there, the bytes not (yet).
    path, _ = blob_files(api, acct.did, cid)
    path.unlink()
    missing = ok(api.get("com.atproto.repo.listMissingBlobs", token=acct.access))
    assert missing == {"blobs": [{"cid": cid, "recordUri": created["uri"]}]}
    status = ok(api.get("com.atproto.server.checkAccountStatus", token=acct.access))
    assert status["expectedBlobs"] == 1 and status["importedBlobs"] == 0
    err(api.get("com.atproto.sync.getBlob", did=acct.did, cid=cid), 400, "BlobNotFound")
    err(api.get("com.atproto.repo.listMissingBlobs"), 401)

    # Uploading the bytes again fills the gap, and the blob is served again.
    assert upload(api, acct, data, "image/jpeg")["ref"]["$link"] == cid
    assert ok(api.get("com.atproto.repo.listMissingBlobs", token=acct.access)) == \
        {"blobs": []}
    assert api.get("com.atproto.sync.getBlob", did=acct.did, cid=cid).content == data


def test_identical_uploads_share_one_file(api):
    acct = api.create_account("twice")
    data = os.urandom(256)
    a = upload(api, acct, data, "image/png")
    b = upload(api, acct, data, "image/png", chunked=False)
    assert a == b
    shard = api.server.data_dir / "accounts" / acct.did / "blobs" / a["ref"]["$link"][-2:]
    assert sorted(os.listdir(shard)) == sorted([a["ref"]["$link"], a["ref"]["$link"] + ".json"])
    # Nothing is left behind in the staging area.
    assert not [n for n in os.listdir(api.server.data_dir / "tmp") if n.startswith("blob-")]


# --- garbage collection (in process, on a data dir of our own) ---------------------------------


def _store_upload(store: BlobStore, data: bytes, mime: str = "image/png") -> str:
    up = store.start_upload()
    up.write(data, 1 << 20)
    cid, _ = up.finish(mime)
    return cid.encode()


def test_gc_removes_only_stale_unreferenced_blobs(tmp_path):
    (tmp_path / "tmp").mkdir()
    store = BlobStore(tmp_path / "blobs", tmp_path / "tmp")
    stale = _store_upload(store, b"stale upload")
    fresh = _store_upload(store, b"fresh upload")
    kept = _store_upload(store, b"referenced")
    from pds.repo.codec import parse_cid
    store.add_ref(parse_cid(kept), "com.example.photo/a")
    now = time.time()
    # Age the stale one past the grace period.
    meta = store.meta(stale)
    meta["createdAt"] = int(now) - TEMP_GRACE - 5
    store._write_meta(stale, meta)
    for m in (fresh, kept):
        meta = store.meta(m)
        meta["createdAt"] = int(now) - TEMP_GRACE - 5 if m == kept else int(now)
        store._write_meta(m, meta)

    assert store.gc(now=now) == 1
    assert not store.path(stale).exists() and store.meta(stale) is None
    assert store.has(fresh) and store.has(kept)
    # An hour and more later, the fresh one goes too; the referenced one never does.
    assert store.gc(now=now + TEMP_GRACE + 10) == 1
    assert not store.has(fresh) and store.has(kept)
    assert store.path(kept).read_bytes() == b"referenced"
