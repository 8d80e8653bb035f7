"""OAuth end to end: the official `@atproto/oauth-client-node` as the app and headless
Debian chromium on the PDS's own sign-in page (tests/node/oauth_flow.mjs), against
`pds serve --workers 2`: PAR, sign in, consent, callback, DPoP-bound tokens,
createRecord/getRecord/uploadBlob with `@atproto/api`, refresh (the old refresh token
refused), a remembered browser, the account page, sign out (the tokens refused).

The same with emailed sign-in codes (2FA) on, the code read from the mail a real SMTP
server (aiosmtpd) received.

Screenshots of the sign-in, consent, account and code pages land in tests/screenshots/
(gitignored), for a person to look at."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from harness import free_port, init_data_dir, running_server, start_server
from mail_util import SmtpServer, token_of
from ops_util import nginx_binary, start_nginx
from server_util import Account, Api, ok

NODE_DIR = Path(__file__).resolve().parent / "node"
SHOTS = Path(__file__).resolve().parent / "screenshots"
CHROMIUM = "/usr/bin/chromium"

pytestmark = pytest.mark.slow


def run_flow(base_url: str, public: str, handle: str, password: str,
             *extra: str) -> dict:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not on PATH: the official OAuth client needs it")
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing: the sign-in page needs a real browser")
    if not (NODE_DIR / "node_modules" / "playwright-core").exists():
        pytest.skip("tests/node has no playwright-core installed")
    SHOTS.mkdir(exist_ok=True)
    res = subprocess.run(
        [node, str(NODE_DIR / "oauth_flow.mjs"), "--pds", public, "--handle", handle,
         "--password", password, "--shots", str(SHOTS), *extra],
        cwd=NODE_DIR, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"stdout:\n{res.stdout}\nstderr:\n{res.stderr}"
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_official_client_and_browser(tmp_path: Path) -> None:
    with running_server(tmp_path, workers=2) as server, Api(server) as api:
        alice = api.create_account()
        found = run_flow(server.url, f"http://{api.host}", alice.handle, alice.password)
        assert found["did"] == alice.did
        assert found["oldRefreshRefused"] and found["signedOut"]
        # The record the app wrote is in the repo.
        rkey = found["uri"].rsplit("/", 1)[1]
        r = api.get("com.atproto.repo.getRecord", repo=alice.did,
                    collection="app.bsky.feed.post", rkey=rkey)
        assert r.status_code == 200 and r.json()["value"]["text"] == "hello via oauth"
    for name in ("oauth-sign-in.png", "oauth-consent.png", "oauth-account.png"):
        assert (SHOTS / name).stat().st_size > 1000


def test_official_client_and_browser_with_sign_in_codes(tmp_path: Path) -> None:
    """Sign in (password, then the mailed code: a wrong one refused first) -> consent ->
    callback -> tokens work; "remember this device" after the code: the next
    authorization goes straight to consent, no code."""
    maildir = tmp_path / "maildir"
    maildir.mkdir()
    smtp = SmtpServer(save_dir=maildir).start()
    env = {"PDS_EMAIL_SMTP_URL": smtp.url, "PDS_EMAIL_FROM_ADDRESS": "pds@example.com"}
    try:
        with running_server(tmp_path, env=env, workers=2) as server, Api(server) as api:
            alice = api.create_account()
            turn_on_sign_in_codes(api, smtp, alice)
            found = run_flow(server.url, f"http://{api.host}", alice.handle, alice.password,
                             "--maildir", str(maildir), "--email", alice.email)
            assert found["did"] == alice.did and found["codeStep"]
            assert found["oldRefreshRefused"] and found["signedOut"]
            codes = [m for m in smtp.inbox.to(alice.email) if "Sign-in code" in m["Subject"]]
            assert len(codes) == 1  # the remembered browser needed none the second time
    finally:
        smtp.stop()
    for name in ("oauth-2fa.png", "oauth-2fa-wide.png", "oauth-2fa-wrong.png"):
        assert (SHOTS / name).stat().st_size > 1000


def turn_on_sign_in_codes(api: Api, smtp: SmtpServer, acct: Account) -> None:
    """Confirm the address and turn sign-in codes on, as a person does (mailed tokens)."""
    ok(api.post("com.atproto.server.requestEmailConfirmation", token=acct.access))
    token = token_of(smtp.inbox.wait(acct.email)[0])
    ok(api.post("com.atproto.server.confirmEmail", {"email": acct.email, "token": token},
                token=acct.access))
    ok(api.post("com.atproto.server.requestEmailUpdate", token=acct.access))
    token = token_of(smtp.inbox.wait(acct.email, 2)[1])
    ok(api.post("com.atproto.server.updateEmail", {
        "email": acct.email, "token": token, "emailAuthFactor": True}, token=acct.access))


def test_official_client_through_nginx(tmp_path: Path) -> None:
    """The same flow through the shipped nginx config, the app behind it on another
    port: the issuer, every endpoint and every DPoP `htu` are the public URL (nginx's),
    never the app's own address."""
    if nginx_binary() is None:
        pytest.skip("nginx is not installed (looked on PATH and in /usr/sbin)")
    port = free_port()
    data = tmp_path / "data"
    init_data_dir(data, port)  # the public host name is nginx's: localhost:<port>
    app = start_server(data, workers=2, env={"PDS_BEHIND_NGINX": "true"}, wait=60)
    try:
        nginx = start_nginx(tmp_path / "nginx", data, f"127.0.0.1:{app.port}", port=port)
        try:
            with Api(app) as api:
                alice = api.create_account()
                meta = api.http.get("/.well-known/oauth-authorization-server").json()
                assert meta["issuer"] == f"http://localhost:{port}"
                found = run_flow(nginx.url, f"http://localhost:{port}", alice.handle,
                                 alice.password)
            assert found["did"] == alice.did and found["signedOut"]
            assert any("/oauth/token" in line for line in nginx.access_log())
        finally:
            nginx.stop()
    finally:
        app.stop()
    assert "Traceback" not in app.log()
