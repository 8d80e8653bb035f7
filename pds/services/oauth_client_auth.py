"""Confidential clients: `private_key_jwt` client authentication (RFC 7523 §2.2), as the
atproto OAuth profile uses it.

A confidential client's metadata names its public keys (`jwks`, or `jwks_uri` fetched
through the SSRF guard). At PAR, token and revocation it sends
`client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer` and a
`client_assertion` JWT signed by one of them: `iss` and `sub` the client_id, `aud` this
server's issuer, `iat` within CLIENT_ASSERTION_MAX_AGE, a `jti` never seen before (the
same cross-worker replay claims as DPoP's).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from ..errors import OAuthError
from .fetch import FetchError, guarded_get
from .oauth_clients import FETCH_TIMEOUT, MAX_METADATA, Client
from .threads import blocking

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
CLIENT_ASSERTION_MAX_AGE = 60
MAX_ASSERTION = 8192
SIGNING_ALGS = ["ES256", "ES256K", "ES384", "ES512"]


def _invalid(message: str) -> OAuthError:
    return OAuthError(message, "invalid_client")


async def client_keys(ctx: Any, client: Client) -> list[dict]:
    """The public JWKs a confidential client signs with."""
    if client.jwks is not None:
        return list(client.jwks)
    if client.jwks_uri is None:
        raise _invalid("the client has no keys (jwks or jwks_uri)")
    try:
        status, body = await guarded_get(ctx.http, client.jwks_uri, limit=MAX_METADATA,
                                         timeout=FETCH_TIMEOUT, dev=False,
                                         accept="application/json")
        doc = json.loads(body) if status == 200 else None
    except (FetchError, OSError, TimeoutError, ValueError, RecursionError) as e:
        raise _invalid(f"the client's jwks_uri could not be read: {e}") from None
    keys = doc.get("keys") if isinstance(doc, dict) else None
    if not isinstance(keys, list):
        raise _invalid("the client's jwks_uri holds no key set")
    return [k for k in keys if isinstance(k, dict)]


def verify_assertion(client: Client, keys: list[dict], form: dict[str, Any],
                     issuer: str, seen: Callable[[str], bool]) -> str:
    """Check a client assertion (blocking: `seen` claims its jti across workers);
    returns the `kid` of the key that signed it. OAuthError(invalid_client) otherwise."""
    if form.get("client_assertion_type") != ASSERTION_TYPE:
        raise _invalid("this client must authenticate with private_key_jwt")
    assertion = form.get("client_assertion")
    if not isinstance(assertion, str) or len(assertion) > MAX_ASSERTION:
        raise _invalid("client_assertion is required")
    import jwt  # PyJWT, and with it all of cryptography: only where a client uses them

    try:
        header = jwt.get_unverified_header(assertion)
    except jwt.PyJWTError:
        raise _invalid("client_assertion is not a JWT") from None
    alg, kid = header.get("alg"), header.get("kid")
    if alg not in SIGNING_ALGS:
        raise _invalid("client_assertion alg is not supported")
    candidates = [k for k in keys if kid is None or k.get("kid") == kid]
    claims = None
    for jwk in candidates:
        try:
            key: Any = jwt.PyJWK(jwk, algorithm=alg)
            claims = jwt.decode(assertion, key, algorithms=[alg], audience=issuer,
                                issuer=client.client_id,
                                options={"require": ["iat", "jti", "sub"]})
            break
        except (jwt.PyJWTError, ValueError, TypeError, KeyError):
            continue
    if claims is None:
        raise _invalid("client_assertion could not be verified with the client's keys")
    if claims.get("sub") != client.client_id:
        raise _invalid("client_assertion sub must be the client_id")
    iat = claims.get("iat")
    if not isinstance(iat, int | float) or abs(time.time() - iat) > CLIENT_ASSERTION_MAX_AGE:
        raise _invalid("client_assertion is too old")
    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti:
        raise _invalid("client_assertion jti is required")
    if seen("client-assertion:" + client.client_id + ":" + jti):
        raise _invalid("client_assertion replayed")
    return str(kid or "")


async def authenticate(ctx: Any, client: Client, form: dict[str, Any]) -> dict:
    """How the client authenticated this request: {"method": "none"} for a public
    client, {"method": "private_key_jwt", "kid": ...} for a confidential one."""
    if client.auth_method == "none":
        if form.get("client_assertion") is not None:
            raise _invalid("a public client sends no client_assertion")
        return {"method": "none"}
    keys = await client_keys(ctx, client)
    kid = await blocking(verify_assertion, client, keys, form, ctx.oauth.issuer,
                                  ctx.oauth.dpop.seen)
    return {"method": "private_key_jwt", "kid": kid}
