"""A stricter server: sign-up by invite only, and login rate limits on (their counters live
in the data dir, so the limit holds across both workers)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import time

import httpx
import pytest
from harness import children
from server_util import PASSWORD, Api, api_fixture, check_response, err, ok

api = api_fixture(env={"PDS_INVITE_REQUIRED": "true", "PDS_RATE_LIMITS": "true"})


def sign_up(api: Api, name: str, code: str | None) -> httpx.Response:
    body = {"handle": f"{name}.test", "email": f"{name}@example.com", "password": PASSWORD}
    if code is not None:
        body["inviteCode"] = code
    return api.post("com.atproto.server.createAccount", body)


def test_invites(api):
    assert ok(api.get("com.atproto.server.describeServer"))["inviteCodeRequired"] is True
    root = api.server.data_dir
    err(sign_up(api, "nocode", None), 400, "InvalidInviteCode")
    err(sign_up(api, "badcode", "localhost-000000-000000"), 400, "InvalidInviteCode")
    # Codes name files under invites/: nothing outside it is reachable through one.
    for code in ("../pds.env", "../../etc/passwd", "..", "a/b", "x\x00y"):
        err(sign_up(api, "badcode", code), 400, "InvalidInviteCode")
    assert not (root / "handles" / "nocode.test").exists()
    assert not (root / "handles" / "badcode.test").exists()

    code = ok(api.post("com.atproto.server.createInviteCode", {"useCount": 1},
                       headers=api.admin_headers()))["code"]
    first = ok(sign_up(api, "invited", code))
    err(sign_up(api, "second", code), 400, "InvalidInviteCode")
    assert not (root / "handles" / "second.test").exists()
    assert not (root / "emails" / "second@example.com").exists()

    # Codes for an account: listed by getAccountInviteCodes, each usable as often as asked.
    made = ok(api.post("com.atproto.server.createInviteCodes",
                       {"useCount": 2, "codeCount": 3, "forAccounts": [first["did"]]},
                       headers=api.admin_headers()))["codes"]
    assert len(made) == 1 and made[0]["account"] == first["did"]
    codes = made[0]["codes"]
    assert len(codes) == 3 and len(set(codes)) == 3
    mine = ok(api.get("com.atproto.server.getAccountInviteCodes",
                      token=first["accessJwt"]))["codes"]
    assert sorted(c["code"] for c in mine) == sorted(codes)
    assert all(c["available"] == 2 and c["uses"] == [] and c["disabled"] is False
               for c in mine)
    ok(sign_up(api, "friend1", codes[0]))
    friend2 = ok(sign_up(api, "friend2", codes[0]))
    err(sign_up(api, "friend3", codes[0]), 400, "InvalidInviteCode")
    mine = ok(api.get("com.atproto.server.getAccountInviteCodes",
                      token=first["accessJwt"]))["codes"]
    used = next(c for c in mine if c["code"] == codes[0])
    assert sorted(u["usedBy"] for u in used["uses"]) == \
        sorted([friend2["did"], "did:web:friend1.test"])
    # Another account sees none of them.
    assert ok(api.get("com.atproto.server.getAccountInviteCodes",
                      token=friend2["accessJwt"]))["codes"] == []
    # Without admin credentials, no codes.
    err(api.post("com.atproto.server.createInviteCodes", {"useCount": 1}), 401)


async def _logins(url: str, identifier: str, password: str, n: int) -> list[httpx.Response]:
    """n createSession calls at once, each on its own connection (so both workers answer)."""
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        responses = await asyncio.gather(*[
            client.post("/xrpc/com.atproto.server.createSession",
                        json={"identifier": identifier, "password": password},
                        headers={"Connection": "close"})
            for _ in range(n)])
    for r in responses:
        check_response(r)
    return list(responses)


def test_login_rate_limit_across_workers(api):
    code = ok(api.post("com.atproto.server.createInviteCode", {"useCount": 1},
                       headers=api.admin_headers()))["code"]
    ok(sign_up(api, "hammered", code))
    identifier = "hammered.test"
    # 30 attempts in the window are allowed (wrong passwords, spread over both workers)...
    first = asyncio.run(_logins(api.server.url, identifier, "wrong", 30))
    assert sorted(r.status_code for r in first) == [401] * 30
    # The count is not kept in any worker's memory: replace both workers by fresh ones.
    old = children(api.server.proc.pid)
    assert len(old) == 2
    for pid in old:
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        now = children(api.server.proc.pid)
        if len(now) == 2 and not set(now) & set(old):
            break
        time.sleep(0.1)
    else:
        pytest.fail("gunicorn did not replace its workers")
    ok(api.get("com.atproto.server.describeServer"))
    # ...the 31st, and any after it, is refused whichever worker takes it, even with the
    # right password.
    more = asyncio.run(_logins(api.server.url, identifier, PASSWORD, 6))
    for r in more:
        body = err(r, 429, "RateLimitExceeded")
        assert "Traceback" not in str(body)
        assert int(r.headers["retry-after"]) > 0
        assert r.headers["ratelimit-limit"] == "30"
        assert r.headers["ratelimit-remaining"] == "0"
        assert r.headers["ratelimit-policy"] == "30;w=300"
    # The counter is a file in the data dir that every worker shares.
    name = hashlib.sha256(f"login-id:{identifier}".encode()).hexdigest()[:32]
    start, count = (api.server.data_dir / "ratelimit" / name).read_text().split()
    assert int(count) == 30
    # Other identifiers are unaffected.
    err(api.post("com.atproto.server.createSession",
                 {"identifier": "someone-else.test", "password": "x"}), 401)
