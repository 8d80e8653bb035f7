"""Outbound GETs to URLs a user named, guarded against SSRF.

A DID document of a did:web, a handle's `/.well-known/atproto-did`, an OAuth client's
metadata, a service to proxy to: the host comes from someone else, so fetching it must
not become a way to reach this machine's private network. Outside development
(`dev=False`), :func:`check_target` allows https only, on the default port only; the
host must resolve to public addresses only (:func:`is_public_address`), and the request
is pinned to the address that was checked (so a DNS answer that changes between check and
connect cannot redirect us to an internal service), with `Host` and TLS SNI naming the
host so its certificate is still checked against the name. With `dev=True`, http and any
host or port are allowed (local test networks), and nothing is pinned.

:func:`guarded_get` does one GET: every redirect hop is checked again (or refused, with
`redirects=0`), and the body is read up to a size cap. URLs from configuration (the PLC
directory) may be fetched with `guard=False`: same caps, no checks.

Usage::

    status, body = await guarded_get(ctx.http, url, limit=64 * 1024, timeout=5.0,
                                     dev=ctx.settings.dev)

Errors: :class:`UnsafeTarget` (refused URL or redirect), :class:`ResponseTooLarge`, both
:class:`FetchError`; transport failures are httpx's own (`httpx.HTTPError`, which
:func:`http_errors` names without importing httpx), and `TimeoutError` when a deadline
passes.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import sys
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import urljoin, urlsplit

if TYPE_CHECKING:
    import httpx

__all__ = [
    "RESOLVE_TIMEOUT",
    "FetchError",
    "PinnedTarget",
    "ResponseTooLarge",
    "UnsafeTarget",
    "check_target",
    "embedded_ipv4",
    "guarded_get",
    "http_errors",
    "is_ip_literal",
    "is_public_address",
    "read_capped",
    "split_host_port",
    "web_url",
]

RESOLVE_TIMEOUT = 3.0  # seconds to resolve a user-named host before refusing it


class FetchError(Exception):
    """A guarded fetch was refused or its answer was unacceptable."""


class UnsafeTarget(FetchError):
    """A user-named URL was refused: private address, odd port or scheme, bad host."""


class ResponseTooLarge(FetchError):
    """A response body was over the caller's size limit."""


def http_errors(*also: type[Exception]) -> tuple[type[Exception], ...]:
    """The exceptions of a failed outbound request (`httpx.HTTPError`) and `also`, for
    `except` clauses in modules that don't import httpx: a worker imports it (about
    2.5 MB with what it pulls in) only when it first makes an outbound request
    (`AppContext.http`). Before that no httpx error can be raised: nothing to catch."""
    httpx = sys.modules.get("httpx")
    return also if httpx is None else (httpx.HTTPError, *also)


class PinnedTarget(NamedTuple):
    """What to send for a vetted URL: the URL to request (its host replaced by the checked
    address when pinned), extra headers, and httpx request extensions (`sni_hostname`)."""

    url: str
    headers: dict[str, str]
    extensions: dict[str, Any]


# --------------------------------------------------------------------------------------------
# Addresses and hosts
# --------------------------------------------------------------------------------------------


# IPv6 ranges whose addresses carry an IPv4 address in their last 32 bits, and reach that
# IPv4 host through a translator or the kernel's tunnels: NAT64 (RFC 6052), IPv4-compatible
# (deprecated, still routed by SIT tunnels), IPv4-translated (SIIT). IPv4-mapped
# (::ffff:0:0/96) is `IPv6Address.ipv4_mapped`, 6to4 (2002::/16) `.sixtofour`.
_LAST_32_BITS = tuple(ipaddress.ip_network(n) for n in ("64:ff9b::/96", "::/96",
                                                        "::ffff:0:0:0/96"))
# Local-use NAT64 (RFC 8215): a network may put the IPv4 address at any of RFC 6052's
# positions, and may translate to private addresses. Only the /96 layout (bits 48-95 zero)
# says where it is; any other is taken for one that can't be told public.
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
_UNCLEAR = ipaddress.IPv4Address(0)  # judged like 0.0.0.0: not public
# Teredo (RFC 4380) hides its IPv4 server and client (the client obfuscated) in a tunnel
# that needs no local setup to reach an IPv4 host: never public.
_TEREDO = ipaddress.ip_network("2001::/32")


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address reaches through a translation or tunnelling
    mechanism that embeds it (None when it embeds none); 0.0.0.0 when it embeds one at a
    place that can't be told."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64_LOCAL:
        n = int(ip)
        return ipaddress.IPv4Address(n & 0xFFFFFFFF) if (n >> 32) & (2**48 - 1) == 0 \
            else _UNCLEAR
    if any(ip in net for net in _LAST_32_BITS):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.sixtofour


