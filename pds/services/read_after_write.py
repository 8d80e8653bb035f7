"""Read-after-write: the caller's own newest records merged into what the AppView answered.

The AppView answers with `atproto-repo-rev`, the caller's repo rev it has indexed. When
the caller's HEAD is past it, their records written since (read from the repo: what each
later commit wrote) are merged in as the reference PDS does (its `read-after-write/`):

- getProfile, getProfiles: the caller's profile view takes the new profile record's
  display name, description, avatar and banner;
- getTimeline, getAuthorFeed (of the caller): new posts are inserted by time, newer than
  the page's last item, as post views with zero counts;
- getPostThread: the caller's new replies to a post of the thread are inserted first
  among that post's replies (and a thread the AppView doesn't know yet, of the caller's
  own new post, is built here: `Proxy`);
- getAuthorFeed, getActorLikes, getPostThread: the caller's author views take the new
  profile's display name and avatar.

A post view's author is the account's handle and current profile; its embed is rendered
as the reference renders it: images and external links from the record, a quoted post,
feed generator or list as the AppView shows it (`record_targets` says which to ask for;
one the AppView can't show is `viewNotFound`). Image URLs follow
`PDS_BSKY_APP_VIEW_CDN_URL_PATTERN`, else point at this PDS's getBlob.

What was written since a rev is remembered per (account, HEAD, rev): while an AppView
lags, each call of the caller asks for the same rev, and the answer is then in memory
(`reads.read` serves it without a thread hop). A page that can't be read as JSON is
passed as it is.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ..repo.codec import cbor_to_json, cid_str
from ..repo.tid import tid_timestamp_micros
from .account import load

if TYPE_CHECKING:
    from ..store.repo import Repo
    from .context import AppContext

PROFILE, POST = "app.bsky.actor.profile", "app.bsky.feed.post"
GENERATOR, LIST = "app.bsky.feed.generator", "app.bsky.graph.list"
THREAD = "app.bsky.feed.getPostThread"
THREAD_VIEW = "app.bsky.feed.defs#threadViewPost"
MAX_COMMITS = 100  # a reader further behind than this is not patched
MAX_POSTS = 50  # the newest posts merged (a page holds at most 100 items)
MEMO_MAX = 128  # (account, HEAD, rev) answers remembered per process
METHODS = {"app.bsky.actor.getProfile", "app.bsky.actor.getProfiles",
           "app.bsky.feed.getTimeline", "app.bsky.feed.getAuthorFeed",
           THREAD, "app.bsky.feed.getActorLikes"}
# The AppView method that shows an embedded record of each collection, as the reference.
EMBED_METHODS = {POST: "app.bsky.feed.getPosts", GENERATOR: "app.bsky.feed.getFeedGenerator",
                 LIST: "app.bsky.graph.getList"}


@dataclass
class Local:
    """The caller's records written after the AppView's rev."""

    did: str
    handle: str
    base_url: str
    cdn_pattern: str = ""
    profile: dict[str, Any] | None = None  # written since the rev
    current_profile: dict[str, Any] | None = None  # at HEAD: post views' author
    posts: list[dict[str, Any]] = field(default_factory=list)  # oldest first
    oldest_micros: int | None = None

    def image(self, preset: str, blob: Any) -> str | None:
        """A blob's image URL (`preset`: avatar, banner, feed_thumbnail, feed_fullsize)."""
        ref = blob.get("ref") if isinstance(blob, dict) else None
        cid = ref.get("$link") if isinstance(ref, dict) else None
        if not isinstance(cid, str):
            return None
        parts = self.cdn_pattern.split("%s") if self.cdn_pattern else []
        if len(parts) == 4:  # the pattern's three %s: preset, DID, CID (as util.format)
            return parts[0] + preset + parts[1] + self.did + parts[2] + cid + parts[3]
        return f"{self.base_url}/xrpc/com.atproto.sync.getBlob?did={self.did}&cid={cid}"

    def author(self) -> dict[str, Any]:
        """The caller's basic profile view, from the profile at HEAD."""
        profile = self.current_profile if self.current_profile is not None else self.profile
        view: dict[str, Any] = {"did": self.did, "handle": self.handle}
        return _basic(view, self, profile) if profile is not None else view


@dataclass
class _Since:
    """What a repo wrote after a rev (the part of `Local` that HEAD alone decides)."""

    profile: dict[str, Any] | None
    current_profile: dict[str, Any] | None
    posts: list[dict[str, Any]]
    oldest_micros: int | None


_MEMO: dict[tuple[str, str, str], _Since | None] = {}


