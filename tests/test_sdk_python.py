"""The official Python SDK (`atproto`, MarshalX) against `pds serve --workers 2`, with its
default settings: its record helpers ask for `validate: true`, so every post, reply,
like, follow, image post and profile below is validated against the official lexicons
by the PDS, and the records read back are the SDK's own models.

Only `com.atproto.*` and record writes are used: `app.bsky.*` reads need an AppView
(login is told not to fetch the profile from one)."""

from __future__ import annotations

import os

import pytest
from server_util import Api, api_fixture, ok

atproto = pytest.importorskip("atproto")
from atproto import Client, client_utils, models  # noqa: E402

pytestmark = pytest.mark.slow  # the SDK end to end against the real server

api = api_fixture()
PNG = b"\x89PNG\r\n\x1a\n" + os.urandom(3000)


def _client(api: Api, name: str) -> tuple[Client, str]:
    acct = api.create_account(name)
    client = Client(base_url=api.server.url)
    session = client.login(acct.handle, acct.password, fetch_bsky_profile=False)
    assert session is None and client.me is None  # no AppView asked
    return client, acct.did


def test_the_python_sdk_posts_replies_likes_follows_and_sets_a_profile(api: Api) -> None:
    alice, alice_did = _client(api, "sdkalice")
    bob, bob_did = _client(api, "sdkbob")

    text = client_utils.TextBuilder().text("hello ").mention("@bob", bob_did) \
        .text(" see ").link("example", "https://example.com").text(" ").tag("#tag", "tag")
    post = alice.send_post(text, profile_identify=alice_did)
    stored = alice.app.bsky.feed.post.get(alice_did, post.uri.rsplit("/", 1)[1])
    assert stored.value.text == "hello @bob see example #tag"
    assert len(stored.value.facets) == 3

    parent = models.create_strong_ref(post)
    reply = bob.send_post("a reply", profile_identify=bob_did,
                          reply_to=models.AppBskyFeedPost.ReplyRef(parent=parent, root=parent))
    got = bob.app.bsky.feed.post.get(bob_did, reply.uri.rsplit("/", 1)[1])
    assert got.value.reply.parent.uri == post.uri

    like = bob.app.bsky.feed.like.create(bob_did, models.AppBskyFeedLike.Record(
        subject=parent, created_at=bob.get_current_time_iso()))
    follow = bob.app.bsky.graph.follow.create(bob_did, models.AppBskyGraphFollow.Record(
        subject=alice_did, created_at=bob.get_current_time_iso()))
    for uri, coll in ((like.uri, "app.bsky.feed.like"), (follow.uri, "app.bsky.graph.follow")):
        rec = ok(api.get("com.atproto.repo.getRecord", repo=bob_did, collection=coll,
                         rkey=uri.rsplit("/", 1)[1]))
        assert rec["value"]["$type"] == coll

    image = alice.send_image("a picture", PNG, "a cat", profile_identify=alice_did,
                             image_aspect_ratio=models.AppBskyEmbedDefs.AspectRatio(
                                 width=4, height=3))
    rec = ok(api.get("com.atproto.repo.getRecord", repo=alice_did,
                     collection="app.bsky.feed.post", rkey=image.uri.rsplit("/", 1)[1]))
    img = rec["value"]["embed"]["images"][0]["image"]
    assert img["mimeType"] == "image/png" and img["size"] == len(PNG)

    avatar = alice.upload_blob(PNG).blob
    profile = alice.app.bsky.actor.profile.create(alice_did, models.AppBskyActorProfile.Record(
        display_name="Alice", description="from the SDK", avatar=avatar), rkey="self")
    assert profile.uri.endswith("/app.bsky.actor.profile/self")
    got_profile = alice.app.bsky.actor.profile.get(alice_did, "self")
    assert got_profile.value.display_name == "Alice"


def test_the_sdk_sees_invalid_records_refused(api: Api) -> None:
    client, did = _client(api, "sdkcarol")
    from atproto.exceptions import BadRequestError
    with pytest.raises(BadRequestError) as info:
        client.send_post("x" * 301, profile_identify=did)
    error = info.value.response.content
    assert error.error == "InvalidRequest"
    assert "Record/text must not be longer than 300 graphemes" in error.message
