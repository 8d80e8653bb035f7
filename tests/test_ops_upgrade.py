"""Upgrades: the data dir's FORMAT file. `pds serve` refuses a data dir made by a newer
version (FORMAT above what it knows) with a clear message and touches nothing; it migrates
one made before FORMAT existed (no FORMAT file: version 0) in place, and serves it.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import httpx
import pytest
from harness import free_port, init_data_dir, run_pds, running_server, serving
from server_util import Api, ok

from pds.store.format import CURRENT

pytestmark = pytest.mark.slow  # servers started on old data dirs

NOTE = "com.example.note"


def serve_once(data: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """`pds serve` expected to exit by itself (it must not start serving)."""
    return run_pds("serve", "--data-dir", str(data), "--bind", f"127.0.0.1:{free_port()}",
                   "--workers", "1", check=False, timeout=timeout)


def test_newer_format_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    init_data_dir(data, free_port())
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
    init_data_dir(data, free_port())
    (data / "FORMAT").write_text("one\n")
    res = serve_once(data)
    assert res.returncode != 0
    assert "FORMAT" in res.stderr and "not a number" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr, res.stderr


def test_data_dir_without_format_is_migrated_and_served(tmp_path: Path) -> None:
    with running_server(tmp_path, workers=1, wait=60) as server, Api(server) as api:
        data = server.data_dir
        acct = api.create_account("oldie")
        rec = ok(api.create_record(acct, {"text": "from the old version"}, NOTE, rkey="old"))
    # What an older pds left: no FORMAT, and no directories it did not use yet.
    (data / "FORMAT").unlink()
    for d in ("invites", "emails"):
        for f in (data / d).iterdir():
            f.unlink()
        (data / d).rmdir()

    with serving(data, workers=2, wait=60) as server, Api(server) as api:
        assert (data / "FORMAT").read_text().strip() == str(CURRENT) == "1"
        for d in ("invites", "emails", "seq", "tmp", "well-known", "accounts", "handles"):
            assert (data / d).is_dir(), d
        assert "migrated the data dir from format 0 to 1" in server.log()
        got = httpx.get(f"{server.url}/xrpc/com.atproto.repo.getRecord",
                        params={"repo": acct.did, "collection": NOTE, "rkey": "old"},
                        timeout=60)
        assert got.status_code == 200 and got.json()["cid"] == rec["cid"], got.text
        session = ok(api.post("com.atproto.server.createSession",
                              {"identifier": acct.handle, "password": acct.password}))
        ok(api.post("com.atproto.repo.createRecord",
                    {"repo": acct.did, "collection": NOTE,
                     "record": {"$type": NOTE, "text": "from the new version"}},
                    token=session["accessJwt"]))
    # A second start finds nothing to migrate.
    mtime = os.stat(data / "FORMAT").st_mtime_ns
    with serving(data, workers=1, wait=60) as server:
        pass
    assert os.stat(data / "FORMAT").st_mtime_ns == mtime
    assert "migrated the data dir" not in server.log()
