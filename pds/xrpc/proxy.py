"""The one handler of every XRPC method this PDS does not serve itself: forwarded to the
service it belongs to (`pds.services.proxy`), the answer streamed back."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..services.proxy import Forward

if TYPE_CHECKING:
    from .app import Call


async def forward(call: Call) -> None:
    """Forward `call` (a GET, HEAD or POST of an unknown method) and answer with what the
    upstream answered."""
    req = call.req
    headers = {name.lower(): value for name, value in req.headers.items()}
    body = req.stream if req.method == "POST" else None
    answer = await call.ctx.proxy.forward(Forward(
        nsid=call.nsid, method=req.method, path=req.relative_uri, headers=headers,
        body=body.__aiter__() if body is not None else None, ip=call.ip))
    resp = call.resp
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
