"""Public keys for atproto: secp256k1 ("k256") and NIST P-256 ("p256"), and their encodings.

Everything atproto signs (repo commits, PLC operations, service-auth JWTs) uses the same
scheme: SHA-256 over the message, ECDSA, and a 64-byte ``r || s`` signature that must be in
low-S form. Verifiers must reject high-S and DER signatures rather than normalise them, because
accepting several encodings of one signature makes signatures malleable.

Public keys travel as ``did:key`` strings / ``Multikey`` multibase values: the 33-byte
compressed point behind a multicodec varint (secp256k1 ``0xE7 0x01``, P-256 ``0x80 0x24``),
base58btc encoded with a ``z`` prefix. Older DID documents instead use the
``EcdsaSecp256k1VerificationKey2019`` / ``EcdsaSecp256r1VerificationKey2019`` types, whose
``publicKeyMultibase`` is a bare point with no multicodec prefix.

This module holds verification, those encodings (with base58btc) and their parsers. Private
keys, signing and key files are in ``signing_keys.py``. Pure: no I/O.
"""

from __future__ import annotations

import functools
import hashlib
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

import coincurve
import coincurve.ecdsa

# `cryptography` (P-256) is imported by the P-256 classes at their first use: it is ~8 MB
# of a worker's memory, and a PDS whose accounts and peers all use secp256k1 (the
# default) needs none of it (bench/README.md, Memory).
if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec

__all__ = [
    "DID_KEY_PREFIX",
    "InvalidKey",
    "K256PublicKey",
    "LEGACY_K256_TYPE",
    "LEGACY_P256_TYPE",
    "MULTIKEY_TYPE",
    "P256PublicKey",
    "PublicKey",
    "b58decode",
    "b58encode",
    "parse_did_key",
    "parse_legacy_multibase",
    "parse_multikey",
    "public_key_from_verification_method",
]

DID_KEY_PREFIX = "did:key:"
MULTIKEY_TYPE = "Multikey"
LEGACY_K256_TYPE = "EcdsaSecp256k1VerificationKey2019"
LEGACY_P256_TYPE = "EcdsaSecp256r1VerificationKey2019"

# Group orders of the two curves; low-S means s <= n // 2.
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551

# Multicodec codes as unsigned varints: secp256k1-pub 0xE7, p256-pub 0x1200.
_K256_MULTICODEC = b"\xe7\x01"
_P256_MULTICODEC = b"\x80\x24"

# How many parsed keys to remember. Verification on the relay/service-auth path sees the same
# handful of DIDs over and over, so parsing (base58 + point decompression) is worth caching.
_KEY_CACHE_SIZE = 4096


class InvalidKey(ValueError):
    """A key, key encoding or key file could not be parsed."""


# --------------------------------------------------------------------------------------------
# base58btc (Bitcoin alphabet), as used by multibase 'z'
# --------------------------------------------------------------------------------------------

_B58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {ch: i for i, ch in enumerate(_B58_ALPHABET)}


def b58encode(data: bytes) -> str:
    """Encode bytes as base58btc (no multibase prefix)."""
    # Leading zero bytes carry no numeric value, so base58 spells each of them as '1'.
    zeros = len(data) - len(data.lstrip(b"\0"))
    num = int.from_bytes(data, "big")
    digits: list[str] = []
    while num:
        num, rem = divmod(num, 58)
        digits.append(_B58_ALPHABET[rem])
    return "1" * zeros + "".join(reversed(digits))


