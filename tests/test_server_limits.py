"""A stricter server: sign-up by invite only, rate limits on (their counters live in the
data dir, so a limit holds across both workers), a small blob quota and upload rate, and
client addresses taken from X-Real-IP (PDS_BEHIND_NGINX), so tests can speak from several."""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import signal
import time

import httpx
import pytest
from harness import children
from server_util import (
    PASSWORD,
    Api,
    api_fixture,
    check_response,
    diff_snapshots,
    err,
    ok,
    snapshot,
)

from pds.store.ratelimit import key_name

QUOTA = 20_000          # bytes of blobs per account
UPLOAD_RATE = 6         # uploads per hour per account

api = api_fixture(env={"PDS_INVITE_REQUIRED": "true", "PDS_RATE_LIMITS": "true",
                       "PDS_BEHIND_NGINX": "true", "PDS_BLOB_QUOTA": str(QUOTA),
                       "PDS_BLOB_UPLOAD_RATE": str(UPLOAD_RATE)})


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
    # The counter is a file in the data dir that every worker shares (one per identifier
    # and client address, as the reference keys them).
    name = key_name(f"login-id:300:{identifier}-127.0.0.1")
    start, count, window = (api.server.data_dir / "ratelimit" / name).read_text().split()
    assert (int(count), int(window)) == (30, 300)
    # Other identifiers are unaffected.
    err(api.post("com.atproto.server.createSession",
                 {"identifier": "someone-else.test", "password": "x"}), 401)


def _invited(api: Api, name: str) -> dict:
    code = ok(api.post("com.atproto.server.createInviteCode", {"useCount": 1},
                       headers=api.admin_headers()))["code"]
    return ok(sign_up(api, name, code))


def _login(api: Api, identifier: str, password: str, ip: str) -> httpx.Response:
    return api.post("com.atproto.server.createSession",
                    {"identifier": identifier, "password": password},
                    headers={"X-Real-IP": ip})


def test_a_stranger_cannot_lock_the_owner_out(api):
    """Failed logins are limited per identifier *and* client address (as the reference
    keys them): a stranger guessing from one address spends only that address's
    attempts, never the owner's."""
    _invited(api, "keeper")
    stranger, home = "203.0.113.7", "198.51.100.2"
    for _ in range(30):
        err(_login(api, "keeper.test", "guess", stranger), 401, "AuthenticationRequired")
    root = api.server.data_dir
    before = snapshot(root)
    # The stranger's address is refused from now on, even with the right password...
    for password in ("guess", PASSWORD):
        r = _login(api, "keeper.test", password, stranger)
        err(r, 429, "RateLimitExceeded")
        assert r.headers["ratelimit-policy"] == "30;w=300"
    err(_login(api, "KEEPER.test", PASSWORD, stranger), 429, "RateLimitExceeded")
    assert diff_snapshots(before, snapshot(root)) == []  # no session was made
    # ...while the owner, from home, gets in (and may still mistype).
    err(_login(api, "keeper.test", "typo", home), 401, "AuthenticationRequired")
    session = ok(_login(api, "keeper.test", PASSWORD, home))
    assert session["handle"] == "keeper.test"


def _basic(password: bytes, user: bytes = b"admin") -> dict:
    return {"Authorization": "Basic " + base64.b64encode(user + b":" + password).decode()}


def test_admin_basic_auth_odd_passwords_and_attempt_limit(api):
    """Basic credentials are compared as bytes (a non-ASCII password is just wrong, not a
    500), and failed admin attempts are limited per client address: 429 once spent, for
    that address only."""
    root = api.server.data_dir
    before = snapshot(root)
    attacker, operator = "192.0.2.66", "192.0.2.1"
    odd = [_basic("pässwörd".encode()), _basic("密码".encode()), _basic(b"\xff\xfe\x00"),
           _basic(api.server.admin_password.encode(), user="ädmin".encode()),
           {"Authorization": b"Basic " + "é".encode("latin-1") * 8},
           {"Authorization": "Basic ***"}]
    for headers in odd:
        r = api.post("com.atproto.server.createInviteCode", {"useCount": 1},
                     headers={**headers, "X-Real-IP": attacker})
        err(r, 401, "AuthenticationRequired")
    for i in range(10 - len(odd)):
        err(api.post("com.atproto.server.createInviteCode", {"useCount": 1},
                     headers={**_basic(f"guess{i}".encode()), "X-Real-IP": attacker}),
            401, "AuthenticationRequired")
    # Ten failures spent: the attacker's address is refused, right password or not.
    for headers in (_basic(b"guess"), api.admin_headers()):
        r = api.post("com.atproto.server.createInviteCode", {"useCount": 1},
                     headers={**headers, "X-Real-IP": attacker})
        err(r, 429, "RateLimitExceeded")
        assert int(r.headers["retry-after"]) > 0
    r = api.get("com.atproto.sync.getRepo", did="did:web:owner.test",
                headers={**api.admin_headers(), "X-Real-IP": attacker})
    err(r, 429, "RateLimitExceeded")  # optional-auth methods count the same attempts
    assert diff_snapshots(before, snapshot(root)) == []  # no invite code was made
    # The operator, from elsewhere, is not locked out.
    ok(api.post("com.atproto.server.createInviteCode", {"useCount": 1},
                headers={**api.admin_headers(), "X-Real-IP": operator}))


