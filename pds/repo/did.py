"""DID documents and did:web, as pure data (PROTOCOL.md §5): no I/O, no settings.

Building the documents this PDS publishes (:func:`make_did_document`,
:func:`make_service_did_document`) and reading the ones it resolves: the `#atproto` key
(:func:`key_from_doc`), service endpoints (:func:`service_endpoint_from_doc`), the claimed
handle (:func:`handle_from_doc`). :func:`did_web_host` turns a hostname-only did:web into
the `host[:port]` its document lives under (`did:web:localhost%3A2583` -> `localhost:2583`).

PLC operations, which produce did:plc documents, are in :mod:`pds.repo.plc`.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from .keys import InvalidKey, PublicKey, public_key_from_verification_method
from .syntax import is_valid_did, is_valid_handle

__all__ = [
    "DID_CONTEXT",
    "K256_CONTEXT",
    "MULTIKEY_CONTEXT",
    "P256_CONTEXT",
    "PDS_SERVICE_TYPE",
    "IdentityError",
    "at_uri",
    "did_web_host",
    "handle_from_doc",
    "is_valid_host",
    "key_from_doc",
    "make_did_document",
    "make_service_did_document",
    "pds_service_entry",
    "service_endpoint_from_doc",
]

DID_CONTEXT = "https://www.w3.org/ns/did/v1"
MULTIKEY_CONTEXT = "https://w3id.org/security/multikey/v1"
K256_CONTEXT = "https://w3id.org/security/suites/secp256k1-2019/v1"
P256_CONTEXT = "https://w3id.org/security/suites/ecdsa-2019/v1"
PDS_SERVICE_TYPE = "AtprotoPersonalDataServer"

# A hostname as a directory name: lowercase labels, optional port. No '/', no '..' (each
# label must be non-empty and start/end alphanumeric), so it can never leave well-known/.
_HOST_RE = re.compile(
    r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
    r"(?::[0-9]{1,5})?"
)


class IdentityError(Exception):
    """An identity operation failed (PLC directory refused an op, bad input, I/O failure)."""


# --------------------------------------------------------------------------------------------
# Small pieces
# --------------------------------------------------------------------------------------------


def at_uri(handle: str) -> str:
    """The `alsoKnownAs` entry of a handle: `at://<handle>` (an existing `at://` is kept,
    an `http(s)://` prefix, as legacy PLC ops spell it, is dropped)."""
    if handle.startswith("at://"):
        return handle
    return "at://" + handle.removeprefix("http://").removeprefix("https://")


def is_valid_host(host: str) -> bool:
    """True if `host` is a lowercase `hostname[:port]` that is safe as a directory name
    (no '/', no empty or '..' labels)."""
    return _HOST_RE.fullmatch(host) is not None


def pds_service_entry(endpoint: str) -> dict[str, str]:
    """The `#atproto_pds` entry of a DID document's `service` list."""
    return {"id": "#atproto_pds", "type": PDS_SERVICE_TYPE, "serviceEndpoint": endpoint}


# --------------------------------------------------------------------------------------------
# Documents this PDS publishes
# --------------------------------------------------------------------------------------------


def make_did_document(did: str, handle: str | None, signing_key: PublicKey,
                      endpoint: str) -> dict[str, Any]:
    """The DID document of an account hosted at `endpoint` (PROTOCOL.md §5 shape)."""
    suite = K256_CONTEXT if signing_key.key_type == "k256" else P256_CONTEXT
    return {
        "@context": [DID_CONTEXT, MULTIKEY_CONTEXT, suite],
        "id": did,
        "alsoKnownAs": [at_uri(handle)] if handle else [],
        "verificationMethod": [{
            "id": f"{did}#atproto",
            "type": "Multikey",
            "controller": did,
            "publicKeyMultibase": signing_key.multibase(),
        }],
        "service": [pds_service_entry(endpoint)],
    }


def make_service_did_document(did: str, endpoint: str) -> dict[str, Any]:
    """A PDS's own DID document: just the #atproto_pds service, as the reference PDS
    publishes it (it signs nothing with this DID)."""
    return {"@context": [DID_CONTEXT], "id": did, "service": [pds_service_entry(endpoint)]}


# --------------------------------------------------------------------------------------------
# Reading DID documents
# --------------------------------------------------------------------------------------------


def _matches_fragment(entry_id: Any, did: str | None, fragment: str) -> bool:
    # Documents spell ids relative ("#atproto", as PLC renders them) or absolute
    # ("did:plc:...#atproto", as our did:web documents and newer renderers do).
    if not isinstance(entry_id, str):
        return False
    if entry_id == "#" + fragment:
        return True
    return did is not None and entry_id == f"{did}#{fragment}"


def key_from_doc(doc: dict[str, Any], did: str | None = None) -> PublicKey | None:
    """The first valid `#atproto` verification key of a DID document, or None.

    Accepts `Multikey` and the legacy `EcdsaSecp256k1VerificationKey2019` /
    `EcdsaSecp256r1VerificationKey2019` forms (bare SEC1 point, often uncompressed).
    """
    did = did or (doc.get("id") if isinstance(doc.get("id"), str) else None)
    methods = doc.get("verificationMethod")
    if not isinstance(methods, list):
        return None
    for vm in methods:
        if not isinstance(vm, dict) or not _matches_fragment(vm.get("id"), did, "atproto"):
            continue
        try:
            return public_key_from_verification_method(vm)
        except InvalidKey:
            continue  # "first valid": a broken entry doesn't hide a good one after it
    return None


def _valid_endpoint(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        parts = urlsplit(value)
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    return value


def service_endpoint_from_doc(doc: dict[str, Any], fragment: str,
                              service_type: str | None = None,
                              did: str | None = None) -> str | None:
    """The `serviceEndpoint` of the first service `#<fragment>` (of `service_type`, if
    given) whose endpoint is an http(s) URL; None otherwise."""
    did = did or (doc.get("id") if isinstance(doc.get("id"), str) else None)
    services = doc.get("service")
    if not isinstance(services, list):
        return None
    for svc in services:
        if not isinstance(svc, dict) or not _matches_fragment(svc.get("id"), did, fragment):
            continue
        if service_type is not None and svc.get("type") != service_type:
            continue
        endpoint = _valid_endpoint(svc.get("serviceEndpoint"))
        if endpoint is not None:
            return endpoint
    return None


def handle_from_doc(doc: dict[str, Any]) -> str | None:
    """The handle claimed by a DID document (its first `at://` alsoKnownAs), lowercased;
    None if there is none or it is not a valid handle."""
    aka = doc.get("alsoKnownAs") if isinstance(doc, dict) else None
    if not isinstance(aka, list):
        return None
    for entry in aka:
        if isinstance(entry, str) and entry.startswith("at://"):
            handle = entry[len("at://"):].lower()
            return handle if is_valid_handle(handle) else None
    return None


def did_web_host(did: str) -> str | None:
    """The `host[:port]` a did:web names (`%3A` decoded), lowercased; None if it is not a
    hostname-only did:web (paths, other escapes and bad hostnames are refused)."""
    if not isinstance(did, str) or not did.startswith("did:web:") or not is_valid_did(did):
        return None
    ident = did[len("did:web:"):]
    if ":" in ident:
        return None  # did:web:host:path:segments: atproto allows hostnames only
    host = re.sub("%3a", ":", ident, flags=re.IGNORECASE).lower()
    if "%" in host or not is_valid_host(host):
        return None
    if ":" in host:
        port = int(host.rsplit(":", 1)[1])
        if not 0 < port < 65536:
            return None
    return host
