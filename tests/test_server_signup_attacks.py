"""Attacks on sign-up and handles against a real `pds serve --workers 2`: each asserts the
refusal and that nothing in the data dir changed.

- A huge email (the old pattern took quadratic time, on the event loop, before any
  length check) is refused at once.
- The service's own host name, and the names the reference PDS reserves, are no handle
  anyone can take (the service DID document lives in the host name's well-known
  directory).
"""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import pytest
from harness import free_port, start_server
from server_util import Api, api_fixture, diff_snapshots, err, ok, snapshot

HOST = "pds.test"


api = api_fixture()


# --- 1: the email check runs in linear time on bounded input --------------------------------


@pytest.mark.parametrize("size", [30_000, 1_000_000])
def test_huge_email_is_refused_at_once(api, size):
    """The one timing a test asserts (README: tests don't), because time is the attack:
    the old pattern took ~4 s at 30 KB (and hours at 1 MB) on the worker's event loop;
    an answer takes milliseconds now, so a second is a wide margin."""
    root = api.server.data_dir
    before = snapshot(root)
    # Dots then a space: the worst case of the old pattern (every dot a split point).
    for email in ("a@" + "." * size + " ", "a@b." + "a." * (size // 2) + "@",
                  "a" * size + "@example.com"):
        body = {"handle": "flood.test", "email": email, "password": "pw"}
        t0 = time.perf_counter()
        try:
            r = api.http.post("/xrpc/com.atproto.server.createAccount", json=body, timeout=10)
        except httpx.TimeoutException:
            pytest.fail(f"a {len(email)}-character email stalled the server")
        elapsed = time.perf_counter() - t0
        err(r, 400, "InvalidEmail")
        assert elapsed < 1.0, f"{len(email)}-character email took {elapsed:.2f}s"
    # The worker is free: others are answered at once.
    ok(api.get("com.atproto.server.describeServer"))
    assert diff_snapshots(before, snapshot(root)) == []


def test_emails_at_the_limits(api):
    local = "l" * 64
    domain = ("d" * 60 + ".") * 3 + "com"  # 64 + 1 + 186 = 251 characters
    acct = api.create_account("longmail", email=f"{local}@{domain}")
    assert acct.did
    for email in (f"{local}l@example.com",  # local part over 64
                  f"{local}@{'d' * 60}.{domain}",  # over 254 in all
                  "a@b..c", "a@.b.c", "a@b.c.", "a@b", "a.@b.c\n", "@b.c"):
        err(api.post("com.atproto.server.createAccount",
                     {"handle": "limits.test", "email": email, "password": "pw"}), 400,
            "InvalidEmail")


# --- 6: the service host name and reserved names ------------------------------------------------


@pytest.fixture(scope="module")
def host_api(tmp_path_factory):
    """A PDS whose host name (pds.test) is under its handle domain (.test)."""
    base = tmp_path_factory.mktemp("hostname")
    data, port = base / "data", free_port()
    subprocess.run([sys.executable, "-m", "pds.cli", "init", "--data-dir", str(data),
                    "--hostname", HOST, "--dev", "--handle-domains", ".test",
                    "--did-method", "web"], check=True, capture_output=True)
    server = start_server(data, port)
    client = Api(server)
    try:
        yield client
    finally:
        client.close()
        server.stop()
        assert "unhandled error" not in server.log()


def test_service_hostname_and_reserved_names_are_no_handles(host_api):
    api = host_api
    root = api.server.data_dir
    service_doc = root / "well-known" / HOST / "did.json"
    doc_before = service_doc.read_bytes()
    assert b"did:web:pds.test" in doc_before
    alice = ok(api.post("com.atproto.server.createAccount",
                        {"handle": "alice.test", "email": "alice@example.com",
                         "password": "pw"}))
    before = snapshot(root)

    for handle in (HOST, HOST.upper(), "admin.test", "support.test", "atp.test",
                   "bsky.test", "about.test", "www.test", "xrpc.test"):
        body = {"handle": handle, "email": f"x{len(handle)}@example.com", "password": "pw"}
        err(api.post("com.atproto.server.createAccount", body), 400,
            ("HandleNotAvailable", "InvalidHandle"))
        err(api.post("com.atproto.identity.updateHandle", {"handle": handle},
                     token=alice["accessJwt"]), 400, ("HandleNotAvailable", "InvalidHandle"))
    # Not even the admin may give the service's own name to an account.
    err(api.post("com.atproto.admin.updateAccountHandle",
                 {"did": alice["did"], "handle": HOST}, headers=api.admin_headers()), 400,
        ("HandleNotAvailable", "InvalidHandle"))
    assert diff_snapshots(before, snapshot(root)) == []
    assert service_doc.read_bytes() == doc_before
    assert not (root / "well-known" / HOST / "atproto-did").exists()
    # The service's own DID still resolves to its document.
    r = api.http.get("/.well-known/did.json", headers={"Host": HOST})
    assert r.status_code == 200 and r.json()["id"] == "did:web:pds.test"
    # An ordinary name still works.
    ok(api.post("com.atproto.identity.updateHandle", {"handle": "alice2.test"},
                token=alice["accessJwt"]))
