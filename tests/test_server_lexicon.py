"""Records written over HTTP are checked against the official lexicons, as the reference
PDS checks them: `validate` absent / true / false, `validationStatus`, `$type` and the
record key's type whatever `validate` says, applyWrites all or nothing, blobs' `accept`
and `maxSize` against what was uploaded. Every refusal is 400 `InvalidRequest` naming
the field and the rule, and leaves the repo and the blob store as they were."""

from __future__ import annotations

import os
from typing import Any

import pytest
from server_util import Account, Api, api_fixture, diff_snapshots, err, ok, snapshot

api = api_fixture()
POST = "app.bsky.feed.post"
NOW = "2026-01-01T00:00:00.000Z"


@pytest.fixture(scope="module")
def acct(api: Api) -> Account:
    return api.create_account("lexi")


def _post(**extra: Any) -> dict:
    return {"$type": POST, "text": "hello", "createdAt": NOW, **extra}


def _create(api: Api, acct: Account, record: dict, collection: str = POST,
            **body: Any) -> Any:
    return api.post("com.atproto.repo.createRecord",
                    {"repo": acct.did, "collection": collection, "record": record, **body},
                    token=acct.access)


def _refused(api: Api, resp_thunk: Any, message: str) -> dict:
    """The call is refused with InvalidRequest and `message` in it; nothing on disk moved."""
    root = api.server.data_dir
    before = snapshot(root)
    body = err(resp_thunk(), 400, "InvalidRequest")
    assert message in body["message"], body
    assert not diff_snapshots(before, snapshot(root))
    return body


def _upload(api: Api, acct: Account, data: bytes, mime: str) -> dict:
    return ok(api.post("com.atproto.repo.uploadBlob", token=acct.access, content=data,
                       headers={"Content-Type": mime}))["blob"]


def test_validation_status_follows_validate(api: Api, acct: Account) -> None:
    assert ok(_create(api, acct, _post()))["validationStatus"] == "valid"
    assert ok(_create(api, acct, _post(), validate=True))["validationStatus"] == "valid"
    got = ok(_create(api, acct, _post(), validate=False))
    assert "validationStatus" not in got
    note = {"$type": "com.example.note", "x": 1}
    got = ok(_create(api, acct, note, collection="com.example.note"))
    assert got["validationStatus"] == "unknown"
    stored = ok(api.get("com.atproto.repo.getRecord", repo=acct.did,
                        collection="com.example.note", rkey=got["uri"].rsplit("/", 1)[1]))
    assert stored["value"] == note


def test_invalid_and_unknown_records_are_refused(api: Api, acct: Account) -> None:
    _refused(api, lambda: _create(api, acct, _post(text="x" * 301)),
             "Invalid app.bsky.feed.post record: Record/text must not be longer than "
             "300 graphemes")
    _refused(api, lambda: _create(api, acct, _post(createdAt="soon"), validate=True),
             "Record/createdAt must be an valid atproto datetime")
    _refused(api, lambda: _create(api, acct, {"$type": "com.example.note"},
                                  collection="com.example.note", validate=True),
             "Unknown lexicon type: com.example.note")
    _refused(api, lambda: _create(api, acct, {"$type": "app.bsky.feed.like", "createdAt": NOW},
                                  collection="app.bsky.feed.like"),
             'Invalid app.bsky.feed.like record: Record must have the property "subject"')
    # validate: false stores what the lexicon would refuse
    assert "validationStatus" not in ok(_create(api, acct, _post(text=5), validate=False))


def test_type_and_record_key_hold_whatever_validate_says(api: Api, acct: Account) -> None:
    for validate in ({}, {"validate": True}, {"validate": False}):
        _refused(api, lambda v=validate: _create(api, acct, {"$type": "app.bsky.feed.like"},
                                                 **v),
                 "Invalid $type: expected app.bsky.feed.post, got app.bsky.feed.like")
        _refused(api, lambda v=validate: _create(api, acct, _post(), rkey="my-post", **v),
                 "Invalid record key for app.bsky.feed.post: must be a TID")
        _refused(api, lambda v=validate: api.post("com.atproto.repo.putRecord", {
            "repo": acct.did, "collection": "app.bsky.actor.profile", "rkey": "other",
            "record": {"$type": "app.bsky.actor.profile"}, **v}, token=acct.access),
                 'Invalid record key for app.bsky.actor.profile: must be "self"')
    got = ok(api.post("com.atproto.repo.putRecord", {
        "repo": acct.did, "collection": "app.bsky.actor.profile", "rkey": "self",
        "record": {"$type": "app.bsky.actor.profile", "displayName": "Lexi"}},
        token=acct.access))
    assert got["validationStatus"] == "valid"


