"""OAuth pieces checked directly: confidential-client assertions (private_key_jwt),
DPoP nonce windows, scope parsing. The served flow is in test_oauth.py."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from oauth_util import b64url

from pds.errors import OAuthError
from pds.services import oauth_perms, oauth_scopes
from pds.services.oauth_client_auth import ASSERTION_TYPE, verify_assertion
from pds.services.oauth_clients import parse_metadata
from pds.services.oauth_dpop import NONCE_WINDOW, Dpop
from pds.store.replay import SLOTS, SeenOnce

CLIENT_ID = "https://app.example.com/client-metadata.json"
ISSUER = "https://pds.example.com"


def replay(tmp_path: Path, buckets: int = 64) -> SeenOnce:
    return SeenOnce(tmp_path / "DPOP-JTI", tmp_path / "dpop-jti", 600, buckets)


def es256_key(kid: str) -> tuple[ec.EllipticCurvePrivateKey, dict]:
    key = ec.generate_private_key(ec.SECP256R1())
    n = key.public_key().public_numbers()
    return key, {"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256",
                 "x": b64url(n.x.to_bytes(32, "big")), "y": b64url(n.y.to_bytes(32, "big"))}


def metadata(jwk: dict) -> dict:
    return {"client_id": CLIENT_ID, "redirect_uris": ["https://app.example.com/cb"],
            "scope": "atproto transition:generic", "dpop_bound_access_tokens": True,
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"], "token_endpoint_auth_method": "private_key_jwt",
            "token_endpoint_auth_signing_alg": "ES256", "jwks": {"keys": [jwk]}}


def assertion(key: ec.EllipticCurvePrivateKey, kid: str, **claims: object) -> dict:
    body = {"iss": CLIENT_ID, "sub": CLIENT_ID, "aud": ISSUER, "iat": int(time.time()),
            "jti": f"j{time.monotonic_ns()}", **claims}
    token = jwt.encode(body, key, algorithm="ES256", headers={"kid": kid})
    return {"client_assertion_type": ASSERTION_TYPE, "client_assertion": token}


def test_private_key_jwt(tmp_path: Path) -> None:
    key, jwk = es256_key("k1")
    client = parse_metadata(CLIENT_ID, metadata(jwk))
    assert client.auth_method == "private_key_jwt" and client.jwks == (jwk,)
    seen = Dpop("s", ISSUER, replay(tmp_path)).seen
    form = assertion(key, "k1")
    assert verify_assertion(client, [jwk], form, ISSUER, seen) == "k1"
    refusals = [
        form,  # replayed
        assertion(key, "k1", aud="https://elsewhere.example"),
        assertion(key, "k1", iat=int(time.time()) - 600),
        assertion(key, "k1", sub="https://other.example/meta.json"),
        assertion(es256_key("k1")[0], "k1"),  # another key under the same kid
        {**assertion(key, "k1"), "client_assertion_type": "other"},
    ]
    for bad in refusals:
        with pytest.raises(OAuthError) as e:
            verify_assertion(client, [jwk], bad, ISSUER, seen)
        assert e.value.error == "invalid_client"


def test_confidential_metadata_needs_keys() -> None:
    _key, jwk = es256_key("k1")
    doc = metadata(jwk)
    del doc["jwks"]
    with pytest.raises(OAuthError):
        parse_metadata(CLIENT_ID, doc)
    with pytest.raises(OAuthError):
        parse_metadata(CLIENT_ID, {**metadata(jwk), "token_endpoint_auth_method": "secret"})
    assert parse_metadata(CLIENT_ID, {**doc, "jwks_uri": "https://app.example.com/jwks"}
                          ).jwks_uri == "https://app.example.com/jwks"


def test_nonces_rotate_and_agree_across_instances(tmp_path: Path) -> None:
    a, b = Dpop("secret", ISSUER, replay(tmp_path)), Dpop("secret", ISSUER, replay(tmp_path))
    now = 1_800_000_000.0
    assert a.nonce(now) == b.nonce(now)  # two workers: the same nonce
    assert a.nonce(now) != a.nonce(now + NONCE_WINDOW)  # it rotates
    assert b.nonce_ok(a.nonce(now), now + NONCE_WINDOW)  # and stays good a while
    assert not b.nonce_ok(a.nonce(now), now + 5 * NONCE_WINDOW)  # then goes stale
    assert not Dpop("other", ISSUER, replay(tmp_path)).nonce_ok(a.nonce(now), now)


def test_scope_parsing() -> None:
    declared = "atproto transition:generic repo:app.bsky.feed.post blob:image/*"
    assert oauth_scopes.parse("atproto repo:app.bsky.feed.post", declared) == \
        "atproto repo:app.bsky.feed.post"
    for bad in ("transition:generic", "atproto unknown:thing", "atproto repo:x.y.z",
                "atproto " + "x" * 5000):
        with pytest.raises(OAuthError) as e:
            oauth_scopes.parse(bad, declared)
        assert e.value.error == "invalid_scope"
    perms = [p for p in map(oauth_perms.parse_perm, (
        "repo?collection=a.b.c&action=delete", "rpc:*?aud=did:web:x%23svc",
        "account:email?action=manage")) if p is not None]
    assert len(perms) == 3
    assert oauth_perms.allows(perms, "repo", "a.b.c", "delete")
    assert not oauth_perms.allows(perms, "repo", "a.b.c", "create")
    assert oauth_perms.allows(perms, "rpc", "app.bsky.feed.getTimeline", aud="did:web:x#svc")
    assert not oauth_perms.allows(perms, "rpc", "app.bsky.feed.getTimeline", aud="did:web:y")
    assert oauth_perms.allows(perms, "account", "email", "read")
    assert oauth_perms.parse_perm("repo?action=destroy") is None
    assert oauth_perms.parse_perm("rpc:app.bsky.feed.getTimeline") is None  # aud required


def test_verify_checks_oauth_state(tmp_path: Path) -> None:
    from server_util import app_context

    from pds.store.layout import OAUTH_DEVICES, OAUTH_SESSIONS
    from pds.store.verify import verify_data_dir
    ctx = app_context(tmp_path)
    ctx.oauth.store.put(OAUTH_SESSIONS, "ses-" + "1" * 32, {"expiresAt": 2**40})
    assert verify_data_dir(tmp_path).ok
    (tmp_path / "oauth" / OAUTH_SESSIONS / ("ses-" + "2" * 32)).write_text("{not json")
    ctx.oauth.store.put(OAUTH_DEVICES, "dev-" + "3" * 32, {"did": "x"})
    (tmp_path / "oauth" / OAUTH_SESSIONS / ("ses-" + "1" * 32)).chmod(0o644)
    problems = verify_data_dir(tmp_path).problems
    assert len(problems) == 3, problems
    assert any("not a JSON record" in p for p in problems)
    assert any("no expiresAt" in p for p in problems)
    assert any("mode 644" in p for p in problems)


def test_maintenance_prunes_expired_state(tmp_path: Path) -> None:
    from server_util import app_context

    from pds.store.layout import OAUTH_CODES, OAUTH_REQUESTS, OAUTH_SESSIONS
    ctx = app_context(tmp_path)
    store = ctx.oauth.store
    now = int(time.time())
    store.put(OAUTH_REQUESTS, "req-" + "1" * 32, {"expiresAt": now - 1})
    store.put(OAUTH_CODES, "a" * 64, {"expiresAt": now - 1})
    store.put(OAUTH_SESSIONS, "ses-" + "2" * 32, {"expiresAt": now + 3600})
    assert ctx.prune() == 2  # the two expired records
    assert not (tmp_path / "oauth" / OAUTH_REQUESTS / ("req-" + "1" * 32)).exists()
    assert not (tmp_path / "oauth" / OAUTH_CODES / ("a" * 64)).exists()
    assert (tmp_path / "oauth" / OAUTH_SESSIONS / ("ses-" + "2" * 32)).exists()


def _claims(path: str, keys: list[str], out: object) -> None:
    """In another process: claim each key; put how many were new."""
    table = SeenOnce(Path(path) / "DPOP-JTI", Path(path) / "dpop-jti", 600, 64)
    out.put(sum(not table.seen(k) for k in keys))  # type: ignore[attr-defined]


def test_jti_table_refuses_a_second_claim_across_processes(tmp_path: Path) -> None:
    """Four processes race to claim the same keys (a table of 64 buckets: some overflow
    to files): each key is new to exactly one of them."""
    import multiprocessing

    keys = [f"dpop:{i}" for i in range(1500)]
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_claims, args=(str(tmp_path), keys, out)) for _ in range(4)]
    for p in procs:
        p.start()
    counts = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(60)
    assert sum(counts) == len(keys), counts
    assert list((tmp_path / "dpop-jti").iterdir())  # 1500 keys > 64 * 16 slots
    # A restart (a new mapping of the same file) still refuses them all.
    again = replay(tmp_path)
    assert all(again.seen(k) for k in keys)


def test_jti_table_expiry_and_overflow(tmp_path: Path) -> None:
    table, now = replay(tmp_path, buckets=1), 1_800_000_000.0
    keys = [f"dpop:{i}" for i in range(SLOTS + 2)]
    assert not any(table.seen(k, now=now) for k in keys)  # the last two overflowed
    overflow = sorted((tmp_path / "dpop-jti").iterdir())
    assert len(overflow) == 2
    assert all(table.seen(k, now=now + 600) for k in keys)
    # Older than `keep`: free again (the slots are reused, the overflow files pruned).
    later = now + 601
    assert not table.seen(keys[-1], now=later) and table.seen(keys[-1], now=later)
    for path in overflow:
        os.utime(path, (now, now))
    assert table.prune(later) == 2 and not list((tmp_path / "dpop-jti").iterdir())
    # What an older version claimed as files counts for `keep` seconds after the table
    # is made (an upgrade keeps refusing the proofs it saw).
    (tmp_path / "dpop-jti" / hashlib.sha256(b"dpop:from-before").hexdigest()).touch()
    fresh = SeenOnce(tmp_path / "NEW-TABLE", tmp_path / "dpop-jti", 600, 1)
    assert fresh.seen("dpop:from-before") and not fresh.seen("dpop:other")


def test_code_steps() -> None:
    """The 2FA code step's signed value: only the genuine, unexpired one, for its place,
    browser and password, opens; the page shows the address masked."""
    from pds.services.account import Account
    from pds.services.oauth_code_step import STEP_TTL, Steps, mask_email

    acct = Account(did="did:web:a.test", handle="a.test", email="alice@example.com",
                   password_hash="$argon2id$one")
    steps, now = Steps("secret"), 1_800_000_000.0
    step = steps.issue(acct, "req-1", "csrf-a", True, now=now)
    found = steps.open(step, "req-1", "csrf-a", lambda did: acct, now=now + STEP_TTL - 1)
    assert found is not None and found[0].did == acct.did and found[0].remember
    assert found[0].hint == "a•••e@example.com"
    changed = Account(did=acct.did, handle="a.test", password_hash="$argon2id$two")
    for value, where, browser, account, at in (
            (step, "req-1", "csrf-a", acct, now + STEP_TTL + 1),  # expired
            (step, "req-2", "csrf-a", acct, now),  # another request
            (step, "account", "csrf-a", acct, now),  # the account page
            (step, "req-1", "csrf-b", acct, now),  # another browser
            (step, "req-1", "csrf-a", changed, now),  # the password changed since
            (step, "req-1", "csrf-a", None, now),  # the account is gone
            (step.split(".")[0] + "." + "A" * 43, "req-1", "csrf-a", acct, now),  # forged
            (Steps("other").issue(acct, "req-1", "csrf-a", True, now=now), "req-1",
             "csrf-a", acct, now),  # another server's secret
            ("no-dot", "req-1", "csrf-a", acct, now), (None, "req-1", "csrf-a", acct, now)):
        assert steps.open(value, where, browser, lambda did, a=account: a, now=at) is None
    assert mask_email("ab@x.org") == "a•••@x.org" and mask_email(None) == "your email address"