def _upload(api: Api, token: str, data: bytes, chunked: bool = False) -> httpx.Response:
    content = iter([data[i:i + 1000] for i in range(0, len(data), 1000)]) if chunked \
        else data
    return api.post("com.atproto.repo.uploadBlob", token=token, content=content,
                    headers={"Content-Type": "application/octet-stream"})


def test_blob_quota_per_account(api):
    """An account's blobs may take PDS_BLOB_QUOTA bytes: an upload past it is refused
    (413, at once when its length is declared, else when the stream crosses it) and
    leaves nothing behind; another account has its own quota."""
    filler = _invited(api, "filler")
    tok = filler["accessJwt"]
    ok(_upload(api, tok, secrets.token_bytes(8000)))
    ok(_upload(api, tok, secrets.token_bytes(8000)))
    root = api.server.data_dir
    before = snapshot(root)
    r = _upload(api, tok, secrets.token_bytes(8000))
    body = err(r, 413, "PayloadTooLarge")
    assert "quota" in body["message"]
    err(_upload(api, tok, secrets.token_bytes(8000), chunked=True), 413, "PayloadTooLarge")
    assert diff_snapshots(before, snapshot(root)) == []
    # What is left still fits.
    ok(_upload(api, tok, secrets.token_bytes(3000)))
    other = _invited(api, "otherone")
    ok(_upload(api, other["accessJwt"], secrets.token_bytes(8000)))


def test_blob_upload_rate_per_account(api):
    uploader = _invited(api, "uploader")
    tok = uploader["accessJwt"]
    for i in range(UPLOAD_RATE):
        ok(_upload(api, tok, b"blob %d" % i))
    root = api.server.data_dir
    before = snapshot(root)
    r = _upload(api, tok, b"one too many")
    err(r, 429, "RateLimitExceeded")
    assert r.headers["ratelimit-policy"] == f"{UPLOAD_RATE};w=3600"
    assert diff_snapshots(before, snapshot(root)) == []
    # Per account: another one uploads on.
    ok(_upload(api, _invited(api, "neighbour")["accessJwt"], b"mine"))


def test_blob_upload_rate_spares_an_account_moving_in(api):
    """An account that is not active yet (moving in: it uploads every blob of its repo
    at once) is not held to the upload rate; the quota still applies."""
    mover = _invited(api, "mover")
    tok = mover["accessJwt"]
    api.post("com.atproto.server.deactivateAccount", {},
             headers={"Authorization": f"Bearer {tok}"}).raise_for_status()
    for i in range(UPLOAD_RATE + 3):
        ok(_upload(api, tok, b"moving %d" % i))


def test_admin_password_of_any_characters(tmp_path):
    """The operator's admin password may hold any characters (even bytes that are not
    UTF-8, as an environment can): compared as the bytes a client sends."""
    from harness import free_port, init_data_dir

    from pds.config import Settings
    from pds.errors import AuthRequired
    from pds.services.context import AppContext

    data = tmp_path / "data"
    init_data_dir(data, free_port(), did_method="web")
    for password, raw in (("pässwörd", "pässwörd".encode()), ("a\udcffb", b"a\xffb")):
        ctx = AppContext(Settings.load(data, env={"PDS_ADMIN_PASSWORD": password,
                                                   "PDS_RATE_LIMITS": "false"}))
        header = "Basic " + base64.b64encode(b"admin:" + raw).decode()
        assert ctx.auth._admin(header).kind == "admin"
        for wrong in (b"admin:" + raw + b"x", b"admin:", b"root:" + raw, raw):
            with pytest.raises(AuthRequired):
                ctx.auth._admin("Basic " + base64.b64encode(wrong).decode())