def test_a_record_without_type_takes_its_collection(api: Api, acct: Account) -> None:
    bare = {"text": "no type given", "createdAt": NOW}
    got = ok(_create(api, acct, bare, validate=True))
    assert got["validationStatus"] == "valid"
    stored = ok(api.get("com.atproto.repo.getRecord", repo=acct.did, collection=POST,
                        rkey=got["uri"].rsplit("/", 1)[1]))
    assert stored["value"] == {"$type": POST, **bare}
    _refused(api, lambda: _create(api, acct, {**bare, "$type": None}),
             "Record/$type must be a string")


def test_apply_writes_is_all_or_nothing(api: Api, acct: Account) -> None:
    writes = [
        {"$type": "com.atproto.repo.applyWrites#create", "collection": POST,
         "value": _post(text="one")},
        {"$type": "com.atproto.repo.applyWrites#create", "collection": "com.example.note",
         "value": {"$type": "com.example.note"}},
    ]
    bad = {"$type": "com.atproto.repo.applyWrites#create", "collection": POST,
           "value": _post(langs=["en", 3])}
    _refused(api, lambda: api.post("com.atproto.repo.applyWrites", {
        "repo": acct.did, "writes": [*writes, bad]}, token=acct.access),
        "Record/langs/1 must be a string")
    got = ok(api.post("com.atproto.repo.applyWrites", {"repo": acct.did, "writes": writes},
                      token=acct.access))
    assert [r["validationStatus"] for r in got["results"]] == ["valid", "unknown"]
    got = ok(api.post("com.atproto.repo.applyWrites", {"repo": acct.did, "writes": writes,
                                                       "validate": False}, token=acct.access))
    assert all("validationStatus" not in r for r in got["results"])


def test_blobs_are_held_to_accept_and_max_size_as_uploaded(api: Api, acct: Account) -> None:
    # A text file the record calls an image: the stored type is what counts.
    text = _upload(api, acct, b"not a picture at all", "text/plain")
    claimed = {**text, "mimeType": "image/png"}
    embed = {"$type": "app.bsky.embed.images", "images": [{"alt": "", "image": claimed}]}
    _refused(api, lambda: _create(api, acct, _post(embed=embed)),
             "Record/embed/images/0/image blob has type text/plain; it must be one of "
             "(image/*)")
    # An avatar over the profile lexicon's 1,000,000 bytes.
    big = _upload(api, acct, os.urandom(1_000_001), "image/png")
    _refused(api, lambda: api.post("com.atproto.repo.putRecord", {
        "repo": acct.did, "collection": "app.bsky.actor.profile", "rkey": "self",
        "record": {"$type": "app.bsky.actor.profile", "avatar": big}}, token=acct.access),
        "Record/avatar blob is 1000001 bytes; it must not be larger than 1000000 bytes")
    # A real image is fine, whatever type the client gave its upload (the SDKs send
    # `*/*`): what is stored is what the bytes are.
    png = _upload(api, acct, b"\x89PNG\r\n\x1a\n" + os.urandom(100), "*/*")
    assert png["mimeType"] == "image/png"
    embed = {"$type": "app.bsky.embed.images", "images": [{"alt": "x", "image": png}]}
    assert ok(_create(api, acct, _post(embed=embed)))["validationStatus"] == "valid"


def test_input_of_every_call_is_checked_before_the_handler(api: Api, acct: Account) -> None:
    body = err(api.get("com.atproto.repo.listRecords", repo=acct.did, collection=POST,
                       limit=1000), 400, "InvalidRequest")
    assert body["message"] == "Params/limit can not be greater than 100"
    body = err(api.post("com.atproto.repo.createRecord", {"repo": acct.did, "record": {}},
                        token=acct.access), 400, "InvalidRequest")
    assert body["message"] == 'Input must have the property "collection"'
    body = err(api.post("com.atproto.repo.createRecord", {
        "repo": acct.did, "collection": POST, "record": _post(), "validate": "yes"},
        token=acct.access), 400, "InvalidRequest")
    assert body["message"] == "Input/validate must be a boolean"
