"""Signing keys for atproto: secp256k1 ("k256") and NIST P-256 ("p256") private keys.

Everything atproto signs (repo commits, PLC operations, service-auth JWTs) is an ECDSA
signature over SHA-256 of the message, sent as 64 bytes ``r || s`` in low-S form; ``sign``
normalises s itself rather than trusting the backend library to. Each private key carries
its public key (``keys.py``, which also holds verification and the did:key encodings).

Key files hold ``k256:<64 hex>`` or ``p256:<64 hex>``. This module is pure: it never touches
the filesystem. Callers store the bytes from :func:`export_private_key` and hand them back
to :func:`load_private_key`.
"""

from __future__ import annotations

import hashlib
import re
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar

import coincurve

from .keys import (
    P256_N,
    SECP256K1_N,
    InvalidKey,
    K256PublicKey,
    P256PublicKey,
    PublicKey,
    p256_ecdsa,
)

if TYPE_CHECKING:  # imported by the P-256 class at first use (keys.py says why)
    from cryptography.hazmat.primitives.asymmetric import ec

__all__ = [
    "K256PrivateKey",
    "P256PrivateKey",
    "PrivateKey",
    "export_private_key",
    "generate_signing_key",
    "load_private_key",
]


def _check_scalar(raw32: bytes, order: int) -> int:
    """Validate a raw 32-byte secret and return it as an integer in [1, n-1]."""
    if not isinstance(raw32, bytes | bytearray) or len(raw32) != 32:
        raise InvalidKey("private key must be exactly 32 raw bytes")
    d = int.from_bytes(raw32, "big")
    if not 0 < d < order:
        raise InvalidKey("private key scalar out of range for the curve")
    return d


class PrivateKey(ABC):
    """An atproto signing key. ``sign`` always yields 64-byte low-S ``r || s``."""

    __slots__ = ("_public",)

    #: JOSE algorithm name used in service-auth JWT headers.
    jwt_alg: ClassVar[str]
    #: Short key type name used in key files ("k256" / "p256").
    key_type: ClassVar[str]
    _order: ClassVar[int]

    _public: PublicKey

    @classmethod
    @abstractmethod
    def generate(cls) -> PrivateKey:
        """Create a fresh random key from the OS CSPRNG."""

    @classmethod
    @abstractmethod
    def from_bytes(cls, raw32: bytes) -> PrivateKey:
        """Load a key from its 32-byte big-endian secret; raises :class:`InvalidKey`."""

    @abstractmethod
    def to_bytes(self) -> bytes:
        """The 32-byte big-endian secret scalar."""

    @abstractmethod
    def _sign_rs(self, message: bytes) -> tuple[int, int]:
        """Curve-specific ECDSA-SHA256 signature as integers (s may be high)."""

    def sign(self, message: bytes) -> bytes:
        """Sign ``sha256(message)``; returns 64 bytes ``r || s`` with s normalised to low-S."""
        r, s = self._sign_rs(message)
        # (r, n - s) is an equally valid signature; atproto only accepts the low half.
        if s > self._order // 2:
            s = self._order - s
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    def public_key(self) -> PublicKey:
        """The matching public key."""
        return self._public

    def __repr__(self) -> str:
        # Never show the secret; the DID is enough to tell keys apart in logs.
        return f"{type(self).__name__}(public={self._public.did_key()!r})"


