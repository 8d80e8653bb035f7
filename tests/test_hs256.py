"""pds.services.hs256: our own HS256 tokens, held to PyJWT (the library they replaced on
the request path) in both directions, and refused in every way a forged, altered or
stale token can come."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import jwt
import pytest

from pds.services import hs256

KEY = "k" * 32
AUD = "did:web:pds.test"


def _claims(**over) -> dict:
    now = int(time.time())
    return {"scope": "com.atproto.access", "sub": "did:web:alice.test", "aud": AUD,
            "iat": now, "exp": now + 600} | over


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _macd(header: bytes, payload: bytes) -> str:
    """A token of these raw header and payload bytes, with a valid MAC under KEY."""
    signing_input = f"{_b64(header)}.{_b64(payload)}"
    mac = hmac.new(KEY.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(mac)}"


def test_ours_and_pyjwts_tokens_are_the_same_bytes_and_verify_both_ways():
    claims = _claims()
    ours = hs256.sign(claims, KEY, "at+jwt")
    theirs = jwt.encode(claims, KEY, algorithm="HS256", headers={"typ": "at+jwt"})
    assert ours == theirs  # tokens issued before the change look like tokens after it
    assert jwt.decode(ours, KEY, algorithms=["HS256"], audience=AUD) == claims
    header, payload = hs256.verify(theirs, KEY, audience=AUD, require=("exp", "sub"))
    assert header == {"alg": "HS256", "typ": "at+jwt"} and payload == claims


def test_a_bytes_key_signs_as_its_text_does():
    assert hs256.sign(_claims(), KEY.encode(), "x") == hs256.sign(_claims(), KEY, "x")


@pytest.mark.parametrize("mutate", [
    lambda t: t[:-2] + ("AA" if t[-2:] != "AA" else "BB"),           # signature altered
    lambda t: t.rpartition(".")[0] + ".",                             # signature removed
    lambda t: t.rpartition(".")[0],                                   # two parts
    lambda t: t + ".x",                                               # four parts
    lambda t: t + "=",                                                # padded
    lambda t: t.replace(".", ".!", 1),                                # not base64url
    lambda t: "é" + t,                                                # not ASCII
    lambda t: t + "A" * hs256.MAX_TOKEN,                              # too long
])
def test_an_altered_token_is_refused(mutate):
    token = hs256.sign(_claims(), KEY, "at+jwt")
    with pytest.raises(hs256.TokenInvalid) as e:
        hs256.verify(mutate(token), KEY, audience=AUD)
    assert type(e.value) is hs256.TokenInvalid


def test_a_payload_swapped_under_a_valid_signature_is_refused():
    a = hs256.sign(_claims(sub="did:web:alice.test"), KEY, "at+jwt").split(".")
    b = hs256.sign(_claims(sub="did:web:mallory.test"), KEY, "at+jwt").split(".")
    with pytest.raises(hs256.TokenInvalid):
        hs256.verify(f"{a[0]}.{b[1]}.{a[2]}", KEY, audience=AUD)


@pytest.mark.parametrize("alg", ["none", "HS512", "ES256", None])
def test_only_hs256_is_accepted_even_when_the_mac_matches(alg):
    """A header naming another algorithm, MAC'd with our key anyway, is still refused:
    nothing but HS256 is ever ours."""
    token = _macd(json.dumps({"alg": alg, "typ": "at+jwt"}).encode(),
                  json.dumps(_claims()).encode())
    with pytest.raises(hs256.TokenInvalid):
        hs256.verify(token, KEY, audience=AUD)
    with pytest.raises(hs256.TokenInvalid):
        hs256.verify(token.rpartition(".")[0] + ".", KEY, audience=AUD)


def test_another_key_is_refused():
    with pytest.raises(hs256.TokenInvalid):
        hs256.verify(hs256.sign(_claims(), "x" * 32, "at+jwt"), KEY, audience=AUD)


def test_expiry_is_its_own_error_and_comes_at_exp_itself():
    now = int(time.time())
    with pytest.raises(hs256.TokenExpired):
        hs256.verify(hs256.sign(_claims(exp=now - 1), KEY, "t"), KEY, audience=AUD)
    with pytest.raises(hs256.TokenExpired):
        hs256.verify(hs256.sign(_claims(exp=now), KEY, "t"), KEY, audience=AUD)
    with pytest.raises(jwt.ExpiredSignatureError):  # as PyJWT has it
        jwt.decode(hs256.sign(_claims(exp=now), KEY, "t"), KEY, algorithms=["HS256"],
                   audience=AUD)


@pytest.mark.parametrize("over", [
    {"aud": "did:web:evil.test"}, {"aud": None}, {"aud": ["did:web:evil.test"]},
    {"iat": int(time.time()) + 3600}, {"nbf": int(time.time()) + 3600},
    {"exp": "tomorrow"}, {"exp": True}, {"iat": "now"},
])
def test_bad_claims_are_refused(over):
    claims = {k: v for k, v in (_claims() | over).items() if v is not None}
    with pytest.raises(hs256.TokenInvalid) as e:
        hs256.verify(hs256.sign(claims, KEY, "t"), KEY, audience=AUD)
    assert type(e.value) is hs256.TokenInvalid
    with pytest.raises(jwt.PyJWTError):  # PyJWT refuses each of them too
        jwt.decode(hs256.sign(claims, KEY, "t"), KEY, algorithms=["HS256"], audience=AUD)


def test_an_audience_list_naming_us_and_the_issuer_and_required_claims():
    token = hs256.sign(_claims(aud=["did:web:other.test", AUD], iss="https://pds.test"),
                       KEY, "t")
    assert hs256.verify(token, KEY, audience=AUD, issuer="https://pds.test")[1]["aud"][1] == AUD
    with pytest.raises(hs256.TokenInvalid):
        hs256.verify(token, KEY, audience=AUD, issuer="https://evil.test")
    with pytest.raises(hs256.TokenInvalid):
        hs256.verify(token, KEY, audience=AUD, require=("sid",))


@pytest.mark.parametrize("body", [b"[1,2]", b'"text"', b"{not json"])
def test_a_signed_payload_that_is_no_object_is_refused(body):
    with pytest.raises(hs256.TokenInvalid):
        hs256.verify(_macd(b'{"alg":"HS256","typ":"t"}', body), KEY)
    assert hs256.verify(_macd(b'{"alg":"HS256","typ":"t"}', b"{}"), KEY)[1] == {}


@pytest.mark.parametrize("token", [None, 42, b"a.b.c", ""])
def test_what_is_not_a_string_token_is_refused(token):
    with pytest.raises(hs256.TokenInvalid):
        hs256.verify(token, KEY)
