"""The forwarding service's read-after-write steps (`Proxy.forward`), around the pure
merge of `read_after_write`: find what the caller wrote since the AppView's rev, ask the
AppView for the records new posts embed, merge; and for getPostThread of the caller's own
post the AppView doesn't know yet (it answers `NotFound`), build the thread here, with
its parents as the AppView shows them, as the reference does."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from ..errors import PdsError
from . import read_after_write as raw
from . import reads
from .account import load
from .threads import blocking

if TYPE_CHECKING:
    from .proxy import Answer, Forward, Proxy

log = logging.getLogger("pds.proxy")

GET_POSTS_MAX = 25  # uris per getPosts (the lexicon's limit)
JSON = "application/json; charset=utf-8"


def params_of(path: str) -> dict[str, str]:
    """A call's query parameters (the last of each name)."""
    return {k: v[-1] for k, v in parse_qs(urlsplit(path).query).items()}


async def merge_local(proxy: Proxy, call: Forward, did: str, answer: Answer,
                      body_of: Any) -> Answer:
    """`answer` with the caller's writes the AppView hasn't seen merged in; as it is
    when it is up to date. `body_of`: reads a streamed body whole."""
    from .proxy import Answer
    headers = dict(answer.headers)
    rev = headers.get("atproto-repo-rev")
    if not rev or "json" not in headers.get("content-type", "json").lower():
        return answer
    # Inline when remembered (the same rev asked again while the AppView lags).
    local = await reads.read(raw.local_since, proxy.ctx, did, rev)
    if local is None:
        return answer
    body = answer.body if isinstance(answer.body, bytes) else await body_of(answer.body)
    params = params_of(call.path)
    page = await blocking(raw.parse, body)
    if page is None:
        return Answer(answer.status, answer.headers, body)
    found = await embedded(proxy, did, raw.record_targets(
        raw.to_insert(call.nsid, params, page, local)))
    merged = await blocking(raw.merge, call.nsid, params, page, local, found)
    if merged is None:
        return Answer(answer.status, answer.headers, body)
    kept = [(n, v) for n, v in answer.headers if n not in ("content-length",
                                                           "content-encoding")]
    return Answer(answer.status, _with_lag(kept, local), merged)


async def own_new_thread(proxy: Proxy, call: Forward, did: str, answer: Answer) -> Answer:
    """getPostThread answered `NotFound` for a post of the caller's the AppView hasn't
    read yet: the thread built from the caller's new posts (`answer` otherwise)."""
    from .proxy import Answer
    rev = dict(answer.headers).get("atproto-repo-rev")
    error = raw.parse(answer.body) if isinstance(answer.body, bytes) else None
    if not rev or error is None or error.get("error") != "NotFound":
        return answer
    params = params_of(call.path)
    host, _, path = params.get("uri", "").removeprefix("at://").partition("/")
    if host != did:
        acct = await reads.read(load, proxy.ctx, did)
        if acct is None or host.lower() != acct.handle:
            return answer
    local = await reads.read(raw.local_since, proxy.ctx, did, rev)
    uri = f"at://{did}/{path}"
    post = next((p for p in local.posts if p["uri"] == uri), None) if local else None
    if local is None or post is None:
        return answer
    rest = [p for p in local.posts if p is not post]
    found = await embedded(proxy, did, raw.record_targets(local.posts))
    thread = raw.add_to_thread(raw.thread_view(post, local, found), rest, local, found)
    parent = raw.reply_ref(post["record"], "parent")
    if parent:
        query = [("uri", parent), ("depth", "0")]
        if params.get("parentHeight"):
            query.append(("parentHeight", params["parentHeight"]))
        above = await appview_json(proxy, did, raw.THREAD, query)
        if isinstance(above, dict) and isinstance(above.get("thread"), dict):
            thread["parent"] = above["thread"]
    body = json.dumps({"thread": thread}, separators=(",", ":"), ensure_ascii=False).encode()
    return Answer(200, _with_lag([("content-type", JSON)], local), body)


async def embedded(proxy: Proxy, did: str, uris: list[str]) -> dict[str, dict[str, Any] | None]:
    """The AppView's views of the records at `uris` (posts, feed generators, lists), as
    the caller sees them; one it can't show is left out."""
    posts = [u for u in uris if raw.collection_of(u) == raw.POST][:GET_POSTS_MAX]
    others = [u for u in uris if raw.collection_of(u) in (raw.GENERATOR, raw.LIST)]
    asks: list[tuple[str, list[str], list[tuple[str, str]]]] = []
    if posts:
        asks.append((raw.POST, posts, [("uris", u) for u in posts]))
    for uri in others:
        kind = raw.collection_of(uri)
        asks.append((kind, [uri], [("feed" if kind == raw.GENERATOR else "list", uri)]))
    answers = await asyncio.gather(*(appview_json(proxy, did, raw.EMBED_METHODS[kind], q)
                                     for kind, _, q in asks))
    found: dict[str, dict[str, Any] | None] = {}
    for (kind, wanted, _), got in zip(asks, answers, strict=True):
        found.update(raw.embedded_views(kind, wanted, got))
    return found


async def appview_json(proxy: Proxy, did: str, nsid: str,
                       query: list[tuple[str, str]]) -> Any:
    """A query of the configured AppView as the caller (a service-auth token for it):
    its JSON answer, or None when it has none to give."""
    s = proxy.ctx.settings
    if not s.bsky_app_view_url:
        return None
    try:
        token = await proxy.token(did, s.bsky_app_view_did, nsid)
        status, body = await proxy.get(s.bsky_app_view_url, nsid, query, token)
    except PdsError as e:
        log.info("read-after-write: %s from the AppView: %s", nsid, e.message)
        return None
    return raw.parse(body) if status == 200 else None


def _with_lag(headers: list[tuple[str, str]], local: raw.Local) -> list[tuple[str, str]]:
    lag = raw.lag_ms(local)
    return [*headers, ("atproto-upstream-lag", str(lag))] if lag is not None else headers
