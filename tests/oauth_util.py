"""A small OAuth client for the tests' refusal cases: DPoP proofs (ES256, pyjwt +
cryptography), PKCE, the page's forms driven over plain HTTP (the page needs no
JavaScript). The end-to-end test uses the official TypeScript client instead."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import time
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec

REDIRECT = "http://127.0.0.1:9/callback"
LOOPBACK_CLIENT = ("http://localhost?redirect_uri=" + REDIRECT.replace(":", "%3A")
                   .replace("/", "%2F") + "&scope=atproto%20transition%3Ageneric")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    return verifier, b64url(hashlib.sha256(verifier.encode()).digest())


class DpopKey:
    """An ES256 key making DPoP proofs."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        nums = self.key.public_key().public_numbers()
        self.jwk = {"kty": "EC", "crv": "P-256", "x": b64url(nums.x.to_bytes(32, "big")),
                    "y": b64url(nums.y.to_bytes(32, "big"))}

    def proof(self, method: str, url: str, nonce: str | None = None,
              token: str | None = None, jti: str | None = None, iat: int | None = None) -> str:
        claims: dict[str, Any] = {"jti": jti or secrets.token_hex(12), "htm": method,
                                  "htu": url, "iat": iat or int(time.time())}
        if nonce is not None:
            claims["nonce"] = nonce
        if token is not None:
            claims["ath"] = b64url(hashlib.sha256(token.encode()).digest())
        return jwt.encode(claims, self.key, algorithm="ES256",
                          headers={"typ": "dpop+jwt", "jwk": self.jwk})


class OAuthTester:
    """Drives the server's OAuth endpoints as an app and as a browser would."""

    def __init__(self, base: str, public: str) -> None:
        self.http = httpx.Client(base_url=base, timeout=60)
        self.public = public  # the issuer: what htu names
        self.key = DpopKey()
        self.nonce: str | None = None

    def close(self) -> None:
        self.http.close()

    def post(self, path: str, form: dict, key: DpopKey | None = None,
             retry: bool = True, **proof: Any) -> httpx.Response:
        """POST a form with a DPoP proof, retrying once with the server's nonce."""
        key = key or self.key
        p = key.proof("POST", self.public + path, nonce=proof.pop("nonce", self.nonce),
                      **proof)
        r = self.http.post(path, data=form, headers={"DPoP": p})
        self.nonce = r.headers.get("DPoP-Nonce", self.nonce)
        if retry and r.status_code == 400 and r.json().get("error") == "use_dpop_nonce":
            return self.post(path, form, key, retry=False, **proof)
        return r

    def par(self, client_id: str = LOOPBACK_CLIENT, **extra: Any) -> httpx.Response:
        self.verifier, challenge = pkce()
        self.client_id = client_id
        form = {"client_id": client_id, "response_type": "code", "redirect_uri": REDIRECT,
                "scope": "atproto transition:generic", "state": "st-" + secrets.token_hex(4),
                "code_challenge": challenge, "code_challenge_method": "S256", **extra}
        return self.post("/oauth/par", {k: v for k, v in form.items() if v is not None})

    def sign_in_and_approve(self, request_uri: str, identifier: str, password: str,
                            client_id: str = LOOPBACK_CLIENT, remember: bool = False
                            ) -> dict[str, str]:
        """The page's forms: visit, sign in, authorize; the redirect's query."""
        r = self.http.get("/oauth/authorize", params={"client_id": client_id,
                                                       "request_uri": request_uri})
        assert r.status_code == 200, r.text
        csrf = cookie(r, "pds-csrf")
        jar = {"Cookie": f"pds-csrf={csrf}"}
        r = self.http.post("/oauth/authorize", headers=jar, data={
            "csrf": csrf, "request_uri": request_uri, "action": "sign_in",
            "identifier": identifier, "password": password,
            **({"remember": "on"} if remember else {})})
        assert r.status_code == 200 and "Authorize" in r.text, r.text
        self.consent_html = r.text
        self.last_sign_in = r
        r = self.http.post("/oauth/authorize", headers=jar, data={
            "csrf": csrf, "request_uri": request_uri, "action": "authorize"})
        assert r.status_code == 303, r.text
        return {k: v[0] for k, v in parse_qs(urlsplit(r.headers["location"]).query).items()}

    def tokens(self, identifier: str, password: str, remember: bool = False) -> dict:
        """PAR, sign in, consent, code exchange: the token answer."""
        request_uri = self.par().json()["request_uri"]
        answer = self.sign_in_and_approve(request_uri, identifier, password,
                                          remember=remember)
        r = self.post("/oauth/token", self.code_form(answer["code"]))
        assert r.status_code == 200, r.text
        return r.json()

    def code_form(self, code: str, verifier: str | None = None) -> dict:
        return {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT,
                "code_verifier": verifier or self.verifier,
                "client_id": getattr(self, "client_id", LOOPBACK_CLIENT)}

    def xrpc(self, method: str, nsid: str, token: str, key: DpopKey | None = None,
             proof_url: str | None = None, proof: str | None = None,
             headers_extra: dict | None = None, **kw: Any) -> httpx.Response:
        """An XRPC call with a DPoP-bound token (retrying once on use_dpop_nonce)."""
        for _ in range(2):
            p = proof or (key or self.key).proof(
                method, proof_url or f"{self.public}/xrpc/{nsid}", nonce=self.nonce,
                token=token)
            r = self.http.request(method, "/xrpc/" + nsid, headers={
                "Authorization": f"DPoP {token}", "DPoP": p, **(headers_extra or {})}, **kw)
            self.nonce = r.headers.get("DPoP-Nonce", self.nonce)
            if r.status_code != 401 or 'error="use_dpop_nonce"' not in \
                    r.headers.get("WWW-Authenticate", "") or proof is not None:
                return r
        return r


def cookie(resp: httpx.Response, name: str) -> str:
    """A cookie's value from Set-Cookie (Secure cookies: httpx keeps them off http)."""
    for header in resp.headers.get_list("set-cookie"):
        m = re.match(rf"{re.escape(name)}=([^;]*)", header)
        if m:
            return m.group(1).strip('"')
    raise AssertionError(f"no {name} cookie in {resp.headers}")


def dumps(value: Any) -> str:
    return json.dumps(value)


def loopback_client(scope: str) -> str:
    """A loopback client_id declaring `scope` (redirecting to REDIRECT)."""
    return "http://localhost?" + urlencode({"redirect_uri": REDIRECT, "scope": scope})
