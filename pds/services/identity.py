"""Identity: did:plc operations, DID documents, handles, did:web, and resolving them all.

What this PDS writes (PROTOCOL.md §5):

- did:plc: a genesis operation signed with the PDS's PLC rotation key (`PDS_PLC_ROTATION_KEY`),
  submitted to the PLC directory; later operations (handle, key, endpoint changes) chain to
  the previous one by its CID.
- did:web accounts (`did:web:<handle>`, only for handles under `PDS_HANDLE_DOMAINS`): the
  DID document is a static file, `well-known/<handle>/did.json`.
- The PDS's own service DID, `did:web:<hostname>`, with its document at
  `well-known/<hostname>/did.json`. `PDS_HOSTNAME` may carry a port: the DID spells the ':'
  as '%3A' (`did:web:localhost%3A2583`) while the directory keeps the hostname exactly as
  configured (`well-known/localhost:2583/`), because that is the `Host` nginx sees and maps
  to a directory. :func:`did_web_host` turns one into the other.
- Hosted handles: `well-known/<handle>/atproto-did`, what `https://<handle>/.well-known/
  atproto-did` serves.

What it reads: DID documents (PLC directory, did:web over HTTPS, or our own files from disk)
and handles (our own index, DNS TXT `_atproto.<handle>`, HTTPS `/.well-known/atproto-did`).

Fetches from hosts a user named (did:web, handle HTTPS) are SSRF-guarded unless
`PDS_DEV` is set: https only, default port only, the host must resolve to public addresses
only, and the connection is pinned to the address that was checked (so a DNS answer that
changes between check and connect cannot redirect us to an internal service). Redirects are
refused for DID documents and re-checked hop by hop for handles. Bodies are size-capped.

Resolved DID documents are cached per process for :data:`DID_CACHE_TTL` seconds; an
operation this process submits drops its own entry, other workers see it when theirs expires
(or immediately with `force=True`, which service-auth uses after a signature mismatch).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import ipaddress
import json
import os
import re
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urljoin, urlsplit

import dns.asyncresolver
import dns.exception
import dns.rdatatype
import httpx

from ..repo.codec import cid_for, encode
from ..repo.keys import InvalidKey, PublicKey, parse_did_key, public_key_from_verification_method
from ..repo.signing_keys import K256PrivateKey, PrivateKey
from ..repo.syntax import is_valid_did, is_valid_handle
from ..store.files import ensure_dir, read_file, write_file

if TYPE_CHECKING:
    from .context import AppContext

__all__ = [
    "DID_CACHE_TTL",
    "Identity",
    "IdentityError",
    "UnsafeTarget",
    "did_web_host",
    "handle_from_doc",
    "is_public_address",
    "key_from_doc",
    "normalize_plc_op",
    "plc_did_for_genesis",
    "plc_op_cid",
    "service_endpoint_from_doc",
    "verify_plc_signature",
]

DID_CACHE_TTL = 600.0  # seconds a resolved DID document is trusted without asking again
DID_CACHE_MAX = 10_000  # entries; the oldest go first when full
DID_DOC_MAX_BYTES = 64 * 1024
HANDLE_DID_MAX_BYTES = 4096  # a DID is at most 2 KB; leave room for whitespace
PLC_RESPONSE_MAX_BYTES = 1024 * 1024  # audit logs of busy DIDs are long, but not this long
PLC_OP_MAX_BYTES = 7500  # the directory refuses larger operations (DAG-CBOR size)
FETCH_TIMEOUT = 5.0  # DID documents
HANDLE_TIMEOUT = 3.0  # each of DNS and HTTPS handle resolution
HANDLE_REDIRECTS = 3

DID_CONTEXT = "https://www.w3.org/ns/did/v1"
MULTIKEY_CONTEXT = "https://w3id.org/security/multikey/v1"
K256_CONTEXT = "https://w3id.org/security/suites/secp256k1-2019/v1"
P256_CONTEXT = "https://w3id.org/security/suites/ecdsa-2019/v1"
PDS_SERVICE_TYPE = "AtprotoPersonalDataServer"

_PLC_DID_RE = re.compile(r"did:plc:[a-z2-7]{24}")
# A hostname as a directory name: lowercase labels, optional port. No '/', no '..' (each
# label must be non-empty and start/end alphanumeric), so it can never leave well-known/.
_HOST_RE = re.compile(
    r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
    r"(?::[0-9]{1,5})?"
)


class IdentityError(Exception):
    """An identity operation failed (PLC directory refused an op, bad input, I/O failure)."""


class UnsafeTarget(IdentityError):
    """A user-named URL was refused: private address, odd port or scheme, bad host."""


# --------------------------------------------------------------------------------------------
# Pure helpers: PLC operations
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


def plc_op_cid(op: dict[str, Any]) -> str:
    """The CID string (CIDv1 dag-cbor sha2-256, base32 `b...`) of a signed PLC operation:
    what the next operation names as its `prev`."""
    return cid_for(encode(op)).encode()


def plc_did_for_genesis(signed_op: dict[str, Any]) -> str:
    """`did:plc:` + the first 24 base32 characters of sha256(DAG-CBOR of the signed op)."""
    digest = hashlib.sha256(encode(signed_op)).digest()
    return "did:plc:" + base64.b32encode(digest).decode("ascii").lower()[:24]


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
            "alsoKnownAs": [_at_uri(op["handle"])],
            "services": {"atproto_pds": {"type": PDS_SERVICE_TYPE,
                                         "endpoint": _http_url(op["service"])}},
            "prev": op.get("prev"),
            "sig": op.get("sig"),
        }
    return op


def _at_uri(handle: str) -> str:
    if handle.startswith("at://"):
        return handle
    return "at://" + handle.removeprefix("http://").removeprefix("https://")


def _http_url(endpoint: str) -> str:
    return endpoint if endpoint.startswith(("http://", "https://")) else "https://" + endpoint


# --------------------------------------------------------------------------------------------
# Pure helpers: reading DID documents
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
    if "%" in host or not _HOST_RE.fullmatch(host):
        return None
    if ":" in host:
        port = int(host.rsplit(":", 1)[1])
        if not 0 < port < 65536:
            return None
    return host


def is_public_address(addr: str) -> bool:
    """True if `addr` is a globally routable unicast IP (not loopback, private, link-local,
    shared, reserved, multicast, unspecified, documentation...)."""
    try:
        ip = ipaddress.ip_address(addr.split("%", 1)[0])
    except ValueError:
        return False
    # An IPv4-mapped IPv6 address reaches the IPv4 host it embeds: judge that one.
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _split_host_port(host: str) -> tuple[str, int | None]:
    """`host[:port]` (no IPv6 literals: did:web and handle hosts are names) -> parts."""
    name, sep, port = host.partition(":")
    return name, int(port) if sep and port.isdigit() else None


# --------------------------------------------------------------------------------------------
# The service
# --------------------------------------------------------------------------------------------


class Identity:
    """DIDs and handles for one PDS process (see the module docstring)."""

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self._rotation_key: PrivateKey | None = None
        # did -> (expires at, document); plain dict keeps insertion order for eviction.
        self._did_cache: dict[str, tuple[float, dict[str, Any]]] = {}
        self._dns_resolver: Any = None

    # ---- PLC: keys, operations ---------------------------------------------------------

    def plc_rotation_key(self) -> PrivateKey:
        """The PDS's PLC rotation key (secp256k1, hex secret in `PDS_PLC_ROTATION_KEY`)."""
        if self._rotation_key is None:
            text = (self.ctx.settings.plc_rotation_key or "").strip()
            if not text:
                raise IdentityError("PDS_PLC_ROTATION_KEY is not set")
            try:
                self._rotation_key = K256PrivateKey.from_bytes(bytes.fromhex(text))
            except (ValueError, InvalidKey) as e:
                raise IdentityError(f"PDS_PLC_ROTATION_KEY is not a k256 secret: {e}") from None
        return self._rotation_key

    def sign_plc_operation(self, op: dict[str, Any],
                           key: PrivateKey | None = None) -> dict[str, Any]:
        """A copy of `op` with `sig` set, signed by `key` (default: our rotation key).

        Pure apart from reading the key. Any existing `sig` is replaced. `prev` must be
        present (null for a genesis op) because it is part of the signed bytes.
        """
        if "prev" not in op:
            raise IdentityError("PLC operation lacks 'prev' (use null for a genesis op)")
        unsigned = _unsigned(op)
        try:
            data = encode(unsigned)
        except ValueError as e:
            raise IdentityError(f"PLC operation is not encodable: {e}") from None
        signed = {**unsigned, "sig": _b64url((key or self.plc_rotation_key()).sign(data))}
        size = len(encode(signed))
        if size > PLC_OP_MAX_BYTES:  # the directory would refuse it; say why here
            raise IdentityError(f"PLC operation too large ({size} bytes, max {PLC_OP_MAX_BYTES})")
        return signed

    def genesis_op(self, handle: str, signing_key: PublicKey | str) -> dict[str, Any]:
        """The unsigned genesis operation for a new did:plc hosted here."""
        return {
            "type": "plc_operation",
            "rotationKeys": [self.plc_rotation_key().public_key().did_key()],
            "verificationMethods": {"atproto": _did_key(signing_key)},
            "alsoKnownAs": [_at_uri(handle)],
            "services": {"atproto_pds": {"type": PDS_SERVICE_TYPE,
                                         "endpoint": self.ctx.settings.public_url}},
            "prev": None,
        }

    async def create_plc_did(self, handle: str, signing_key: PublicKey | str) -> str:
        """Create a did:plc for `handle` with `signing_key` as its `#atproto` key and this
        PDS as its `#atproto_pds` endpoint; registers it with the PLC directory."""
        if not is_valid_handle(handle):
            raise IdentityError(f"invalid handle {handle!r}")
        op = self.sign_plc_operation(self.genesis_op(handle, signing_key))
        did = plc_did_for_genesis(op)
        await self.submit_plc_operation(did, op)
        return did

    def update_op(self, last_op: dict[str, Any], *, handle: str | None = None,
                  signing_key: PublicKey | str | None = None,
                  pds_endpoint: str | None = None,
                  rotation_keys: list[str] | None = None) -> dict[str, Any]:
        """The unsigned operation following `last_op` with the given fields changed (pure)."""
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
            # Replace the first at:// entry in place (its position is what resolvers read)
            # and keep every other alias.
            uri = _at_uri(handle)
            idx = next((i for i, a in enumerate(aka) if a.startswith("at://")), None)
            if idx is None:
                aka.insert(0, uri)
            else:
                aka[idx] = uri
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

    async def update_plc(self, did: str, *, handle: str | None = None,
                         signing_key: PublicKey | str | None = None,
                         pds_endpoint: str | None = None) -> dict[str, Any]:
        """Change a did:plc's handle, `#atproto` key and/or PDS endpoint: a new operation
        after the directory's last one, signed with our rotation key. Returns the op."""
        last = await self.get_last_op(did)
        ours = self.plc_rotation_key().public_key().did_key()
        if ours not in (normalize_plc_op(last).get("rotationKeys") or []):
            raise IdentityError(
                f"{did}: this PDS's rotation key is no longer among the DID's rotation keys")
        op = self.sign_plc_operation(self.update_op(
            last, handle=handle, signing_key=signing_key, pds_endpoint=pds_endpoint))
        await self.submit_plc_operation(did, op)
        return op

    # ---- PLC: directory I/O ----------------------------------------------------------

    def _plc_did_url(self, did: str, suffix: str = "") -> str:
        if not _PLC_DID_RE.fullmatch(did or ""):
            raise IdentityError(f"not a did:plc: {did!r}")
        return f"{self.ctx.settings.plc_url}/{quote(did, safe=':')}{suffix}"

    async def submit_plc_operation(self, did: str, op: dict[str, Any]) -> None:
        """POST a signed operation to the PLC directory; IdentityError unless it is taken."""
        url = self._plc_did_url(did)
        try:
            resp = await self.ctx.http.post(url, json=op, timeout=FETCH_TIMEOUT)
        except (httpx.HTTPError, TimeoutError) as e:
            raise IdentityError(f"PLC directory unreachable ({url}): {e!r}") from None
        if not 200 <= resp.status_code < 300:
            raise IdentityError(f"PLC directory refused the operation for {did} "
                                f"(HTTP {resp.status_code}): {_error_text(resp)}")
        self.invalidate(did)

    async def _plc_get(self, did: str, suffix: str) -> Any:
        url = self._plc_did_url(did, suffix)
        try:
            status, body = await self._fetch(url, limit=PLC_RESPONSE_MAX_BYTES,
                                             timeout=FETCH_TIMEOUT, guard=False)
        except (httpx.HTTPError, TimeoutError) as e:
            raise IdentityError(f"PLC directory unreachable ({url}): {e!r}") from None
        if status != 200:
            raise IdentityError(f"PLC directory: HTTP {status} for {url}")
        try:
            return json.loads(body)
        except ValueError:
            raise IdentityError(f"PLC directory: invalid JSON from {url}") from None

    async def get_last_op(self, did: str) -> dict[str, Any]:
        """The directory's latest operation of a did:plc (`/<did>/log/last`)."""
        op = await self._plc_get(did, "/log/last")
        if not isinstance(op, dict):
            raise IdentityError(f"PLC directory: unexpected last op for {did}")
        return op

    async def get_plc_data(self, did: str) -> dict[str, Any]:
        """The directory's current state of a did:plc (`/<did>/data`): rotationKeys,
        verificationMethods, alsoKnownAs, services."""
        data = await self._plc_get(did, "/data")
        if not isinstance(data, dict):
            raise IdentityError(f"PLC directory: unexpected data for {did}")
        return data

    async def get_audit_log(self, did: str) -> list[dict[str, Any]]:
        """Every operation of a did:plc with CIDs and nullification (`/<did>/log/audit`)."""
        log = await self._plc_get(did, "/log/audit")
        if not isinstance(log, list):
            raise IdentityError(f"PLC directory: unexpected audit log for {did}")
        return log

    # ---- Documents we publish ----------------------------------------------------------

    def did_document(self, did: str, handle: str | None,
                     signing_key: PublicKey) -> dict[str, Any]:
        """The DID document of an account hosted here (PROTOCOL.md §5 shape)."""
        suite = K256_CONTEXT if signing_key.key_type == "k256" else P256_CONTEXT
        return {
            "@context": [DID_CONTEXT, MULTIKEY_CONTEXT, suite],
            "id": did,
            "alsoKnownAs": [_at_uri(handle)] if handle else [],
            "verificationMethod": [{
                "id": f"{did}#atproto",
                "type": "Multikey",
                "controller": did,
                "publicKeyMultibase": signing_key.multibase(),
            }],
            "service": [self._pds_service()],
        }

    def _pds_service(self) -> dict[str, str]:
        return {"id": "#atproto_pds", "type": PDS_SERVICE_TYPE,
                "serviceEndpoint": self.ctx.settings.public_url}

    def well_known_dir(self, host: str) -> Path:
        """`<data>/well-known/<host>/` for a hostname (port allowed), checked so the path
        can't escape the well-known tree."""
        host = host.lower()
        if not _HOST_RE.fullmatch(host):
            raise IdentityError(f"not a hostname: {host!r}")
        return self.ctx.data.root / "well-known" / host

    def _write_well_known(self, host: str, name: str, data: bytes) -> Path:
        directory = ensure_dir(self.well_known_dir(host))
        ensure_dir(self.ctx.data.tmp)
        path = directory / name
        write_file(path, data, self.ctx.data.tmp)
        return path

    def _handles_we_host(self, handle: str) -> bool:
        handle = handle.lower()
        return any(handle.endswith(d.lower()) and len(handle) > len(d)
                   for d in self.ctx.settings.handle_domains)

    def create_web_did(self, handle: str, signing_key: PublicKey) -> str:
        """Create `did:web:<handle>` for a handle under one of our handle domains, writing
        its document to `well-known/<handle>/did.json`. Returns the DID."""
        handle = handle.lower()
        if not is_valid_handle(handle):
            raise IdentityError(f"invalid handle {handle!r}")
        if not self._handles_we_host(handle):
            raise IdentityError(f"did:web is only offered under {self.ctx.settings.handle_domains}")
        did = "did:web:" + handle
        self.write_web_did_doc(did, handle, signing_key)
        return did

    def write_web_did_doc(self, did: str, handle: str | None, signing_key: PublicKey) -> Path:
        """(Re)write the document of a did:web account hosted here (after a handle or key
        change, too). Returns the file's path."""
        host = did_web_host(did)
        if host is None:
            raise IdentityError(f"not a hostname did:web: {did!r}")
        doc = self.did_document(did, handle, signing_key)
        return self._write_well_known(host, "did.json", _json_bytes(doc))

    def service_did_document(self) -> dict[str, Any]:
        """The PDS's own DID document (`did:web:<hostname>`): just the #atproto_pds service,
        as the reference PDS publishes it (it signs nothing with this DID)."""
        return {"@context": [DID_CONTEXT], "id": self.ctx.settings.service_did,
                "service": [self._pds_service()]}

    def write_service_did_doc(self) -> Path:
        """Write the service DID document to `well-known/<hostname>/did.json` (hostname as
        configured, port included, e.g. `well-known/localhost:2583/did.json`)."""
        return self._write_well_known(self.ctx.settings.hostname, "did.json",
                                      _json_bytes(self.service_did_document()))

    def write_handle_file(self, handle: str, did: str) -> Path:
        """Publish `well-known/<handle>/atproto-did` (the DID, as text)."""
        handle = handle.lower()
        if not is_valid_handle(handle):
            raise IdentityError(f"invalid handle {handle!r}")
        if not is_valid_did(did):
            raise IdentityError(f"invalid DID {did!r}")
        return self._write_well_known(handle, "atproto-did", did.encode())

    def remove_handle_file(self, handle: str, did: str | None = None) -> None:
        """Withdraw `well-known/<handle>/atproto-did` (only if it names `did`, when given),
        and the handle's directory if that leaves it empty."""
        handle = handle.lower()
        if not is_valid_handle(handle):
            return
        directory = self.well_known_dir(handle)
        path = directory / "atproto-did"
        if did is not None:
            current = read_file(path)
            if current is None or current.decode(errors="replace").strip() != did:
                return
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        try:
            directory.rmdir()  # fails harmlessly while a did.json still lives there
        except OSError:
            pass

    # ---- Resolving DIDs ----------------------------------------------------------------

    def invalidate(self, did: str) -> None:
        """Forget a cached DID document (after we changed it)."""
        self._did_cache.pop(did, None)

    async def resolve_did(self, did: str, force: bool = False) -> dict[str, Any] | None:
        """The DID document of a did:plc or did:web, or None if it can't be had.

        Cached for DID_CACHE_TTL; `force` asks again. did:web documents of this PDS are
        read from disk each time (never cached: they change under us).
        """
        if not isinstance(did, str) or not is_valid_did(did):
            return None
        if did.startswith("did:web:"):
            local = self._local_web_doc(did)
            if local is not None:
                return local
        now = time.monotonic()
        if not force:
            hit = self._did_cache.get(did)
            if hit is not None and hit[0] > now:
                return hit[1]
        try:
            if did.startswith("did:plc:"):
                doc = await self._fetch_plc_doc(did)
            elif did.startswith("did:web:"):
                doc = await self._fetch_web_doc(did)
            else:
                return None
        except (httpx.HTTPError, IdentityError, OSError, ValueError, TimeoutError,
                RecursionError):  # RecursionError: a document nested too deeply
            return None
        if doc is None or doc.get("id") != did:
            return None
        self._did_cache.pop(did, None)
        if len(self._did_cache) >= DID_CACHE_MAX:
            # Oldest insertion first; refreshed entries were re-inserted at the end.
            for stale in list(self._did_cache)[: DID_CACHE_MAX // 10 or 1]:
                del self._did_cache[stale]
        self._did_cache[did] = (now + DID_CACHE_TTL, doc)
        return doc

    def _local_web_doc(self, did: str) -> dict[str, Any] | None:
        host = did_web_host(did)
        if host is None:
            return None
        data = read_file(self.ctx.data.root / "well-known" / host / "did.json")
        if data is None:
            return None
        try:
            doc = json.loads(data)
        except ValueError:
            return None
        # DIDs are case-sensitive: a differently spelled did:web is not this document.
        return doc if isinstance(doc, dict) and doc.get("id") == did else None

    async def _fetch_plc_doc(self, did: str) -> dict[str, Any] | None:
        status, body = await self._fetch(self._plc_did_url(did), limit=DID_DOC_MAX_BYTES,
                                         timeout=FETCH_TIMEOUT, guard=False)
        if status != 200:
            return None
        doc = json.loads(body)
        return doc if isinstance(doc, dict) else None

    def _web_url(self, host: str, path: str) -> str:
        bare, port = _split_host_port(host)
        # Dev deployments run did:web and handle hosts as plain http on localhost or a port.
        plain = self.ctx.settings.dev and (
            bare == "localhost" or bare.endswith(".localhost") or _is_ip_literal(bare)
            or port is not None)
        return f"{'http' if plain else 'https'}://{host}{path}"

    async def _fetch_web_doc(self, did: str) -> dict[str, Any] | None:
        host = did_web_host(did)
        if host is None:
            return None
        status, body = await self._fetch(self._web_url(host, "/.well-known/did.json"),
                                         limit=DID_DOC_MAX_BYTES, timeout=FETCH_TIMEOUT,
                                         guard=True, redirects=0)
        if status != 200:
            return None
        doc = json.loads(body)
        return doc if isinstance(doc, dict) else None

    async def atproto_key(self, did: str, force: bool = False) -> PublicKey | None:
        """The `#atproto` signing key a DID document declares, or None."""
        doc = await self.resolve_did(did, force=force)
        return key_from_doc(doc, did) if doc is not None else None

    async def pds_endpoint(self, did: str, force: bool = False) -> str | None:
        """The `#atproto_pds` service endpoint of a DID, or None."""
        doc = await self.resolve_did(did, force=force)
        if doc is None:
            return None
        return service_endpoint_from_doc(doc, "atproto_pds", PDS_SERVICE_TYPE, did)

    async def service_endpoint(self, did: str, fragment: str,
                               force: bool = False) -> str | None:
        """The endpoint of service `#<fragment>` of a DID (proxying: `#bsky_appview`...)."""
        doc = await self.resolve_did(did, force=force)
        return service_endpoint_from_doc(doc, fragment, None, did) if doc else None

    @staticmethod
    def handle_from_doc(doc: dict[str, Any]) -> str | None:
        """The first `at://` alsoKnownAs handle of a document (see :func:`handle_from_doc`)."""
        return handle_from_doc(doc)

    # ---- Resolving handles -------------------------------------------------------------

    async def resolve_handle(self, handle: str) -> str | None:
        """The DID a handle names, or None: our own handles first, then DNS TXT
        `_atproto.<handle>`, then `https://<handle>/.well-known/atproto-did`."""
        if not isinstance(handle, str):
            return None
        handle = handle.lower()
        if not is_valid_handle(handle):
            return None
        local = self.ctx.accounts.did_for_handle(handle)
        if local:
            return local
        # DNS and HTTPS race (as the reference resolver does), but DNS wins when it answers.
        http_task = asyncio.ensure_future(self._handle_via_https(handle))
        try:
            did = await self._handle_via_dns(handle)
            if did is not None:
                return did
            return await http_task
        finally:
            if not http_task.done():
                http_task.cancel()

    async def _handle_via_dns(self, handle: str) -> str | None:
        try:
            if self._dns_resolver is None:
                self._dns_resolver = dns.asyncresolver.Resolver()
            answer = await self._dns_resolver.resolve(
                f"_atproto.{handle}", dns.rdatatype.TXT, lifetime=HANDLE_TIMEOUT)
        except (dns.exception.DNSException, OSError, ValueError):
            return None
        found: set[str] = set()
        for rdata in answer:
            text = b"".join(getattr(rdata, "strings", ())).decode("utf-8", errors="replace")
            if text.startswith("did="):
                found.add(text[len("did="):].strip())
        if len(found) != 1:
            return None  # none, or several different DIDs: ambiguous, so no answer
        did = found.pop()
        return did if is_valid_did(did) else None

    async def _handle_via_https(self, handle: str) -> str | None:
        try:
            status, body = await self._fetch(
                self._web_url(handle, "/.well-known/atproto-did"),
                limit=HANDLE_DID_MAX_BYTES, timeout=HANDLE_TIMEOUT, guard=True,
                redirects=HANDLE_REDIRECTS)
        except (httpx.HTTPError, IdentityError, OSError, ValueError, TimeoutError):
            return None
        if status != 200:
            return None
        try:
            did = body.decode("utf-8").strip()
        except UnicodeDecodeError:
            return None
        return did if is_valid_did(did) else None

    async def verify_handle(self, handle: str, did: str, force: bool = False) -> bool:
        """True if `handle` resolves to `did` and `did`'s document claims `handle`."""
        handle = handle.lower() if isinstance(handle, str) else handle
        if await self.resolve_handle(handle) != did:
            return False
        doc = await self.resolve_did(did, force=force)
        return doc is not None and handle_from_doc(doc) == handle

    # ---- Guarded fetching --------------------------------------------------------------

    async def check_target(self, url: str) -> tuple[str, dict[str, str], dict[str, Any]]:
        """Vet a user-named URL and pin it to a checked address.

        Returns (url to request, extra headers, httpx request extensions). Outside dev the
        URL must be https on the default port, and the host must resolve only to public
        addresses; the URL is then rewritten to the first of them, with `Host` and TLS SNI
        set to the name, so the certificate is still checked against the name. Raises
        :class:`UnsafeTarget`.
        """
        try:
            parts = urlsplit(url)
            host, port = parts.hostname, parts.port  # hostname: lowercased, no brackets
        except ValueError:
            raise UnsafeTarget(f"bad URL {url!r}") from None
        if parts.username is not None or parts.password is not None or not host:
            raise UnsafeTarget(f"bad URL {url!r}")
        if self.ctx.settings.dev:
            if parts.scheme not in ("http", "https"):
                raise UnsafeTarget(f"scheme not allowed: {url!r}")
            return url, {}, {}
        if parts.scheme != "https":
            raise UnsafeTarget(f"only https is allowed: {url!r}")
        if port is not None and port != 443:
            raise UnsafeTarget(f"only the default port is allowed: {url!r}")
        if _is_ip_literal(host):
            addresses = [host]
        else:
            try:
                infos = await asyncio.wait_for(
                    asyncio.get_running_loop().getaddrinfo(
                        host, 443, type=socket.SOCK_STREAM), HANDLE_TIMEOUT)
            except (OSError, TimeoutError, UnicodeError) as e:
                raise UnsafeTarget(f"cannot resolve {host!r}: {e}") from None
            addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        if not addresses:
            raise UnsafeTarget(f"{host!r} has no addresses")
        bad = [a for a in addresses if not is_public_address(a)]
        if bad:
            raise UnsafeTarget(f"{host!r} resolves to non-public address {bad[0]}")
        if _is_ip_literal(host):
            return url, {"Connection": "close"}, {}
        ip = addresses[0]
        ip_host = f"[{ip}]" if ":" in ip else ip
        pinned = parts._replace(netloc=ip_host).geturl()
        # Connection: close keeps a connection opened with this SNI out of the pool, where
        # another name on the same address could otherwise reuse it.
        return pinned, {"Host": host, "Connection": "close"}, {"sni_hostname": host}

    async def _fetch(self, url: str, *, limit: int, timeout: float, guard: bool,
                     redirects: int = 0, accept: str = "*/*") -> tuple[int, bytes]:
        """GET a URL: (status, body of at most `limit` bytes). `guard` vets every hop
        with :meth:`check_target`; up to `redirects` redirects are followed."""
        for hop in range(redirects + 1):
            target, headers, extensions = url, {}, {}
            if guard:
                target, headers, extensions = await self.check_target(url)
            headers["Accept"] = accept
            request = self.ctx.http.build_request("GET", target, headers=headers,
                                                  timeout=timeout, extensions=extensions)
            resp = await asyncio.wait_for(self.ctx.http.send(request, stream=True),
                                          timeout + 1)
            try:
                location = resp.headers.get("location")
                if resp.is_redirect and location:
                    if hop >= redirects:
                        raise UnsafeTarget(f"redirect refused: {url} -> {location}")
                    url = urljoin(url, location)  # relative to the name, not the pinned IP
                    continue
                body = await asyncio.wait_for(_read_capped(resp, limit), timeout + 1)
                return resp.status_code, body
            finally:
                await resp.aclose()
        raise UnsafeTarget(f"too many redirects from {url}")


async def _read_capped(resp: httpx.Response, limit: int) -> bytes:
    declared = resp.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise IdentityError(f"response too large ({declared} bytes, limit {limit})")
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.aiter_bytes():
        size += len(chunk)
        if size > limit:
            raise IdentityError(f"response too large (over {limit} bytes)")
        chunks.append(chunk)
    return b"".join(chunks)


def _did_key(key: PublicKey | str) -> str:
    if isinstance(key, PublicKey):
        return key.did_key()
    try:
        return parse_did_key(key).did_key()
    except InvalidKey as e:
        raise IdentityError(f"not a did:key: {e}") from None


def _json_bytes(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, indent=1).encode() + b"\n"


def _error_text(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:500]
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return body["message"][:500]
    return resp.text[:500]