class K256PrivateKey(PrivateKey):
    """A secp256k1 signing key backed by coincurve (libsecp256k1)."""

    __slots__ = ("_key",)

    jwt_alg = "ES256K"
    key_type = "k256"
    _order = SECP256K1_N

    def __init__(self, key: coincurve.PrivateKey) -> None:
        self._key = key
        self._public = K256PublicKey(key.public_key)

    @classmethod
    def generate(cls) -> K256PrivateKey:
        """Create a fresh random secp256k1 key."""
        return cls(coincurve.PrivateKey())

    @classmethod
    def from_bytes(cls, raw32: bytes) -> K256PrivateKey:
        """Load a secp256k1 key from its 32-byte secret; raises :class:`InvalidKey`."""
        _check_scalar(raw32, SECP256K1_N)
        return cls(coincurve.PrivateKey(bytes(raw32)))

    def to_bytes(self) -> bytes:
        """The 32-byte big-endian secret scalar."""
        return self._key.secret

    def _sign_rs(self, message: bytes) -> tuple[int, int]:
        # sign_recoverable yields compact r || s || recid directly (plain sign() gives DER).
        # libsecp256k1 already emits low-S, but sign() re-checks so this never depends on it.
        compact = self._key.sign_recoverable(hashlib.sha256(message).digest(), hasher=None)
        return int.from_bytes(compact[:32], "big"), int.from_bytes(compact[32:64], "big")


class P256PrivateKey(PrivateKey):
    """A NIST P-256 signing key backed by ``cryptography``."""

    __slots__ = ("_key",)

    jwt_alg = "ES256"
    key_type = "p256"
    _order = P256_N

    def __init__(self, key: ec.EllipticCurvePrivateKey) -> None:
        self._key = key
        self._public = P256PublicKey(key.public_key())

    @classmethod
    def generate(cls) -> P256PrivateKey:
        """Create a fresh random P-256 key."""
        from cryptography.hazmat.primitives.asymmetric import ec
        return cls(ec.generate_private_key(ec.SECP256R1()))

    @classmethod
    def from_bytes(cls, raw32: bytes) -> P256PrivateKey:
        """Load a P-256 key from its 32-byte secret; raises :class:`InvalidKey`."""
        from cryptography.hazmat.primitives.asymmetric import ec
        d = _check_scalar(raw32, P256_N)
        return cls(ec.derive_private_key(d, ec.SECP256R1()))

    def to_bytes(self) -> bytes:
        """The 32-byte big-endian secret scalar."""
        return self._key.private_numbers().private_value.to_bytes(32, "big")

    def _sign_rs(self, message: bytes) -> tuple[int, int]:
        # cryptography returns DER and does NOT normalise s; sign() folds it to low-S.
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
        return decode_dss_signature(self._key.sign(message, p256_ecdsa()))


# --------------------------------------------------------------------------------------------
# Key files
# --------------------------------------------------------------------------------------------

_PRIVATE_KEY_TYPES: dict[str, type[PrivateKey]] = {
    "k256": K256PrivateKey,
    "p256": P256PrivateKey,
}
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


def generate_signing_key(key_type: str = "k256") -> PrivateKey:
    """Generate a new signing key; k256 by default, as the reference PDS does."""
    cls = _PRIVATE_KEY_TYPES.get(key_type)
    if cls is None:
        raise InvalidKey(f"unknown key type {key_type!r} (expected k256 or p256)")
    return cls.generate()


def export_private_key(key: PrivateKey) -> bytes:
    """Serialise a key for a key file: ``b"k256:<64 hex>\\n"`` or ``b"p256:<64 hex>\\n"``."""
    return f"{key.key_type}:{key.to_bytes().hex()}\n".encode("ascii")


def load_private_key(data: bytes) -> PrivateKey:
    """Parse the output of :func:`export_private_key`; raises :class:`InvalidKey`."""
    try:
        text = bytes(data).decode("ascii")
    except (UnicodeDecodeError, TypeError):
        raise InvalidKey("key file is not ASCII text") from None
    # Tolerate surrounding whitespace (editors add/strip trailing newlines), nothing else.
    key_type, sep, hex_part = text.strip().partition(":")
    cls = _PRIVATE_KEY_TYPES.get(key_type)
    if not sep or cls is None:
        raise InvalidKey("key file must look like 'k256:<hex>' or 'p256:<hex>'")
    # fullmatch rather than bytes.fromhex alone: fromhex silently skips embedded spaces.
    if not _HEX64.fullmatch(hex_part):
        raise InvalidKey("key file secret must be exactly 64 hex digits")
    return cls.from_bytes(bytes.fromhex(hex_part))