def is_public_address(addr: str) -> bool:
    """True if `addr` is a globally routable unicast IP (not loopback, private, link-local,
    shared, reserved, multicast, unspecified, documentation...). An IPv6 address that
    embeds an IPv4 one (NAT64, 6to4, IPv4-mapped, -compatible or -translated) reaches the
    IPv4 host it embeds, so that host is judged; Teredo is never public."""
    try:
        ip = ipaddress.ip_address(addr.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in _TEREDO:
            return False
        v4 = embedded_ipv4(ip)
        if v4 is not None:
            ip = v4
    return ip.is_global and not ip.is_multicast


def is_ip_literal(host: str) -> bool:
    """True if `host` is an IPv4 or IPv6 address (brackets allowed), not a name."""
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def split_host_port(host: str) -> tuple[str, int | None]:
    """`host[:port]` -> (host, port or None). No IPv6 literals: did:web and handle hosts
    are names."""
    name, sep, port = host.partition(":")
    return name, int(port) if sep and port.isdigit() else None


def web_url(host: str, path: str, *, dev: bool) -> str:
    """`https://<host><path>` for a did:web or handle host; in development, plain http for
    localhost, IP literals and hosts with a port (how dev deployments run them)."""
    bare, port = split_host_port(host)
    plain = dev and (bare == "localhost" or bare.endswith(".localhost")
                     or is_ip_literal(bare) or port is not None)
    return f"{'http' if plain else 'https'}://{host}{path}"


# --------------------------------------------------------------------------------------------
# Vetting a URL
# --------------------------------------------------------------------------------------------


async def _resolve(host: str, timeout: float) -> list[str]:
    """The addresses `host` resolves to (deduplicated, in order); UnsafeTarget if none."""
    if is_ip_literal(host):
        addresses = [host]
    else:
        try:
            infos = await asyncio.wait_for(
                asyncio.get_running_loop().getaddrinfo(host, 443, type=socket.SOCK_STREAM),
                timeout)
        except (OSError, TimeoutError, UnicodeError) as e:
            raise UnsafeTarget(f"cannot resolve {host!r}: {e}") from None
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        raise UnsafeTarget(f"{host!r} has no addresses")
    return addresses


async def check_target(url: str, *, dev: bool,
                       resolve_timeout: float = RESOLVE_TIMEOUT) -> PinnedTarget:
    """Vet a user-named URL and pin it to a checked address (see the module docstring).

    Outside dev the URL must be https on the default port, and the host must resolve only
    to public addresses; the URL is then rewritten to the first of them, with `Host` and
    TLS SNI set to the name. Raises :class:`UnsafeTarget`.
    """
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port  # hostname: lowercased, no brackets
    except ValueError:
        raise UnsafeTarget(f"bad URL {url!r}") from None
    if parts.username is not None or parts.password is not None or not host:
        raise UnsafeTarget(f"bad URL {url!r}")
    if dev:
        if parts.scheme not in ("http", "https"):
            raise UnsafeTarget(f"scheme not allowed: {url!r}")
        return PinnedTarget(url, {}, {})
    if parts.scheme != "https":
        raise UnsafeTarget(f"only https is allowed: {url!r}")
    if port is not None and port != 443:
        raise UnsafeTarget(f"only the default port is allowed: {url!r}")
    addresses = await _resolve(host, resolve_timeout)
    bad = [a for a in addresses if not is_public_address(a)]
    if bad:
        raise UnsafeTarget(f"{host!r} resolves to non-public address {bad[0]}")
    if is_ip_literal(host):
        return PinnedTarget(url, {"Connection": "close"}, {})
    ip = addresses[0]
    ip_host = f"[{ip}]" if ":" in ip else ip
    pinned = parts._replace(netloc=ip_host).geturl()
    # Connection: close keeps a connection opened with this SNI out of the pool, where
    # another name on the same address could otherwise reuse it.
    return PinnedTarget(pinned, {"Host": host, "Connection": "close"},
                        {"sni_hostname": host})


# --------------------------------------------------------------------------------------------
# Fetching
# --------------------------------------------------------------------------------------------


async def read_capped(resp: httpx.Response, limit: int) -> bytes:
    """The body of a streamed response, at most `limit` bytes; ResponseTooLarge as soon as
    the declared or received length passes it."""
    declared = resp.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ResponseTooLarge(f"response too large ({declared} bytes, limit {limit})")
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.aiter_bytes():
        size += len(chunk)
        if size > limit:
            raise ResponseTooLarge(f"response too large (over {limit} bytes)")
        chunks.append(chunk)
    return b"".join(chunks)


async def guarded_get(client: httpx.AsyncClient, url: str, *, limit: int, timeout: float,
                      dev: bool = False, guard: bool = True, redirects: int = 0,
                      accept: str = "*/*") -> tuple[int, bytes]:
    """GET `url` with `client`: (status, body of at most `limit` bytes).

    With `guard`, every hop is vetted by :func:`check_target` (`dev` relaxes it); up to
    `redirects` redirects are followed, one more raises :class:`UnsafeTarget`. `client`
    must not follow redirects itself. `timeout` bounds the request and the body read
    separately.
    """
    for hop in range(redirects + 1):
        target = PinnedTarget(url, {}, {})
        if guard:
            target = await check_target(url, dev=dev)
        headers = {**target.headers, "Accept": accept}
        request = client.build_request("GET", target.url, headers=headers, timeout=timeout,
                                       extensions=target.extensions)
        resp = await asyncio.wait_for(client.send(request, stream=True), timeout + 1)
        try:
            location = resp.headers.get("location")
            if resp.is_redirect and location:
                if hop >= redirects:
                    raise UnsafeTarget(f"redirect refused: {url} -> {location}")
                url = urljoin(url, location)  # relative to the name, not the pinned IP
                continue
            body = await asyncio.wait_for(read_capped(resp, limit), timeout + 1)
            return resp.status_code, body
        finally:
            await resp.aclose()
    raise UnsafeTarget(f"too many redirects from {url}")
