"""The account status rules (`pds.services.account`) and the one pagination helper
(`pds.services.pagination`), as units."""

from __future__ import annotations

import pytest

from pds.errors import AuthFailed, InvalidInput
from pds.services.account import Account, Use, refusal, require
from pds.services.pagination import paginate

DID = "did:plc:abc"


def _acct(status: str | None) -> Account:
    return Account.from_record({"did": DID, "handle": "a.test", "status": status})


# (use, status) -> (error class, error name) of the refusal; None: allowed. Privilege off.
RULES = {
    (Use.SYNC, "deactivated"): (InvalidInput, "RepoDeactivated"),
    (Use.SYNC, "takendown"): (InvalidInput, "RepoTakendown"),
    (Use.SYNC, "suspended"): (InvalidInput, "RepoSuspended"),
    (Use.READ, "deactivated"): (InvalidInput, "RepoDeactivated"),
    (Use.READ, "takendown"): (InvalidInput, "RepoTakendown"),
    (Use.READ, "suspended"): None,
    (Use.WRITE, "deactivated"): (InvalidInput, "AccountDeactivated"),
    (Use.WRITE, "takendown"): (InvalidInput, "AccountTakedown"),
    (Use.WRITE, "suspended"): (InvalidInput, "AccountTakedown"),
    (Use.LOGIN, "takendown"): (AuthFailed, "AccountTakedown"),
    (Use.LOGIN, "deactivated"): None,
    (Use.TOKEN, "takendown"): (AuthFailed, "AccountTakedown"),
    (Use.TOKEN, "deactivated"): None,
    # A service-auth JWT the account signed: refused once it is taken down; a deactivated
    # (migrating) account still uploads its blobs with one.
    (Use.SERVICE, "takendown"): (AuthFailed, "AccountTakedown"),
    (Use.SERVICE, "deactivated"): None,
    (Use.CHANGE_STATUS, "takendown"): (InvalidInput, "AccountTakedown"),
    (Use.CHANGE_STATUS, "deactivated"): None,
    (Use.REPO_STATUS, "takendown"): None,
    (Use.REFRESH, "takendown"): None,
    (Use.MANAGE, "takendown"): None,
    (Use.REPO, "takendown"): None,
}


@pytest.mark.parametrize(("use", "status"), sorted(RULES, key=str))
def test_what_each_status_allows(use: Use, status: str) -> None:
    expected = RULES[(use, status)]
    problem = refusal(_acct(status), use)
    if expected is None:
        assert problem is None
    else:
        assert type(problem) is expected[0] and problem.error == expected[1]


@pytest.mark.parametrize("use", list(Use))
def test_an_active_account_may_do_anything(use: Use) -> None:
    acct = _acct(None)
    assert acct.active and acct.status_fields() == {"active": True}
    assert require(acct, use, DID) is acct


def test_privilege_lifts_what_it_may() -> None:
    down = _acct("takendown")
    for use in (Use.SYNC, Use.LOGIN, Use.TOKEN):
        assert refusal(down, use, privileged=True) is None
    # ...but never a write, a record read or a reactivation.
    for use in (Use.WRITE, Use.READ, Use.CHANGE_STATUS):
        assert refusal(down, use, privileged=True) is not None
    assert down.status_fields() == {"active": False, "status": "takendown"}


def test_missing_and_deleted_accounts_are_not_found() -> None:
    with pytest.raises(InvalidInput) as e:
        require(None, Use.SYNC, DID)
    assert e.value.error == "RepoNotFound" and DID in e.value.message
    with pytest.raises(InvalidInput) as e:
        require(None, Use.READ, "nobody.test")
    assert e.value.message == "Could not find repo: nobody.test"
    with pytest.raises(AuthFailed) as e:
        require(_acct("deleted"), Use.TOKEN, DID)
    assert e.value.error == "AccountNotFound"
    with pytest.raises(InvalidInput) as e:
        require(None, Use.MANAGE, DID)
    assert e.value.error == "AccountNotFound"


# --- pagination ------------------------------------------------------------------------------


def test_pages_follow_the_cursor() -> None:
    keys = [f"k{i:02}" for i in range(7)]
    first = paginate(keys, 3)
    assert first.items == ["k00", "k01", "k02"] and first.cursor == "k02"
    second = paginate(keys, 3, first.cursor)
    assert second.items == ["k03", "k04", "k05"] and second.cursor == "k05"
    last = paginate(keys, 3, second.cursor)
    assert last.items == ["k06"] and last.cursor is None
    # A cursor between keys, or past the end.
    assert paginate(keys, 2, "k03x").items == ["k04", "k05"]
    assert paginate(keys, 2, "z").items == [] and paginate(keys, 2, "z").cursor is None


def test_a_full_last_page_still_has_a_cursor() -> None:
    page = paginate(["a", "b"], 2)
    assert page.cursor == "b" and paginate(["a", "b"], 2, page.cursor).items == []


