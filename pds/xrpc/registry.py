"""The XRPC method table: handlers register by NSID with their kind and auth needs.

Each registration spells its full NSID as one literal (`@query("com.atproto.sync.getRepo")`),
so a grep for the NSID lands on its handler."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ..services.auth import AuthKind


@dataclass
class Method:
    nsid: str
    kind: str  # "query" | "procedure"
    handler: Callable[..., Awaitable[Any]]
    auth: AuthKind = AuthKind.NONE
    # For procedures: how the body is taken ("json", "raw" = streamed, "none").
    body: str = "json"


METHODS: dict[str, Method] = {}
# WebSocket subscriptions: nsid -> async handler(ctx, req, ws).
SUBSCRIPTIONS: dict[str, Callable[..., Awaitable[None]]] = {}


def subscription(nsid: str) -> Callable:
    """Register an XRPC subscription (WebSocket)."""
    def deco(fn: Callable) -> Callable:
        SUBSCRIPTIONS[nsid] = fn
        return fn
    return deco


def query(nsid: str, auth: AuthKind = AuthKind.NONE) -> Callable:
    """Register an XRPC query (GET)."""
    def deco(fn: Callable) -> Callable:
        METHODS[nsid] = Method(nsid, "query", fn, auth)
        return fn
    return deco


def procedure(nsid: str, auth: AuthKind = AuthKind.NONE, body: str = "json") -> Callable:
    """Register an XRPC procedure (POST)."""
    def deco(fn: Callable) -> Callable:
        METHODS[nsid] = Method(nsid, "procedure", fn, auth, body)
        return fn
    return deco
