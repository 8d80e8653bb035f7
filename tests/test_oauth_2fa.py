"""The emailed sign-in code (2FA) on the OAuth pages, against `pds serve --workers 2`:
after a right password an account with sign-in codes on gets the code step, not the
consent; the code (read from the mail spool) signs the browser in once; wrong, spent and
expired codes, forged or foreign steps, a skipped password step and a missing CSRF token
are refused; "Send a new code"; remembered browsers; the account page. (A real browser
and a real SMTP server do it end to end in test_oauth_e2e.py.)"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import httpx
import pytest
from mail_util import spooled_token
from oauth_util import LOOPBACK_CLIENT, OAuthTester, cookie
from server_util import Account, Api, api_fixture

from pds.services.email import TOKEN_TTL
from pds.store.accounts import AccountStore, now_iso
from pds.store.layout import OAUTH_DEVICES, DataDir
from pds.store.tokens import TokenStore

api = api_fixture(env={"PDS_RATE_LIMITS": "true"})


@pytest.fixture
def app(api: Api) -> Iterator[OAuthTester]:
    tester = OAuthTester(api.server.url, f"http://{api.host}")
    yield tester
    tester.close()


def with_codes(api: Api) -> Account:
    """A new account with a confirmed address and sign-in codes on."""
    acct = api.create_account()
    AccountStore(DataDir(api.server.data_dir)).update(
        acct.did, emailConfirmedAt=now_iso(), emailAuthFactor=True)
    return acct


class Page:
    """One browser (its CSRF cookie) on one authorization request's page."""

    def __init__(self, app: OAuthTester, request_uri: str | None, csrf: str | None = None,
                 path: str = "/oauth/authorize") -> None:
        self.app, self.request_uri, self.path = app, request_uri, path
        if csrf is None:
            r = app.http.get(path, params={"client_id": LOOPBACK_CLIENT,
                                           "request_uri": request_uri} if request_uri else {})
            assert r.status_code == 200, r.text
            csrf = cookie(r, "pds-csrf")
        self.csrf = csrf
        self.step = ""

    def post(self, action: str, cookies: str = "", **fields: str) -> httpx.Response:
        form = {"csrf": self.csrf, "action": action, **fields}
        if self.request_uri:
            form["request_uri"] = self.request_uri
        r = self.app.http.post(self.path, headers={"Cookie": f"pds-csrf={self.csrf}{cookies}"},
                               data=form)
        found = re.search(r'name="step" value="([^"]+)"', r.text)
        if found:
            self.step = found.group(1)
        return r

    def password(self, acct: Account, **extra: str) -> httpx.Response:
        return self.post("sign_in", identifier=acct.handle, password=acct.password, **extra)

    def code(self, code: str, step: str | None = None, **kw: str) -> httpx.Response:
        return self.post("code", code=code, step=self.step if step is None else step, **kw)


def mailed(api: Api, acct: Account) -> str:
    return spooled_token(api.server.data_dir, acct.email)


def is_code_step(r: httpx.Response) -> bool:
    return "Check your email" in r.text and 'name="code"' in r.text


def test_password_then_code_then_consent(app: OAuthTester, api: Api) -> None:
    bob = with_codes(api)
    page = Page(app, app.par().json()["request_uri"])
    r = page.password(bob)
    assert r.status_code == 200 and is_code_step(r), r.text
    local, domain = bob.email.split("@")
    assert f"Enter the code we emailed to <strong>{local[0]}•••{local[-1]}@{domain}" in r.text
    assert bob.email not in r.text and "Authorize" not in r.text
    # The password alone signed nothing in: the request can't be approved yet.
    r = page.post("authorize")
    assert r.status_code == 403 and "Sign in first" in r.text
    # A wrong code: the step again, with a plain error.
    r = page.code("AAAAA-AAAAA")
    assert r.status_code == 401 and is_code_step(r) and "That code is not right" in r.text
    code = mailed(api, bob)
    r = page.code(code.lower())
    assert r.status_code == 200 and "Authorize app" in r.text, r.text
    r = page.post("authorize")
    assert r.status_code == 303 and "code=" in r.headers["location"]
    # The code is spent: on a new request (password again), it is refused.
    page = Page(app, app.par().json()["request_uri"])
    assert is_code_step(page.password(bob))
    r = page.code(code)
    assert r.status_code == 401 and "That code is not right" in r.text


def test_tokens_after_the_code_work(app: OAuthTester, api: Api) -> None:
    bob = with_codes(api)
    page = Page(app, app.par().json()["request_uri"])
    page.password(bob)
    assert "Authorize app" in page.code(mailed(api, bob)).text
    r = page.post("authorize")
    code = re.search(r"code=([^&]+)", r.headers["location"])
    assert code is not None
    tok = app.post("/oauth/token", app.code_form(code.group(1))).json()
    r = app.xrpc("GET", "com.atproto.server.getSession", tok["access_token"])
    assert r.status_code == 200 and r.json()["did"] == bob.did


