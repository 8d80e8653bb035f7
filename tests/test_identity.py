"""Identity: did:plc operations against the official PLC directory, DID documents, did:web,
handles, and the SSRF guard on user-named fetches."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import dag_cbor
import httpx
import pytest

from pds.config import Settings
from pds.repo.did import (
    IdentityError,
    did_web_host,
    handle_from_doc,
    key_from_doc,
    service_endpoint_from_doc,
)
from pds.repo.keys import b58encode
from pds.repo.plc import plc_did_for_genesis, plc_op_cid, verify_plc_signature
from pds.repo.signing_keys import K256PrivateKey, P256PrivateKey, PrivateKey
from pds.services.context import AppContext
from pds.services.fetch import UnsafeTarget, is_public_address

PUBLIC_URL = "http://localhost:2583"  # PDS_HOSTNAME=localhost:2583 with PDS_DEV=true


def make_ctx(tmp_path: Path, plc_url: str = "http://127.0.0.1:9", dev: bool = True,
             rotation: PrivateKey | None = None) -> AppContext:
    """A minimal AppContext over a fresh data dir (the env is isolated from os.environ)."""
    rotation = rotation or K256PrivateKey.generate()
    env = {
        "PDS_PLC_URL": plc_url,
        "PDS_HOSTNAME": "localhost:2583",
        "PDS_DEV": "true" if dev else "false",
        "PDS_JWT_SECRET": "x",
        "PDS_PLC_ROTATION_KEY": rotation.to_bytes().hex(),
        "PDS_HANDLE_DOMAINS": ".test",
    }
    ctx = AppContext(Settings.load(tmp_path / "data", env=env))
    ctx.data.ensure()
    ctx.accounts.ensure()
    return ctx


def run(ctx: AppContext, fn: Callable[[], Awaitable[Any]]) -> Any:
    """Run one async test body in a fresh loop and close the context's HTTP client in it."""

    async def main() -> Any:
        try:
            return await fn()
        finally:
            await ctx.http.aclose()

    return asyncio.run(main())


def strict_b64url(text: str) -> bytes:
    raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    assert base64.urlsafe_b64encode(raw).rstrip(b"=").decode() == text
    return raw


def mock_http(ctx: AppContext, handler: Callable[[httpx.Request], httpx.Response]
              ) -> list[httpx.Request]:
    """Route ctx.http through `handler`; returns the list of requests it saw."""
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request)

    ctx.http = httpx.AsyncClient(transport=httpx.MockTransport(record),
                                 follow_redirects=False)
    return seen


# --------------------------------------------------------------------------------------------
# PLC operations, offline
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key_cls", [K256PrivateKey, P256PrivateKey])
def test_genesis_op_did_and_signature(tmp_path: Path, key_cls: type[PrivateKey]) -> None:
    ctx = make_ctx(tmp_path)
    ident = ctx.identity
    signing = key_cls.generate().public_key()
    op = ident.sign_plc_operation(ident.genesis_op("alice.test", signing))

    rotation = ident.plc_rotation_key().public_key()
    assert op["type"] == "plc_operation"
    assert op["prev"] is None and "prev" in op
    assert op["rotationKeys"] == [rotation.did_key()]
    assert op["verificationMethods"] == {"atproto": signing.did_key()}
    assert op["alsoKnownAs"] == ["at://alice.test"]
    assert op["services"] == {"atproto_pds": {"type": "AtprotoPersonalDataServer",
                                              "endpoint": PUBLIC_URL}}

    # Re-derive the DID independently: the reference DAG-CBOR codec, hashlib, base64.
    reference_bytes = dag_cbor.encode(op)
    expected = "did:plc:" + base64.b32encode(
        hashlib.sha256(reference_bytes).digest()).decode().lower()[:24]
    assert plc_did_for_genesis(op) == expected

    # The signature covers the op without `sig`, is 64 bytes low-S, canonical base64url.
    unsigned = {k: v for k, v in op.items() if k != "sig"}
    sig = strict_b64url(op["sig"])
    assert len(sig) == 64
    assert rotation.verify(dag_cbor.encode(unsigned), sig)
    assert verify_plc_signature(op, [rotation.did_key()]) == rotation.did_key()
    assert verify_plc_signature(op, [signing.did_key()]) is None
    assert verify_plc_signature({**op, "sig": op["sig"] + "="}, [rotation.did_key()]) is None
    assert verify_plc_signature({**op, "alsoKnownAs": ["at://x.test"]},
                                [rotation.did_key()]) is None

    # prev of the next op is the CID of these exact bytes.
    digest = hashlib.sha256(reference_bytes).digest()
    cid_bytes = b"\x01\x71\x12\x20" + digest
    assert plc_op_cid(op) == "b" + base64.b32encode(cid_bytes).decode().lower().rstrip("=")


