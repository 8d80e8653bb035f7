"""Authentication: passwords, session JWTs, service-auth JWTs, admin auth, rate limits.

Session tokens are what the reference PDS issues (PROTOCOL.md §3): HS256 JWTs; access
`typ: at+jwt` (2 h) with `scope`, `sub`, `aud`, `iat`, `exp`; refresh `typ: refresh+jwt`
(90 days) with a `jti` naming its session file, so it can be revoked and rotated.
Service-auth JWTs are ES256K/ES256, signed by an account's repo signing key.
"""

from __future__ import annotations

import base64
import hmac
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from ..errors import AuthFailed, AuthRequired, InvalidInput
from ..repo.keys import PublicKey
from ..repo.signing_keys import PrivateKey
from ..repo.syntax import is_valid_did
from ..store.files import flock
from ..store.layout import SESSIONS_LOCK
from ..store.ratelimit import RateLimiter
from . import hs256, reads
from .account import Account, Use, load, require
from .threads import blocking

ACCESS_TTL = 2 * 3600
REFRESH_TTL = 90 * 24 * 3600
REFRESH_GRACE = 2 * 3600  # a rotated refresh token works this long, until its successor is used
# Session tokens a worker remembers as verified (_verified_session_jwt): each entry is a
# token (~300 bytes) and its claims.
VERIFIED_TOKENS = 2048
# Failed admin (HTTP Basic) attempts allowed from one client address: (count, seconds).
ADMIN_FAILURES = (10, 300)

SCOPE_ACCESS = "com.atproto.access"
SCOPE_APP_PASS = "com.atproto.appPass"
SCOPE_APP_PASS_PRIVILEGED = "com.atproto.appPassPrivileged"
SCOPE_REFRESH = "com.atproto.refresh"
SCOPE_TAKENDOWN = "com.atproto.takendown"
ACCESS_SCOPES = {SCOPE_ACCESS, SCOPE_APP_PASS, SCOPE_APP_PASS_PRIVILEGED}
# Scopes that may act for the account on privileged methods (no plain app password).
PRIVILEGED_SCOPES = {SCOPE_ACCESS, SCOPE_APP_PASS_PRIVILEGED}
# The claim of session tokens binding them to the account they were issued to (its
# `generation`, see `account`): a later account of the same DID is not theirs.
GENERATION = "gen"


class AuthKind(StrEnum):
    """What a method asks of its caller (each XRPC method registers one)."""

    NONE = "none"            # public
    OPTIONAL = "optional"    # public, but a valid access token is read if sent
    ACCESS = "access"        # access token (password session or app password)
    ACCESS_FULL = "full"     # access token of a password session (no app passwords)
    REFRESH = "refresh"      # refresh token
    ADMIN = "admin"          # HTTP Basic admin
    ACCESS_OR_SERVICE = "access_or_service"  # access token, or a service-auth JWT
    SERVICE_OPTIONAL = "service_optional"    # anonymous, or a service-auth JWT

# Methods a taken-down session (login with allowTakendown) may call: enough to take its
# data out. Not getServiceAuth: the reference refuses a taken-down session every service
# token (its getServiceAuth.ts lets createAccount past one check and stops it at the
# next: the takendown scope is not a privileged one).
TAKENDOWN_METHODS = {
    "com.atproto.server.getSession", "com.atproto.server.deleteSession",
    "com.atproto.server.refreshSession",
    "com.atproto.sync.getRepo", "com.atproto.sync.getBlob", "com.atproto.sync.listBlobs",
    "com.atproto.identity.requestPlcOperationSignature",
    "com.atproto.identity.signPlcOperation", "com.atproto.server.deactivateAccount",
    "com.atproto.server.checkAccountStatus",
}


# --- passwords ------------------------------------------------------------------------

# argon2id at the OWASP setting of least memory (7 MiB, 5 passes; OWASP lists it as
# equivalent to 19 MiB with 2, the one used before): a hash's buffer is what a worker
# grows by while it hashes (sign-up, login, the dummy hash of sessions.py), and here it
# also takes less CPU (9 ms against 16). Hashes carry their own parameters, and
# `verify_password` uses the stored ones: hashes made before still verify.
_OPS = 5
_MEM = 7 * 1024 * 1024


# PyNaCl (libsodium's bindings, ~1.2 MB) is imported at the first password hashed or
# checked, not with the app: a worker may serve for days without a login.


