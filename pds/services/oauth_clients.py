"""OAuth clients: who a `client_id` is, from its metadata document.

Two kinds, as the atproto OAuth profile has them:

- a discoverable client: `client_id` is an https URL serving its metadata (JSON). It is
  fetched through the SSRF guard (https on 443, public addresses only, no redirects,
  at most MAX_METADATA bytes within FETCH_TIMEOUT seconds) and kept CACHE_TTL seconds;
- a loopback development client: `http://localhost` with no path, its redirect URIs and
  scope in the query (`redirect_uri`, repeatable; `scope`); defaults
  `http://127.0.0.1/` and `http://[::1]/`, scope `atproto`.

Public clients (`token_endpoint_auth_method: none`) and confidential ones
(`private_key_jwt`, see `oauth_client_auth`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ..errors import OAuthError
from .fetch import FetchError, guarded_get

MAX_CLIENT_ID = 2048
MAX_METADATA = 64 * 1024
FETCH_TIMEOUT = 5.0
CACHE_TTL = 600.0
_cache: dict[str, tuple[float, Client]] = {}


@dataclass(frozen=True)
class Client:
    """What the server needs of a client's metadata."""

    client_id: str
    redirect_uris: tuple[str, ...]
    scope: str
    name: str
    uri: str | None
    loopback: bool
    auth_method: str = "none"               # or "private_key_jwt"
    jwks: tuple[dict, ...] | None = None    # its public keys, inline...
    jwks_uri: str | None = None             # ...or where to fetch them


def _invalid(message: str) -> OAuthError:
    return OAuthError(message, "invalid_client_metadata")


async def get_client(ctx: Any, client_id: Any) -> Client:
    """The client `client_id` names; OAuthError(invalid_client...) when it can't be had."""
    if not isinstance(client_id, str) or not client_id or len(client_id) > MAX_CLIENT_ID:
        raise OAuthError("invalid client_id", "invalid_client")
    if client_id.startswith("http://localhost"):
        return loopback_client(client_id)
    hit = _cache.get(client_id)
    if hit is not None and hit[0] > time.monotonic():
        return hit[1]
    client = await _discover(ctx, client_id)
    _cache[client_id] = (time.monotonic() + CACHE_TTL, client)
    if len(_cache) > 1000:  # a crowd of one-time clients must not grow the worker forever
        _cache.pop(next(iter(_cache)))
    return client


def loopback_client(client_id: str) -> Client:
    """A development client on this machine (atproto OAuth spec, "Localhost Client")."""
    try:
        parts = urlsplit(client_id)
    except ValueError:
        raise OAuthError("invalid client_id", "invalid_client") from None
    if parts.scheme != "http" or parts.netloc != "localhost" or parts.path not in ("", "/") \
            or parts.fragment:
        raise OAuthError("a loopback client_id is http://localhost with no port or path",
                         "invalid_client")
    query = parse_qs(parts.query)
    redirects = tuple(query.get("redirect_uri", [])) or ("http://127.0.0.1/", "http://[::1]/")
    for uri in redirects:
        host = urlsplit(uri).hostname
        if not uri.startswith("http://") or host not in ("127.0.0.1", "::1"):
            raise _invalid("a loopback client redirects to http://127.0.0.1 or http://[::1]")
    scope = (query.get("scope") or ["atproto"])[-1]
    return Client(client_id, redirects, scope, "a development app on this computer",
                  None, True)


async def _discover(ctx: Any, client_id: str) -> Client:
    try:
        parts = urlsplit(client_id)
    except ValueError:
        raise OAuthError("invalid client_id", "invalid_client") from None
    if parts.scheme != "https" or not parts.hostname or parts.fragment:
        raise OAuthError("client_id must be an https URL", "invalid_client")
    try:
        # Always the strict guard, dev or not: a client is never on a private address.
        status, body = await guarded_get(ctx.http, client_id, limit=MAX_METADATA,
                                         timeout=FETCH_TIMEOUT, dev=False,
                                         accept="application/json")
    except (FetchError, OSError, TimeoutError) as e:
        raise _invalid(f"client metadata could not be fetched: {e}") from None
    except Exception as e:  # noqa: BLE001 - httpx's own errors: the client is unreachable
        raise _invalid(f"client metadata could not be fetched: {type(e).__name__}") from None
    if status != 200:
        raise _invalid(f"client metadata answered {status}")
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        raise _invalid("client metadata is not JSON") from None
    return parse_metadata(client_id, doc)


def parse_metadata(client_id: str, doc: Any) -> Client:
    """Check a discoverable client's metadata document."""
    if not isinstance(doc, dict) or doc.get("client_id") != client_id:
        raise _invalid("client metadata must name its own client_id")
    uris = doc.get("redirect_uris")
    if not isinstance(uris, list) or not uris or not all(isinstance(u, str) for u in uris):
        raise _invalid("redirect_uris must be a non-empty list")
    if doc.get("dpop_bound_access_tokens") is not True:
        raise _invalid("dpop_bound_access_tokens must be true")
    method = doc.get("token_endpoint_auth_method", "none")
    jwks, jwks_uri = _keys_of(doc, method)
    scope = doc.get("scope")
    if not isinstance(scope, str) or "atproto" not in scope.split():
        raise _invalid('scope must include "atproto"')
    if "authorization_code" not in (doc.get("grant_types") or []) or \
            "code" not in (doc.get("response_types") or []):
        raise _invalid("grant_types must include authorization_code, response_types code")
    name = doc.get("client_name")
    uri = doc.get("client_uri")
    return Client(client_id, tuple(uris), scope,
                  name if isinstance(name, str) and name else urlsplit(client_id).hostname
                  or client_id, uri if isinstance(uri, str) else None, False,
                  method, jwks, jwks_uri)


def _keys_of(doc: dict, method: Any) -> tuple[tuple[dict, ...] | None, str | None]:
    """A confidential client's keys (inline `jwks` or a `jwks_uri`); none for a public
    one."""
    if method == "none":
        return None, None
    if method != "private_key_jwt":
        raise _invalid(f"token_endpoint_auth_method {method!r} is not supported here")
    if doc.get("token_endpoint_auth_signing_alg") not in ("ES256", "ES256K", "ES384", "ES512"):
        raise _invalid("token_endpoint_auth_signing_alg must be an ES* algorithm")
    jwks, jwks_uri = doc.get("jwks"), doc.get("jwks_uri")
    if isinstance(jwks, dict) and isinstance(jwks.get("keys"), list):
        return tuple(k for k in jwks["keys"] if isinstance(k, dict)), None
    if isinstance(jwks_uri, str) and jwks_uri.startswith("https://"):
        return None, jwks_uri
    raise _invalid("a private_key_jwt client needs jwks or an https jwks_uri")
