"""Finding the account to move in: a handle or DID, to its DID, its DID document and its
current PDS (for did:plc, its PLC state too), as any atproto client resolves them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from ..repo.did import handle_from_doc, key_from_doc, service_endpoint_from_doc
from ..repo.syntax import is_valid_did, is_valid_handle
from .common import CliError
from .migrate_http import TIMEOUT, Xrpc, XrpcFailure, get_json

PDS_SERVICE = ("atproto_pds", "AtprotoPersonalDataServer")


@dataclass
class OldAccount:
    """Who moves in: DID, handle (as its document claims it), the PDS hosting it now, its
    DID document and (did:plc) its current PLC data."""

    did: str
    handle: str | None
    pds_url: str
    doc: dict[str, Any]
    plc_data: dict[str, Any] | None


def _handle_via_dns(handle: str) -> str | None:
    import dns.exception
    import dns.resolver
    try:
        answer = dns.resolver.resolve(f"_atproto.{handle}", "TXT", lifetime=5.0)
    except (dns.exception.DNSException, OSError, ValueError):
        return None
    found = {b"".join(r.strings).decode("utf-8", "replace")[4:].strip()
             for r in answer if b"".join(r.strings).startswith(b"did=")}
    return found.pop() if len(found) == 1 else None


def _handle_via_https(handle: str, dev: bool) -> str | None:
    schemes = ("https", "http") if dev else ("https",)
    for scheme in schemes:
        try:
            resp = httpx.get(f"{scheme}://{handle}/.well-known/atproto-did", timeout=TIMEOUT)
        except httpx.HTTPError:
            continue
        if resp.status_code == 200 and len(resp.content) < 2048:
            return resp.text.strip()
    return None


def resolve_handle(handle: str, old_pds: str | None, dev: bool) -> str:
    """The DID of `handle`: asked of `old_pds` when given (it knows its own handles), else
    DNS (`_atproto.<handle>` TXT), else `https://<handle>/.well-known/atproto-did`. The
    answer is checked against the DID document afterwards (`resolve`)."""
    did: str | None = None
    if old_pds:
        client = Xrpc(old_pds, f"old PDS {old_pds}")
        try:
            did = client.get("com.atproto.identity.resolveHandle", handle=handle)["did"]
        except (XrpcFailure, KeyError, TypeError):
            did = None
        finally:
            client.close()
    did = did or _handle_via_dns(handle) or _handle_via_https(handle, dev)
    if not did or not is_valid_did(did):
        hint = "" if old_pds else " (give its DID, or --old-pds URL to ask its PDS)"
        raise CliError(f"can't resolve the handle {handle}{hint}")
    return did


def did_document(did: str, plc_url: str) -> dict[str, Any]:
    """The DID document of a did:plc, from the PLC directory."""
    doc = get_json(f"{plc_url.rstrip('/')}/{quote(did, safe=':')}", "PLC directory")
    if not isinstance(doc, dict):
        raise CliError(f"no DID document for {did} (unknown to the PLC directory, or gone)")
    return doc


def plc_data(did: str, plc_url: str) -> dict[str, Any]:
    """The current PLC state of a did:plc: rotationKeys, verificationMethods, alsoKnownAs,
    services."""
    data = get_json(f"{plc_url.rstrip('/')}/{quote(did, safe=':')}/data", "PLC directory")
    if not isinstance(data, dict):
        raise CliError(f"the PLC directory has no data for {did}")
    return data


def resolve(who: str, plc_url: str, dev: bool, old_pds: str | None = None) -> OldAccount:
    """The account named by `who` (a handle or DID) and where it lives now."""
    who = who.strip().removeprefix("@")
    if who.startswith("did:"):
        if not is_valid_did(who):
            raise CliError(f"not a DID: {who[:100]!r}")
        did, asked = who, None
    elif is_valid_handle(who.lower()):
        asked = who.lower()
        did = resolve_handle(asked, old_pds, dev)
    else:
        raise CliError(f"not a handle or DID: {who[:100]!r}")
    if not did.startswith("did:plc:"):
        raise CliError(f"{did}: only did:plc accounts can be moved in (a did:web's document "
                       "is published by its own host, and no PLC operation changes it)")
    doc = did_document(did, plc_url)
    handle = handle_from_doc(doc)
    if asked is not None and handle != asked:
        raise CliError(f"the handle {asked} resolves to {did}, whose DID document does not "
                       "claim it back")
    endpoint = service_endpoint_from_doc(doc, PDS_SERVICE[0], PDS_SERVICE[1], did)
    if endpoint is None or key_from_doc(doc, did) is None:
        raise CliError(f"the DID document of {did} names no PDS or no signing key")
    return OldAccount(did, handle, endpoint.rstrip("/"), doc, plc_data(did, plc_url))
