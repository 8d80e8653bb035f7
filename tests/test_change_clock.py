"""The change clock (pds/store/clock.py): reads served from a process's memory stay
current across processes, and a read inside `cached_only` never touches the disk.

Two `DataDir` objects over one directory each map the clock on their own, as two worker
processes do; the server test drives two real workers.
"""

from __future__ import annotations

import concurrent.futures
import os

import httpx
import pytest
from harness import running_server
from server_util import Api, ok

from pds.repo.signing_keys import generate_signing_key
from pds.store.accounts import AccountStore
from pds.store.clock import WouldBlock, cached_only
from pds.store.layout import DataDir
from pds.store.repo import Repo, Write

DID = "did:web:clock.test"
NOTE = "com.example.note"


def _repo(data: DataDir) -> Repo:
    return Repo(data.account(DID), data.tmp, DID, clock=data.clock)


@pytest.fixture
def two(tmp_path):
    """Two views of one data dir, as two processes have, and a repo in it."""
    (tmp_path / "tmp").mkdir()
    a, b = DataDir(tmp_path), DataDir(tmp_path)
    key = generate_signing_key()
    first = _repo(a)
    first.create(key, [Write("create", NOTE, "one", {"$type": NOTE, "text": "first"})])
    return a, b, key


def test_head_cached_in_one_process_follows_a_commit_in_another(two):
    a, b, key = two
    reader, writer = _repo(a), _repo(b)
    writer.key = key
    assert reader.get_record(f"{NOTE}/one") is not None
    for i in range(5):
        writer.apply_writes([Write("put", NOTE, "one", {"$type": NOTE, "text": f"v{i}"})])
        # The reader's HEAD is cached; only the clock tells it the HEAD moved.
        with cached_only():
            with pytest.raises(WouldBlock):
                reader.head()
        assert reader.get_record(f"{NOTE}/one") == writer.get_record(f"{NOTE}/one")
        assert reader.head() == writer.head()


def test_account_cached_in_one_process_follows_an_update_in_another(two):
    a, b, _ = two
    reader, writer = AccountStore(a), AccountStore(b)
    writer.put({"did": DID, "handle": "clock.test", "status": None})
    assert reader.get(DID)["status"] is None
    writer.update(DID, status="takendown")
    assert reader.get(DID)["status"] == "takendown"
    with cached_only():  # current again: served from memory
        assert reader.get(DID)["status"] == "takendown"
    writer.changed(DID)  # what deleting an account does after moving its directory
    with cached_only(), pytest.raises(WouldBlock):
        reader.get(DID)


def test_cached_only_reads_touch_no_file(two):
    a, _, _ = two
    repo = _repo(a)
    with cached_only(), pytest.raises(WouldBlock):
        repo.get_record(f"{NOTE}/one")  # cold: HEAD was never read in this view
    want = repo.get_record(f"{NOTE}/one")
    # Warm now: take the files away, and the read still answers, from memory alone.
    head = repo.root / "HEAD"
    saved = head.read_bytes()
    head.unlink()
    try:
        with cached_only():
            assert repo.get_record(f"{NOTE}/one") == want
        a.clock.tick()  # something changed: now a read must go to the disk, and fails
        with pytest.raises(Exception):  # noqa: B017 - whatever a missing HEAD raises
            repo.require_head()
    finally:
        head.write_bytes(saved)


def test_unmappable_clock_never_serves_from_cache(tmp_path):
    data = DataDir(tmp_path / "missing")  # no tmp/: the clock can't be mapped
    assert data.clock.stamp(0) is None and data.clock.stamp(1) is None
    data.clock.tick()  # harmless
    store = AccountStore(data)
    with cached_only(), pytest.raises(WouldBlock):
        store.get(DID)


@pytest.mark.slow
def test_every_write_is_read_back_at_once_through_either_worker(tmp_path):
    """Reads served inline from each worker's memory: a write answered by one worker is
    seen by the next read, whichever worker takes it, and a takedown at once."""
    with running_server(tmp_path, workers=2) as server, Api(server) as api:
        acct = api.create_account("clockwork")

        def fresh_get(rkey: str) -> httpx.Response:
            # A new connection per read: gunicorn hands it to either worker.
            with httpx.Client(base_url=server.url, timeout=30) as c:
                return c.get("/xrpc/com.atproto.repo.getRecord",
                             params={"repo": acct.did, "collection": NOTE, "rkey": rkey})

        for i in range(40):
            ok(api.create_record(acct, {"text": f"n{i}"}, NOTE, rkey="same") if i == 0 else
               api.post("com.atproto.repo.putRecord",
                        {"repo": acct.did, "collection": NOTE, "rkey": "same",
                         "record": {"$type": NOTE, "text": f"n{i}"}}, token=acct.access))
            with concurrent.futures.ThreadPoolExecutor(4) as pool:
                for r in pool.map(fresh_get, ["same"] * 4):
                    assert ok(r)["value"]["text"] == f"n{i}"
        ok(api.post("com.atproto.admin.updateSubjectStatus",
                    {"subject": {"$type": "com.atproto.admin.defs#repoRef", "did": acct.did},
                     "takedown": {"applied": True}}, headers=api.admin_headers()))
        for _ in range(8):
            r = fresh_get("same")
            assert r.status_code == 400 and r.json()["error"] == "RepoTakendown", r.text
        assert os.path.exists(server.data_dir / "tmp" / "CHANGES")


def test_a_commit_leaves_cached_account_records_current(two):
    """The clock's slots: a commit moves the HEADs' stamp only, so the account record
    every authenticated request reads is still served from memory after a write (one
    stamp for both sent every request after a commit to the disk, through a thread)."""
    a, b, key = two
    reader, writer_repo = AccountStore(a), _repo(b)
    writer_repo.key = key
    AccountStore(b).put({"did": DID, "handle": "clock.test", "status": None})
    assert reader.get(DID)["status"] is None
    repo_view = _repo(a)
    assert repo_view.head() is not None
    writer_repo.apply_writes([Write("put", NOTE, "one", {"$type": NOTE, "text": "again"})])
    with cached_only():
        assert reader.get(DID)["status"] is None  # the account: still from memory
        with pytest.raises(WouldBlock):
            repo_view.head()  # the HEAD moved: from the disk


def test_a_writer_keeps_its_own_new_head_and_commit_in_memory(two):
    """The commit a process just made is current for it until another change: its next
    commit (or read) needs neither HEAD nor the commit block from the disk."""
    a, _, key = two
    repo = _repo(a)
    repo.key = key
    result = repo.apply_writes([Write("put", NOTE, "one", {"$type": NOTE, "text": "mine"})])
    with cached_only():
        head = repo.head()
        assert head is not None and head.cid == result.cid and head.rev == result.rev
        assert repo.commit(head).data == result.data
    a.clock.tick()  # another process's change: back to the disk
    with cached_only(), pytest.raises(WouldBlock):
        repo.head()
