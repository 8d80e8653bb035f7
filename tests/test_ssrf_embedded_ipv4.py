"""The SSRF guard on IPv6 addresses that embed an IPv4 one (pds/services/fetch.py).

NAT64, 6to4, IPv4-mapped, IPv4-compatible and IPv4-translated addresses reach the IPv4
host they carry (through a translator, or the kernel's own tunnels), so they are judged by
that host: one embedding a loopback, private, link-local or shared address is not public,
one embedding a public address is. Local-use NAT64 is judged that way only in its /96
layout (elsewhere the IPv4 address could be anywhere). Teredo is never public. A URL
naming such an address, or a host resolving to one, is refused outside development.
"""

from __future__ import annotations

import asyncio
import ipaddress

import pytest

from pds.services.fetch import UnsafeTarget, check_target, embedded_ipv4, is_public_address

NOT_PUBLIC_V4 = ("127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254",
                 "100.64.0.1", "0.0.0.0", "224.0.0.1")
PUBLIC_V4 = ("8.8.8.8", "93.184.216.34")


def v4(addr: str) -> int:
    return int(ipaddress.IPv4Address(addr))


def at_last_32(prefix: str, addr: str) -> str:
    return str(ipaddress.IPv6Address(int(ipaddress.IPv6Address(prefix)) | v4(addr)))


def sixtofour(addr: str) -> str:
    return str(ipaddress.IPv6Address((0x2002 << 112) | (v4(addr) << 80) | 1))


# Each range, as a function from an IPv4 address to the IPv6 address embedding it.
RANGES = {
    "NAT64 64:ff9b::/96": lambda a: at_last_32("64:ff9b::", a),
    "local-use NAT64 64:ff9b:1::/48 (/96 layout)": lambda a: at_last_32("64:ff9b:1::", a),
    "6to4 2002::/16": sixtofour,
    "IPv4-mapped ::ffff:0:0/96": lambda a: f"::ffff:{a}",
    "IPv4-compatible ::/96": lambda a: at_last_32("::", a),
    "IPv4-translated ::ffff:0:0:0/96": lambda a: at_last_32("::ffff:0:0:0", a),
}


@pytest.mark.parametrize("name", list(RANGES))
def test_an_embedded_ipv4_address_decides(name: str) -> None:
    embed = RANGES[name]
    for addr in NOT_PUBLIC_V4:
        six = embed(addr)
        assert embedded_ipv4(ipaddress.IPv6Address(six)) == ipaddress.IPv4Address(addr), six
        assert not is_public_address(six), f"{name}: {six} embeds {addr}"
    for addr in PUBLIC_V4:
        six = embed(addr)
        assert is_public_address(six), f"{name}: {six} embeds {addr}"


def test_local_use_nat64_outside_its_96_layout_is_not_public() -> None:
    # 8.8.8.8 at RFC 6052's /48 position (bits 48-63 and 72-87): which layout the network
    # uses can't be told, so neither reading is trusted.
    for six in ("64:ff9b:1:808:8:800::", "64:ff9b:1:1::808:808", "64:ff9b:1:0:1::"):
        assert not is_public_address(six), six


def test_teredo_is_never_public() -> None:
    # A Teredo address of a public server and client (obfuscated), and of private ones.
    for six in ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "2001:0:a00:1::f5ff:fffe",
                "2001::1", "2001:0:808:808:0:0:f7f7:f7f7"):
        assert not is_public_address(six), six


def test_other_ipv6_addresses_are_unchanged() -> None:
    for six in ("2606:4700:4700::1111", "2a00:1450:4001:80b::200e"):
        assert embedded_ipv4(ipaddress.IPv6Address(six)) is None and is_public_address(six)
    for six in ("::1", "::", "fe80::1", "fc00::1", "ff02::1", "2001:db8::1"):
        assert not is_public_address(six), six


@pytest.mark.parametrize("name", list(RANGES))
def test_a_url_naming_one_is_refused(name: str) -> None:
    six = RANGES[name]("127.0.0.1")
    with pytest.raises(UnsafeTarget, match="non-public"):
        asyncio.run(check_target(f"https://[{six}]/xrpc/_health", dev=False))