def local_since(ctx: AppContext, did: str, rev: str) -> Local | None:
    """The caller's profile and posts written after `rev` (None: nothing, or too far
    behind to patch). Blocking when not remembered: reads the repo (`reads.read`)."""
    repo = ctx.repo(did)
    head = repo.head()
    if head is None or head.rev <= rev:
        return None
    key = (did, str(head.cid), rev)
    if key in _MEMO:
        since = _MEMO[key]
    else:
        since = _since(repo, did, rev)
        if len(_MEMO) >= MEMO_MAX:
            _MEMO.clear()
        _MEMO[key] = since
    acct = load(ctx, did) if since is not None else None
    if since is None or acct is None:
        return None
    s = ctx.settings
    return Local(did, acct.handle, s.public_url, s.bsky_app_view_cdn_url_pattern,
                 since.profile, since.current_profile, since.posts, since.oldest_micros)


def _since(repo: Repo, did: str, rev: str) -> _Since | None:
    writes = repo.writes_since(rev, MAX_COMMITS)
    if not writes:
        return None
    since = _Since(None, None, [], None)
    posts: dict[str, dict[str, Any]] = {}
    for commit_rev, wrote in writes:
        when = tid_timestamp_micros(commit_rev)
        for path, cid in wrote.items():
            collection, _, rkey = path.partition("/")
            if collection not in (PROFILE, POST):
                continue
            value = cbor_to_json(repo.blocks.get(cid)) if cid is not None else None
            since.oldest_micros = min(since.oldest_micros or when, when)
            if collection == PROFILE and rkey == "self":
                since.profile = value
            elif collection == POST:
                posts.pop(path, None)
                if value is not None and cid is not None:
                    posts[path] = {"uri": f"at://{did}/{path}", "cid": cid_str(cid),
                                   "record": value, "indexedAt": _iso(when)}
    since.posts = list(posts.values())[-MAX_POSTS:]
    if since.profile is None and not since.posts:
        return None
    since.current_profile = since.profile
    if since.posts and since.profile is None:
        found = repo.get_record(PROFILE + "/self")
        since.current_profile = cbor_to_json(found[1]) if found else None
    return since


def parse(body: bytes) -> dict[str, Any] | None:
    """An answer's JSON object, or None when it is something else."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def merge(nsid: str, params: dict[str, Any], body: bytes | dict[str, Any], local: Local,
          found: Mapping[str, dict[str, Any] | None] | None = None) -> bytes | None:
    """The answer with `local` merged in, or None when it can't be read (pass it as is).
    `found`: the AppView's views of the records the new posts embed (`record_targets`)."""
    data = parse(body) if isinstance(body, bytes) else body
    if data is None:
        return None
    found = found or {}
    if nsid == "app.bsky.actor.getProfile" and data.get("did") == local.did:
        data = _detailed(data, local) if local.profile is not None else data
    elif nsid == "app.bsky.actor.getProfiles" and isinstance(data.get("profiles"), list):
        data["profiles"] = [_detailed(p, local) if _mine(p, local) and local.profile
                            is not None else p for p in data["profiles"]]
    elif nsid == "app.bsky.feed.getTimeline" and isinstance(data.get("feed"), list):
        data["feed"] = _insert_posts(data["feed"], local, found)
    elif nsid == "app.bsky.feed.getAuthorFeed" and isinstance(data.get("feed"), list):
        if _own_feed(params, local):
            data["feed"] = _insert_posts(_authors(data["feed"], local), local, found)
    elif nsid == "app.bsky.feed.getActorLikes":
        data = _authors(data, local)
    elif nsid == THREAD:
        data = _authors(data, local)
        if _is_thread(data.get("thread")):
            data["thread"] = add_to_thread(data["thread"], local.posts, local, found)
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


def to_insert(nsid: str, params: dict[str, Any], data: dict[str, Any],
              local: Local) -> list[dict[str, Any]]:
    """The caller's posts `merge` would add to this answer."""
    feed = data.get("feed")
    if nsid == "app.bsky.feed.getTimeline" or (nsid == "app.bsky.feed.getAuthorFeed"
                                               and _own_feed(params, local)):
        return _new_in_feed(feed, local) if isinstance(feed, list) else []
    if nsid == THREAD and _is_thread(data.get("thread")):
        return _in_thread(data["thread"], local.posts)
    return []


def record_targets(posts: list[dict[str, Any]]) -> list[str]:
    """at:// URIs of the posts, feeds and lists that `posts` embed (to ask the AppView)."""
    out: list[str] = []
    for post in posts:
        embed = post["record"].get("embed")
        kind = embed.get("$type") if isinstance(embed, dict) else None
        if kind == "app.bsky.embed.recordWithMedia":
            embed = embed.get("record")
            kind = "app.bsky.embed.record"
        ref = embed.get("record") if kind == "app.bsky.embed.record" and \
            isinstance(embed, dict) else None
        uri = ref.get("uri") if isinstance(ref, dict) else None
        if isinstance(uri, str) and collection_of(uri) in EMBED_METHODS and uri not in out:
            out.append(uri)
    return out


