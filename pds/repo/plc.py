"""did:plc operations as pure data (PROTOCOL.md §5, did-method-plc v0.3.0): no I/O.

An operation is signed over its DAG-CBOR encoding without `sig` (with `prev`, null for a
genesis op), the signature being 64-byte low-S `r || s` in unpadded base64url. The DID is
derived from the signed genesis op (:func:`plc_did_for_genesis`); each later op names the
previous one by CID (:func:`plc_op_cid`). Talking to the PLC directory is I/O, left to the
identity service.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from typing import Any
from urllib.parse import quote

from .codec import cid_for, encode
from .did import PDS_SERVICE_TYPE, IdentityError, at_uri
from .keys import InvalidKey, PublicKey, parse_did_key
from .signing_keys import PrivateKey

__all__ = [
    "PLC_OP_MAX_BYTES",
    "normalize_plc_op",
    "plc_did_for_genesis",
    "plc_did_url",
    "plc_genesis_op",
    "plc_op_cid",
    "plc_signing_bytes",
    "plc_update_op",
    "sign_plc_op",
    "verify_plc_signature",
]

PLC_OP_MAX_BYTES = 7500  # the directory refuses larger operations (DAG-CBOR size)

_PLC_DID_RE = re.compile(r"did:plc:[a-z2-7]{24}")


# --------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode_strict(text: str) -> bytes | None:
    """Decode unpadded base64url, refusing every non-canonical spelling (padding, stray
    characters, non-zero padding bits): a signature must have exactly one encoding."""
    if not isinstance(text, str) or not re.fullmatch(r"[A-Za-z0-9_-]*", text):
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    return raw if _b64url(raw) == text else None


def _unsigned(op: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in op.items() if k != "sig"}


def _did_key(key: PublicKey | str) -> str:
    if isinstance(key, PublicKey):
        return key.did_key()
    try:
        return parse_did_key(key).did_key()
    except InvalidKey as e:
        raise IdentityError(f"not a did:key: {e}") from None


def _http_url(endpoint: str) -> str:
    return endpoint if endpoint.startswith(("http://", "https://")) else "https://" + endpoint


def plc_op_cid(op: dict[str, Any]) -> str:
    """The CID string (CIDv1 dag-cbor sha2-256, base32 `b...`) of a signed PLC operation:
    what the next operation names as its `prev`."""
    return cid_for(encode(op)).encode()


def plc_did_for_genesis(signed_op: dict[str, Any]) -> str:
    """`did:plc:` + the first 24 base32 characters of sha256(DAG-CBOR of the signed op)."""
    digest = hashlib.sha256(encode(signed_op)).digest()
    return "did:plc:" + base64.b32encode(digest).decode("ascii").lower()[:24]


def plc_did_url(directory: str, did: str, suffix: str = "") -> str:
    """`<directory>/<did><suffix>` (e.g. suffix `/log/last`); IdentityError unless `did` is
    a well-formed did:plc, so nothing else can be spliced into the path."""
    if not _PLC_DID_RE.fullmatch(did or ""):
        raise IdentityError(f"not a did:plc: {did!r}")
    return f"{directory}/{quote(did, safe=':')}{suffix}"


# --------------------------------------------------------------------------------------------
# Signatures
# --------------------------------------------------------------------------------------------


def plc_signing_bytes(op: dict[str, Any]) -> bytes:
    """The bytes a PLC signature covers: DAG-CBOR of `op` without `sig`. IdentityError if
    `prev` is missing (it is part of the signed bytes: null for a genesis op) or the op
    cannot be encoded."""
    if "prev" not in op:
        raise IdentityError("PLC operation lacks 'prev' (use null for a genesis op)")
    try:
        return encode(_unsigned(op))
    except ValueError as e:
        raise IdentityError(f"PLC operation is not encodable: {e}") from None


def sign_plc_op(op: dict[str, Any], key: PrivateKey) -> dict[str, Any]:
    """A copy of `op` with `sig` set, signed by `key` (any existing `sig` is replaced).
    IdentityError if the op is unsignable or the signed op is over :data:`PLC_OP_MAX_BYTES`."""
    data = plc_signing_bytes(op)
    signed = {**_unsigned(op), "sig": _b64url(key.sign(data))}
    size = len(encode(signed))
    if size > PLC_OP_MAX_BYTES:  # the directory would refuse it; say why here
        raise IdentityError(f"PLC operation too large ({size} bytes, max {PLC_OP_MAX_BYTES})")
    return signed


def verify_plc_signature(op: dict[str, Any], rotation_keys: list[str]) -> str | None:
    """The did:key among `rotation_keys` whose signature `op` carries, or None.

    Signatures must be 64-byte low-S `r || s` in canonical unpadded base64url, as the
    directory demands.
    """
    sig = _b64url_decode_strict(op.get("sig", ""))
    if sig is None:
        return None
    try:
        message = encode(_unsigned(op))
    except ValueError:
        return None
    for did_key in rotation_keys:
        try:
            if parse_did_key(did_key).verify(message, sig):
                return did_key
        except InvalidKey:
            continue
    return None


# --------------------------------------------------------------------------------------------
# Operations
# --------------------------------------------------------------------------------------------


def normalize_plc_op(op: dict[str, Any]) -> dict[str, Any]:
    """A `plc_operation` (sig kept) from a current op or a legacy genesis `create` op.

    Legacy `create` ops name `signingKey`, `recoveryKey`, `handle` and `service`; the
    directory reads them as rotation keys `[recoveryKey, signingKey]` and so does this.
    """
    if op.get("type") == "create":
        return {
            "type": "plc_operation",
            "verificationMethods": {"atproto": op["signingKey"]},
            "rotationKeys": [op["recoveryKey"], op["signingKey"]],
            "alsoKnownAs": [at_uri(op["handle"])],
            "services": {"atproto_pds": {"type": PDS_SERVICE_TYPE,
                                         "endpoint": _http_url(op["service"])}},
            "prev": op.get("prev"),
            "sig": op.get("sig"),
        }
    return op


def plc_genesis_op(rotation_keys: list[str], signing_key: PublicKey | str, handle: str,
                   endpoint: str) -> dict[str, Any]:
    """The unsigned genesis operation of a new did:plc: `rotation_keys` (did:keys), the
    `#atproto` key, the handle and the `#atproto_pds` endpoint; `prev` null."""
    return {
        "type": "plc_operation",
        "rotationKeys": list(rotation_keys),
        "verificationMethods": {"atproto": _did_key(signing_key)},
        "alsoKnownAs": [at_uri(handle)],
        "services": {"atproto_pds": {"type": PDS_SERVICE_TYPE, "endpoint": endpoint}},
        "prev": None,
    }


def _replace_handle(aka: list[str], handle: str) -> list[str]:
    # Replace the first at:// entry in place (its position is what resolvers read) and
    # keep every other alias.
    aka = list(aka)
    uri = at_uri(handle)
    idx = next((i for i, a in enumerate(aka) if a.startswith("at://")), None)
    if idx is None:
        aka.insert(0, uri)
    else:
        aka[idx] = uri
    return aka


def plc_update_op(last_op: dict[str, Any], *, handle: str | None = None,
                  signing_key: PublicKey | str | None = None,
                  pds_endpoint: str | None = None,
                  rotation_keys: list[str] | None = None) -> dict[str, Any]:
    """The unsigned operation following `last_op` with the given fields changed.

    `last_op` may be a legacy `create` op; IdentityError if it is a tombstone, malformed
    or of an unknown type.
    """
    if last_op.get("type") == "plc_tombstone":
        raise IdentityError("the DID is tombstoned")
    try:
        last = normalize_plc_op(last_op)
    except (KeyError, TypeError, AttributeError):
        raise IdentityError("malformed legacy PLC create operation") from None
    if last.get("type") != "plc_operation":
        raise IdentityError(f"unknown PLC operation type {last.get('type')!r}")
    aka = list(last.get("alsoKnownAs") or [])
    if handle is not None:
        aka = _replace_handle(aka, handle)
    methods = dict(last.get("verificationMethods") or {})
    if signing_key is not None:
        methods["atproto"] = _did_key(signing_key)
    services = dict(last.get("services") or {})
    if pds_endpoint is not None:
        services["atproto_pds"] = {"type": PDS_SERVICE_TYPE, "endpoint": pds_endpoint}
    return {
        "type": "plc_operation",
        "rotationKeys": list(rotation_keys if rotation_keys is not None
                             else last.get("rotationKeys") or []),
        "verificationMethods": methods,
        "alsoKnownAs": aka,
        "services": services,
        # The CID of the op as the directory stored it: the original bytes, legacy or not.
        "prev": plc_op_cid(last_op),
    }
