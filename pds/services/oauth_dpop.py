"""DPoP (RFC 9449) for the OAuth server and the XRPC resource: proofs, nonces, replay.

- Nonces are derived, not stored: HMAC(secret, time window), so every worker process
  makes and accepts the same ones. A nonce is accepted in its window and the two next
  to it (about 3 minutes, the reference's DPOP_NONCE_MAX_AGE).
- A proof's `jti` is refused the second time, in any worker: it is claimed in the data
  dir's shared "seen once" table (`store.replay`: `tmp/DPOP-JTI`, mapped by every
  worker, overflowing to O_EXCL files in `oauth/dpop-jti/`), for longer than a proof can
  be accepted (REPLAY_KEEP).
- `htu` is checked against the PDS's public URL (scheme and host from the settings),
  never the address the request arrived on (nginx talks to us over loopback).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ..errors import OAuthError, OAuthUnauthorized
from ..store.replay import SeenOnce

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec

NONCE_WINDOW = 60        # seconds one nonce is the newest
PROOF_MAX_AGE = 10       # seconds: a proof's `iat` may be this old (the reference's)
CLOCK_SKEW = 180         # seconds of clock difference tolerated (the nonce's max age)
REPLAY_KEEP = 600        # seconds a seen jti is kept: longer than a proof is acceptable
MAX_PROOF = 4096         # bytes: longer DPoP headers are refused before parsing
ALGS = ["ES256", "ES256K", "ES384", "ES512", "PS256", "PS384", "PS512",
        "RS256", "RS384", "RS512", "EdDSA"]
# The members of each key type that its RFC 7638 thumbprint covers.
_THUMB_MEMBERS = {"EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n"),
                  "OKP": ("crv", "kty", "x")}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def token_hash(token: str) -> str:
    """`ath`: base64url SHA-256 of an access token."""
    return b64url(hashlib.sha256(token.encode()).digest())


def thumbprint(jwk: dict) -> str:
    """RFC 7638 JWK thumbprint (SHA-256, base64url) of a public key."""
    members = _THUMB_MEMBERS.get(jwk.get("kty", ""))
    if members is None or any(not isinstance(jwk.get(m), str) for m in members):
        raise OAuthUnauthorized("unsupported DPoP key", "invalid_dpop_proof")
    canon = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    return b64url(hashlib.sha256(canon.encode()).digest())


def dpop_challenge(error: str, description: str) -> dict[str, str]:
    """The `WWW-Authenticate` header of a DPoP refusal (quotes can't be escaped there)."""
    desc = description.replace('"', "'")
    return {"WWW-Authenticate":
            f'DPoP algs="{" ".join(ALGS)}", error="{error}", error_description="{desc}"'}


def _bad(description: str) -> OAuthUnauthorized:
    return OAuthUnauthorized(description, "invalid_dpop_proof",
                             dpop_challenge("invalid_dpop_proof", description))


@dataclass(frozen=True)
class Proof:
    """A checked proof: its key's thumbprint (`jkt`) and its `jti`."""

    jkt: str
    jti: str


class Dpop:
    """Nonces and proof checks for one PDS (`secret` from the data dir's pds.env)."""

    def __init__(self, secret: str, public_url: str, replay: SeenOnce) -> None:
        self._key = hmac.new(secret.encode(), b"pds dpop nonce", hashlib.sha256).digest()
        self.public_url = public_url.rstrip("/")
        self.replay = replay
        self._memo: dict[int, str] = {}  # window -> nonce

    # --- nonces ---------------------------------------------------------------------

    def _nonce_at(self, window: int) -> str:
        nonce = self._memo.get(window)
        if nonce is None:
            if len(self._memo) > 16:
                self._memo.clear()
            nonce = self._memo[window] = b64url(
                hmac.new(self._key, str(window).encode(), hashlib.sha256).digest()[:18])
        return nonce

    def nonce(self, now: float | None = None) -> str:
        """The current server nonce (the same in every worker)."""
        return self._nonce_at(int((time.time() if now is None else now) // NONCE_WINDOW))

    def nonce_ok(self, nonce: str, now: float | None = None) -> bool:
        w = int((time.time() if now is None else now) // NONCE_WINDOW)
        return any(hmac.compare_digest(nonce, self._nonce_at(w + d)) for d in (0, -1, -2, 1))

    # --- proofs ---------------------------------------------------------------------

    def htu(self, path: str) -> str:
        """The URL a proof for request path `path` must name (public scheme and host)."""
        return self.public_url + path

    def check(self, proof: str | None, method: str, path: str,
              access_token: str | None = None) -> Proof:
        """Verify a DPoP proof for `method` on `path` (blocking: claims its jti in the
        data dir). Raises `OAuthUnauthorized(invalid_dpop_proof)`, or
        `OAuthError(use_dpop_nonce)` when its nonce is missing or stale."""
        if not proof:
            raise _bad("DPoP proof required")
        if len(proof) > MAX_PROOF:
            raise _bad("DPoP proof too large")
        header, payload = _verify_signature(proof)
        now = time.time()
        iat = payload.get("iat")
        if not isinstance(iat, int | float) or isinstance(iat, bool) or \
                iat > now + CLOCK_SKEW or iat < now - PROOF_MAX_AGE - CLOCK_SKEW:
            raise _bad("DPoP proof iat is missing or out of range")
        jti = payload.get("jti")
        if not isinstance(jti, str) or not 1 <= len(jti) <= 256:
            raise _bad('DPoP "jti" missing')
        if payload.get("htm") != method:
            raise _bad('DPoP "htm" mismatch')
        if _normal_htu(payload.get("htu")) != self.htu(path):
            raise _bad('DPoP "htu" mismatch')
        nonce = payload.get("nonce")
        if not isinstance(nonce, str) or not self.nonce_ok(nonce, now):
            raise OAuthError("Authorization server requires nonce in DPoP proof"
                             if nonce is None else 'DPoP "nonce" mismatch', "use_dpop_nonce",
                             {"DPoP-Nonce": self.nonce(now)})
        ath = payload.get("ath")
        if access_token is not None and ath != token_hash(access_token):
            raise _bad('DPoP "ath" mismatch')
        if access_token is None and ath is not None:
            raise _bad('DPoP "ath" claim not allowed')
        jkt = thumbprint(header["jwk"])
        self._claim(jti)
        return Proof(jkt=jkt, jti=jti)

    def _claim(self, jti: str) -> None:
        if self.seen("dpop:" + jti):
            raise _bad("DPoP proof replayed")

    def seen(self, key: str) -> bool:
        """Whether `key` (a jti, namespaced) was claimed before, by any worker; claims it
        if not."""
        return self.replay.seen(key)

    def prune(self, now: float | None = None) -> int:
        """Remove old overflow claims; returns how many went."""
        return self.replay.prune(now)


# The algorithms checked directly with `cryptography` (the common case: atproto clients
# sign proofs with ES256): each one's JWK curve, signature half size, and `cryptography`'s
# names of its curve and hash; other algorithms go through pyjwt. Both libraries are
# imported at the first proof (a worker that serves no OAuth client never loads them:
# bench/README.md, Memory).
_EC = {"ES256": ("P-256", 32, "SECP256R1", "SHA256"),
       "ES256K": ("secp256k1", 32, "SECP256K1", "SHA256"),
       "ES384": ("P-384", 48, "SECP384R1", "SHA384")}


@functools.cache
def _ec_params(alg: str) -> tuple[Any, Any]:
    """(curve, ECDSA signature algorithm) of one of `_EC`'s algorithms."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    _crv, _size, curve, digest = _EC[alg]
    return getattr(ec, curve)(), ec.ECDSA(getattr(hashes, digest)())

# Public keys already built from a JWK, by (alg, x, y): a client signs every proof of a
# session with one key, so it is parsed once per worker.
_keys: dict[tuple[str, str, str], ec.EllipticCurvePublicKey] = {}


def _segment(text: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))


def _verify_signature(proof: str) -> tuple[dict, dict]:
    """The header and claims of a proof signed by the public key in its header."""
    parts = proof.split(".")
    try:
        if len(parts) != 3:
            raise ValueError
        header, payload = _segment(parts[0]), _segment(parts[1])
        sig = base64.urlsafe_b64decode(parts[2] + "=" * (-len(parts[2]) % 4))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise _bad("DPoP proof is not a JWT") from None
    if not isinstance(header, dict) or not isinstance(payload, dict):
        raise _bad("DPoP proof is not a JWT")
    if header.get("typ") != "dpop+jwt":
        raise _bad('DPoP proof "typ" must be "dpop+jwt"')
    alg, jwk = header.get("alg"), header.get("jwk")
    if alg not in ALGS or not isinstance(jwk, dict):
        raise _bad("DPoP proof needs a supported alg and a jwk")
    if any(k in jwk for k in ("d", "p", "q", "dp", "dq", "qi", "k")):
        raise _bad("DPoP jwk must be a public key")
    signing_input = proof[:len(parts[0]) + len(parts[1]) + 1].encode()
    if alg in _EC:
        _verify_ec(alg, jwk, signing_input, sig)
    else:
        _verify_other(alg, jwk, proof)
    return header, payload


def _verify_ec(alg: str, jwk: dict, signing_input: bytes, sig: bytes) -> None:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    crv, size, _, _ = _EC[alg]
    curve, ecdsa = _ec_params(alg)
    x, y = jwk.get("x"), jwk.get("y")
    if jwk.get("kty") != "EC" or jwk.get("crv") != crv or not isinstance(x, str) \
            or not isinstance(y, str) or len(sig) != 2 * size:
        raise _bad("DPoP proof key or signature does not fit its alg")
    key = _keys.get((alg, x, y))
    try:
        if key is None:
            nums = ec.EllipticCurvePublicNumbers(
                int.from_bytes(base64.urlsafe_b64decode(x + "=" * (-len(x) % 4)), "big"),
                int.from_bytes(base64.urlsafe_b64decode(y + "=" * (-len(y) % 4)), "big"),
                curve)
            key = nums.public_key()
            if len(_keys) > 10_000:
                _keys.clear()
            _keys[(alg, x, y)] = key
        der = encode_dss_signature(int.from_bytes(sig[:size], "big"),
                                   int.from_bytes(sig[size:], "big"))
        key.verify(der, signing_input, ecdsa)
    except (ValueError, InvalidSignature):
        raise _bad("DPoP proof signature could not be verified") from None


def _verify_other(alg: str, jwk: dict, proof: str) -> None:
    import jwt

    try:
        key: Any = jwt.PyJWK(jwk, algorithm=alg)
        jwt.decode(proof, key, algorithms=[alg],
                   options={"verify_aud": False, "verify_exp": False, "verify_iat": False,
                            "verify_nbf": False})
    except (jwt.PyJWTError, ValueError, TypeError, KeyError):
        raise _bad("DPoP proof signature could not be verified") from None


def _normal_htu(htu: Any) -> str | None:
    """`htu` without query and fragment (RFC 9449 §4.3), or None when unusable."""
    if not isinstance(htu, str) or len(htu) > 2048:
        return None
    try:
        parts = urlsplit(htu)
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or parts.username or parts.password:
        return None
    return f"{parts.scheme}://{parts.netloc.lower()}{parts.path or '/'}"