def embedded_views(collection: str, uris: list[str], answer: Any
                   ) -> dict[str, dict[str, Any] | None]:
    """The views of embedded records at `uris`, from the AppView's answer to their
    collection's method (EMBED_METHODS); None for one it did not show."""
    found: dict[str, dict[str, Any] | None] = dict.fromkeys(uris)
    if not isinstance(answer, dict):
        return found
    if collection == POST:
        for post in answer.get("posts") or []:
            if isinstance(post, dict) and post.get("uri") in found:
                view = {"$type": "app.bsky.embed.record#viewRecord", "uri": post.get("uri"),
                        "cid": post.get("cid"), "author": post.get("author"),
                        "value": post.get("record"), "labels": post.get("labels"),
                        "embeds": [post["embed"]] if post.get("embed") else None,
                        "indexedAt": post.get("indexedAt")}
                found[post["uri"]] = {k: v for k, v in view.items() if v is not None}
        return found
    key, kind = ("view", "app.bsky.feed.defs#generatorView") if collection == GENERATOR \
        else ("list", "app.bsky.graph.defs#listView")
    inner = answer.get(key)
    if isinstance(inner, dict) and len(uris) == 1:
        found[uris[0]] = {**inner, "$type": kind}
    return found


def lag_ms(local: Local) -> int | None:
    """How far behind the AppView is: since the oldest merged write (Atproto-Upstream-Lag)."""
    if local.oldest_micros is None:
        return None
    return max(0, int(time.time() * 1000 - local.oldest_micros / 1000))


# --- views -----------------------------------------------------------------------------------


def post_view(post: dict[str, Any], local: Local,
              found: Mapping[str, dict[str, Any] | None]) -> dict[str, Any]:
    """A new post's view, as the reference renders one just written: counts 0."""
    view = {"uri": post["uri"], "cid": post["cid"], "author": local.author(),
            "record": post["record"], "indexedAt": post["indexedAt"], "likeCount": 0,
            "replyCount": 0, "repostCount": 0, "quoteCount": 0}
    embed = _embed(post["record"].get("embed"), local, found)
    if embed is not None:
        view["embed"] = embed
    return view


def _embed(embed: Any, local: Local,
           found: Mapping[str, dict[str, Any] | None]) -> dict[str, Any] | None:
    kind = embed.get("$type") if isinstance(embed, dict) else None
    if kind == "app.bsky.embed.images":
        return _images(embed, local)
    if kind == "app.bsky.embed.external":
        return _external(embed, local)
    if kind == "app.bsky.embed.record":
        return _record(embed, found)
    if kind == "app.bsky.embed.recordWithMedia":
        media = embed.get("media")
        media_kind = media.get("$type") if isinstance(media, dict) else None
        shown = _images(media, local) if media_kind == "app.bsky.embed.images" else \
            _external(media, local) if media_kind == "app.bsky.embed.external" else None
        record = embed.get("record")
        if shown is None or not isinstance(record, dict):
            return None  # a video: the reference shows none either
        return {"$type": "app.bsky.embed.recordWithMedia#view",
                "record": _record(record, found), "media": shown}
    return None


def _images(embed: dict[str, Any], local: Local) -> dict[str, Any]:
    images = []
    for img in embed.get("images") or []:
        if not isinstance(img, dict):
            continue
        view = {"thumb": local.image("feed_thumbnail", img.get("image")),
                "fullsize": local.image("feed_fullsize", img.get("image")),
                "aspectRatio": img.get("aspectRatio"), "alt": img.get("alt", "")}
        images.append({k: v for k, v in view.items() if v is not None})
    return {"$type": "app.bsky.embed.images#view", "images": images}


def _external(embed: dict[str, Any], local: Local) -> dict[str, Any]:
    got = embed.get("external")
    ext: dict[str, Any] = got if isinstance(got, dict) else {}
    view = {"uri": ext.get("uri"), "title": ext.get("title"),
            "description": ext.get("description"),
            "thumb": local.image("feed_thumbnail", ext.get("thumb"))}
    return {"$type": "app.bsky.embed.external#view",
            "external": {k: v for k, v in view.items() if v is not None}}


def _record(embed: dict[str, Any], found: Mapping[str, dict[str, Any] | None]
            ) -> dict[str, Any]:
    ref = embed.get("record")
    uri = ref.get("uri") if isinstance(ref, dict) else None
    view = found.get(uri) if isinstance(uri, str) else None
    if view is None:
        view = {"$type": "app.bsky.embed.record#viewNotFound", "uri": uri, "notFound": True}
    return {"$type": "app.bsky.embed.record#view", "record": view}


