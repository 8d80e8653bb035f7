"""The XRPC method table: handlers register by NSID with their kind and auth needs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

# Auth kinds a method can ask for.
NONE = "none"            # public
OPTIONAL = "optional"    # public, but a valid access token is read if sent
ACCESS = "access"        # access token (password session or app password)
ACCESS_FULL = "full"     # access token of a password session (no app passwords)
REFRESH = "refresh"      # refresh token
ADMIN = "admin"          # HTTP Basic admin
ACCESS_OR_SERVICE = "access_or_service"  # access token, or a service-auth JWT
SERVICE_OPTIONAL = "service_optional"    # anonymous, or a service-auth JWT


@dataclass
class Method:
    nsid: str
    kind: str  # "query" | "procedure"
    handler: Callable[..., Awaitable[Any]]
    auth: str = NONE
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


def query(nsid: str, auth: str = NONE) -> Callable:
    """Register an XRPC query (GET)."""
    def deco(fn: Callable) -> Callable:
        METHODS[nsid] = Method(nsid, "query", fn, auth)
        return fn
    return deco


def procedure(nsid: str, auth: str = NONE, body: str = "json") -> Callable:
    """Register an XRPC procedure (POST)."""
    def deco(fn: Callable) -> Callable:
        METHODS[nsid] = Method(nsid, "procedure", fn, auth, body)
        return fn
    return deco
