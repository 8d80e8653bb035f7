"""`pds verify DIR` on a stopped server's data dir: it passes on an intact one, and each
kind of planted damage (in a fresh copy each time) makes it exit 1 naming the problem:
a corrupted block, a missing blob, a truncated event, a HEAD naming a missing commit
(and, beyond those, a missing record block and a HEAD naming a block that is no commit).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness import run_pds, running_server
from server_util import Api, blob_ref, ok, seq_events

from pds.repo.codec import cid_for

pytestmark = pytest.mark.slow  # `pds verify` run as a command on damaged copies

NOTE = "com.example.note"


@dataclass
class Built:
    data: Path
    did: str
    blob_cid: str
    record_cid: str   # the CID of a record block of `did`
    head_line: str    # `did`'s HEAD file as written


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    """A data dir with two accounts, records, blobs and events, its server stopped."""
    base = tmp_path_factory.mktemp("verify")
    with running_server(base, wait=60) as server, Api(server) as api:
        a, b = api.create_account("vera"), api.create_account("vince")
        for i in range(12):
            ok(api.create_record(a if i % 2 else b, {"text": f"note {i}"}, NOTE))
        up = ok(api.post("com.atproto.repo.uploadBlob", content=os.urandom(5000),
                         token=a.access, headers={"Content-Type": "image/png"}))["blob"]
        rec = ok(api.create_record(a, {"image": blob_ref(up)}, "com.example.pic", rkey="pic"))
        ok(api.post("com.atproto.repo.deleteRecord", {"repo": b.did, "collection": NOTE,
                                                      "rkey": api.list_records(b.did)[0]["uri"]
                                                      .rsplit("/", 1)[1]}, token=b.access))
    data = server.data_dir
    head = (data / "accounts" / a.did / "HEAD").read_text()
    yield Built(data, a.did, up["ref"]["$link"], rec["cid"], head)


@pytest.fixture
def copy(built: Built, tmp_path: Path) -> Path:
    """A fresh copy of the built data dir to damage."""
    dest = tmp_path / "copy"
    shutil.copytree(built.data, dest, symlinks=True)
    return dest


def verify(path: Path) -> tuple[int, list[str], str]:
    res = run_pds("verify", "--data-dir", str(path), check=False)
    problems = [ln[len("PROBLEM "):] for ln in res.stdout.splitlines()
                if ln.startswith("PROBLEM ")]
    return res.returncode, problems, res.stdout


def assert_found(path: Path, *words: str) -> list[str]:
    """verify exits 1 and some PROBLEM line contains every one of `words`."""
    code, problems, out = verify(path)
    assert code == 1, out
    assert any(all(w in p for w in words) for p in problems), (words, out)
    assert re.search(r": (1 problem|[0-9]+ problems)$", out.strip().splitlines()[-1]), out
    return problems


def block_path(data: Path, did: str, cid: str) -> Path:
    return data / "accounts" / did / "blocks" / cid[-2:] / cid


def test_intact_data_dir_verifies(built: Built) -> None:
    code, problems, out = verify(built.data)
    assert code == 0 and not problems, out
    summary = out.strip().splitlines()[-1]
    assert summary.startswith("2 accounts,") and summary.endswith(": OK"), summary
    # Numbers that show it looked at everything: blocks, records, the blob, the events.
    counts = dict((w.split()[1].rstrip(",").rstrip("s"), int(w.split()[0]))
                  for w in summary.split(":")[0].split(", "))
    assert counts["block"] > 20 and counts["record"] >= 12 and counts["blob"] == 1, counts
    assert counts["event"] >= 16, counts


def test_corrupted_block(built: Built, copy: Path) -> None:
    path = block_path(copy, built.did, built.record_cid)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))
    assert_found(copy, built.did, built.record_cid, "does not match its hash")


def test_missing_blob(built: Built, copy: Path) -> None:
    cid = built.blob_cid
    blob = copy / "accounts" / built.did / "blobs" / cid[-2:] / cid
    assert blob.exists() and blob.with_name(cid + ".json").exists()
    blob.unlink()
    problems = assert_found(copy, built.did, cid, "missing")
    assert any("com.example.pic/pic" in p for p in problems), problems


def test_truncated_event(built: Built, copy: Path) -> None:
    events = seq_events(copy)
    seq = next(s for s, h, _p in reversed(events) if h.get("t") == "#commit")
    from pds.store.seqlog import EventLog
    path = EventLog(copy / "seq", copy / "tmp").path(seq)
    size = path.stat().st_size
    os.truncate(path, size // 2)
    assert_found(copy, f"event {seq}", "unreadable")


def test_head_pointing_at_missing_commit(built: Built, copy: Path) -> None:
    head = copy / "accounts" / built.did / "HEAD"
    _cid, rev = built.head_line.split()
    missing = cid_for(b"not a block of this repo").encode()
    assert not block_path(copy, built.did, missing).exists()
    head.write_text(f"{missing} {rev}\n")
    assert_found(copy, built.did, "HEAD points at missing commit", missing)


def test_head_pointing_at_a_block_that_is_no_commit(built: Built, copy: Path) -> None:
    head = copy / "accounts" / built.did / "HEAD"
    _cid, rev = built.head_line.split()
    head.write_text(f"{built.record_cid} {rev}\n")
    assert_found(copy, built.did, "HEAD")


def test_missing_record_block(built: Built, copy: Path) -> None:
    block_path(copy, built.did, built.record_cid).unlink()
    assert_found(copy, built.did, built.record_cid, "missing")


def test_damaged_export_snapshot(built: Built, copy: Path) -> None:
    from pds.store.layout import SNAPSHOT
    from pds.store.repo import Repo

    acct = copy / "accounts" / built.did
    repo = Repo(acct, copy / "tmp", built.did)
    b"".join(repo.export_car())  # writes the snapshot
    code, problems, out = verify(copy)
    assert code == 0 and not problems, out
    path = acct / SNAPSHOT
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 3] ^= 0x01  # inside the CAR part: a record or node byte
    path.write_bytes(bytes(raw))
    assert_found(copy, built.did, "export snapshot", "damaged")


def test_event_inside_a_restores_jump(built: Built, copy: Path) -> None:
    """seq/FLOOR says the seqs between a restore's head and its floor were never used: an
    event there is a problem (a restore's seq went back after all)."""
    from pds.store.seqlog import EventLog
    log = EventLog(copy / "seq", copy / "tmp")
    head = log.head()
    floor = log.raise_floor(head + 1000)
    code, problems, out = verify(copy)
    assert code == 0 and not problems, out
    stray = head + 500
    log.path(stray).parent.mkdir(exist_ok=True)
    log.path(stray).write_bytes(log.read(head) or b"")
    assert_found(copy, f"event {stray}", "inside the jump", f"{head} to {floor}")
