"""HS256 JWTs (RFC 7519 in RFC 7515's compact form, HMAC-SHA256): the tokens this PDS
signs for itself and only it verifies, legacy session tokens and OAuth access tokens.

Made here with the standard library's `hmac` rather than PyJWT, for memory: importing
PyJWT imports all of `cryptography` (about 8.4 MB per worker, a Rust module its
algorithm table loads eagerly), and a session token is on nearly every request. PyJWT
stays for what needs asymmetric JOSE (OAuth DPoP proofs and client assertions) and is
imported there at first use (bench/README.md, Memory).

Only one algorithm is ever accepted, so the signature is checked first, over the bytes
as sent, before a byte of the header or payload is parsed: nothing unauthenticated
reaches the JSON parser, and there is no `alg` to confuse. The claim checks are PyJWT's
for the options we used: `exp` (expired at `exp` itself), `iat` and `nbf` not in the
future, `aud` and `iss` when asked, and the claims a caller requires.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from typing import Any

import orjson

# Longer tokens are refused before any work (ours are ~300 bytes, an OAuth one with many
# scopes a few KB; a request header field is at most 8190 bytes anyway).
MAX_TOKEN = 8192
_HEADERS: dict[str, bytes] = {}  # typ -> the encoded header, made once


class TokenInvalid(Exception):
    """Not a token of ours, or one that doesn't satisfy the checks asked for."""


class TokenExpired(TokenInvalid):
    """A token of ours whose `exp` has passed."""


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def _unb64(part: str) -> bytes:
    # The alphabet is checked by the strict decoder below; padding is not part of JWS.
    if "=" in part:
        raise TokenInvalid("padded base64url")
    try:
        return base64.b64decode(part + "=" * (-len(part) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise TokenInvalid("bad base64url") from None


def _key(key: str | bytes) -> bytes:
    return key.encode() if isinstance(key, str) else key


def sign(claims: dict[str, Any], key: str | bytes, typ: str) -> str:
    """A token of `claims` with header `{"alg":"HS256","typ":typ}` (keys in PyJWT's order)."""
    header = _HEADERS.get(typ)
    if header is None:
        header = _HEADERS.setdefault(typ, _b64(orjson.dumps({"alg": "HS256", "typ": typ})))
    signing_input = header + b"." + _b64(orjson.dumps(claims))
    mac = hmac.new(_key(key), signing_input, hashlib.sha256).digest()
    return (signing_input + b"." + _b64(mac)).decode()


def verify(token: Any, key: str | bytes, *, audience: str | None = None,
           issuer: str | None = None, require: tuple[str, ...] = ()) -> tuple[dict, dict]:
    """(header, payload) of a token signed with `key`; raises :class:`TokenExpired` or
    :class:`TokenInvalid`."""
    if not isinstance(token, str) or len(token) > MAX_TOKEN or not token.isascii():
        raise TokenInvalid("not a token")
    parts = token.split(".")
    if len(parts) != 3:
        raise TokenInvalid("not a compact JWS")
    signature = _unb64(parts[2])
    expected = hmac.new(_key(key), f"{parts[0]}.{parts[1]}".encode(), hashlib.sha256).digest()
    if not hmac.compare_digest(signature, expected):
        raise TokenInvalid("signature")
    try:
        header = orjson.loads(_unb64(parts[0]))
        payload = orjson.loads(_unb64(parts[1]))
    except orjson.JSONDecodeError:
        raise TokenInvalid("not JSON") from None
    if not isinstance(header, dict) or not isinstance(payload, dict):
        raise TokenInvalid("not a JSON object")
    if header.get("alg") != "HS256":
        raise TokenInvalid("alg")
    _check_claims(payload, audience, issuer, require)
    return header, payload


def _number(payload: dict, claim: str) -> float | None:
    value = payload.get(claim)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TokenInvalid(f"{claim} is not a number")
    return value


def _check_claims(payload: dict, audience: str | None, issuer: str | None,
                  require: tuple[str, ...]) -> None:
    for claim in require:
        if claim not in payload:
            raise TokenInvalid(f"missing {claim}")
    now = time.time()
    exp, iat, nbf = (_number(payload, c) for c in ("exp", "iat", "nbf"))
    if iat is not None and iat > now:
        raise TokenInvalid("issued in the future")
    if nbf is not None and nbf > now:
        raise TokenInvalid("not yet valid")
    if exp is not None and exp <= now:
        raise TokenExpired("expired")
    if audience is not None:
        aud = payload.get("aud")
        if not (aud == audience or (isinstance(aud, list) and audience in aud)):
            raise TokenInvalid("audience")
    if issuer is not None and payload.get("iss") != issuer:
        raise TokenInvalid("issuer")
