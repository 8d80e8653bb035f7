"""What each request no longer redoes (issue 16), in process: a session token verified
once per worker, with its expiry still checked on every use."""

from __future__ import annotations

import os
import signal
import time

import jwt
import pytest
from server_util import app_context

from pds.errors import AuthFailed, InvalidInput
from pds.services.auth import SCOPE_ACCESS

DID = "did:web:alice.test"


def _token(ctx, exp: int, typ: str = "at+jwt", secret: str | None = None) -> str:
    claims = {"scope": SCOPE_ACCESS, "sub": DID, "aud": ctx.settings.service_did,
              "iat": int(time.time()), "exp": exp}
    return jwt.encode(claims, secret or ctx.settings.jwt_secret, algorithm="HS256",
                      headers={"typ": typ})


def test_a_session_token_is_verified_once_and_its_expiry_on_every_use(tmp_path):
    ctx = app_context(tmp_path / "data")
    token = _token(ctx, int(time.time()) + 2)
    first = ctx.auth._bearer("Bearer " + token, refresh=False)
    again = ctx.auth._bearer("Bearer " + token, refresh=False)
    assert again.did == DID
    assert again.payload is first.payload  # remembered: not parsed nor verified again
    time.sleep(max(0.0, first.payload["exp"] - time.time()) + 0.05)
    with pytest.raises(InvalidInput) as e:
        ctx.auth._bearer("Bearer " + token, refresh=False)
    assert e.value.error == "ExpiredToken"


def test_a_remembered_token_vouches_for_no_other(tmp_path):
    ctx = app_context(tmp_path / "data")
    token = _token(ctx, int(time.time()) + 600)
    ctx.auth._bearer("Bearer " + token, refresh=False)
    head, payload, sig = token.split(".")
    forged = f"{head}.{payload}.{sig[:-2]}{'AA' if sig[-2:] != 'AA' else 'BB'}"
    with pytest.raises(AuthFailed):
        ctx.auth._bearer("Bearer " + forged, refresh=False)
    other = _token(ctx, int(time.time()) + 600, secret="x" * 32)
    with pytest.raises(AuthFailed):
        ctx.auth._bearer("Bearer " + other, refresh=False)
    # An access token remembered as verified is still no refresh token.
    with pytest.raises(InvalidInput) as e:
        ctx.auth._bearer("Bearer " + token, refresh=True)
    assert e.value.error == "InvalidToken"


def _modules_after(code: str, tmp_path) -> set[str]:
    """The top-level modules a fresh interpreter has imported after running `code`."""
    import subprocess
    import sys
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys\nprint(' '.join(sorted(sys.modules)))"],
        capture_output=True, text=True, check=True, cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(__import__("pathlib").Path(
            __file__).resolve().parents[1])})
    return set(out.stdout.split())


def test_the_gunicorn_master_holds_no_store_nor_app_modules(tmp_path):
    """What `pds serve` imports in the process that stays the gunicorn master: the
    recovery runs in a forked child, the app is built in each worker."""
    mods = _modules_after("import pds.cli, pds.server", tmp_path)
    assert "pds.server" in mods
    for heavy in ("pds.store.repo", "pds.services.context", "cbrrr", "coincurve", "httpx",
                  "falcon", "cryptography"):
        assert heavy not in mods, heavy


def test_the_gunicorn_master_loads_no_event_loop(tmp_path):
    """The master takes its worker class from the configuration as gunicorn's arbiter
    does, without asyncio and gunicorn's ASGI worker, which are imported after the fork
    (`server.LateAsgiWorker`); nor does `pds serve`'s CLI import asyncio."""
    code = ("import pds.cli, pds.server\nfrom pds.config import Settings\n"
            "app = pds.server.PdsApplication(Settings(data_dir='d', hostname='localhost:1',"
            " dev=True, jwt_secret='s' * 32))\n"
            "assert app.cfg.worker_class is pds.server.LateAsgiWorker")
    mods = _modules_after(code, tmp_path)
    for heavy in ("asyncio", "gunicorn.workers.gasgi", "gunicorn.asgi.protocol", "uvloop"):
        assert heavy not in mods, heavy