def b58decode(text: str) -> bytes:
    """Decode base58btc text (no multibase prefix); raises :class:`InvalidKey` on bad chars."""
    num = 0
    for ch in text:
        digit = _B58_INDEX.get(ch)
        if digit is None:
            raise InvalidKey(f"invalid base58btc character {ch!r}")
        num = num * 58 + digit
    zeros = len(text) - len(text.lstrip("1"))
    body = num.to_bytes((num.bit_length() + 7) // 8, "big") if num else b""
    return b"\0" * zeros + body


# --------------------------------------------------------------------------------------------
# Public keys
# --------------------------------------------------------------------------------------------


def _split_compact(sig: Any, order: int) -> tuple[int, int] | None:
    """Return (r, s) from a 64-byte low-S compact signature, or None if it is not one."""
    if not isinstance(sig, bytes | bytearray | memoryview):
        return None
    sig = bytes(sig)
    if len(sig) != 64:  # rules out DER (70-72 bytes) and everything else
        return None
    r = int.from_bytes(sig[:32], "big")
    s = int.from_bytes(sig[32:], "big")
    # r, s must be in [1, n-1]; atproto additionally requires low-S (no malleable twin).
    if not (0 < r < order and 0 < s <= order // 2):
        return None
    return r, s


class PublicKey(ABC):
    """An atproto public key on one of the supported curves. Immutable and hashable."""

    __slots__ = ("_compressed", "_did")

    #: JOSE algorithm name used in service-auth JWT headers.
    jwt_alg: ClassVar[str]
    #: Short key type name, as used in key files ("k256" / "p256").
    key_type: ClassVar[str]
    #: Legacy DID-document verification method type for this curve.
    legacy_type: ClassVar[str]
    _multicodec: ClassVar[bytes]
    _order: ClassVar[int]

    def __init__(self, compressed: bytes) -> None:
        self._compressed = compressed
        self._did: str | None = None

    @classmethod
    @abstractmethod
    def from_point(cls, point: bytes) -> PublicKey:
        """Build a key from a SEC1 point: 33-byte compressed or 65-byte uncompressed."""

    def compressed(self) -> bytes:
        """The 33-byte SEC1 compressed point."""
        return self._compressed

    def multibase(self) -> str:
        """The ``Multikey`` form: ``z`` + base58btc(multicodec prefix + compressed point)."""
        return self.did_key()[len(DID_KEY_PREFIX) :]

    def did_key(self) -> str:
        """The ``did:key:z...`` form of this key."""
        # Computed lazily and memoised: base58 encoding is a bignum loop and keys are immutable.
        if self._did is None:
            self._did = DID_KEY_PREFIX + "z" + b58encode(self._multicodec + self._compressed)
        return self._did

    def verify(self, message: bytes, sig: bytes) -> bool:
        """Check a 64-byte low-S ``r || s`` ECDSA signature over ``sha256(message)``.

        Returns False (never raises) for a wrong signature, a high-S signature, a DER
        signature, or any other malformed input in ``sig``.
        """
        rs = _split_compact(sig, self._order)
        if rs is None:
            return False
        try:
            return self._verify_rs(message, rs[0], rs[1])
        except (ValueError, TypeError):
            return False

    @abstractmethod
    def _verify_rs(self, message: bytes, r: int, s: int) -> bool:
        """Curve-specific check of an already range-checked (r, s)."""

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PublicKey):
            return NotImplemented
        return type(self) is type(other) and self._compressed == other._compressed

    def __hash__(self) -> int:
        return hash((type(self).__name__, self._compressed))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.did_key()!r})"


def _check_point_shape(point: bytes) -> None:
    """Allow only SEC1 compressed (02/03, 33 bytes) or uncompressed (04, 65 bytes) points."""
    # Libraries also accept "hybrid" 06/07 points; nothing in atproto produces those, so they
    # are refused here rather than silently normalised.
    if len(point) == 33 and point[0] in (2, 3):
        return
    if len(point) == 65 and point[0] == 4:
        return
    raise InvalidKey(f"not a SEC1 compressed or uncompressed point ({len(point)} bytes)")


class K256PublicKey(PublicKey):
    """A secp256k1 public key (verification via libsecp256k1 / coincurve)."""

    __slots__ = ("_key",)

    jwt_alg = "ES256K"
    key_type = "k256"
    legacy_type = LEGACY_K256_TYPE
    _multicodec = _K256_MULTICODEC
    _order = SECP256K1_N

    def __init__(self, key: coincurve.PublicKey) -> None:
        super().__init__(key.format(compressed=True))
        self._key = key

    @classmethod
    def from_point(cls, point: bytes) -> K256PublicKey:
        """Build a key from a 33- or 65-byte SEC1 point; raises :class:`InvalidKey`."""
        _check_point_shape(point)
        try:
            return cls(coincurve.PublicKey(point))
        except (ValueError, TypeError) as exc:
            raise InvalidKey(f"invalid secp256k1 point: {exc}") from None

    def _verify_rs(self, message: bytes, r: int, s: int) -> bool:
        # coincurve's verify only takes DER; libsecp256k1 re-encodes the already validated
        # (r, s) for it, and also rejects high-S on its own.
        compact = coincurve.ecdsa.deserialize_compact(r.to_bytes(32, "big") + s.to_bytes(32, "big"))
        der = coincurve.ecdsa.cdata_to_der(compact)
        return self._key.verify(der, message, hasher=_sha256)