def hash_password(password: str) -> str:
    import nacl.pwhash
    return nacl.pwhash.argon2id.str(password.encode(), opslimit=_OPS, memlimit=_MEM).decode()


def verify_password(password: str, hashed: str) -> bool:
    import nacl.exceptions
    import nacl.pwhash
    try:
        return nacl.pwhash.verify(hashed.encode(), password.encode())
    except (nacl.exceptions.InvalidkeyError, ValueError, TypeError):
        return False


def new_app_password() -> str:
    """Four groups of four lowercase base32 characters, as the reference formats them."""
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    chars = "".join(secrets.choice(alphabet) for _ in range(16))
    return "-".join(chars[i:i + 4] for i in range(0, 16, 4))


# --- JWT helpers ----------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    if not isinstance(text, str) or "=" in text:
        raise ValueError("bad base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign_service_jwt(key: PrivateKey, iss: str, aud: str, lxm: str | None,
                     exp: int | None = None) -> str:
    """A service-auth JWT signed with an account's signing key (low-S r||s)."""
    now = int(time.time())
    header = {"typ": "JWT", "alg": key.jwt_alg}
    payload: dict[str, Any] = {"iat": now, "iss": iss, "aud": aud,
                               "exp": exp if exp is not None else now + 60,
                               "jti": secrets.token_hex(16)}
    if lxm:
        payload["lxm"] = lxm
    signing_input = (b64url(json.dumps(header, separators=(",", ":")).encode()) + "."
                     + b64url(json.dumps(payload, separators=(",", ":")).encode()))
    return signing_input + "." + b64url(key.sign(signing_input.encode()))


def parse_unverified(token: str) -> tuple[dict, dict, bytes, bytes]:
    """Split a JWT into (header, payload, signing input, signature) without checking it."""
    parts = token.split(".")
    if len(parts) != 3:
        raise ValueError("not a JWT")
    header = json.loads(b64url_decode(parts[0]))
    payload = json.loads(b64url_decode(parts[1]))
    if not isinstance(header, dict) or not isinstance(payload, dict):
        raise ValueError("not a JWT")
    return header, payload, f"{parts[0]}.{parts[1]}".encode(), b64url_decode(parts[2])


@dataclass
class AuthInfo:
    """Who is calling, and with what."""

    kind: str  # "access" | "refresh" | "admin" | "service"
    did: str | None = None
    scope: str | None = None
    jti: str | None = None
    token: str | None = None
    app_password: str | None = None
    payload: dict | None = None
    headers: dict[str, str] | None = None  # to set on the answer (an OAuth DPoP nonce)
    # An OAuth grant's check of the method's input (repo writes: collection and action).
    check_input: Callable[[Any], None] | None = None

    @property
    def account(self) -> str:
        """The DID of the account this credential acts for: every credential but the
        admin's names one."""
        if self.did is None:
            raise AuthRequired("Authentication Required")
        return self.did

    @property
    def is_app_password(self) -> bool:
        return self.scope in (SCOPE_APP_PASS, SCOPE_APP_PASS_PRIVILEGED)