def _worker_modules(tmp_path):
    """The modules a worker has imported once its app is built, before any request."""
    code = ("from pds.config import Settings\nfrom pds.server import build_app\n"
            f"build_app(Settings(data_dir={str(tmp_path / 'd')!r}, hostname='localhost:1',"
            " dev=True, jwt_secret='s' * 32))")
    (tmp_path / "d" / "tmp").mkdir(parents=True)
    return _modules_after(code, tmp_path)


def test_a_worker_imports_dnspython_only_for_a_dns_lookup(tmp_path):
    mods = _worker_modules(tmp_path)
    assert "pds.services.context" in mods and "falcon" in mods
    assert "dns" not in mods


def test_a_worker_imports_httpx_smtplib_and_nacl_only_when_it_uses_them(tmp_path):
    """Outbound HTTP, SMTP and password hashing are rare in a worker (did:web accounts,
    no relays, no mail configured, sessions that last): their libraries (~2.5 MB of httpx
    and what it pulls in, ~1.2 MB of PyNaCl) are imported at the first use, not with the
    app (bench/README.md, Memory)."""
    mods = _worker_modules(tmp_path)
    assert "pds.services.context" in mods and "pds.services.mailer" in mods
    for lazy in ("httpx", "httpcore", "smtplib", "nacl"):
        assert lazy not in mods, lazy


def test_a_worker_imports_pyjwt_and_cryptography_only_for_oauth_or_p256(tmp_path):
    """Session tokens are HS256 on the standard library (`hs256`), secp256k1 is
    coincurve's: PyJWT, which imports all of cryptography (~8.4 MB), and cryptography
    itself wait for an OAuth client or a P-256 key (bench/README.md, Memory)."""
    mods = _worker_modules(tmp_path)
    assert "pds.services.auth" in mods and "pds.services.oauth_dpop" in mods
    assert "pds.repo.signing_keys" in mods
    assert "jwt" not in mods and "cryptography" not in mods


def test_outbound_errors_are_caught_before_and_after_httpx_is_imported():
    """`fetch.http_errors` names httpx's errors once httpx is loaded (only then can one
    be raised), and always what the caller adds."""
    import sys

    import httpx

    from pds.services import fetch
    assert fetch.http_errors(TimeoutError) == (httpx.HTTPError, TimeoutError)
    saved = sys.modules.pop("httpx")
    try:
        assert fetch.http_errors(TimeoutError) == (TimeoutError,)
        assert fetch.http_errors() == ()
    finally:
        sys.modules["httpx"] = saved


@pytest.mark.slow
def test_workers_serve_on_uvloop(tmp_path):
    """The serving stack chosen by measurement (bench/README.md): each gunicorn worker
    runs uvloop, a declared dependency, and gunicorn's Python HTTP parser (its C one,
    where installed, dropped connections under uvloop); the master, which serves
    nothing, maps neither."""
    import httpx
    from harness import children, running_server

    with running_server(tmp_path, workers=2) as server:
        for _ in range(10):  # new connections: a worker loads the parser at its first
            assert httpx.get(server.url + "/xrpc/_health").status_code == 200

        def maps(pid: int) -> str:
            return open(f"/proc/{pid}/maps").read()

        workers = children(server.proc.pid)
        assert len(workers) >= 2
        assert all("uvloop/loop" in maps(pid) for pid in workers)
        assert not any("gunicorn_h1c" in maps(pid) for pid in workers)
        assert "uvloop" not in maps(server.proc.pid)
        # Nor asyncio: gunicorn's ASGI worker is imported after the fork (LateAsgiWorker).
        assert all("_asyncio" in maps(pid) for pid in workers)
        assert "_asyncio" not in maps(server.proc.pid)