def test_load_filters_and_the_iterator_is_read_lazily() -> None:
    seen = []

    def source():
        for i in range(100):
            seen.append(i)
            yield f"{i:03}"

    page = paginate(source(), 2, "010", load=lambda k: None if int(k) % 2 else {"k": k})
    assert page.items == [{"k": "012"}, {"k": "014"}] and page.cursor == "014"
    assert max(seen) == 14  # nothing past the page was read


def test_keys_descending_and_answers() -> None:
    rows = [("c", 3), ("b", 2), ("a", 1)]
    page = paginate(rows, 1, "c", key=lambda r: r[0], descending=True)
    assert page.items == [("b", 2)] and page.cursor == "b"
    assert page.answer("rows", lambda r: r[1]) == {"rows": [2], "cursor": "b"}
    assert paginate([], 5).answer("rows") == {"rows": []}


def test_declared_age_counts_whole_years() -> None:
    from datetime import date

    from pds.services.preferences import declared_age
    details = {"$type": "app.bsky.actor.defs#personalDetailsPref"}
    today = date(2026, 6, 15)
    for birth, flags in (("2008-06-15", (True, True, True)), ("2008-06-16", (True, True, False)),
                         ("2013-06-15T00:00:00Z", (True, False, False)),
                         ("2013-06-16", (False, False, False))):
        got = declared_age([{**details, "birthDate": birth}], today)
        assert got is not None
        assert (got["isOverAge13"], got["isOverAge16"], got["isOverAge18"]) == flags, birth
    for bad in ("", "not a date", 5, "2013-13-45", "x" * 100):
        assert declared_age([{**details, "birthDate": bad}], today) is None
    assert declared_age([], today) is None


def _local(**kw: object):
    from pds.services.read_after_write import Local
    local = Local("did:plc:me", "me.test", "https://pds.example.com")
    for k, v in kw.items():
        setattr(local, k, v)
    return local


def test_read_after_write_merges_as_the_reference() -> None:
    import json

    from pds.services.read_after_write import merge
    post = {"uri": "at://did:plc:me/app.bsky.feed.post/3new", "cid": "bafy",
            "record": {"text": "new"}, "indexedAt": "2026-01-02T00:00:00.000Z"}
    avatar = {"$type": "blob", "ref": {"$link": "bafkav"}, "mimeType": "image/png", "size": 1}
    local = _local(profile={"displayName": "Me", "avatar": avatar}, posts=[post])

    def item(uri: str, when: str, author: str = "did:plc:other") -> dict:
        return {"post": {"uri": uri, "indexedAt": when, "author": {"did": author,
                                                                   "handle": "x"}}}

    feed = [item("at://a/1", "2026-01-03T00:00:00.000Z"),
            item("at://a/2", "2026-01-01T00:00:00.000Z", "did:plc:me")]
    out = json.loads(merge("app.bsky.feed.getAuthorFeed", {"actor": "me.test"},
                           json.dumps({"feed": feed}).encode(), local) or b"")
    assert [i["post"]["uri"] for i in out["feed"]] == ["at://a/1", post["uri"], "at://a/2"]
    assert out["feed"][1]["post"]["author"]["avatar"] == (
        "https://pds.example.com/xrpc/com.atproto.sync.getBlob?did=did:plc:me&cid=bafkav")
    assert out["feed"][2]["post"]["author"]["displayName"] == "Me"  # the caller's, updated
    assert out["feed"][0]["post"]["author"] == {"did": "did:plc:other", "handle": "x"}
    # Another actor's feed gets no posts; a page ending after the post neither.
    other = json.loads(merge("app.bsky.feed.getAuthorFeed", {"actor": "did:plc:other"},
                             json.dumps({"feed": feed}).encode(), local) or b"")
    assert len(other["feed"]) == 2
    late = [item("at://a/3", "2026-01-05T00:00:00.000Z")]
    assert len(json.loads(merge("app.bsky.feed.getTimeline", {}, json.dumps(
        {"feed": late}).encode(), local) or b"")["feed"]) == 1
    # A thread's author views of the caller, at any depth.
    thread = {"thread": {"post": {"author": {"did": "did:plc:me", "handle": "me.test"}},
                         "replies": [{"post": {"author": {"did": "did:plc:me"}}}]}}
    got = json.loads(merge("app.bsky.feed.getPostThread", {}, json.dumps(thread).encode(),
                           local) or b"")
    assert got["thread"]["replies"][0]["post"]["author"]["displayName"] == "Me"
    assert merge("app.bsky.feed.getTimeline", {}, b"not json", local) is None


