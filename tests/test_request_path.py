"""What each request no longer redoes (issue 16), in process: a session token verified
once per worker, with its expiry still checked on every use."""

from __future__ import annotations

import time

import jwt
import pytest
from server_util import app_context

from pds.errors import AuthFailed, InvalidInput
from pds.services.auth import SCOPE_ACCESS

DID = "did:web:alice.test"


def _token(ctx, exp: int, typ: str = "at+jwt", secret: str | None = None) -> str:
    claims = {"scope": SCOPE_ACCESS, "sub": DID, "aud": ctx.settings.service_did,
              "iat": int(time.time()), "exp": exp}
    return jwt.encode(claims, secret or ctx.settings.jwt_secret, algorithm="HS256",
                      headers={"typ": typ})


def test_a_session_token_is_verified_once_and_its_expiry_on_every_use(tmp_path):
    ctx = app_context(tmp_path / "data")
    token = _token(ctx, int(time.time()) + 2)
    first = ctx.auth._bearer("Bearer " + token, refresh=False)
    again = ctx.auth._bearer("Bearer " + token, refresh=False)
    assert again.did == DID
    assert again.payload is first.payload  # remembered: not parsed nor verified again
    time.sleep(max(0.0, first.payload["exp"] - time.time()) + 0.05)
    with pytest.raises(InvalidInput) as e:
        ctx.auth._bearer("Bearer " + token, refresh=False)
    assert e.value.error == "ExpiredToken"


def test_a_remembered_token_vouches_for_no_other(tmp_path):
    ctx = app_context(tmp_path / "data")
    token = _token(ctx, int(time.time()) + 600)
    ctx.auth._bearer("Bearer " + token, refresh=False)
    head, payload, sig = token.split(".")
    forged = f"{head}.{payload}.{sig[:-2]}{'AA' if sig[-2:] != 'AA' else 'BB'}"
    with pytest.raises(AuthFailed):
        ctx.auth._bearer("Bearer " + forged, refresh=False)
    other = _token(ctx, int(time.time()) + 600, secret="x" * 32)
    with pytest.raises(AuthFailed):
        ctx.auth._bearer("Bearer " + other, refresh=False)
    # An access token remembered as verified is still no refresh token.
    with pytest.raises(InvalidInput) as e:
        ctx.auth._bearer("Bearer " + token, refresh=True)
    assert e.value.error == "InvalidToken"
