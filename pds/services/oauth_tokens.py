"""OAuth tokens: the token endpoint's grants, refresh rotation, revocation, and DPoP-bound
access tokens admitted on XRPC.

A grant is a session file `oauth/sessions/<sid>`: the account (and its generation), the
client and how it authenticated, the scope, the DPoP key's thumbprint (`jkt`), the hash
of the live refresh token and of the ones it replaced. Lifetimes are the reference's:
access tokens 1 hour (TOKEN_MAX_AGE); a public client's session 2 weeks; a confidential
client's 3 months from its last refresh, 2 years at most.

- A refresh token is spent on use; presenting a spent one again revokes the session
  (someone holds a copy).
- A code is spent on its first use, right or wrong; presenting it again revokes the
  session it made.
- Access tokens are HS256 JWTs under a key of their own (derived from the PDS's secret),
  bound to the DPoP key (`cnf.jkt`) and to their session (`sid`): revoking the session
  refuses them at once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from typing import Any

from ..errors import OAuthError, OAuthUnauthorized
from ..store.layout import OAUTH_CODES, OAUTH_DEVICES, OAUTH_REQUESTS, OAUTH_SESSIONS
from . import hs256, oauth_scopes
from .account import load
from .auth import GENERATION, AuthInfo
from .oauth_client_auth import authenticate
from .oauth_clients import get_client
from .oauth_dpop import Proof, dpop_challenge
from .threads import blocking

ACCESS_TTL = 3600
SESSION_TTL = 14 * 24 * 3600             # a public client's whole session
REFRESH_TTL_CONFIDENTIAL = 90 * 24 * 3600  # a confidential client's, renewed on use...
SESSION_TTL_CONFIDENTIAL = 730 * 24 * 3600  # ...up to this long in all
MAX_TOKEN = 4096


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _grant_error(message: str) -> OAuthError:
    return OAuthError(message, "invalid_grant")


class Tokens:
    """Token issue and checks (the store and the DPoP checker are the OAuth server's)."""

    def __init__(self, oauth: Any) -> None:
        self.oauth = oauth
        self.store = oauth.store
        settings = oauth.ctx.settings
        self.key = hmac.new(settings.jwt_secret.encode(), b"pds oauth access token",
                            hashlib.sha256).digest()
        self.audience = settings.service_did

    # --- the token endpoint -----------------------------------------------------------

    async def token(self, form: dict[str, Any], proof: str | None) -> dict:
        """POST /oauth/token: authorization_code or refresh_token, DPoP-bound."""
        bound = await blocking(self.oauth.dpop.check, proof, "POST", "/oauth/token")
        grant = form.get("grant_type")
        client_id = form.get("client_id")
        if not isinstance(client_id, str):
            raise OAuthError('"client_id" is required', "invalid_request")
        if grant not in ("authorization_code", "refresh_token"):
            raise OAuthError("grant_type must be authorization_code or refresh_token",
                             "unsupported_grant_type")
        client = await get_client(self.oauth.ctx, client_id)
        auth = await authenticate(self.oauth.ctx, client, form)
        if grant == "authorization_code":
            return await blocking(self._exchange_code, form, client_id, bound, auth)
        if grant == "refresh_token":
            return await blocking(self._refresh, form, client_id, bound, auth)
        raise OAuthError("grant_type must be authorization_code or refresh_token",
                         "unsupported_grant_type")

    def _exchange_code(self, form: dict[str, Any], client_id: str, bound: Proof,
                       auth: dict) -> dict:
        code, verifier = form.get("code"), form.get("code_verifier")
        if not isinstance(code, str) or not code.startswith("cod-") or len(code) > 200:
            raise _grant_error("Invalid code")
        with self.store.lock():
            entry = self.store.get(OAUTH_CODES, _digest(code))
            if entry is None:
                raise _grant_error("Invalid code")
            if entry.get("spent"):
                # A replayed code: whatever it gave is revoked (RFC 6749 §4.1.2).
                if entry.get("session"):
                    self.store.delete(OAUTH_SESSIONS, entry["session"])
                raise _grant_error("Code replayed")
            self.store.put(OAUTH_CODES, _digest(code), {**entry, "spent": True})
            rec = self.store.get(OAUTH_REQUESTS, entry["request"])
            self.store.delete(OAUTH_REQUESTS, entry["request"])
            _check_exchange(rec, form, client_id, verifier, bound)
            assert rec is not None  # _check_exchange refuses a missing request
            if rec.get("clientAuth", {}).get("method") != auth["method"]:
                raise _grant_error("The client authenticated differently at PAR")
            sid = "ses-" + secrets.token_hex(16)
            self.store.put(OAUTH_CODES, _digest(code),
                           {**entry, "spent": True, "session": sid})
        acct = load(self.oauth.ctx, rec["did"])
        if acct is None or acct.deleted:
            raise _grant_error("The account is gone")
        now = int(time.time())
        session = {"did": acct.did, "gen": acct.generation, "clientId": client_id,
                   "scope": rec["scope"], "jkt": bound.jkt, "createdAt": now,
                   "clientAuth": auth, "clientName": rec.get("clientName") or client_id,
                   "spent": []}
        return self._issue(sid, _extend(session, now))

    def _refresh(self, form: dict[str, Any], client_id: str, bound: Proof,
                 auth: dict) -> dict:
        token = form.get("refresh_token")
        if not isinstance(token, str) or not token.startswith("ref-") or len(token) > 300:
            raise _grant_error("Invalid refresh token")
        sid = "ses-" + token[4:].partition(".")[0]
        with self.store.lock():
            session = self.store.get(OAUTH_SESSIONS, sid)
            if session is None:
                raise _grant_error("Invalid refresh token")
            h = _digest(token)
            if h in session["spent"]:
                self.store.delete(OAUTH_SESSIONS, sid)  # replay: the whole grant goes
                raise _grant_error("Refresh token replayed")
            if not hmac.compare_digest(h, session["refresh"]):
                raise _grant_error("Invalid refresh token")
            if session["clientId"] != client_id:
                raise _grant_error("This refresh token belongs to another client")
            if session["jkt"] != bound.jkt:
                raise _grant_error("The DPoP key does not match this session's")
            if session.get("clientAuth", {}).get("method") != auth["method"]:
                raise _grant_error("The client authenticated differently")
            session["spent"] = [*session["spent"][-50:], h]
            return self._issue(sid, _extend(session, int(time.time())))

    def _issue(self, sid: str, session: dict) -> dict:
        """A new access token and refresh token for a session (written back)."""
        refresh = f"ref-{sid[4:]}.{secrets.token_urlsafe(32)}"
        session["refresh"] = _digest(refresh)
        self.store.put(OAUTH_SESSIONS, sid, session)
        now = int(time.time())
        claims = {"iss": self.oauth.issuer, "aud": self.audience, "sub": session["did"],
                  "iat": now, "exp": now + ACCESS_TTL, "jti": "tok-" + secrets.token_hex(16),
                  "scope": session["scope"], "client_id": session["clientId"],
                  "cnf": {"jkt": session["jkt"]}, "sid": sid, GENERATION: session["gen"]}
        access = hs256.sign(claims, self.key, "at+jwt")
        return {"access_token": access, "token_type": "DPoP", "expires_in": ACCESS_TTL,
                "refresh_token": refresh, "scope": session["scope"], "sub": session["did"]}

    # --- revocation ------------------------------------------------------------------

    def revoke(self, token: Any) -> None:
        """POST /oauth/revoke (RFC 7009): a refresh or access token ends its session.
        Unknown tokens are not an error."""
        if not isinstance(token, str) or len(token) > MAX_TOKEN:
            return
        sid: str | None = None
        if token.startswith("ref-"):
            sid = "ses-" + token[4:].partition(".")[0]
            session = self.store.get(OAUTH_SESSIONS, sid)
            if session is None or _digest(token) not in (session["refresh"],
                                                          *session["spent"]):
                return
        else:
            try:
                sid = self._decode(token).get("sid")
            except OAuthUnauthorized:
                return
        if isinstance(sid, str):
            self.store.delete(OAUTH_SESSIONS, sid)

    def grants(self, did: str) -> list[dict]:
        """The apps an account has authorized (live sessions), newest first."""
        out = [{"id": sid, "clientId": s["clientId"], "scope": s["scope"],
                "clientName": s.get("clientName") or s["clientId"],
                "createdAt": s["createdAt"]}
               for sid, s in self.store.scan(OAUTH_SESSIONS) if s.get("did") == did]
        return sorted(out, key=lambda g: -g["createdAt"])

    def revoke_grant(self, did: str, sid: str) -> None:
        session = self.store.get(OAUTH_SESSIONS, sid) if sid.startswith("ses-") else None
        if session is not None and session.get("did") == did:
            self.store.delete(OAUTH_SESSIONS, sid)

    def revoke_account(self, did: str) -> None:
        """End every grant and remembered browser of an account (its password changed,
        it was taken down)."""
        for kind in (OAUTH_SESSIONS, OAUTH_DEVICES):
            for name, rec in list(self.store.scan(kind)):
                if rec.get("did") == did:
                    self.store.delete(kind, name)

    # --- access tokens on XRPC --------------------------------------------------------

    def _decode(self, token: str) -> dict:
        try:
            header, claims = hs256.verify(token, self.key, audience=self.audience,
                                          issuer=self.oauth.issuer,
                                          require=("exp", "sub", "sid", "cnf"))
            if header.get("typ") != "at+jwt":
                raise hs256.TokenInvalid("typ")
        except hs256.TokenExpired:
            raise _unauthorized("invalid_token", "Token has expired") from None
        except hs256.TokenInvalid:
            raise _unauthorized("invalid_token", "Token could not be verified") from None
        return claims

    def resource(self, header: str, request: dict[str, str | None], nsid: str,
                 privileged: bool = False, public: bool = False) -> AuthInfo:
        """An `Authorization: DPoP <token>` call of XRPC method `nsid` (blocking): the
        token, its proof (key, method, URL, nonce, `ath`, replay), its session, its
        scope (unless the method is `public`: anyone may call it, the token only says who
        asks). Refusals are the reference's (401 invalid_token / invalid_dpop_proof /
        use_dpop_nonce with WWW-Authenticate; 403 ScopeMissingError)."""
        token = header[5:].strip()
        if not token or len(token) > MAX_TOKEN:
            raise _unauthorized("invalid_token", "Malformed token")
        claims = self._decode(token)
        try:
            bound = self.oauth.dpop.check(request.get("dpop"), request.get("method") or "",
                                          request.get("path") or "", access_token=token)
        except OAuthError as e:  # use_dpop_nonce: at a resource it is a 401 challenge
            raise OAuthUnauthorized(e.message, e.error, {
                **e.headers, **dpop_challenge(e.error or "use_dpop_nonce", e.message)}) \
                from None
        cnf = claims.get("cnf")
        if not isinstance(cnf, dict) or cnf.get("jkt") != bound.jkt:
            raise _unauthorized("invalid_dpop_proof", "DPoP key does not match the token")
        session = self.store.get(OAUTH_SESSIONS, claims["sid"])
        if session is None or session.get("did") != claims["sub"]:
            raise _unauthorized("invalid_token", "Token has been revoked")
        scope = str(claims.get("scope", ""))
        check = None if public else oauth_scopes.require(
            scope, nsid, privileged, request.get("content-type") or "",
            request.get("atproto-proxy"))
        return AuthInfo(kind="access", did=claims["sub"], scope=scope, token=token,
                        payload=claims, headers={"DPoP-Nonce": self.oauth.dpop.nonce()},
                        check_input=check)


def _extend(session: dict, now: int) -> dict:
    """The session's expiry: fixed for a public client, renewed on each refresh (up to
    its whole lifetime) for a confidential one, as the reference's lifetimes are."""
    created = session["createdAt"]
    if session.get("clientAuth", {}).get("method") == "private_key_jwt":
        session["expiresAt"] = min(now + REFRESH_TTL_CONFIDENTIAL,
                                   created + SESSION_TTL_CONFIDENTIAL)
    else:
        session["expiresAt"] = created + SESSION_TTL
    return session


def _unauthorized(error: str, message: str) -> OAuthUnauthorized:
    return OAuthUnauthorized(message, error, dpop_challenge(error, message))


def _check_exchange(rec: dict | None, form: dict[str, Any], client_id: str,
                    verifier: Any, bound: Proof) -> None:
    """A code's request against the token request: client, redirect URI, PKCE, key."""
    if rec is None or not rec.get("did"):
        raise _grant_error("Invalid code")
    if rec["clientId"] != client_id:
        raise _grant_error("This code was issued to another client")
    if form.get("redirect_uri") != rec["redirectUri"]:
        raise _grant_error("redirect_uri does not match the authorization request")
    if not isinstance(verifier, str) or not 43 <= len(verifier) <= 128:
        raise _grant_error("code_verifier is required (PKCE)")
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    if not hmac.compare_digest(challenge.rstrip(b"=").decode(), rec["codeChallenge"]):
        raise _grant_error("Invalid code_verifier")
    if rec["jkt"] != bound.jkt:
        raise _grant_error("The DPoP key does not match the authorization request's")