def test_read_after_write_post_views_and_threads_as_the_reference() -> None:
    import json

    from pds.services.read_after_write import (
        THREAD_VIEW,
        embedded_views,
        merge,
        post_view,
        record_targets,
    )
    img = {"$type": "blob", "ref": {"$link": "bafkimg"}, "mimeType": "image/png", "size": 1}
    local = _local(cdn_pattern="https://cdn.example.com/img/%s/plain/%s/%s@jpeg",
                   current_profile={"displayName": "Now", "avatar": img})

    def post(rkey: str, **record: object) -> dict:
        return {"uri": f"at://did:plc:me/app.bsky.feed.post/{rkey}", "cid": "bafy",
                "indexedAt": "2026-01-02T00:00:00.000Z", "record": {"text": rkey, **record}}

    # Images at the CDN pattern (preset, DID, CID); a video with a quote shows no embed.
    pictured = post_view(post("p", embed={"$type": "app.bsky.embed.images", "images": [
        {"image": img, "alt": "x"}]}), local, {})
    assert pictured["embed"]["images"][0] == {
        "thumb": "https://cdn.example.com/img/feed_thumbnail/plain/did:plc:me/bafkimg@jpeg",
        "fullsize": "https://cdn.example.com/img/feed_fullsize/plain/did:plc:me/bafkimg@jpeg",
        "alt": "x"}
    assert pictured["author"]["displayName"] == "Now"  # the profile at HEAD
    assert pictured["author"]["avatar"].startswith("https://cdn.example.com/img/avatar/")
    quote = {"$type": "app.bsky.embed.record",
             "record": {"uri": "at://did:plc:x/app.bsky.feed.post/q", "cid": "bafy"}}
    video = post("v", embed={"$type": "app.bsky.embed.recordWithMedia", "record": quote,
                             "media": {"$type": "app.bsky.embed.video", "video": img}})
    assert "embed" not in post_view(video, local, {})
    # A quoted record the AppView did not show is viewNotFound.
    missing = post_view(post("q", embed=quote), local, {})["embed"]["record"]
    assert missing == {"$type": "app.bsky.embed.record#viewNotFound",
                       "uri": "at://did:plc:x/app.bsky.feed.post/q", "notFound": True}
    gen = {"$type": "app.bsky.embed.record",
           "record": {"uri": "at://did:plc:x/app.bsky.feed.generator/f", "cid": "bafy"}}
    assert record_targets([post("q", embed=quote), video, post("g", embed=gen),
                           post("t")]) == ["at://did:plc:x/app.bsky.feed.post/q",
                                           "at://did:plc:x/app.bsky.feed.generator/f"]
    shown = embedded_views("app.bsky.feed.post", ["at://did:plc:x/app.bsky.feed.post/q"],
                           {"posts": [{"uri": "at://did:plc:x/app.bsky.feed.post/q",
                                       "cid": "c", "record": {"text": "hi"}}]})
    assert shown["at://did:plc:x/app.bsky.feed.post/q"]["value"] == {"text": "hi"}

    # Replies go first among their parent's replies, at any depth of the thread.
    root = "at://did:plc:x/app.bsky.feed.post/root"
    child = "at://did:plc:x/app.bsky.feed.post/child"

    def ref(uri: str) -> dict:
        return {"uri": uri, "cid": "bafy"}
    to_root = post("r1", reply={"root": ref(root), "parent": ref(root)})
    to_child = post("r2", reply={"root": ref(root), "parent": ref(child)})
    elsewhere = post("r3", reply={"root": ref("at://did:plc:x/app.bsky.feed.post/o"),
                                  "parent": ref("at://did:plc:x/app.bsky.feed.post/o")})
    local.posts = [to_root, to_child, elsewhere]
    thread = {"$type": THREAD_VIEW, "post": {"uri": root, "record": {}}, "replies": [
        {"$type": "app.bsky.feed.defs#notFoundPost", "uri": "at://n"},
        {"$type": THREAD_VIEW, "post": {"uri": child, "record": {}}}]}
    out = json.loads(merge("app.bsky.feed.getPostThread", {}, json.dumps(
        {"thread": thread}).encode(), local) or b"")["thread"]
    assert [r.get("post", {}).get("uri") for r in out["replies"]] == [
        to_root["uri"], None, child]
    assert out["replies"][0]["$type"] == THREAD_VIEW
    assert [r["post"]["uri"] for r in out["replies"][2]["replies"]] == [to_child["uri"]]
    # A thread seen from a reply (its root elsewhere) takes replies to that root too.
    sub = {"$type": THREAD_VIEW, "post": {"uri": child, "record": {"reply": {
        "root": ref(root), "parent": ref(root)}}}}
    got = json.loads(merge("app.bsky.feed.getPostThread", {}, json.dumps(
        {"thread": sub}).encode(), local) or b"")["thread"]
    assert [r["post"]["uri"] for r in got["replies"]] == [to_child["uri"]]
    # Not a thread view (a blocked or missing post): as it is.
    blocked = {"thread": {"$type": "app.bsky.feed.defs#blockedPost", "uri": root}}
    assert json.loads(merge("app.bsky.feed.getPostThread", {}, json.dumps(
        blocked).encode(), local) or b"") == blocked