def _iso(micros: int) -> str:
    return datetime.fromtimestamp(micros / 1e6, UTC).isoformat(timespec="milliseconds") \
        .replace("+00:00", "Z")


def collection_of(uri: str) -> str:
    parts = uri.removeprefix("at://").split("/")
    return parts[1] if len(parts) == 3 else ""


def _mine(view: Any, local: Local) -> bool:
    return isinstance(view, dict) and view.get("did") == local.did


def _own_feed(params: dict[str, Any], local: Local) -> bool:
    return params.get("actor") in (local.did, local.handle)


def _basic(view: dict[str, Any], local: Local,
           profile: dict[str, Any] | None = None) -> dict[str, Any]:
    profile = profile if profile is not None else (local.profile or {})
    out = {**view, "displayName": profile.get("displayName"),
           "avatar": local.image("avatar", profile.get("avatar"))}
    return {k: v for k, v in out.items() if v is not None}


def _detailed(view: dict[str, Any], local: Local) -> dict[str, Any]:
    profile = local.profile or {}
    out = {**_basic(view, local), "description": profile.get("description"),
           "banner": local.image("banner", profile.get("banner"))}
    for name in ("description", "banner"):
        if out[name] is None:
            del out[name]
    return out


def _authors(value: Any, local: Local) -> Any:
    """Every author view of the caller in `value` (any depth) with the new profile."""
    if local.profile is None:
        return value
    if isinstance(value, list):
        return [_authors(v, local) for v in value]
    if isinstance(value, dict):
        out = {k: _authors(v, local) for k, v in value.items()}
        if _mine(out.get("author"), local):
            out["author"] = _basic(out["author"], local)
        return out
    return value


# --- feeds and threads -------------------------------------------------------------------------


def _new_in_feed(feed: list[Any], local: Local) -> list[dict[str, Any]]:
    """The posts to insert in a feed page, newest first: newer than its last item."""
    last = str(_post_of(feed[-1]).get("indexedAt", "")) if feed else ""
    have = {_post_of(i).get("uri") for i in feed}
    return [p for p in reversed(local.posts) if p["indexedAt"] > last
            and p["uri"] not in have]


def _insert_posts(feed: list[Any], local: Local,
                  found: Mapping[str, dict[str, Any] | None]) -> list[Any]:
    """New posts placed by time among the page's items, if newer than its last one."""
    for post in _new_in_feed(feed, local):
        at = next((i for i, item in enumerate(feed)
                   if str(_post_of(item).get("indexedAt", "")) < post["indexedAt"]), len(feed))
        feed.insert(at, {"post": post_view(post, local, found)})
    return feed


def _post_of(item: Any) -> dict[str, Any]:
    post = item.get("post") if isinstance(item, dict) else None
    return post if isinstance(post, dict) else {}


def _is_thread(value: Any) -> bool:
    return isinstance(value, dict) and value.get("$type") == THREAD_VIEW \
        and isinstance(value.get("post"), dict)


def reply_ref(record: Any, which: str) -> str | None:
    reply = record.get("reply") if isinstance(record, dict) else None
    ref = reply.get(which) if isinstance(reply, dict) else None
    uri = ref.get("uri") if isinstance(ref, dict) else None
    return uri if isinstance(uri, str) else None


def _in_thread(thread: dict[str, Any], posts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The posts replying within this thread (its root is the thread's post or root)."""
    top = thread["post"]
    roots = {top.get("uri"), reply_ref(top.get("record"), "root")} - {None}
    return [p for p in posts if reply_ref(p["record"], "root") in roots]


def thread_view(post: dict[str, Any], local: Local,
                found: Mapping[str, dict[str, Any] | None]) -> dict[str, Any]:
    """A new post as a thread item."""
    return {"$type": THREAD_VIEW, "post": post_view(post, local, found)}


def add_to_thread(thread: dict[str, Any], posts: list[dict[str, Any]], local: Local,
                  found: Mapping[str, dict[str, Any] | None]) -> dict[str, Any]:
    """`thread` with those of `posts` that reply within it placed first among their
    parent's replies (oldest first, so the newest ends up first), as the reference."""
    for post in _in_thread(thread, posts):
        thread = _insert_reply(thread, post, local, found)
    return thread


def _insert_reply(view: dict[str, Any], post: dict[str, Any], local: Local,
                  found: Mapping[str, dict[str, Any] | None]) -> dict[str, Any]:
    replies = view.get("replies")
    if reply_ref(post["record"], "parent") == view["post"].get("uri"):
        old = replies if isinstance(replies, list) else []
        return {**view, "replies": [thread_view(post, local, found), *old]}
    if not isinstance(replies, list):
        return view
    return {**view, "replies": [_insert_reply(r, post, local, found) if _is_thread(r) else r
                                for r in replies]}
