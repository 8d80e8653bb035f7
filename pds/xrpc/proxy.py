"""Forwarded methods (`pds.services.proxy`): the one handler of every XRPC method this PDS
does not serve itself, and the app.bsky methods a PDS answers by calling a service itself
(getFeed, registerPush and unregisterPush)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..services.auth import AuthKind
from ..services.proxy import Answer as Forwarded
from ..services.proxy import Forward
from .registry import procedure, query

if TYPE_CHECKING:
    import falcon.asgi

    from .app import Answer, Call


def _request(call: Call) -> Forward:
    from .app import oauth_request  # app imports this module
    req = call.req
    body = req.stream.__aiter__() if req.method == "POST" else None
    return Forward(nsid=call.nsid, method=req.method, path=req.relative_uri,
                   headers={name.lower(): value for name, value in req.headers.items()},
                   body=body, ip=call.ip, credential=oauth_request(req))


def _respond(resp: falcon.asgi.Response, answer: Forwarded) -> None:
    resp.status = answer.status
    for name, value in answer.headers:
        if name == "content-length":
            resp.content_length = int(value)
        else:
            resp.set_header(name, value)
    if isinstance(answer.body, bytes):
        resp.data = answer.body
    else:
        resp.stream = answer.body


async def forward(call: Call) -> None:
    """Forward `call` (a GET, HEAD or POST of an unknown method) and answer with what the
    upstream answered."""
    _respond(call.resp, await call.ctx.proxy.forward(_request(call)))


@query("app.bsky.feed.getFeed", auth=AuthKind.ACCESS)
async def get_feed(call: Call) -> Answer:
    answer = await call.ctx.proxy.get_feed(_request(call), call.auth.account,
                                           call.param("feed", required=True))
    from .app import Raw  # app imports this module
    headers = dict(answer.headers)
    ctype = headers.pop("content-type", "application/json")
    return Raw(answer.body, ctype, headers, answer.status)


@procedure("app.bsky.notification.registerPush", auth=AuthKind.ACCESS)
@procedure("app.bsky.notification.unregisterPush", auth=AuthKind.ACCESS)
async def push_registration(call: Call) -> Answer:
    """A device's push token given to, or withdrawn from (the app does that at logout),
    the notification service the body names."""
    await call.ctx.proxy.push_registration(call.auth.account, call.nsid,
                                           call.body if isinstance(call.body, dict) else {})
    return None