def _wait_for(pred, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError("timed out")


@pytest.mark.slow
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to pin to")
def test_each_worker_keeps_to_its_own_cpu_and_a_replacement_takes_the_free_one(tmp_path):
    """Workers are pinned one to a CPU (pds/server.py `_pick_cpu`: a hand-off to a
    worker's thread pool then stays on one CPU); a worker gunicorn replaces gets the CPU
    the dead one left, not one a live worker already has. The master is not pinned."""
    from harness import children, running_server

    allowed = os.sched_getaffinity(0)
    with running_server(tmp_path, workers=2) as server:
        def pinned() -> dict[int, set[int]]:
            got = {pid: os.sched_getaffinity(pid) for pid in children(server.proc.pid)}
            return got if len(got) == 2 and all(len(c) == 1 for c in got.values()) else {}

        first = _wait_for(pinned)
        assert len(set().union(*first.values())) == 2  # two different CPUs
        assert os.sched_getaffinity(server.proc.pid) == allowed
        victim, survivor = sorted(first)
        os.kill(victim, signal.SIGKILL)
        after = _wait_for(lambda: (got := pinned()) and victim not in got and got)
        assert after[survivor] == first[survivor]
        (new,) = set(after) - {survivor}
        assert after[new] == first[victim]


@pytest.mark.slow
def test_pin_workers_off_leaves_workers_on_every_cpu(tmp_path):
    from harness import children, running_server

    allowed = os.sched_getaffinity(0)
    with running_server(tmp_path, workers=2, env={"PDS_PIN_WORKERS": "false"}) as server:
        workers = _wait_for(lambda: len(got := children(server.proc.pid)) == 2 and got)
        assert all(os.sched_getaffinity(pid) == allowed for pid in workers)


@pytest.mark.slow
def test_workers_serving_sessions_and_writes_never_load_cryptography(tmp_path):
    """Sign-up, login, refresh, writes (signed with secp256k1 keys), reads and a
    service token: all of it without cryptography's Rust module in any process."""
    from harness import children, running_server
    from server_util import Api, ok

    with running_server(tmp_path, workers=2) as server, Api(server) as api:
        for _ in range(3):  # accounts land on both workers
            acct = api.create_account()
            ok(api.post("com.atproto.server.createSession",
                        {"identifier": acct.handle, "password": acct.password}))
            refreshed = ok(api.post("com.atproto.server.refreshSession", token=acct.refresh))
            for i in range(4):
                uri = ok(api.create_record(acct, {"text": f"n{i}"}))["uri"]
                ok(api.get("com.atproto.repo.getRecord", repo=acct.did,
                           collection="com.example.note", rkey=uri.rsplit("/", 1)[1]))
            ok(api.get("com.atproto.server.getSession", token=refreshed["accessJwt"]))
            ok(api.get("com.atproto.server.getServiceAuth", token=acct.access,
                       aud="did:web:feed.test"))
        for pid in [server.proc.pid, *children(server.proc.pid)]:
            assert "cryptography" not in open(f"/proc/{pid}/maps").read(), pid


def test_start_up_preparation_runs_in_a_child_and_its_failure_reaches_the_caller():
    """`pds serve` migrates and recovers in a forked child (the master stays lean): the
    work happens, and what it raises is raised in the caller, as if run in place."""
    import os

    from pds.server import in_child

    r, w = os.pipe()

    def works(settings):
        os.write(w, str(os.getpid()).encode())

    in_child(works, None)  # type: ignore[arg-type]
    os.close(w)
    child = int(os.read(r, 64))
    os.close(r)
    assert child != os.getpid()

    class Odd(Exception):
        def __init__(self, a, b):
            super().__init__(f"{a}/{b}")

    def fails(settings):
        raise Odd(1, 2)  # pickles, but can't be rebuilt from its args

    with pytest.raises(RuntimeError, match="Odd: 1/2"):
        in_child(fails, None)  # type: ignore[arg-type]

    def exits(settings):
        raise SystemExit("data format 9, newer than this pds understands")

    with pytest.raises(SystemExit, match="newer than this pds"):
        in_child(exits, None)  # type: ignore[arg-type]
