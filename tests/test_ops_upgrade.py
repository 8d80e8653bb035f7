"""Upgrades: the data dir's FORMAT file. `pds serve` refuses a data dir made by a newer
version (FORMAT above what it knows) with a clear message and touches nothing; it migrates
one made before FORMAT existed (no FORMAT file: version 0) in place, and serves it.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import httpx
from harness import free_port, init_data_dir, start_server
from ops_util import clean_env, pds_command
from server_util import Api, ok

from pds.store.format import CURRENT

NOTE = "com.example.note"


def serve_once(data: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """`pds serve` expected to exit by itself (it must not start serving)."""
    port = free_port()
    res = subprocess.run([*pds_command(), "serve", "--data-dir", str(data), "--bind",
                          f"127.0.0.1:{port}", "--workers", "1"],
                         capture_output=True, text=True, timeout=timeout, env=clean_env())
    return res


def test_newer_format_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    init_data_dir(data, free_port(), did_method="web")
    assert (data / "FORMAT").read_text().strip() == str(CURRENT)
    (data / "FORMAT").write_text("99\n")
    before = sorted(p.relative_to(data) for p in data.rglob("*"))
    res = serve_once(data)
    assert res.returncode != 0, res.stdout + res.stderr
    message = res.stderr + res.stdout
    assert "format 99" in message and "newer" in message, message
    assert "Traceback" not in message, message
    # Nothing was touched: no migration, no recovery, no worker.
    assert (data / "FORMAT").read_text() == "99\n"
    assert sorted(p.relative_to(data) for p in data.rglob("*")) == before


def test_unreadable_format_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    init_data_dir(data, free_port(), did_method="web")
    (data / "FORMAT").write_text("one\n")
    res = serve_once(data)
    assert res.returncode != 0
    assert "FORMAT" in res.stderr and "not a number" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr, res.stderr


def test_data_dir_without_format_is_migrated_and_served(tmp_path: Path) -> None:
    port = free_port()
    data = tmp_path / "data"
    init_data_dir(data, port, did_method="web")
    server = start_server(data, port, workers=1, wait=60)
    try:
        api = Api(server)
        acct = api.create_account("oldie")
        rec = ok(api.create_record(acct, {"text": "from the old version"}, NOTE, rkey="old"))
        api.close()
    finally:
        server.stop()
    # What an older pds left: no FORMAT, and no directories it did not use yet.
    (data / "FORMAT").unlink()
    for d in ("invites", "emails"):
        for f in (data / d).iterdir():
            f.unlink()
        (data / d).rmdir()

    port = free_port()
    server = start_server(data, port, workers=2, wait=60)
    try:
        assert (data / "FORMAT").read_text().strip() == str(CURRENT) == "1"
        for d in ("invites", "emails", "seq", "tmp", "well-known", "accounts", "handles"):
            assert (data / d).is_dir(), d
        assert "migrated the data dir from format 0 to 1" in server.log()
        got = httpx.get(f"{server.url}/xrpc/com.atproto.repo.getRecord",
                        params={"repo": acct.did, "collection": NOTE, "rkey": "old"},
                        timeout=60)
        assert got.status_code == 200 and got.json()["cid"] == rec["cid"], got.text
        api = Api(server)
        session = ok(api.post("com.atproto.server.createSession",
                              {"identifier": acct.handle, "password": acct.password}))
        ok(api.post("com.atproto.repo.createRecord",
                    {"repo": acct.did, "collection": NOTE,
                     "record": {"$type": NOTE, "text": "from the new version"}},
                    token=session["accessJwt"]))
        api.close()
    finally:
        server.stop()
    log = server.log()
    assert "Traceback" not in log, log[-4000:]
    # A second start finds nothing to migrate.
    mtime = os.stat(data / "FORMAT").st_mtime_ns
    server = start_server(data, free_port(), workers=1, wait=60)
    server.stop()
    assert os.stat(data / "FORMAT").st_mtime_ns == mtime
    assert "migrated the data dir" not in server.log()
