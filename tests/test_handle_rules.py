"""The handle rules (`pds.services.handles`) and the identity service's own guard of the
PDS's host directory, as units: a host name the reserved list lacks is still refused,
the admin may give reserved names but never the host name, an external handle must
resolve to the DID, and no account write ever lands in the service host's directory."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from pds.config import Settings
from pds.errors import InvalidInput
from pds.repo.did import IdentityError
from pds.repo.signing_keys import K256PrivateKey
from pds.services import handles
from pds.services.context import AppContext

HOST = "quietplace.test"  # not a reserved name: only the host-name rule refuses it


def make_ctx(tmp_path: Path, did_method: str = "plc") -> AppContext:
    env = {"PDS_HOSTNAME": HOST, "PDS_DEV": "true", "PDS_JWT_SECRET": "x" * 32,
           "PDS_DID_METHOD": did_method, "PDS_RATE_LIMITS": "false",
           "PDS_HANDLE_DOMAINS": ".test", "PDS_PLC_URL": "http://127.0.0.1:9",
           "PDS_PLC_ROTATION_KEY": K256PrivateKey.generate().to_bytes().hex()}
    ctx = AppContext(Settings.load(tmp_path / "data", env=env))
    ctx.data.ensure()
    ctx.accounts.ensure()
    return ctx


def refused(ctx: AppContext, handle: str, **kw) -> str:
    with pytest.raises(InvalidInput) as e:
        handles.normalize_handle_input(ctx, handle, **kw)
    return e.value.error or ""


def test_service_host_and_reserved_names(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    assert "quietplace" not in handles.RESERVED_NAMES
    for kw in ({}, {"external_ok": True}, {"allow_reserved": True}):
        assert refused(ctx, HOST, **kw) == "HandleNotAvailable"
        assert refused(ctx, HOST.upper(), **kw) == "HandleNotAvailable"
    for name in ("admin", "support", "pds", "xrpc", "www", "api"):
        assert refused(ctx, f"{name}.test") == "HandleNotAvailable"
        assert refused(ctx, f"{name}.test", external_ok=True) == "HandleNotAvailable"
        # The admin may (as in the reference PDS).
        assert handles.normalize_handle_input(ctx, f"{name}.test", allow_reserved=True) == \
            f"{name}.test"
    assert handles.normalize_handle_input(ctx, "Quiet.test") == "quiet.test"
    assert refused(ctx, "ab.test") == "InvalidHandle"
    assert refused(ctx, "a.b.test") == "InvalidHandle"
    assert refused(ctx, "alice.example.org") == "UnsupportedDomain"
    assert handles.normalize_handle_input(ctx, "alice.example.org", external_ok=True) == \
        "alice.example.org"


def test_external_handles_must_resolve_to_the_did(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    answers = {"alice.example.org": "did:plc:alice", "bob.example.org": "did:plc:bob"}

    async def resolve(handle: str) -> str | None:
        return answers.get(handle)

    ctx.identity.resolve_handle = resolve  # type: ignore[method-assign]
    asyncio.run(handles.require_resolves(ctx, "alice.example.org", "did:plc:alice"))
    for handle in ("bob.example.org", "nobody.example.org"):
        with pytest.raises(InvalidInput) as e:
            asyncio.run(handles.require_resolves(ctx, handle, "did:plc:alice"))
        assert e.value.error == "InvalidHandle"
    # A hosted handle is ours to give: nothing is resolved.
    asyncio.run(handles.require_resolves(ctx, "fresh.test", "did:plc:alice"))


def test_nothing_of_an_account_lands_in_the_service_host_directory(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    ident = ctx.identity
    doc = ident.write_service_did_doc()
    before = doc.read_bytes()
    key = K256PrivateKey.generate().public_key()
    with pytest.raises(IdentityError):
        ident.write_handle_file(HOST, "did:plc:abc")
    with pytest.raises(IdentityError):
        ident.create_web_did(HOST, key)
    with pytest.raises(IdentityError):
        ident.write_web_did_doc("did:web:" + HOST, HOST, key)
    ident.remove_handle_file(HOST)
    ident.remove_web_did_doc("did:web:" + HOST)
    assert doc.read_bytes() == before
    assert sorted(p.name for p in doc.parent.iterdir()) == ["did.json"]


def test_a_deleted_did_web_leaves_a_tombstone_and_no_document(tmp_path: Path) -> None:
    from pds.services import accounts
    ctx = make_ctx(tmp_path, did_method="web")
    out = asyncio.run(accounts.create_account(
        ctx, {"handle": "gone.test", "email": "g@example.com", "password": "pw"}, None))
    did = out["did"]
    assert did == "did:web:gone.test"
    well_known = ctx.data.well_known("gone.test")
    assert (well_known / "did.json").exists() and (well_known / "atproto-did").exists()
    accounts.delete_account(ctx, did)
    assert ctx.accounts.tombstone(did)["handle"] == "gone.test"
    assert not well_known.exists()
    assert asyncio.run(ctx.identity.resolve_did(did)) is None
    with pytest.raises(InvalidInput) as e:
        asyncio.run(accounts.create_account(
            ctx, {"handle": "gone.test", "email": "g2@example.com", "password": "pw"}, None))
    assert e.value.error == "HandleNotAvailable"
    assert not ctx.data.account(did).exists() and not well_known.exists()
