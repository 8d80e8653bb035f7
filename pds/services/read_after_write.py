"""Read-after-write: the caller's own newest records merged into what the AppView answered.

The AppView answers with `atproto-repo-rev`, the caller's repo rev it has indexed. When
the caller's HEAD is past it, their records written since (read from the repo: what each
later commit wrote) are merged in as the reference PDS does (its `read-after-write/`):

- getProfile, getProfiles: the caller's profile view takes the new profile record's
  display name, description, avatar and banner;
- getTimeline, getAuthorFeed (of the caller): new posts are inserted by time, newer than
  the page's last item, as post views with zero counts (no embeds);
- getAuthorFeed, getActorLikes, getPostThread: the caller's author views take the new
  profile's display name and avatar.

Images point at this PDS's getBlob. A page that can't be read as JSON is passed as it is.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ..repo.codec import cbor_to_json, cid_str
from ..repo.tid import tid_timestamp_micros
from .account import load

if TYPE_CHECKING:
    from .context import AppContext

PROFILE, POST = "app.bsky.actor.profile", "app.bsky.feed.post"
MAX_COMMITS = 100  # a reader further behind than this is not patched
METHODS = {"app.bsky.actor.getProfile", "app.bsky.actor.getProfiles",
           "app.bsky.feed.getTimeline", "app.bsky.feed.getAuthorFeed",
           "app.bsky.feed.getPostThread", "app.bsky.feed.getActorLikes"}


@dataclass
class Local:
    """The caller's records written after the AppView's rev."""

    did: str
    handle: str
    base_url: str
    profile: dict[str, Any] | None = None
    posts: list[dict[str, Any]] = field(default_factory=list)  # oldest first
    oldest_micros: int | None = None

    def image(self, blob: Any) -> str | None:
        ref = blob.get("ref") if isinstance(blob, dict) else None
        cid = ref.get("$link") if isinstance(ref, dict) else None
        if not isinstance(cid, str):
            return None
        return f"{self.base_url}/xrpc/com.atproto.sync.getBlob?did={self.did}&cid={cid}"

    def author(self) -> dict[str, Any]:
        view: dict[str, Any] = {"did": self.did, "handle": self.handle}
        return _basic(view, self) if self.profile is not None else view


def local_since(ctx: AppContext, did: str, rev: str) -> Local | None:
    """The caller's profile and posts written after `rev` (None: nothing, or too far
    behind to patch). Blocking: reads the repo."""
    head = ctx.repo(did).head()
    if head is None or head.rev <= rev:
        return None
    writes = ctx.repo(did).writes_since(rev, MAX_COMMITS)
    acct = load(ctx, did)
    if not writes or acct is None:
        return None
    local = Local(did, acct.handle, ctx.settings.public_url)
    posts: dict[str, dict[str, Any]] = {}
    for commit_rev, wrote in writes:
        when = tid_timestamp_micros(commit_rev)
        for path, cid in wrote.items():
            collection, _, rkey = path.partition("/")
            if collection not in (PROFILE, POST):
                continue
            value = cbor_to_json(ctx.repo(did).blocks.get(cid)) if cid is not None else None
            local.oldest_micros = min(local.oldest_micros or when, when)
            if collection == PROFILE and rkey == "self":
                local.profile = value
            elif collection == POST:
                posts.pop(path, None)
                if value is not None and cid is not None:
                    posts[path] = {"uri": f"at://{did}/{path}", "cid": cid_str(cid),
                                   "record": value, "indexedAt": _iso(when)}
    local.posts = list(posts.values())
    return local if local.profile is not None or local.posts else None


def merge(nsid: str, params: dict[str, Any], body: bytes, local: Local) -> bytes | None:
    """The answer with `local` merged in, or None when it can't be read (pass it as is)."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict):
        return None
    if nsid == "app.bsky.actor.getProfile" and data.get("did") == local.did:
        data = _detailed(data, local) if local.profile is not None else data
    elif nsid == "app.bsky.actor.getProfiles" and isinstance(data.get("profiles"), list):
        data["profiles"] = [_detailed(p, local) if _mine(p, local) and local.profile
                            is not None else p for p in data["profiles"]]
    elif nsid == "app.bsky.feed.getTimeline" and isinstance(data.get("feed"), list):
        data["feed"] = _insert_posts(data["feed"], local)
    elif nsid == "app.bsky.feed.getAuthorFeed" and isinstance(data.get("feed"), list):
        if params.get("actor") in (local.did, local.handle):
            data["feed"] = _insert_posts(_authors(data["feed"], local), local)
    elif nsid in ("app.bsky.feed.getActorLikes", "app.bsky.feed.getPostThread"):
        data = _authors(data, local)
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


def lag_ms(local: Local) -> int | None:
    """How far behind the AppView is: since the oldest merged write (Atproto-Upstream-Lag)."""
    if local.oldest_micros is None:
        return None
    return max(0, int(time.time() * 1000 - local.oldest_micros / 1000))


def _iso(micros: int) -> str:
    return datetime.fromtimestamp(micros / 1e6, UTC).isoformat(timespec="milliseconds") \
        .replace("+00:00", "Z")


def _mine(view: Any, local: Local) -> bool:
    return isinstance(view, dict) and view.get("did") == local.did


def _basic(view: dict[str, Any], local: Local) -> dict[str, Any]:
    profile = local.profile or {}
    out = {**view, "displayName": profile.get("displayName"),
           "avatar": local.image(profile.get("avatar"))}
    return {k: v for k, v in out.items() if v is not None}


def _detailed(view: dict[str, Any], local: Local) -> dict[str, Any]:
    profile = local.profile or {}
    out = {**_basic(view, local), "description": profile.get("description"),
           "banner": local.image(profile.get("banner"))}
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


def _insert_posts(feed: list[Any], local: Local) -> list[Any]:
    """New posts placed by time among the page's items, if newer than its last one."""
    last = str(_post_of(feed[-1]).get("indexedAt", "")) if feed else ""
    have = {_post_of(i).get("uri") for i in feed}
    for post in reversed(local.posts):  # newest first, as the reference
        if post["indexedAt"] <= last or post["uri"] in have:
            continue
        view = {"uri": post["uri"], "cid": post["cid"], "author": local.author(),
                "record": post["record"], "indexedAt": post["indexedAt"], "likeCount": 0,
                "replyCount": 0, "repostCount": 0, "quoteCount": 0}
        at = next((i for i, item in enumerate(feed)
                   if str(_post_of(item).get("indexedAt", "")) < post["indexedAt"]), len(feed))
        feed.insert(at, {"post": view})
    return feed


def _post_of(item: Any) -> dict[str, Any]:
    post = item.get("post") if isinstance(item, dict) else None
    return post if isinstance(post, dict) else {}
