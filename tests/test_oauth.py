"""The PDS as an OAuth authorization server, against `pds serve --workers 2`: metadata,
PAR, the page's forms, the token endpoint, DPoP on XRPC, and each refusal the atproto
OAuth profile asks for, with its error. (The official client and a real browser drive
it in test_oauth_e2e.py.)"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest
from harness import free_port
from oauth_util import (
    LOOPBACK_CLIENT,
    REDIRECT,
    DpopKey,
    OAuthTester,
    cookie,
    loopback_client,
)
from server_util import Account, Api, api_fixture

# The page's login limits on; the AppView a closed port, so a forwarded call that got
# through auth fails upstream (502), not at the door (401/403).
api = api_fixture(env={"PDS_RATE_LIMITS": "true",
                       "PDS_BSKY_APP_VIEW_URL": f"http://127.0.0.1:{free_port()}",
                       "PDS_BSKY_APP_VIEW_DID": "did:web:appview.invalid"})

POST = {"$type": "com.example.note", "text": "via oauth", "createdAt": "2026-01-01T00:00:00Z"}


@pytest.fixture
def app(api: Api) -> Iterator[OAuthTester]:
    tester = OAuthTester(api.server.url, f"http://{api.host}")
    yield tester
    tester.close()


@pytest.fixture(scope="module")
def alice(api: Api) -> Account:
    return api.create_account()


def create(app: OAuthTester, token: str, did: str, **kw: object):
    return app.xrpc("POST", "com.atproto.repo.createRecord", token, json={
        "repo": did, "collection": "com.example.note", "record": POST}, **kw)


def test_metadata_names_the_public_url(api: Api) -> None:
    issuer = f"http://{api.host}"
    meta = api.http.get("/.well-known/oauth-authorization-server").json()
    assert meta["issuer"] == issuer
    assert meta["pushed_authorization_request_endpoint"] == issuer + "/oauth/par"
    assert meta["code_challenge_methods_supported"] == ["S256"]
    assert meta["require_pushed_authorization_requests"] is True
    assert "ES256" in meta["dpop_signing_alg_values_supported"]
    res = api.http.get("/.well-known/oauth-protected-resource").json()
    assert res["authorization_servers"] == [issuer] and res["resource"] == issuer
    # Browser apps call PAR and token cross-origin, with a DPoP header.
    r = api.http.options("/oauth/token", headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "dpop,content-type"})
    assert r.status_code == 200
    assert "dpop" in r.headers["Access-Control-Allow-Headers"].lower()
    assert "DPoP-Nonce" in r.headers.get("Access-Control-Expose-Headers", "") or \
        r.headers["Access-Control-Allow-Origin"] == "*"


def test_full_flow_refresh_and_revoke(app: OAuthTester, alice: Account, api: Api) -> None:
    tok = app.tokens(alice.handle, alice.password)
    assert tok["token_type"] == "DPoP" and tok["sub"] == alice.did
    assert tok["expires_in"] == 3600 and tok["scope"] == "atproto transition:generic"
    r = create(app, tok["access_token"], alice.did)
    assert r.status_code == 200, r.text
    assert r.headers.get("DPoP-Nonce")
    r = app.xrpc("GET", "com.atproto.server.getSession", tok["access_token"])
    assert r.status_code == 200 and r.json()["did"] == alice.did
    # The token is no Bearer token.
    r = api.get("com.atproto.server.getSession", token=tok["access_token"])
    assert r.status_code == 401
    # Refresh: the old refresh token is spent.
    r = app.post("/oauth/token", {"grant_type": "refresh_token", "client_id": LOOPBACK_CLIENT,
                                  "refresh_token": tok["refresh_token"]})
    assert r.status_code == 200, r.text
    new = r.json()
    assert new["refresh_token"] != tok["refresh_token"]
    assert create(app, new["access_token"], alice.did).status_code == 200
    # Revoke: the session's tokens are refused.
    r = app.post("/oauth/revoke", {"token": new["refresh_token"], "client_id": LOOPBACK_CLIENT})
    assert r.status_code == 200
    r = create(app, new["access_token"], alice.did)
    assert r.status_code == 401 and r.json()["error"] == "invalid_token"


def test_refresh_reuse_revokes_the_session(app: OAuthTester, alice: Account) -> None:
    tok = app.tokens(alice.handle, alice.password)
    form = {"grant_type": "refresh_token", "client_id": LOOPBACK_CLIENT,
            "refresh_token": tok["refresh_token"]}
    new = app.post("/oauth/token", form).json()
    r = app.post("/oauth/token", form)
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    # The replay ended the whole grant: the newest tokens are refused too.
    assert create(app, new["access_token"], alice.did).status_code == 401
    r = app.post("/oauth/token", {**form, "refresh_token": new["refresh_token"]})
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"


def test_par_refuses_missing_or_plain_pkce(app: OAuthTester) -> None:
    r = app.par(code_challenge=None, code_challenge_method=None)
    assert r.status_code == 400 and r.json()["error"] == "invalid_request"
    r = app.par(code_challenge_method="plain")
    assert r.status_code == 400 and r.json()["error"] == "invalid_request"
    assert "S256" in r.json()["error_description"]


def test_par_refuses_unknown_redirect_uri(app: OAuthTester) -> None:
    r = app.par(redirect_uri="http://127.0.0.1:9/elsewhere")
    assert r.status_code == 400 and r.json()["error"] == "invalid_request"
    assert "redirect_uri" in r.json()["error_description"]


def test_par_refuses_private_client_metadata_url(app: OAuthTester) -> None:
    for client_id in ("https://127.0.0.1/client-metadata.json",
                      "https://localhost/client-metadata.json",
                      "https://10.1.2.3/oauth/client.json"):
        r = app.par(client_id=client_id)
        assert r.status_code == 400, r.text
        assert r.json()["error"] == "invalid_client_metadata"
        assert "non-public" in r.json()["error_description"] or \
            "private" in r.json()["error_description"] or \
            "resolve" in r.json()["error_description"], r.text


def test_par_needs_dpop_and_a_nonce(app: OAuthTester, api: Api) -> None:
    r = api.http.post("/oauth/par", data={"client_id": LOOPBACK_CLIENT})
    assert r.status_code == 401 and r.json()["error"] == "invalid_dpop_proof"
    assert r.headers["WWW-Authenticate"].startswith("DPoP ")
    fresh = OAuthTester(api.server.url, f"http://{api.host}")
    try:
        r = fresh.post("/oauth/par", {"client_id": LOOPBACK_CLIENT}, retry=False)
        assert r.status_code == 400 and r.json()["error"] == "use_dpop_nonce"
        assert r.headers["DPoP-Nonce"]
        r = fresh.post("/oauth/par", {"client_id": LOOPBACK_CLIENT}, retry=False,
                       nonce="stale-or-made-up")
        assert r.status_code == 400 and r.json()["error"] == "use_dpop_nonce"
    finally:
        fresh.close()


def test_wrong_verifier_and_reused_code(app: OAuthTester, alice: Account) -> None:
    request_uri = app.par().json()["request_uri"]
    code = app.sign_in_and_approve(request_uri, alice.email, alice.password)["code"]
    r = app.post("/oauth/token", app.code_form(code, verifier="x" * 50))
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    # Spent by the wrong attempt: the right verifier is too late.
    r = app.post("/oauth/token", app.code_form(code))
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"

    request_uri = app.par().json()["request_uri"]
    code = app.sign_in_and_approve(request_uri, alice.handle, alice.password)["code"]
    tok = app.post("/oauth/token", app.code_form(code)).json()
    assert create(app, tok["access_token"], alice.did).status_code == 200
    r = app.post("/oauth/token", app.code_form(code))
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    # Reusing the code revoked what it issued.
    assert create(app, tok["access_token"], alice.did).status_code == 401


def test_dpop_refusals_on_xrpc(app: OAuthTester, alice: Account, api: Api) -> None:
    tok = app.tokens(alice.handle, alice.password)
    at = tok["access_token"]
    nsid = "com.atproto.server.getSession"
    url = f"http://{api.host}/xrpc/{nsid}"
    assert app.xrpc("GET", nsid, at).status_code == 200
    # A token without its proof.
    r = api.http.get("/xrpc/" + nsid, headers={"Authorization": f"DPoP {at}"})
    assert r.status_code == 401 and r.json()["error"] == "invalid_dpop_proof"
    # A reused jti (the first use passed through one worker; any worker refuses it).
    proof = app.key.proof("GET", url, nonce=app.nonce, token=at, jti="once-only")
    assert app.xrpc("GET", nsid, at, proof=proof).status_code == 200
    for _ in range(3):
        r = app.xrpc("GET", nsid, at, proof=proof)
        assert r.status_code == 401 and "replayed" in r.json()["message"]
    # A proof for another method, another URL, the loopback host instead of the public one.
    for p in (app.key.proof("POST", url, nonce=app.nonce, token=at),
              app.key.proof("GET", url.replace("getSession", "describeServer"),
                            nonce=app.nonce, token=at),
              app.key.proof("GET", f"{api.server.url}/xrpc/{nsid}", nonce=app.nonce,
                            token=at)):
        r = app.xrpc("GET", nsid, at, proof=p)
        assert r.status_code == 401 and r.json()["error"] == "invalid_dpop_proof"
    # A stale nonce: challenged again, with a fresh one.
    r = app.xrpc("GET", nsid, at, proof=app.key.proof("GET", url, nonce="old", token=at))
    assert r.status_code == 401 and r.json()["error"] == "use_dpop_nonce"
    assert 'error="use_dpop_nonce"' in r.headers["WWW-Authenticate"]
    assert r.headers["DPoP-Nonce"]
    # Another key than the token's.
    r = app.xrpc("GET", nsid, at, key=DpopKey())
    assert r.status_code == 401 and r.json()["error"] == "invalid_dpop_proof"
    # An old proof.
    r = app.xrpc("GET", nsid, at, proof=app.key.proof("GET", url, nonce=app.nonce, token=at,
                                                       iat=int(time.time()) - 900))
    assert r.status_code == 401


def test_scope_is_enforced(app: OAuthTester, alice: Account, api: Api) -> None:
    request_uri = app.par(scope="atproto").json()["request_uri"]
    code = app.sign_in_and_approve(request_uri, alice.handle, alice.password)["code"]
    tok = app.post("/oauth/token", app.code_form(code)).json()
    assert tok["scope"] == "atproto"
    before = len(api.list_records(alice.did))
    r = create(app, tok["access_token"], alice.did)
    assert r.status_code == 403 and r.json()["error"] == "ScopeMissingError"
    assert len(api.list_records(alice.did)) == before  # nothing written
    assert app.xrpc("GET", "com.atproto.server.getSession",
                    tok["access_token"]).status_code == 200
    # A public read is anyone's: the token only says who asks.
    r = app.xrpc("GET", "com.atproto.sync.getRepo", tok["access_token"],
                 params={"did": alice.did})
    assert r.status_code == 200, r.text
    # Account management is never an app's, even with transition:generic.
    full = app.tokens(alice.handle, alice.password)
    r = app.xrpc("POST", "com.atproto.server.createAppPassword", full["access_token"],
                 json={"name": "x"})
    assert r.status_code == 403 and r.json()["error"] == "ScopeMissingError"


def test_page_refuses_bad_password_and_forged_posts(app: OAuthTester, alice: Account,
                                                    api: Api) -> None:
    request_uri = app.par().json()["request_uri"]
    r = app.http.get("/oauth/authorize", params={"client_id": LOOPBACK_CLIENT,
                                                 "request_uri": request_uri})
    assert r.status_code == 200 and "Sign in" in r.text
    assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]
    set_cookie = r.headers["set-cookie"]
    assert "Secure" in set_cookie and "HttpOnly" in set_cookie
    csrf = cookie(r, "pds-csrf")
    form = {"csrf": csrf, "request_uri": request_uri, "action": "sign_in",
            "identifier": alice.handle, "password": "wrong password"}
    r = app.http.post("/oauth/authorize", headers={"Cookie": "pds-csrf=" + csrf}, data=form)
    assert r.status_code == 401 and "Wrong handle" in r.text
    # No CSRF cookie (a cross-site form post): refused, nothing signed in.
    r = app.http.post("/oauth/authorize", data={**form, "password": alice.password})
    assert r.status_code == 403
    r = app.http.post("/oauth/authorize", headers={"Cookie": "pds-csrf=" + "other"},
                      data={**form, "action": "authorize"})
    assert r.status_code == 403
    # Another browser (another CSRF cookie) can't approve what this one signed in.
    r = app.http.post("/oauth/authorize", headers={"Cookie": "pds-csrf=" + csrf},
                      data={**form, "password": alice.password})
    assert r.status_code == 200 and "Authorize" in r.text
    r = app.http.post("/oauth/authorize", headers={"Cookie": "pds-csrf=" + "other-browser"}, data={
        "csrf": "other-browser", "request_uri": request_uri, "action": "authorize"})
    assert r.status_code == 403
    # Deny: back to the app with access_denied.
    r = app.http.post("/oauth/authorize", headers={"Cookie": "pds-csrf=" + csrf}, data={
        "csrf": csrf, "request_uri": request_uri, "action": "deny"})
    assert r.status_code == 303
    assert r.headers["location"].startswith(REDIRECT + "?")
    assert "error=access_denied" in r.headers["location"]


def test_granular_scopes(app: OAuthTester, alice: Account, api: Api) -> None:
    scope = "atproto repo:com.example.note?action=create blob:image/*"
    client = loopback_client(scope)
    request_uri = app.par(client_id=client, scope=scope).json()["request_uri"]
    code = app.sign_in_and_approve(request_uri, alice.handle, alice.password,
                                   client_id=client)["code"]
    assert "Upload files of type: image/any" in app.consent_html
    assert "records of kind: com.example.note (create only)" in app.consent_html
    tok = app.post("/oauth/token", app.code_form(code)).json()
    at = tok["access_token"]
    assert create(app, at, alice.did).status_code == 200
    # Another collection, another action: refused, naming the scope needed.
    r = app.xrpc("POST", "com.atproto.repo.createRecord", at, json={
        "repo": alice.did, "collection": "com.example.other", "record": POST})
    assert r.status_code == 403 and r.json()["error"] == "ScopeMissingError"
    assert 'repo:com.example.other?action=create' in r.json()["message"]
    r = app.xrpc("POST", "com.atproto.repo.deleteRecord", at, json={
        "repo": alice.did, "collection": "com.example.note", "rkey": "whatever"})
    assert r.status_code == 403 and "action=delete" in r.json()["message"]
    r = app.xrpc("POST", "com.atproto.repo.applyWrites", at, json={
        "repo": alice.did, "writes": [{"$type": "com.atproto.repo.applyWrites#delete",
                                       "collection": "com.example.note", "rkey": "x"}]})
    assert r.status_code == 403
    # Blobs: images yes, anything else no.
    r = app.xrpc("POST", "com.atproto.repo.uploadBlob", at, content=b"\x89PNG..",
                 headers_extra={"Content-Type": "image/png"})
    assert r.status_code == 200, r.text
    r = app.xrpc("POST", "com.atproto.repo.uploadBlob", at, content=b"text",
                 headers_extra={"Content-Type": "text/plain"})
    assert r.status_code == 403 and 'blob:text/plain' in r.json()["message"]
    # A scope the client never declared is refused at PAR.
    r = app.par(client_id=client, scope="atproto transition:generic")
    assert r.status_code == 400 and r.json()["error"] == "invalid_scope"


def test_page_sign_in_is_rate_limited(app: OAuthTester) -> None:
    request_uri = app.par().json()["request_uri"]
    r = app.http.get("/oauth/authorize", params={"client_id": LOOPBACK_CLIENT,
                                                 "request_uri": request_uri})
    csrf = cookie(r, "pds-csrf")
    form = {"csrf": csrf, "request_uri": request_uri, "action": "sign_in",
            "identifier": "nobody-guessing.test", "password": "guess"}
    statuses = [app.http.post("/oauth/authorize", headers={"Cookie": f"pds-csrf={csrf}"},
                              data=form).status_code for _ in range(31)]
    assert statuses[:30] == [401] * 30 and statuses[30] == 429, statuses


def test_password_change_ends_grants(app: OAuthTester, api: Api) -> None:
    bob = api.create_account()
    tok = app.tokens(bob.handle, bob.password)
    assert create(app, tok["access_token"], bob.did).status_code == 200
    r = api.post("com.atproto.admin.updateAccountPassword",
                 {"did": bob.did, "password": "a new password"}, headers=api.admin_headers())
    assert r.status_code == 200, r.text
    r = create(app, tok["access_token"], bob.did)
    assert r.status_code == 401 and r.json()["error"] == "invalid_token"
    r = app.post("/oauth/token", {"grant_type": "refresh_token",
                                  "client_id": LOOPBACK_CLIENT,
                                  "refresh_token": tok["refresh_token"]})
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"


def test_account_page_lists_and_revokes(app: OAuthTester, api: Api) -> None:
    carol = api.create_account()
    tok = app.tokens(carol.handle, carol.password)
    r = app.http.get("/oauth/account")
    assert r.status_code == 200 and "Sign in to see the apps" in r.text
    csrf = cookie(r, "pds-csrf")
    jar = {"Cookie": f"pds-csrf={csrf}"}
    r = app.http.post("/oauth/account", headers=jar, data={
        "csrf": csrf, "action": "sign_in", "identifier": carol.email,
        "password": carol.password})
    assert r.status_code == 200 and "Authorized apps" in r.text, r.text
    assert "a development app on this computer" in r.text
    device = cookie(r, "pds-device")
    jar = {"Cookie": f"pds-csrf={csrf}; pds-device={device}"}
    grant = re.search(r'name="id" value="(ses-[0-9a-f]+)"', r.text)
    assert grant is not None
    # Without the CSRF token nothing happens.
    r = app.http.post("/oauth/account", headers=jar, data={
        "action": "revoke", "id": grant.group(1)})
    assert r.status_code == 403
    assert create(app, tok["access_token"], carol.did).status_code == 200
    r = app.http.post("/oauth/account", headers=jar, data={
        "csrf": csrf, "action": "revoke", "id": grant.group(1)})
    assert r.status_code == 200 and "No apps are authorized" in r.text
    r = create(app, tok["access_token"], carol.did)
    assert r.status_code == 401 and r.json()["error"] == "invalid_token"
    r = app.http.post("/oauth/account", headers=jar, data={"csrf": csrf,
                                                            "action": "sign_out"})
    assert "Sign in to see the apps" in r.text
    r = app.http.get("/oauth/account", headers=jar)  # the device cookie is spent
    assert "Sign in to see the apps" in r.text


def test_prompt_none_and_login(app: OAuthTester, alice: Account) -> None:
    r = app.par(prompt="none")
    request_uri = r.json()["request_uri"]
    r = app.http.get("/oauth/authorize", params={"client_id": LOOPBACK_CLIENT,
                                                 "request_uri": request_uri})
    assert r.status_code == 303 and "error=login_required" in r.headers["location"]
    assert app.par(prompt="bogus").json()["error"] == "invalid_request"
    # prompt=login: the password is asked even of a remembered browser.
    request_uri = app.par().json()["request_uri"]
    app.sign_in_and_approve(request_uri, alice.handle, alice.password, remember=True)
    device = cookie(app.last_sign_in, "pds-device")
    request_uri = app.par(prompt="login").json()["request_uri"]
    r = app.http.get("/oauth/authorize", headers={"Cookie": f"pds-device={device}"},
                     params={"client_id": LOOPBACK_CLIENT, "request_uri": request_uri})
    assert r.status_code == 200 and "Password" in r.text
    request_uri = app.par().json()["request_uri"]
    r = app.http.get("/oauth/authorize", headers={"Cookie": f"pds-device={device}"},
                     params={"client_id": LOOPBACK_CLIENT, "request_uri": request_uri})
    assert r.status_code == 200 and "Authorize app" in r.text and "Password" not in r.text


def test_forwarded_calls_take_dpop_tokens(app: OAuthTester, alice: Account) -> None:
    tok = app.tokens(alice.handle, alice.password)
    r = app.xrpc("GET", "app.bsky.actor.getProfile", tok["access_token"],
                 params={"actor": alice.did})
    assert r.status_code == 502 and r.json()["error"] == "UpstreamFailure", r.text
    # A grant without transition:generic has no rpc: permission for the AppView.
    request_uri = app.par(scope="atproto").json()["request_uri"]
    code = app.sign_in_and_approve(request_uri, alice.handle, alice.password)["code"]
    narrow = app.post("/oauth/token", app.code_form(code)).json()
    r = app.xrpc("GET", "app.bsky.actor.getProfile", narrow["access_token"],
                 params={"actor": alice.did})
    assert r.status_code == 403 and r.json()["error"] == "ScopeMissingError", r.text
