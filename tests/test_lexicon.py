"""The lexicon checkers (`pds/lexicon`): the official interop vectors, every official
lexicon document, and the rules of the lexicon language on real records and calls."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import pytest

from pds.lexicon import LexiconError, Lexicons, official
from pds.lexicon.compiler import checker
from pds.lexicon.documents import check_document
from pds.lexicon.params import check_params
from pds.lexicon.validate import check_input, check_record
from pds.repo.codec import json_to_value

BLOB_CID = "bafkreibme22gw2h7y2h7tg2fhqotaqjucnbc24deqo72b6mkl2egezxhvy"
TID = "3jzfcijpj2z2a"


def _vectors(interop: Path, name: str) -> list[dict]:
    return json.loads((interop / "lexicon" / name).read_text())


@pytest.fixture(scope="module")
def catalog(interop: Path) -> Lexicons:
    return Lexicons.of([json.loads(p.read_text())
                        for p in sorted((interop / "lexicon" / "catalog").glob("*.json"))])


# --- the interop vectors ----------------------------------------------------------------


def test_valid_lexicon_documents_are_accepted(interop: Path) -> None:
    vectors = _vectors(interop, "lexicon-valid.json")
    assert vectors
    for v in vectors:
        check_document(v["lexicon"])


# What each invalid document is refused for (the vector's name says it).
DOC_REASONS = {
    "invalid lexicon field": "Lexicon/lexicon", "invalid id field": "Lexicon/id must be a",
    "invalid NSID": "valid nsid", "defined unknown": "type unknown",
    "defined ref": "type ref", "non-main primary": "only be the main",
    "record missing type object": "record must be of type object",
}


def test_invalid_lexicon_documents_are_refused_for_their_reason(interop: Path) -> None:
    vectors = _vectors(interop, "lexicon-invalid.json")
    assert {v["name"] for v in vectors} == set(DOC_REASONS)
    for v in vectors:
        with pytest.raises(LexiconError, match=DOC_REASONS[v["name"]]):
            check_document(v["lexicon"])


def test_catalog_and_every_official_document_are_well_formed(interop: Path) -> None:
    for p in sorted((interop / "lexicon" / "catalog").glob("*.json")):
        check_document(json.loads(p.read_text()))
    spec = importlib.util.find_spec("lexrpc")
    assert spec is not None and spec.submodule_search_locations
    root = Path(spec.submodule_search_locations[0]) / "lexicons"
    docs = [json.loads(p.read_text()) for p in sorted(root.rglob("*.json"))]
    assert len(docs) > 300
    for doc in docs:
        check_document(doc)


def test_valid_records_of_the_catalog_are_valid(interop: Path, catalog: Lexicons) -> None:
    for v in _vectors(interop, "record-data-valid.json"):
        data = v["data"]
        got = check_record(catalog, data["$type"], v["rkey"], json_to_value(data), True)
        assert got.status == "valid", v["name"]


def _reason(name: str) -> str:
    """The message (a pattern) an invalid record vector must be refused with."""
    table = {
        "missing required field": 'must have the property "integer"',
        "invalid non-nullable string field": "Record/string must be a string",
        "invalid ref value": "Record/ref must be an object",
        "invalid token ref type": "Record/ref must be an object",
        "out of closed union": "Record/closedUnion $type must be one of",
        "string too short (graphemes)": "shorter than 10 graphemes",
        "string too long (graphemes)": "longer than 20 graphemes",
        "open union missing $type": 'includes the "$type" property',
        "open union wrong data type": 'includes the "$type" property',
        "blob too large": "Record/sizeBlob blob is 12345 bytes",
        "blob wrong type": "Record/acceptBlob blob has type text/plain",
        "wrong const value": "must be 42", "integer not in enum": "must be one of",
        "out of integer range": "can not be greater than 20",
        "string too short": "shorter than 10 characters",
        "string too long": "longer than 20 characters",
        "out of enum string": "must be one of (fish|tree|rock)",
        "bytes too short": "smaller than 10 bytes", "bytes too long": "larger than 20 bytes",
        "array too short": "fewer than 2 elements", "array too long": "more than 5 elements",
        "invalid array": "Record/array must be an array",
        "invalid array element": "Record/array/0 must be an integer",
        "object wrong data type": "Record/object must be an object",
        "object nested wrong data type": "Record/object/a must be an integer",
        "invalid blob field": "should be a blob ref",
        "invalid blob: wrong type": "should be a blob ref",
        "invalid cid-link field": "must be a CID",
    }
    if name in table:
        return re.escape(table[name])
    if name.startswith("invalid string format "):
        return "Record/formats/" + name.rsplit(" ", 1)[1] + " must be"
    if name.startswith("invalid bytes"):
        return "Record/bytes must be a byte array"
    if name.startswith("invalid ") and name.endswith(" field"):
        kind = name.removeprefix("invalid ").removesuffix(" field")
        return f"Record/{kind} must be a"
    if name == "union inner invalid":
        return r"Record/(closedUnion \$type must be one of|union/a must be an integer)"
    if name.startswith("unknown wrong type"):
        # (these vectors also lack the required "integer", which is refused first)
        return 'must have the property "integer"'
    raise AssertionError(f"no stated reason for the vector {name!r}")


def test_invalid_records_of_the_catalog_are_refused_for_their_reason(
        interop: Path, catalog: Lexicons) -> None:
    vectors = _vectors(interop, "record-data-invalid.json")
    assert len(vectors) > 40
    for v in vectors:
        data = v["data"]
        with pytest.raises(LexiconError, match=_reason(v["name"])):
            check_record(catalog, data["$type"], v["rkey"], json_to_value(data), True)
        if v["name"].startswith("unknown wrong type"):
            # with the required field given, the unknown field itself is refused
            fixed = json_to_value({**data, "integer": 1})
            with pytest.raises(LexiconError, match="Record/unknown must be an object"):
                check_record(catalog, data["$type"], v["rkey"], fixed, True)


# --- official records -------------------------------------------------------------------


def _post(**extra: Any) -> dict:
    post = {
        "$type": "app.bsky.feed.post", "text": "hello @alice.test https://example.com #tag",
        "createdAt": "2026-01-01T00:00:00.000Z", "langs": ["en"],
        "facets": [
            {"index": {"byteStart": 6, "byteEnd": 17}, "features": [
                {"$type": "app.bsky.richtext.facet#mention", "did": "did:plc:abc"}]},
            {"index": {"byteStart": 18, "byteEnd": 37}, "features": [
                {"$type": "app.bsky.richtext.facet#link", "uri": "https://example.com"}]},
        ],
        "embed": {"$type": "app.bsky.embed.images", "images": [
            {"alt": "a cat", "image": _blob("image/jpeg", 1000),
             "aspectRatio": {"width": 4, "height": 3}}]},
    }
    return {**post, **extra}


def _blob(mime: str, size: int) -> dict:
    return {"$type": "blob", "ref": {"$link": BLOB_CID}, "mimeType": mime, "size": size}


def _check(record: dict, validate: bool | None = None, rkey: str = TID,
           collection: str | None = None) -> Any:
    coll = collection or record["$type"]
    return check_record(official(), coll, rkey, json_to_value(record), validate)


def test_a_typical_post_is_valid_and_its_image_blob_is_constrained() -> None:
    got = _check(_post())
    assert got.status == "valid"
    [rule] = got.blobs
    assert rule.path == "Record/embed/images/0/image"
    assert rule.accept == ("image/*",) and rule.max_size == 2000000


@pytest.mark.parametrize(("change", "message"), [
    ({"text": "x" * 301}, "Record/text must not be longer than 300 graphemes"),
    ({"text": "é" * 1501}, "Record/text must not be longer than 3000 characters"),
    ({"text": 5}, "Record/text must be a string"),
    ({"createdAt": "yesterday"}, "Record/createdAt must be an valid atproto datetime"),
    ({"langs": ["en", "en", "en", "en"]}, "Record/langs must not have more than 3 elements"),
    ({"langs": ["123"]}, "Record/langs/0 must be a well-formed BCP 47 language tag"),
    ({"facets": [{"index": {"byteStart": -1, "byteEnd": 2}, "features": []}]},
     "Record/facets/0/index/byteStart can not be less than 0"),
    ({"facets": [{"index": {"byteStart": 0, "byteEnd": 2}, "features": [
        {"$type": "app.bsky.richtext.facet#mention", "did": "alice"}]}]},
     "Record/facets/0/features/0/did must be a valid did"),
    ({"embed": {"$type": "app.bsky.embed.images", "images": [
        {"alt": "", "image": _blob("image/png", 1)}] * 5}},
     "Record/embed/images must not have more than 4 elements"),
    ({"embed": {"$type": "app.bsky.embed.images", "images": [
        {"alt": "", "image": _blob("text/plain", 1)}]}},
     "Record/embed/images/0/image blob has type text/plain"),
    ({"embed": {"$type": "app.bsky.embed.images", "images": [
        {"alt": "", "image": _blob("image/png", 2000001)}]}},
     "Record/embed/images/0/image blob is 2000001 bytes"),
    ({"embed": {"$type": "app.bsky.embed.images", "images": [{"alt": ""}]}},
     'Record/embed/images/0 must have the property "image"'),
    ({"embed": {"images": []}}, 'Record/embed must be an object which includes the "\\$type"'),
    ({"reply": {"root": {"uri": "at://x", "cid": BLOB_CID}}},
     'Record/reply must have the property "parent"'),
    ({"labels": {"$type": "com.atproto.label.defs#selfLabels", "values": [{"val": 1}]}},
     "Record/labels/values/0/val must be a string"),
])
def test_invalid_posts_are_refused_naming_the_field_and_rule(change: dict, message: str) -> None:
    with pytest.raises(LexiconError, match=f"Invalid app.bsky.feed.post record: {message}"):
        _check(_post(**change))


def test_graphemes_are_counted_as_clusters() -> None:
    flag = "\U0001F1E9\U0001F1EA"  # one grapheme of two code points (8 UTF-8 bytes)
    assert _check(_post(text=flag * 300, facets=[])).status == "valid"  # 600 code points
    with pytest.raises(LexiconError, match="longer than 300 graphemes"):
        _check(_post(text=flag * 301, facets=[]))


def test_open_unions_let_unknown_types_through_and_check_known_ones() -> None:
    odd = {"$type": "com.example.embed", "anything": [1, 2]}
    assert _check(_post(embed=odd)).status == "valid"


def test_validate_modes_and_unknown_lexicons() -> None:
    note = {"$type": "com.example.note", "x": 1}
    assert _check(note).status == "unknown"
    assert _check(note, validate=False).status is None
    with pytest.raises(LexiconError, match="Unknown lexicon type: com.example.note"):
        _check(note, validate=True)
    bad = _post(text=5)
    assert _check(bad, validate=False).status is None  # not validated: stored as it is
    assert _check(_post(), validate=True).status == "valid"


def test_record_keys_must_fit_the_lexicons_key_type_whatever_validate_says() -> None:
    profile = {"$type": "app.bsky.actor.profile", "displayName": "Al"}
    assert _check(profile, rkey="self").status == "valid"
    for validate in (None, True, False):
        with pytest.raises(LexiconError, match='Invalid record key for app.bsky.actor.profile: '
                                               'must be "self"'):
            _check(profile, validate, rkey="other")
        with pytest.raises(LexiconError, match="must be a TID"):
            _check(_post(), validate, rkey="my-post")


def test_nullable_and_required_follow_the_lexicon(catalog: Lexicons) -> None:
    check = checker(catalog, "example.lexicon.record")
    check(json_to_value({"integer": 1, "nullableString": None}), "Record", [])
    with pytest.raises(LexiconError, match="Record/string must be a string"):
        check(json_to_value({"integer": 1, "string": None}), "Record", [])


# --- XRPC parameters and bodies ---------------------------------------------------------


def test_params_are_read_as_their_lexicon_types() -> None:
    lex = official()
    nsid = "com.atproto.repo.listRecords"
    check_params(lex, nsid, {"repo": "alice.test", "collection": "app.bsky.feed.post",
                             "limit": "100", "reverse": "true"})
    cases = [
        ({"collection": "a.b.c"}, 'Params must have the property "repo"'),
        ({"repo": "alice.test", "collection": "a.b.c", "limit": "ten"},
         "Params/limit must be an integer"),
        ({"repo": "alice.test", "collection": "a.b.c", "limit": "101"},
         "Params/limit can not be greater than 100"),
        ({"repo": "alice.test", "collection": "a.b.c", "limit": "0"},
         "Params/limit can not be less than 1"),
        ({"repo": "alice.test", "collection": "a.b.c", "reverse": "yes"},
         "Params/reverse must be a boolean"),
        ({"repo": "alice.test", "collection": "not an nsid"},
         "Params/collection must be a valid nsid"),
        ({"repo": "alice.test", "collection": "a.b.c", "limit": "1" * 40},
         "Params/limit must be an integer"),
    ]
    for params, message in cases:
        with pytest.raises(LexiconError, match=message):
            check_params(lex, nsid, params)
    check_params(lex, "com.atproto.admin.getAccountInfos", {"dids": ["did:plc:a", "did:web:b"]})
    with pytest.raises(LexiconError, match="Params/dids/1 must be a valid did"):
        check_params(lex, "com.atproto.admin.getAccountInfos", {"dids": ["did:plc:a", "x"]})


def test_input_bodies_are_checked_against_the_method() -> None:
    lex = official()
    nsid = "com.atproto.repo.createRecord"
    check_input(lex, nsid, {"repo": "alice.test", "collection": "a.b.c", "record": {}})
    for body, message in [
        (None, 'Input must have the property "repo"'),
        ([], "Input must be an object"),
        ({"repo": "alice.test", "collection": "a.b.c", "record": 5},
         "Input/record must be an object"),
        ({"repo": "alice.test", "collection": "a.b.c", "record": {}, "validate": "yes"},
         "Input/validate must be a boolean"),
        ({"repo": "alice.test", "collection": "a.b.c", "record": {}, "rkey": "x" * 600},
         "Input/rkey must not be longer than 512 characters"),
    ]:
        with pytest.raises(LexiconError, match=message):
            check_input(lex, nsid, body)


# --- answers (what PDS_VALIDATE_OUTPUT turns on in the tests' servers) --------------------


def test_answers_that_drift_from_their_lexicon_are_caught() -> None:
    from pds.xrpc.validation import OutputInvalid, check_answer
    good = {"did": "did:web:pds.test", "availableUserDomains": [".test"],
            "links": {"privacyPolicy": "https://example.com/p"}, "blobUploadLimit": 5}
    check_answer("com.atproto.server.describeServer", good)
    for drift, message in [
        ({**good, "did": None}, "Output/did must be a string"),
        ({**good, "blobUploadLimit": "5"}, "Output/blobUploadLimit must be an integer"),
        ({k: v for k, v in good.items() if k != "availableUserDomains"},
         'Output must have the property "availableUserDomains"'),
    ]:
        with pytest.raises(OutputInvalid, match=re.escape(message)):
            check_answer("com.atproto.server.describeServer", drift)
    view = {"code": "x", "available": 1, "disabled": False, "forAccount": "did:web:a.test",
            "createdBy": "admin", "createdAt": "2026-01-01T00:00:00Z", "uses": []}
    account = {"did": "did:web:a.test", "handle": "a.test", "indexedAt": "2026-01-01T00:00:00Z"}
    check_answer("com.atproto.admin.getAccountInfo", {**account, "invitedBy": view})
    with pytest.raises(OutputInvalid, match='Output/invitedBy must have the property'):
        check_answer("com.atproto.admin.getAccountInfo", {**account, "invitedBy": {"code": "x"}})


def test_the_readme_names_the_lexicon_set_in_use() -> None:
    from pds.lexicon import LEXICON_SET
    package, version = LEXICON_SET.split()
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert f"the `{package}`\npackage ships: version {version}" in readme, LEXICON_SET