def test_update_op_is_pure_and_keeps_other_fields(tmp_path: Path) -> None:
    ident = make_ctx(tmp_path).identity
    signing = K256PrivateKey.generate().public_key()
    genesis = ident.sign_plc_operation(ident.genesis_op("alice.test", signing))
    genesis["alsoKnownAs"].append("https://example.com/alice")
    new_key = P256PrivateKey.generate().public_key()
    op = ident.update_op(genesis, handle="bob.test", signing_key=new_key,
                         pds_endpoint="https://pds.example.com")
    assert op["prev"] == plc_op_cid(genesis)
    assert op["alsoKnownAs"] == ["at://bob.test", "https://example.com/alice"]
    assert op["verificationMethods"] == {"atproto": new_key.did_key()}
    assert op["services"]["atproto_pds"]["endpoint"] == "https://pds.example.com"
    assert op["rotationKeys"] == genesis["rotationKeys"]
    assert "sig" not in op
    with pytest.raises(IdentityError):
        ident.update_op({"type": "plc_tombstone", "prev": "bafy", "sig": "x"}, handle="a.test")


def test_rotation_key_missing_or_bad(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    ctx.settings.plc_rotation_key = "zz"
    with pytest.raises(IdentityError):
        ctx.identity.plc_rotation_key()


# --------------------------------------------------------------------------------------------
# Against the official PLC directory (@did-plc/server 0.0.1, in memory)
# --------------------------------------------------------------------------------------------


@pytest.mark.slow  # the official PLC directory, in node
@pytest.mark.parametrize("key_cls", [K256PrivateKey, P256PrivateKey])
def test_plc_create_and_resolve(tmp_path: Path, plc_url: str,
                                key_cls: type[PrivateKey]) -> None:
    ctx = make_ctx(tmp_path, plc_url)
    ident = ctx.identity
    signing = key_cls.generate().public_key()

    async def body() -> None:
        did = await ident.create_plc_did("alice.test", signing)
        assert did.startswith("did:plc:") and len(did) == 32
        doc = await ident.resolve_did(did)
        assert doc is not None and doc["id"] == did
        # 0.0.1 renders the legacy key form; our parsing must read it all the same.
        vm = doc["verificationMethod"][0]
        assert vm["id"] == "#atproto"
        assert vm["type"] == signing.legacy_type
        assert key_from_doc(doc, did) == signing
        assert await ident.atproto_key(did) == signing
        assert await ident.pds_endpoint(did) == PUBLIC_URL
        assert handle_from_doc(doc) == "alice.test"
        data = await ident.get_plc_data(did)
        assert data["rotationKeys"] == [ident.plc_rotation_key().public_key().did_key()]
        # The directory's CID for the genesis op is the one we compute.
        audit = await ident.get_audit_log(did)
        assert audit[0]["cid"] == plc_op_cid(audit[0]["operation"])

    run(ctx, body)


@pytest.mark.slow  # the official PLC directory, in node
def test_plc_update_handle_key_and_endpoint(tmp_path: Path, plc_url: str) -> None:
    ctx = make_ctx(tmp_path, plc_url)
    ident = ctx.identity
    signing = K256PrivateKey.generate().public_key()

    async def body() -> None:
        did = await ident.create_plc_did("alice.test", signing)
        assert handle_from_doc(await ident.resolve_did(did)) == "alice.test"
        genesis = await ident.get_last_op(did)

        op = await ident.update_plc(did, handle="bob.test")
        assert op["prev"] == plc_op_cid(genesis)
        # Our own update drops the cached document, so no force is needed here.
        doc = await ident.resolve_did(did)
        assert handle_from_doc(doc) == "bob.test"
        assert key_from_doc(doc, did) == signing

        new_key = P256PrivateKey.generate().public_key()
        await ident.update_plc(did, signing_key=new_key, pds_endpoint="https://pds2.example.com")
        assert await ident.atproto_key(did, force=True) == new_key
        assert await ident.pds_endpoint(did) == "https://pds2.example.com"
        assert handle_from_doc(await ident.resolve_did(did)) == "bob.test"

        audit = await ident.get_audit_log(did)
        assert len(audit) == 3
        for before, after in zip(audit, audit[1:], strict=False):
            assert after["operation"]["prev"] == before["cid"]

    run(ctx, body)


@pytest.mark.slow  # the official PLC directory, in node
def test_plc_refuses_foreign_ops(tmp_path: Path, plc_url: str) -> None:
    ctx = make_ctx(tmp_path, plc_url)
    ident = ctx.identity
    signing = K256PrivateKey.generate().public_key()

    async def body() -> None:
        did = await ident.create_plc_did("alice.test", signing)
        last = await ident.get_last_op(did)
        # Signed by a key that is not a rotation key: the directory must refuse it.
        stranger = K256PrivateKey.generate()
        bad = ident.sign_plc_operation(ident.update_op(last, handle="mallory.test"), stranger)
        with pytest.raises(IdentityError, match="refused"):
            await ident.submit_plc_operation(did, bad)
        # A genesis op posted under the wrong DID is refused too.
        other = ident.sign_plc_operation(ident.genesis_op("carol.test", signing))
        with pytest.raises(IdentityError):
            await ident.submit_plc_operation("did:plc:" + "a" * 24, other)
        # Another PDS's identity: our rotation key is not listed, so we refuse up front.
        foreign = make_ctx(tmp_path / "other", plc_url).identity
        foreign_did = await foreign.create_plc_did("dave.test", signing)
        with pytest.raises(IdentityError, match="rotation key"):
            await ident.update_plc(foreign_did, handle="eve.test")
        await foreign.ctx.http.aclose()
        assert handle_from_doc(await ident.resolve_did(did, force=True)) == "alice.test"
        assert await ident.resolve_did("did:plc:" + "b" * 24) is None

    run(ctx, body)


# --------------------------------------------------------------------------------------------
# Documents we publish: did:web accounts, the service DID, handle files
# --------------------------------------------------------------------------------------------


def test_did_web_account_document(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, dev=False)
    ident = ctx.identity
    signing = K256PrivateKey.generate().public_key()
    did = ident.create_web_did("Carol.test", signing)
    assert did == "did:web:carol.test"
    path = ctx.data.root / "well-known" / "carol.test" / "did.json"
    doc = json.loads(path.read_text())
    assert doc == ident.did_document(did, "carol.test", signing)
    assert doc["@context"][0] == "https://www.w3.org/ns/did/v1"
    assert doc["verificationMethod"] == [{
        "id": did + "#atproto", "type": "Multikey", "controller": did,
        "publicKeyMultibase": signing.multibase()}]
    assert doc["service"] == [{"id": "#atproto_pds", "type": "AtprotoPersonalDataServer",
                               "serviceEndpoint": "https://localhost:2583"}]

    async def body() -> None:
        # Read from disk: no network, even with dev off.
        mock_http(ctx, lambda r: pytest.fail(f"unexpected fetch {r.url}"))
        assert await ident.atproto_key(did) == signing
        assert await ident.pds_endpoint(did) == "https://localhost:2583"
        assert handle_from_doc(await ident.resolve_did(did)) == "carol.test"

    run(ctx, body)

    with pytest.raises(IdentityError):
        ident.create_web_did("carol.example.com", signing)  # not one of our domains
    with pytest.raises(IdentityError):
        ident.create_web_did("test", signing)


def test_service_did_document(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    ident = ctx.identity
    path = ident.write_service_did_doc()
    # The directory keeps the port as configured; the DID spells ':' as %3A.
    assert path == ctx.data.root / "well-known" / "localhost:2583" / "did.json"
    assert ctx.settings.service_did == "did:web:localhost%3A2583"
    assert did_web_host(ctx.settings.service_did) == "localhost:2583"
    doc = json.loads(path.read_text())
    assert doc["id"] == "did:web:localhost%3A2583"
    assert "verificationMethod" not in doc

    async def body() -> None:
        mock_http(ctx, lambda r: pytest.fail(f"unexpected fetch {r.url}"))
        assert await ident.pds_endpoint(ctx.settings.service_did) == PUBLIC_URL

    run(ctx, body)


def test_handle_files(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    ident = ctx.identity
    did = "did:plc:" + "c" * 24
    path = ident.write_handle_file("Alice.test", did)
    assert path == ctx.data.root / "well-known" / "alice.test" / "atproto-did"
    assert path.read_text() == did
    ident.remove_handle_file("alice.test", did="did:plc:" + "d" * 24)  # not its DID: kept
    assert path.exists()
    ident.remove_handle_file("alice.test")
    assert not path.exists() and not path.parent.exists()
    with pytest.raises(IdentityError):
        ident.write_handle_file("../etc", did)
    with pytest.raises(IdentityError):
        ident.well_known_dir("..")


# --------------------------------------------------------------------------------------------
# Reading DID documents
# --------------------------------------------------------------------------------------------


def _uncompressed(key: PrivateKey) -> bytes:
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    curve = ec.SECP256K1() if key.key_type == "k256" else ec.SECP256R1()
    point = ec.EllipticCurvePublicKey.from_encoded_point(curve, key.public_key().compressed())
    return point.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)


@pytest.mark.parametrize("key_cls", [K256PrivateKey, P256PrivateKey])
def test_legacy_document_forms(key_cls: type[PrivateKey]) -> None:
    key = key_cls.generate()
    pub = key.public_key()
    did = "did:plc:" + "e" * 24
    legacy = {
        "@context": ["https://www.w3.org/ns/did/v1"],
        "id": did,
        "alsoKnownAs": ["at://Alice.Test", "at://second.test"],
        "verificationMethod": [
            {"id": "#other", "type": "Multikey", "controller": did,
             "publicKeyMultibase": K256PrivateKey.generate().public_key().multibase()},
            {"id": "#atproto", "type": "Multikey", "controller": did,
             "publicKeyMultibase": "zbroken"},  # invalid: the next valid one is used
            {"id": "#atproto", "type": pub.legacy_type, "controller": did,
             "publicKeyMultibase": "z" + b58encode(_uncompressed(key))},
        ],
        "service": [
            {"id": "#atproto_pds", "type": "SomethingElse", "serviceEndpoint": "https://x"},
            {"id": "#atproto_pds", "type": "AtprotoPersonalDataServer",
             "serviceEndpoint": "https://pds.example.com"},
        ],
    }
    assert key_from_doc(legacy, did) == pub
    assert handle_from_doc(legacy) == "alice.test"
    assert service_endpoint_from_doc(legacy, "atproto_pds", "AtprotoPersonalDataServer",
                                     did) == "https://pds.example.com"
    # Compressed legacy points (as in the interop vectors) and absolute ids work too.
    absolute = {**legacy, "verificationMethod": [
        {"id": did + "#atproto", "type": pub.legacy_type, "controller": did,
         "publicKeyMultibase": "z" + b58encode(pub.compressed())}]}
    assert key_from_doc(absolute, did) == pub
    # Another DID's absolute id is not ours.
    stolen = {**legacy, "verificationMethod": [
        {"id": "did:plc:" + "f" * 24 + "#atproto", "type": "Multikey",
         "publicKeyMultibase": pub.multibase()}]}
    assert key_from_doc(stolen, did) is None
    assert key_from_doc({"id": did}, did) is None
    assert handle_from_doc({"alsoKnownAs": ["at://not a handle"]}) is None


def test_did_web_host_parsing() -> None:
    assert did_web_host("did:web:example.com") == "example.com"
    assert did_web_host("did:web:localhost%3A2583") == "localhost:2583"
    assert did_web_host("did:web:Example.COM") == "example.com"
    assert did_web_host("did:web:example.com:user:alice") is None  # paths: not atproto
    assert did_web_host("did:web:exa%2Fmple.com") is None
    assert did_web_host("did:web:..") is None
    assert did_web_host("did:plc:" + "a" * 24) is None


# --------------------------------------------------------------------------------------------
# SSRF guard
# --------------------------------------------------------------------------------------------


def test_is_public_address() -> None:
    for addr in ("127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254",
                 "100.64.0.1", "0.0.0.0", "224.0.0.1", "255.255.255.255", "::1", "fe80::1",
                 "fc00::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "ff02::1", "not-an-ip"):
        assert not is_public_address(addr), addr
    for addr in ("8.8.8.8", "93.184.216.34", "2606:4700:4700::1111"):
        assert is_public_address(addr), addr


def _doc_for(did: str, pub_multibase: str) -> dict[str, Any]:
    return {"id": did, "alsoKnownAs": ["at://x.test"],
            "verificationMethod": [{"id": "#atproto", "type": "Multikey", "controller": did,
                                    "publicKeyMultibase": pub_multibase}],
            "service": [{"id": "#atproto_pds", "type": "AtprotoPersonalDataServer",
                         "serviceEndpoint": "https://pds.example.com"}]}


def test_ssrf_guard_refuses_private_did_web(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, dev=False)
    ident = ctx.identity
    pub = K256PrivateKey.generate().public_key()

    def serve(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=_doc_for("did:web:127.0.0.1", pub.multibase()))

    async def body() -> None:
        seen = mock_http(ctx, serve)
        assert await ident.resolve_did("did:web:127.0.0.1") is None
        assert await ident.resolve_did("did:web:localhost") is None
        assert await ident.resolve_did("did:web:10.0.0.7") is None
        assert seen == []  # refused before any request
        for url in ("https://127.0.0.1/.well-known/did.json",
                    "https://localhost/.well-known/did.json",
                    "http://93.184.216.34/.well-known/did.json",  # plain http
                    "https://93.184.216.34:8443/.well-known/did.json",  # odd port
                    "https://user@93.184.216.34/",
                    "https://[::1]/.well-known/did.json"):
            with pytest.raises(UnsafeTarget):
                await ident.check_target(url)

    run(ctx, body)

    # In dev, the same did:web is fetched over plain http.
    dev = make_ctx(tmp_path / "dev", dev=True)

    async def dev_body() -> None:
        seen = mock_http(dev, serve)
        assert await dev.identity.atproto_key("did:web:127.0.0.1") == pub
        assert [str(r.url) for r in seen] == ["http://127.0.0.1/.well-known/did.json"]

    run(dev, dev_body)


def test_ssrf_guard_pins_checked_address(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = make_ctx(tmp_path, dev=False)
    ident = ctx.identity
    pub = K256PrivateKey.generate().public_key()
    answers = {"pds.example.com": ["93.184.216.34"],
               "mixed.example.com": ["93.184.216.34", "10.0.0.1"],
               "big.example.com": ["93.184.216.35"],
               "moved.example.com": ["93.184.216.36"]}

    def fake_getaddrinfo(host: str, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        if host not in answers:
            raise socket.gaierror("no such host")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in answers[host]]

    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)

    def serve(request: httpx.Request) -> httpx.Response:
        host = request.headers["host"]
        if host == "pds.example.com":
            return httpx.Response(200, json=_doc_for("did:web:pds.example.com",
                                                     pub.multibase()))
        if host == "big.example.com":
            return httpx.Response(200, content=b" " * (65 * 1024))
        return httpx.Response(302, headers={"location": "https://127.0.0.1/.well-known/x"})

    async def body() -> None:
        seen = mock_http(ctx, serve)
        assert await ident.atproto_key("did:web:pds.example.com") == pub
        req = seen[-1]
        # Connected to the checked address, named by Host and SNI.
        assert str(req.url) == "https://93.184.216.34/.well-known/did.json"
        assert req.headers["host"] == "pds.example.com"
        assert req.extensions.get("sni_hostname") == "pds.example.com"

        count = len(seen)
        assert await ident.resolve_did("did:web:mixed.example.com") is None
        assert len(seen) == count  # one private address is enough to refuse
        assert await ident.resolve_did("did:web:big.example.com") is None  # over 64 KB
        assert await ident.resolve_did("did:web:moved.example.com") is None  # redirect
        assert await ident.resolve_did("did:web:nowhere.example.com") is None

    run(ctx, body)


# --------------------------------------------------------------------------------------------
# Handles
# --------------------------------------------------------------------------------------------


def test_resolve_hosted_handle_and_verify(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    ident = ctx.identity
    signing = K256PrivateKey.generate().public_key()
    did = ident.create_web_did("frank.test", signing)
    ctx.accounts.claim_handle("frank.test", did)

    async def body() -> None:
        mock_http(ctx, lambda r: pytest.fail(f"unexpected fetch {r.url}"))
        assert await ident.resolve_handle("frank.test") == did
        assert await ident.resolve_handle("FRANK.test") == did
        assert await ident.resolve_handle("not a handle") is None
        assert await ident.verify_handle("Frank.test", did)
        ident.write_web_did_doc(did, "grace.test", signing)  # doc now claims another handle
        assert not await ident.verify_handle("frank.test", did)

    run(ctx, body)


class _Txt:
    def __init__(self, *parts: bytes) -> None:
        self.strings = parts


class _FakeResolver:
    def __init__(self, records: dict[str, list[_Txt]]) -> None:
        self.records = records

    async def resolve(self, name: str, rdtype: Any, lifetime: float = 0) -> list[_Txt]:
        import dns.resolver

        if name not in self.records:
            raise dns.resolver.NXDOMAIN()
        return self.records[name]


def test_resolve_handle_dns_and_https(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    ident = ctx.identity
    did1, did2 = "did:plc:" + "g" * 24, "did:plc:" + "h" * 24
    ident._dns_resolver = _FakeResolver({
        "_atproto.dns.test": [_Txt(b"did=", did1.encode()), _Txt(b"unrelated")],
        "_atproto.ambiguous.test": [_Txt(b"did=" + did1.encode()),
                                    _Txt(b"did=" + did2.encode())],
    })

    def serve(request: httpx.Request) -> httpx.Response:
        if request.url.host == "web.test" and request.url.path == "/.well-known/atproto-did":
            return httpx.Response(200, text=f"  {did2}\n")
        if request.url.host == "junk.test":
            return httpx.Response(200, text="not a did")
        return httpx.Response(404)

    async def body() -> None:
        seen = mock_http(ctx, serve)
        assert await ident.resolve_handle("dns.test") == did1
        assert await ident.resolve_handle("web.test") == did2
        assert any(str(r.url) == "https://web.test/.well-known/atproto-did" for r in seen)
        assert await ident.resolve_handle("ambiguous.test") is None
        assert await ident.resolve_handle("junk.test") is None

    run(ctx, body)