def test_expired_code_and_a_new_one(app: OAuthTester, api: Api) -> None:
    bob = with_codes(api)
    page = Page(app, app.par().json()["request_uri"])
    assert is_code_step(page.password(bob))
    first = mailed(api, bob)
    TokenStore(DataDir(api.server.data_dir)).put(bob.did, "2fa", first,
                                                 issued_at=time.time() - TOKEN_TTL - 1)
    r = page.code(first)
    assert r.status_code == 401 and "That code has expired" in r.text
    r = page.post("resend", step=page.step)
    assert r.status_code == 200 and is_code_step(r) and "We sent a new code" in r.text
    second = mailed(api, bob)
    assert second != first
    assert page.code(first).status_code == 401  # replaced by the new one
    assert "Authorize app" in page.code(second).text


def test_the_password_step_cannot_be_skipped(app: OAuthTester, api: Api) -> None:
    bob, carol = with_codes(api), with_codes(api)
    page = Page(app, app.par().json()["request_uri"])
    # No step, a made-up one, one with its payload edited: back to the password.
    for step in ("", "e30.AAAA", "x" * 5000):
        r = page.code("AAAAA-AAAAA", step=step)
        assert r.status_code == 401 and "Sign in again" in r.text and "Password" in r.text
    assert is_code_step(page.password(carol))
    payload, mac = page.step.split(".")
    forged = payload.replace(payload[:8], payload[:7] + ("A" if payload[7] != "A" else "B"))
    r = page.code(mailed(api, carol), step=forged + "." + mac)
    assert r.status_code == 401 and "Sign in again" in r.text
    # Carol's step opens only carol's code, in this browser, on this request.
    assert is_code_step(page.password(bob))
    bob_step = page.step
    other_browser = Page(app, page.request_uri, csrf="another-browser")
    r = other_browser.code(mailed(api, bob), step=bob_step)
    assert r.status_code == 401 and "Sign in again" in r.text
    other_request = Page(app, app.par().json()["request_uri"], csrf=page.csrf)
    r = other_request.code(mailed(api, bob), step=bob_step)
    assert r.status_code == 401 and "Sign in again" in r.text
    # Without the CSRF token nothing happens (the code is still good afterwards).
    r = app.http.post("/oauth/authorize", data={
        "action": "code", "code": mailed(api, bob), "step": bob_step,
        "request_uri": page.request_uri})
    assert r.status_code == 403
    # A step issued before the password changed is dead.
    r = api.post("com.atproto.admin.updateAccountPassword",
                 {"did": bob.did, "password": "a new password"}, headers=api.admin_headers())
    assert r.status_code == 200
    r = page.code(mailed(api, bob), step=bob_step)
    assert r.status_code == 401 and "Sign in again" in r.text


def test_wrong_codes_are_rate_limited(app: OAuthTester, api: Api) -> None:
    bob = with_codes(api)
    page = Page(app, app.par().json()["request_uri"])
    assert is_code_step(page.password(bob))
    statuses = [page.code(f"AAAAA-{i:05d}").status_code for i in range(51)]
    assert statuses[:50] == [401] * 50 and statuses[50] == 429, statuses
    r = page.code(mailed(api, bob))  # even the right one, for now
    assert r.status_code == 429 and "Too many tries" in r.text


def test_remembered_browser_after_the_code(app: OAuthTester, api: Api) -> None:
    bob = with_codes(api)
    page = Page(app, app.par().json()["request_uri"])
    page.password(bob, remember="on")
    r = page.code(mailed(api, bob))
    device = cookie(r, "pds-device")
    # Next time: straight to consent, no password, no code.
    r = app.http.get("/oauth/authorize", headers={"Cookie": f"pds-device={device}"},
                     params={"client_id": LOOPBACK_CLIENT,
                             "request_uri": app.par().json()["request_uri"]})
    assert r.status_code == 200 and "Authorize app" in r.text, r.text


def test_a_browser_remembered_before_codes_is_forgotten(app: OAuthTester, api: Api) -> None:
    carol = api.create_account()
    page = Page(app, app.par().json()["request_uri"])
    r = page.password(carol, remember="on")
    assert "Authorize app" in r.text  # no codes yet: the password signs in
    device = cookie(r, "pds-device")
    AccountStore(DataDir(api.server.data_dir)).update(
        carol.did, emailConfirmedAt=now_iso(), emailAuthFactor=True)
    r = app.http.get("/oauth/authorize", headers={"Cookie": f"pds-device={device}"},
                     params={"client_id": LOOPBACK_CLIENT,
                             "request_uri": app.par().json()["request_uri"]})
    assert r.status_code == 200 and "Password" in r.text and "Authorize app" not in r.text
    devices = api.server.data_dir / "oauth" / OAUTH_DEVICES
    assert device.partition(".")[0] not in {p.name for p in devices.iterdir()}


def test_account_page_asks_for_the_code(app: OAuthTester, api: Api) -> None:
    bob = with_codes(api)
    page = Page(app, None, path="/oauth/account")
    r = page.post("sign_in", identifier=bob.email, password=bob.password)
    assert r.status_code == 200 and is_code_step(r) and "Authorized apps" not in r.text
    assert 'action="/oauth/account"' in r.text
    r = page.code("AAAAA-AAAAA")
    assert r.status_code == 401 and "That code is not right" in r.text
    r = page.code(mailed(api, bob))
    assert r.status_code == 200 and "Authorized apps" in r.text, r.text
    device = cookie(r, "pds-device")
    r = app.http.get("/oauth/account", headers={"Cookie": f"pds-device={device}"})
    assert "Authorized apps" in r.text
