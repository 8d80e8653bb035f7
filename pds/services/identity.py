"""Identity service: this PDS's DIDs and handles, and resolving everyone's.

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
  to a directory. :func:`pds.repo.did.did_web_host` turns one into the other.
- Hosted handles: `well-known/<handle>/atproto-did`, what `https://<handle>/.well-known/
  atproto-did` serves.

What it reads: DID documents (PLC directory, did:web over HTTPS, or our own files from disk)
and handles (our own index, DNS TXT `_atproto.<handle>`, HTTPS `/.well-known/atproto-did`).

The operations and documents themselves are pure data in :mod:`pds.repo.plc` and
:mod:`pds.repo.did`. Fetches from hosts a user named (did:web, handle HTTPS) go through the
SSRF guard of :mod:`pds.services.fetch` unless `PDS_DEV` is set; redirects are refused for
DID documents and re-checked hop by hop for handles. Bodies are size-capped.

Resolved DID documents are cached per process for :data:`DID_CACHE_TTL` seconds; an
operation this process submits drops its own entry, other workers see it when theirs expires
(or immediately with `force=True`, which service-auth uses after a signature mismatch).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING, Any

from ..repo.did import (
    PDS_SERVICE_TYPE,
    IdentityError,
    did_web_host,
    handle_from_doc,
    key_from_doc,
    service_endpoint_from_doc,
)
from ..repo.keys import InvalidKey, PublicKey
from ..repo.plc import (
    normalize_plc_op,
    plc_did_for_genesis,
    plc_did_url,
    plc_genesis_op,
    plc_signing_bytes,
    plc_update_op,
    sign_plc_op,
)
from ..repo.signing_keys import K256PrivateKey, PrivateKey
from ..repo.syntax import is_valid_did, is_valid_handle
from . import fetch
from .threads import blocking
from .wellknown import Publisher

if TYPE_CHECKING:
    import httpx

    from .context import AppContext

__all__ = ["DID_CACHE_TTL", "Identity"]

DID_CACHE_TTL = 600.0  # seconds a resolved DID document is trusted without asking again
DID_CACHE_MAX = 10_000  # entries; the oldest go first when full
DID_DOC_MAX_BYTES = 64 * 1024
HANDLE_DID_MAX_BYTES = 4096  # a DID is at most 2 KB; leave room for whitespace
PLC_RESPONSE_MAX_BYTES = 1024 * 1024  # audit logs of busy DIDs are long, but not this long
FETCH_TIMEOUT = 5.0  # DID documents
HANDLE_TIMEOUT = 3.0  # each of DNS and HTTPS handle resolution
HANDLE_REDIRECTS = 3
HANDLE_CHECK_TTL = 300.0  # seconds describeRepo's handleIsCorrect is trusted

# What a failed resolution may raise besides a failed request (`fetch.http_errors()`);
# each means "no answer", never an error to the caller. RecursionError: a document
# nested too deeply.
_RESOLVE_FAILURES = (IdentityError, fetch.FetchError, OSError, ValueError, TimeoutError,
                     RecursionError)


class Identity(Publisher):
    """DIDs and handles for one PDS process (see the module docstring)."""

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self._rotation_key: PrivateKey | None = None
        # did -> (expires at, document); plain dict keeps insertion order for eviction.
        self._did_cache: dict[str, tuple[float, dict[str, Any]]] = {}
        self._dns_resolver: Any = None
        self._dns: Any = None  # dnspython, once imported (_import_dns)
        # "<handle> <did>" -> (expires at, whether they name each other)
        self._handle_checks: dict[str, tuple[float, bool]] = {}

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
        if key is None:
            plc_signing_bytes(op)  # an unsignable op is reported before a missing key
            key = self.plc_rotation_key()
        return sign_plc_op(op, key)

    def genesis_op(self, handle: str, signing_key: PublicKey | str) -> dict[str, Any]:
        """The unsigned genesis operation for a new did:plc hosted here."""
        return plc_genesis_op([self.plc_rotation_key().public_key().did_key()], signing_key,
                              handle, self.ctx.settings.public_url)

    async def create_plc_did(self, handle: str, signing_key: PublicKey | str) -> str:
        """Create a did:plc for `handle` with `signing_key` as its `#atproto` key and this
        PDS as its `#atproto_pds` endpoint; registers it with the PLC directory."""
        if not is_valid_handle(handle):
            raise IdentityError(f"invalid handle {handle!r}")
        op = self.sign_plc_operation(self.genesis_op(handle, signing_key))
        did = plc_did_for_genesis(op)
        await self.submit_plc_operation(did, op)
        return did

    # The operation following `last_op` with some fields changed (pure: see pds.repo.plc).
    update_op = staticmethod(plc_update_op)

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

    async def submit_plc_operation(self, did: str, op: dict[str, Any]) -> None:
        """POST a signed operation to the PLC directory; IdentityError unless it is taken."""
        url = plc_did_url(self.ctx.settings.plc_url, did)
        try:
            resp = await self.ctx.http.post(url, json=op, timeout=FETCH_TIMEOUT)
        except fetch.http_errors(TimeoutError) as e:
            raise IdentityError(f"PLC directory unreachable ({url}): {e!r}") from None
        if not 200 <= resp.status_code < 300:
            raise IdentityError(f"PLC directory refused the operation for {did} "
                                f"(HTTP {resp.status_code}): {_error_text(resp)}")
        self.invalidate(did)

    async def _plc_get(self, did: str, suffix: str) -> Any:
        url = plc_did_url(self.ctx.settings.plc_url, did, suffix)
        try:
            status, body = await self._get(url, limit=PLC_RESPONSE_MAX_BYTES,
                                           timeout=FETCH_TIMEOUT, guard=False)
        except fetch.http_errors(TimeoutError) as e:
            raise IdentityError(f"PLC directory unreachable ({url}): {e!r}") from None
        except fetch.FetchError as e:  # a redirect, or an answer over the size cap
            raise IdentityError(str(e)) from e
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
            local = await blocking(self._local_web_doc, did)
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
        except fetch.http_errors(*_RESOLVE_FAILURES):
            return None
        if doc is None or doc.get("id") != did:
            return None
        self._remember(did, doc, now + DID_CACHE_TTL)
        return doc

    def _remember(self, did: str, doc: dict[str, Any], expires: float) -> None:
        self._did_cache.pop(did, None)
        if len(self._did_cache) >= DID_CACHE_MAX:
            # Oldest insertion first; refreshed entries were re-inserted at the end.
            for stale in list(self._did_cache)[: DID_CACHE_MAX // 10 or 1]:
                del self._did_cache[stale]
        self._did_cache[did] = (expires, doc)

    async def _fetch_plc_doc(self, did: str) -> dict[str, Any] | None:
        status, body = await self._get(plc_did_url(self.ctx.settings.plc_url, did),
                                       limit=DID_DOC_MAX_BYTES, timeout=FETCH_TIMEOUT,
                                       guard=False)
        if status != 200:
            return None
        doc = json.loads(body)
        return doc if isinstance(doc, dict) else None

    async def _fetch_web_doc(self, did: str) -> dict[str, Any] | None:
        host = did_web_host(did)
        if host is None:
            return None
        url = fetch.web_url(host, "/.well-known/did.json", dev=self.ctx.settings.dev)
        status, body = await self._get(url, limit=DID_DOC_MAX_BYTES, timeout=FETCH_TIMEOUT,
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

    # ---- Resolving handles -------------------------------------------------------------

    async def resolve_handle(self, handle: str) -> str | None:
        """The DID a handle names, or None: our own handles first, then DNS TXT
        `_atproto.<handle>`, then `https://<handle>/.well-known/atproto-did`."""
        if not isinstance(handle, str):
            return None
        handle = handle.lower()
        if not is_valid_handle(handle):
            return None
        local = await blocking(self.ctx.accounts.did_for_handle, handle)
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
        if self._dns is None:  # an import reads files: not on the event loop
            self._dns = await blocking(_import_dns)
        dns = self._dns
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
            url = fetch.web_url(handle, "/.well-known/atproto-did", dev=self.ctx.settings.dev)
            status, body = await self._get(url, limit=HANDLE_DID_MAX_BYTES,
                                           timeout=HANDLE_TIMEOUT, guard=True,
                                           redirects=HANDLE_REDIRECTS)
        except fetch.http_errors(IdentityError, fetch.FetchError, OSError, ValueError,
                                 TimeoutError):
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

    async def handle_is_correct(self, handle: str, did: str) -> bool:
        """`verify_handle`, remembered for HANDLE_CHECK_TTL (describeRepo asks it on
        every call; an external handle would be a DNS query each time)."""
        key = f"{handle} {did}"
        hit = self._handle_checks.get(key)
        now = time.monotonic()
        if hit is not None and hit[0] > now:
            return hit[1]
        ok = await self.verify_handle(handle, did)
        if len(self._handle_checks) >= DID_CACHE_MAX:
            self._handle_checks.clear()
        self._handle_checks[key] = (now + HANDLE_CHECK_TTL, ok)
        return ok

    # ---- Guarded fetching --------------------------------------------------------------

    async def check_target(self, url: str) -> fetch.PinnedTarget:
        """Vet a user-named URL under this PDS's policy (`PDS_DEV` relaxes it) and pin it
        to a checked address: :func:`pds.services.fetch.check_target`."""
        return await fetch.check_target(url, dev=self.ctx.settings.dev)

    async def _get(self, url: str, *, limit: int, timeout: float, guard: bool,
                   redirects: int = 0) -> tuple[int, bytes]:
        # ctx.http is read per call: tests (and a re-created client) replace it.
        return await fetch.guarded_get(self.ctx.http, url, limit=limit, timeout=timeout,
                                       dev=self.ctx.settings.dev, guard=guard,
                                       redirects=redirects)


def _error_text(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:500]
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return body["message"][:500]
    return resp.text[:500]


def _import_dns() -> Any:
    """dnspython, imported by the first handle looked up in DNS rather than by every
    worker at start: 2.5 MB of each worker's memory (issue 16)."""
    import dns.asyncresolver
    import dns.exception
    import dns.rdatatype
    return dns
