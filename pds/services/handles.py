"""The rules a handle meets before an account gets it: at sign-up (migrating accounts
included), on updateHandle, and when the admin changes one.

- syntax, and no reserved TLD (`.local`, `.onion`...);
- never this PDS's own host name: its well-known directory holds the service DID
  document (a did:web handle would overwrite it, and any handle would publish an
  `atproto-did` beside it);
- a hosted handle (under one of `PDS_HANDLE_DOMAINS`) is one 3-18 character name in
  front of the domain, and not one of the reserved names (`reserved_handles`; the
  admin may give those, as in the reference PDS);
- an external handle (anything else) is only for an account that has a DID already (a
  migrating one, or on a handle change), and only when it resolves to that DID.
"""

from __future__ import annotations

from typing import Any

from ..errors import InvalidInput
from ..repo.syntax import is_disallowed_handle_tld, is_valid_handle
from .context import AppContext
from .reserved_handles import RESERVED_NAMES


def hosted_domain(ctx: AppContext, handle: str) -> str | None:
    """The handle domain of ours `handle` is under, or None (an external handle)."""
    return next((d for d in ctx.settings.handle_domains if handle.endswith(d)), None)


def is_service_host(ctx: AppContext, handle: str) -> bool:
    """True if `handle` names this PDS's own host (its port aside)."""
    return handle.lower() == ctx.settings.host_only.lower()


def normalize_handle_input(ctx: AppContext, handle: Any, external_ok: bool = False,
                           allow_reserved: bool = False) -> str:
    """A requested handle, lowercased, if it passes the rules above that need no lookup;
    else the refusal. (`external_ok`: the account has a DID already, so an external
    handle may be checked by resolution next, `require_resolves`; `allow_reserved`: the
    admin.)"""
    if not isinstance(handle, str) or not is_valid_handle(handle):
        raise InvalidInput("Handle invalid", "InvalidHandle")
    handle = handle.lower()
    if is_disallowed_handle_tld(handle):
        raise InvalidInput("Handle TLD is invalid or disallowed", "InvalidHandle")
    if is_service_host(ctx, handle):
        raise InvalidInput("Reserved handle", "HandleNotAvailable")
    domain = hosted_domain(ctx, handle)
    if domain is None:
        if external_ok:
            return handle
        raise InvalidInput("Not a supported handle domain", "UnsupportedDomain")
    front = handle[: -len(domain)]
    if "." in front:
        raise InvalidInput("Invalid characters in handle", "InvalidHandle")
    if not 3 <= len(front) <= 18:
        raise InvalidInput("Handle too short or too long", "InvalidHandle")
    if front in RESERVED_NAMES and not allow_reserved:
        raise InvalidInput("Reserved handle", "HandleNotAvailable")
    return handle


async def require_resolves(ctx: AppContext, handle: str, did: str) -> None:
    """An external handle (checked by `normalize_handle_input`) must resolve to `did`
    (DNS or HTTPS, through the identity service); a hosted one is ours to give."""
    if hosted_domain(ctx, handle) is not None:
        return
    if await ctx.identity.resolve_handle(handle) != did:
        raise InvalidInput("External handle did not resolve to DID", "InvalidHandle")