class P256PublicKey(PublicKey):
    """A NIST P-256 public key (verification via ``cryptography``)."""

    __slots__ = ("_key",)

    jwt_alg = "ES256"
    key_type = "p256"
    legacy_type = LEGACY_P256_TYPE
    _multicodec = _P256_MULTICODEC
    _order = P256_N

    def __init__(self, key: ec.EllipticCurvePublicKey) -> None:
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
        super().__init__(key.public_bytes(Encoding.X962, PublicFormat.CompressedPoint))
        self._key = key

    @classmethod
    def from_point(cls, point: bytes) -> P256PublicKey:
        """Build a key from a 33- or 65-byte SEC1 point; raises :class:`InvalidKey`."""
        from cryptography.hazmat.primitives.asymmetric import ec
        _check_point_shape(point)
        try:
            return cls(ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point))
        except (ValueError, TypeError) as exc:
            raise InvalidKey(f"invalid P-256 point: {exc}") from None

    def _verify_rs(self, message: bytes, r: int, s: int) -> bool:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
        try:
            self._key.verify(encode_dss_signature(r, s), message, p256_ecdsa())
        except InvalidSignature:
            return False
        return True


@functools.cache
def p256_ecdsa() -> ec.ECDSA:
    """ECDSA over SHA-256, as `cryptography` names it (made once, at first use)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    return ec.ECDSA(hashes.SHA256())


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


# --------------------------------------------------------------------------------------------
# did:key, Multikey and legacy DID-document keys
# --------------------------------------------------------------------------------------------

_MULTICODEC_TYPES: dict[bytes, type[PublicKey]] = {
    _K256_MULTICODEC: K256PublicKey,
    _P256_MULTICODEC: P256PublicKey,
}
_LEGACY_TYPES: dict[str, type[PublicKey]] = {
    LEGACY_K256_TYPE: K256PublicKey,
    LEGACY_P256_TYPE: P256PublicKey,
}


def _decode_base58btc_multibase(value: Any) -> bytes:
    if not isinstance(value, str) or not value.startswith("z") or len(value) < 2:
        raise InvalidKey("expected a base58btc multibase string starting with 'z'")
    return b58decode(value[1:])


@functools.lru_cache(maxsize=_KEY_CACHE_SIZE)
def _parse_multikey_cached(multibase: str) -> PublicKey:
    raw = _decode_base58btc_multibase(multibase)
    cls = _MULTICODEC_TYPES.get(raw[:2])
    if cls is None:
        raise InvalidKey("unsupported multicodec key type (expected secp256k1-pub or p256-pub)")
    point = raw[2:]
    # The spec mandates compressed points inside did:key; insisting on it also keeps
    # parse -> did_key() an exact round trip.
    if len(point) != 33:
        raise InvalidKey(f"multikey point must be 33 bytes compressed, got {len(point)}")
    return cls.from_point(point)


def parse_multikey(multibase: str) -> PublicKey:
    """Parse a ``Multikey`` ``publicKeyMultibase`` value (``z...``); raises :class:`InvalidKey`.

    Results are cached, so repeated verification against the same key is cheap.
    """
    if not isinstance(multibase, str):
        raise InvalidKey("multikey must be a string")
    return _parse_multikey_cached(multibase)


def parse_did_key(did: str) -> PublicKey:
    """Parse a ``did:key:z...`` string into a public key; raises :class:`InvalidKey`.

    Results are cached (via :func:`parse_multikey`).
    """
    if not isinstance(did, str) or not did.startswith(DID_KEY_PREFIX):
        raise InvalidKey("not a did:key")
    return parse_multikey(did[len(DID_KEY_PREFIX) :])


def parse_legacy_multibase(multibase: str, key_type: str) -> PublicKey:
    """Parse a legacy ``publicKeyMultibase`` (bare SEC1 point, no multicodec prefix).

    ``key_type`` is the verification method type, ``EcdsaSecp256k1VerificationKey2019`` or
    ``EcdsaSecp256r1VerificationKey2019``. These documents are specified with 65-byte
    uncompressed points, but the interop vectors use 33-byte compressed ones, so both are
    accepted. Raises :class:`InvalidKey`.
    """
    cls = _LEGACY_TYPES.get(key_type) if isinstance(key_type, str) else None
    if cls is None:
        raise InvalidKey(f"unsupported legacy verification method type {key_type!r}")
    return cls.from_point(_decode_base58btc_multibase(multibase))


def public_key_from_verification_method(vm: dict[str, Any]) -> PublicKey:
    """Extract the public key from a DID document ``verificationMethod`` entry.

    Handles ``Multikey`` and the two legacy ``Ecdsa*VerificationKey2019`` types, all via
    ``publicKeyMultibase``. Raises :class:`InvalidKey` for anything else or missing fields.
    """
    if not isinstance(vm, dict):
        raise InvalidKey("verification method must be an object")
    vm_type = vm.get("type")
    value = vm.get("publicKeyMultibase")
    if not isinstance(value, str):
        raise InvalidKey("verification method has no string publicKeyMultibase")
    if vm_type == MULTIKEY_TYPE:
        return parse_multikey(value)
    if vm_type in _LEGACY_TYPES:
        return parse_legacy_multibase(value, vm_type)
    raise InvalidKey(f"unsupported verification method type {vm_type!r}")