class Auth:
    """Token issue and verification for one PDS."""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        self.settings = ctx.settings
        self.secret = ctx.settings.jwt_secret
        self.service_did = ctx.settings.service_did
        self.limiter = RateLimiter(ctx.data.ratelimit, enabled=ctx.settings.rate_limits)
        self._verified: dict[str, tuple[Any, dict]] = {}  # see _verified_session_jwt

    # --- issue --------------------------------------------------------------------------

    def issue_session(self, acct: Account, scope: str = SCOPE_ACCESS,
                      app_password: str | None = None) -> dict:
        """New access + refresh tokens for an account (bound to its generation); the
        refresh session is stored so it can be revoked."""
        now = int(time.time())
        jti = secrets.token_urlsafe(24)
        self.ctx.accounts.put_session(acct.did, jti, {
            "createdAt": now, "expiresAt": now + REFRESH_TTL, "scope": scope,
            "appPassword": app_password,
        })
        return {"accessJwt": self._access(acct.did, acct.generation, scope, now),
                "refreshJwt": self._refresh(acct.did, acct.generation, jti, now)}

    def _claims(self, did: str, generation: str | None, now: int, ttl: int) -> dict:
        claims = {"sub": did, "aud": self.service_did, "iat": now, "exp": now + ttl}
        return claims | ({GENERATION: generation} if generation is not None else {})

    def _access(self, did: str, generation: str | None, scope: str, now: int) -> str:
        return hs256.sign({"scope": scope, **self._claims(did, generation, now, ACCESS_TTL)},
                          self.secret, "at+jwt")

    def _refresh(self, did: str, generation: str | None, jti: str, now: int) -> str:
        return hs256.sign({"scope": SCOPE_REFRESH, "jti": jti,
                           **self._claims(did, generation, now, REFRESH_TTL)},
                          self.secret, "refresh+jwt")

    def rotate(self, info: AuthInfo) -> dict:
        """Spend a refresh token: a new pair, and the old session marked rotated.

        Within a grace period, the old token may be presented again (a client that lost
        the answer) and yields the same successor, until that successor is used itself.
        """
        did, jti = info.account, info.jti
        if jti is None:
            raise InvalidInput("Token has been revoked", "ExpiredToken")
        gen = (info.payload or {}).get(GENERATION)  # the account's: checked by `admit`
        accounts = self.ctx.accounts
        with flock(self.ctx.data.account(did) / SESSIONS_LOCK):
            session = accounts.get_session(did, jti)
            if session is None:
                raise InvalidInput("Token has been revoked", "ExpiredToken")
            now = int(time.time())
            nxt = session.get("next")
            if nxt is not None:
                successor = accounts.get_session(did, nxt)
                if now - session["rotatedAt"] > REFRESH_GRACE or successor is None or \
                        successor.get("next") is not None:
                    accounts.delete_session(did, jti)
                    raise InvalidInput("Token has been revoked", "ExpiredToken")
                return {"accessJwt": self._access(did, gen, session["scope"], now),
                        "refreshJwt": self._refresh(did, gen, nxt, now)}
            new_jti = secrets.token_urlsafe(24)
            accounts.put_session(did, new_jti, {
                "createdAt": now, "expiresAt": now + REFRESH_TTL, "scope": session["scope"],
                "appPassword": session.get("appPassword")})
            accounts.put_session(did, jti, {**session, "next": new_jti, "rotatedAt": now})
            return {"accessJwt": self._access(did, gen, session["scope"], now),
                    "refreshJwt": self._refresh(did, gen, new_jti, now)}

    # --- verify -------------------------------------------------------------------------

    async def check(self, kind: AuthKind, header: str, nsid: str,
                    ip: str = "", request: dict[str, str | None] | None = None
                    ) -> AuthInfo | None:
        """Authenticate a call of method `nsid` whose `Authorization` header is `header`
        ("" when absent), from client address `ip`, as the method requires; raises a
        PdsError if it can't. `request`: the request's `method`, `path` and headers
        `dpop`, `content-type`, `atproto-proxy`, for an OAuth access token
        (`Authorization: DPoP ...`). Every credential naming an
        account is then admitted (or refused) by `admit`."""
        if header[:5].lower() == "dpop " and kind not in (AuthKind.NONE, AuthKind.ADMIN,
                                                          AuthKind.REFRESH):
            # One thread hop for the whole check: token, proof, grant, then the account.
            return await blocking(self._oauth, header, request or {}, nsid, kind)
        info = await self._credential(kind, header, nsid, ip)
        if info is not None and info.did is not None:
            await reads.read(self.admit, info)
        return info

    def _oauth(self, header: str, request: dict[str, str | None], nsid: str,
               kind: AuthKind) -> AuthInfo:
        """An OAuth access token with its DPoP proof, admitted (blocking)."""
        info: AuthInfo = self.ctx.oauth.tokens.resource(
            header, request, nsid, privileged=kind == AuthKind.ACCESS_FULL,
            public=kind in (AuthKind.OPTIONAL, AuthKind.SERVICE_OPTIONAL))
        self.admit(info)
        return info

    async def _credential(self, kind: AuthKind, header: str, nsid: str,
                          ip: str) -> AuthInfo | None:
        """The credential `header` presents, verified (signature, type, scope, audience)
        but not yet held against the account it names."""
        if kind == AuthKind.NONE:
            return None
        if kind == AuthKind.ADMIN:
            return await blocking(self._admin, header, ip)
        if kind == AuthKind.REFRESH:
            return self._bearer(header, refresh=True)
        if kind == AuthKind.OPTIONAL:
            if not header:
                return None
            if header.startswith("Basic "):
                # The admin may read what the public can't (e.g. a taken-down repo).
                return await blocking(self._admin, header, ip)
            return self._bearer(header, refresh=False, nsid=nsid)
        if kind in (AuthKind.ACCESS_OR_SERVICE, AuthKind.SERVICE_OPTIONAL):
            token = self._token(header, required=kind == AuthKind.ACCESS_OR_SERVICE)
            if token is None:
                return None
            if _jwt_alg(token) == "HS256":  # ours; anything else is a service token
                return self._bearer(header, refresh=False, nsid=nsid)
            return await self.verify_service_jwt(token, nsid)
        info = self._bearer(header, refresh=False, nsid=nsid)
        if kind == AuthKind.ACCESS_FULL and info.scope != SCOPE_ACCESS:
            raise InvalidInput("Bad token scope", "InvalidToken")
        return info

    def admit(self, info: AuthInfo) -> None:
        """The one place a verified credential meets the account it names (blocking: reads
        account.json, and a refresh token's session): the account must be the one the
        token was issued to (its generation), and its status must allow the credential
        (`account.require`). A service-auth JWT from a DID not hosted here passes: it is
        someone signing up by migration, and the method decides."""
        did = info.did
        if did is None:  # the admin: no account to hold it against
            return
        acct = load(self.ctx, did)
        if info.kind == "service":
            if acct is not None:
                require(acct, Use.SERVICE, did)
            return
        if info.kind == "refresh" and self.ctx.accounts.get_session(did, info.jti) is None:
            raise InvalidInput("Token has been revoked", "ExpiredToken")
        use = Use.REFRESH if info.kind == "refresh" else Use.TOKEN
        acct = require(acct, use, did, privileged=info.scope == SCOPE_TAKENDOWN)
        if (info.payload or {}).get(GENERATION) != acct.generation:
            # Issued to an account of this DID that was deleted: not to this one.
            raise AuthFailed("Account not found", "AccountNotFound")

    def _admin(self, header: str, ip: str = "") -> AuthInfo:
        """HTTP Basic as user `admin` (blocking: failed attempts are counted per client
        address in the data dir, and refused once ADMIN_FAILURES are spent)."""
        if not header.startswith("Basic "):
            raise AuthRequired("Authentication Required")
        key = "admin-fail:" + ip
        self.limiter.check(key, *ADMIN_FAILURES)
        if not self._admin_password_ok(header[6:]):
            self.limiter.record(key, *ADMIN_FAILURES)
            raise AuthRequired("Invalid admin credentials")
        return AuthInfo(kind="admin")

    def _admin_password_ok(self, encoded: str) -> bool:
        """Whether base64 `encoded` is `admin:<the admin password>`. Compared as bytes
        (any password, in any encoding) in constant time, user and password alike."""
        try:
            raw = base64.b64decode(encoded.strip(), validate=True)
        except ValueError:  # not base64, or not ASCII at all
            return False
        user, sep, password = raw.partition(b":")
        # As the environment gave it (surrogateescape: bytes not UTF-8 come back as they were).
        expected = self.settings.admin_password.encode("utf-8", "surrogateescape")
        user_ok = hmac.compare_digest(user, b"admin")
        password_ok = hmac.compare_digest(password, expected)
        return bool(expected) and bool(sep) and user_ok and password_ok

    @staticmethod
    def _token(header: str, required: bool = True) -> str | None:
        if not header:
            if required:
                raise AuthRequired("Authentication Required")
            return None
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise AuthRequired("Unexpected authorization type", "InvalidToken")
        return token.strip()

    def _bearer(self, header: str, refresh: bool, nsid: str | None = None) -> AuthInfo:
        """A session token (HS256, ours) checked as a token: signature, expiry, audience,
        type and scope. Pure: the account is `admit`'s business."""
        token = self._token(header)
        if token is None:  # _token refuses a missing one itself; this is for the types
            raise AuthRequired("Authentication Required")
        typ = "refresh+jwt" if refresh else "at+jwt"
        try:
            header_typ, payload = self._verified_session_jwt(token)
        except hs256.TokenExpired:
            raise InvalidInput("Token has expired", "ExpiredToken") from None
        except hs256.TokenInvalid:
            raise AuthFailed("Token could not be verified", "InvalidToken") from None
        if header_typ != typ:
            raise InvalidInput("Invalid token type", "InvalidToken")
        did, scope = payload["sub"], payload["scope"]
        if not isinstance(did, str) or not is_valid_did(did):
            raise AuthFailed("Token could not be verified", "InvalidToken")
        if refresh:
            jti = payload.get("jti")
            if scope != SCOPE_REFRESH or not isinstance(jti, str):
                raise InvalidInput("Invalid token type", "InvalidToken")
            return AuthInfo(kind="refresh", did=did, scope=scope, jti=jti, token=token,
                            payload=payload)
        if scope == SCOPE_TAKENDOWN:
            if nsid not in TAKENDOWN_METHODS:
                raise InvalidInput("Bad token scope", "InvalidToken")
        elif scope not in ACCESS_SCOPES:
            raise InvalidInput("Bad token scope", "InvalidToken")
        return AuthInfo(kind="access", did=did, scope=scope, token=token, payload=payload)

    def _verified_session_jwt(self, token: str) -> tuple[Any, dict]:
        """(the header's `typ`, the payload) of a session token signed with our secret,
        for our audience, not expired; raises `hs256.TokenInvalid` otherwise. A token verified
        once is remembered (bounded) so that a client's every request doesn't pay for
        parsing and HMAC again: the token is immutable and the entry is keyed by all of
        it, signature included. Only time moves, so expiry is checked on every use; what
        else can change (the account's status, its generation, a refresh token's
        session) is `admit`'s, per request."""
        hit = self._verified.get(token)
        if hit is not None:
            if hit[1]["exp"] <= time.time():  # as at the first check: expired at exp itself
                self._verified.pop(token, None)
                raise hs256.TokenExpired("expired")
            return hit
        header, payload = hs256.verify(token, self.secret, audience=self.service_did,
                                       require=("exp", "sub", "scope"))
        typ = header.get("typ")
        if len(self._verified) >= VERIFIED_TOKENS:
            self._verified.clear()  # a crude bound: refilled by the next requests
        self._verified[token] = (typ, payload)
        return typ, payload

    async def verify_service_jwt(self, token: str, nsid: str | None) -> AuthInfo:
        """Check an inter-service JWT: signed by the `iss` DID's #atproto key, for us."""
        try:
            header, payload, signing_input, sig = parse_unverified(token)
        except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: deep JSON
            raise AuthFailed("Malformed JWT", "BadJwt") from None
        if header.get("typ") in ("at+jwt", "refresh+jwt", "dpop+jwt"):
            raise AuthFailed("Invalid jwt type", "BadJwtType")
        iss, aud, exp = payload.get("iss"), payload.get("aud"), payload.get("exp")
        if not isinstance(iss, str) or not is_valid_did(iss.split("#")[0]):
            raise AuthFailed("Invalid issuer", "BadJwtIssuer")
        if not isinstance(exp, int) or exp < time.time():
            raise AuthFailed("jwt expired", "JwtExpired")
        if aud not in (self.service_did, self.service_did + "#atproto_pds"):
            raise AuthFailed("jwt audience does not match service did", "BadJwtAudience")
        lxm = payload.get("lxm")
        if nsid is not None and lxm != nsid:
            raise AuthFailed("missing jwt lexicon method (\"lxm\")" if lxm is None
                             else "bad jwt lexicon method (\"lxm\")", "BadJwtLexiconMethod")
        did = iss.split("#")[0]
        key = await self._service_key(did, force=False)
        if key is None or not key.verify(signing_input, sig):
            # The key may have rotated: look again once, bypassing the cache.
            key = await self._service_key(did, force=True)
            if key is None or not key.verify(signing_input, sig):
                raise AuthFailed("jwt signature does not match jwt issuer", "BadJwtSignature")
        return AuthInfo(kind="service", did=did, token=token, payload=payload)

    async def _service_key(self, did: str, force: bool) -> PublicKey | None:
        # An account of ours signs with the key we hold: no resolution needed.
        local = await blocking(self.ctx.local_signing_key, did)
        if local is not None:
            return local.public_key()
        return await self.ctx.identity.atproto_key(did, force=force)


def _jwt_alg(token: str) -> str | None:
    """The `alg` of a JWT's header (only the header is read: the token is checked
    afterwards by whichever verifier that names)."""
    try:
        header = json.loads(b64url_decode(token.partition(".")[0]))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    alg = header.get("alg") if isinstance(header, dict) else None
    return alg if isinstance(alg, str) else None
