"""/.well-known/atproto-did and /.well-known/did.json, from the files under
`well-known/<host>/` (the same files nginx serves when it fronts the app)."""

from __future__ import annotations

from typing import Any

import falcon
import falcon.asgi

from ..services.wellknown import read_document


class WellKnownFile:
    def __init__(self, ctx: Any, name: str, content_type: str) -> None:
        self.ctx = ctx
        self.name = name
        self.content_type = content_type

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        data = await read_document(self.ctx, (req.get_header("Host") or "").lower(), self.name)
        if data is None:
            # A handle hosted here but served on another name (e.g. through a proxy).
            raise falcon.HTTPNotFound(description="no such document for this host")
        resp.content_type = self.content_type
        resp.data = data


def add_routes(app: falcon.asgi.App, ctx: Any) -> None:
    app.add_route("/.well-known/atproto-did",
                  WellKnownFile(ctx, "atproto-did", "text/plain; charset=utf-8"))
    app.add_route("/.well-known/did.json", WellKnownFile(ctx, "did.json", "application/json"))
