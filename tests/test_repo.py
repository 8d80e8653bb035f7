"""Repo: the one write path, reads, exports, journal recovery, cross-process locking."""

import multiprocessing
import os

import pytest

from pds.repo.car import read_car_blocks
from pds.repo.codec import cid_for, encode
from pds.repo.commit import parse_commit
from pds.repo.mst import MST
from pds.repo.mst_node import NodeLoader
from pds.repo.signing_keys import generate_signing_key
from pds.repo.syntax import is_valid_tid
from pds.store.repo import (
    InvalidSwap,
    RecordExists,
    RecordNotFound,
    Repo,
    RepoError,
    Write,
)

DID = "did:plc:abcdefghijklmnopqrstuvwx"
POST = "app.bsky.feed.post"


def post(text):
    return {"$type": POST, "text": text, "createdAt": "2024-01-01T00:00:00.000Z"}


@pytest.fixture
def key():
    return generate_signing_key()


@pytest.fixture
def repo(tmp_path, key):
    (tmp_path / "tmp").mkdir()
    r = Repo(tmp_path / "acct", tmp_path / "tmp", DID)
    r.create(key)
    return r


def test_create_gives_signed_empty_commit(repo, key):
    head = repo.head()
    commit = repo.commit()
    assert commit.version == 3 and commit.prev is None and commit.did == DID
    assert commit.verify(key.public_key())
    assert is_valid_tid(head.rev) and commit.rev == head.rev
    assert len(repo.tree()) == 0
    with pytest.raises(RepoError):
        repo.create(key)


def test_apply_writes_result_and_ops(repo, key):
    before = repo.head()
    old_data = repo.commit().data
    res = repo.apply_writes([Write("create", POST, "a1", post("one")),
                             Write("create", POST, "a2", post("two"))])
    assert res.since == before.rev and res.rev > before.rev
    assert res.prev_data == old_data
    assert repo.head().cid == res.cid
    record_cid = cid_for(encode(post("one")))
    assert [(o.action, o.path, o.cid, o.prev) for o in res.ops][0] == (
        "create", f"{POST}/a1", record_cid, None)
    # The slice carries the commit, the records and the new root.
    assert res.cid in res.blocks and record_cid in res.blocks
    commit = parse_commit(res.blocks[res.cid])
    assert commit.data == res.data and commit.verify(key.public_key())

    upd = repo.apply_writes([Write("update", POST, "a1", post("uno"))])
    assert upd.ops[0].prev == record_cid and upd.ops[0].action == "update"
    dele = repo.apply_writes([Write("delete", POST, "a2")])
    assert dele.ops[0].cid is None and dele.ops[0].prev == cid_for(encode(post("two")))
    assert repo.get_record(f"{POST}/a2") is None
    cid, data = repo.get_record(f"{POST}/a1")
    assert data == encode(post("uno")) and cid == cid_for(data)


def test_commit_slices_invert_to_prev_data(repo):
    """Every commit's slice (blocks + proof) alone inverts its ops to prevData."""
    for i in range(60):
        repo.apply_writes([Write("create", POST, f"k{i:03d}", post(str(i)))])
    writes = [Write("delete", POST, "k010"), Write("update", POST, "k020", post("x")),
              Write("create", POST, "k999", post("new"))]
    res = repo.apply_writes(writes)
    blocks = {**res.blocks, **res.proof}
    _root, car_blocks = read_car_blocks(res.car_slice())
    assert car_blocks == blocks and _root == res.cid
    inv = MST(NodeLoader(blocks.__getitem__), res.data)
    for op in reversed(res.ops):
        inv = inv.delete(op.path) if op.prev is None else inv.put(op.path, op.prev)
    assert inv.cid == res.prev_data


def test_errors_change_nothing(repo):
    repo.apply_writes([Write("create", POST, "a", post("a"))])
    head = repo.head()
    cases = [
        (RecordExists, [Write("create", POST, "a", post("again"))]),
        (RecordNotFound, [Write("update", POST, "zz", post("x"))]),
        (RecordNotFound, [Write("delete", POST, "zz")]),
        (InvalidSwap, [Write("update", POST, "a", post("x"), swap=cid_for(b"nope"))]),
        (InvalidSwap, [Write("update", POST, "a", post("x"), swap=None)]),
        (RepoError, [Write("create", POST, "bad key!", post("x"))]),
        (RepoError, [Write("create", "not an nsid", "a", post("x"))]),
        (RepoError, [Write("create", POST, "..", post("x"))]),
        (RepoError, [Write("create", POST, "f", {"$type": POST, "n": 1.5})]),
        (RepoError, [Write("create", POST, "d", post("1")), Write("update", POST, "d", post("2"))]),
        # A valid write followed by a bad one: the whole batch is refused.
        (RecordNotFound, [Write("create", POST, "b", post("b")), Write("delete", POST, "q")]),
    ]
    for exc, writes in cases:
        with pytest.raises(exc):
            repo.apply_writes(writes)
        assert repo.head() == head
    with pytest.raises(InvalidSwap):
        repo.apply_writes([Write("create", POST, "c", post("c"))], swap_commit=cid_for(b"x"))
    assert repo.head() == head
    current = repo.tree().get(f"{POST}/a")
    ok = repo.apply_writes([Write("update", POST, "a", post("x"), swap=current)],
                           swap_commit=head.cid)
    assert ok.since == head.rev


def test_list_records_pagination_both_ways(repo):
    rkeys = [f"r{i:03d}" for i in range(25)]
    repo.apply_writes([Write("create", POST, k, post(k)) for k in rkeys])
    repo.apply_writes([Write("create", "app.bsky.feed.like", "x", {"$type": "app.bsky.feed.like"})])
    seen, cursor = [], None
    while True:
        page = repo.list_records(POST, limit=7, cursor=cursor)
        if not page:
            break
        seen += [r for r, _, _ in page]
        cursor = page[-1][0]
    assert seen == sorted(rkeys, reverse=True)
    seen, cursor = [], None
    while True:
        page = repo.list_records(POST, limit=10, cursor=cursor, reverse=True)
        if not page:
            break
        seen += [r for r, _, _ in page]
        cursor = page[-1][0]
    assert seen == rkeys
    assert [r for r, _, _ in repo.list_records("app.bsky.feed.like")] == ["x"]
    assert repo.list_records("app.bsky.feed.repost") == []


def test_revs_strictly_increase(repo):
    revs = [repo.head().rev]
    for i in range(50):
        revs.append(repo.apply_writes([Write("create", POST, f"t{i}", post("t"))]).rev)
    assert revs == sorted(revs) and len(set(revs)) == len(revs)


def test_export_round_trip_and_since(repo, key):
    for i in range(40):
        repo.apply_writes([Write("create", POST, f"e{i:02d}", post(str(i)))])
    mid = repo.head().rev
    for i in range(5):
        repo.apply_writes([Write("create", POST, f"late{i}", post("late"))])
    repo.apply_writes([Write("delete", POST, "e00")])
    full = b"".join(repo.export_car())
    root, blocks = read_car_blocks(full)
    assert root == repo.head().cid
    # Commit first, then each node followed by its records.
    first = next(iter(blocks))
    assert first == root
    # The export alone holds the whole signed repository.
    commit = parse_commit(blocks[root])
    assert commit.verify(key.public_key())
    tree = MST(NodeLoader(blocks.__getitem__), commit.data)
    assert tree.validate() == 44
    assert dict(tree.items()) == dict(repo.tree().items())
    assert all(cid in blocks for _path, cid in tree.items())

    # since: only what changed after `mid` (plus the commit), yet a valid slice.
    _r, since_blocks = read_car_blocks(b"".join(repo.export_car(since=mid)))
    assert _r == root and len(since_blocks) < len(blocks)
    for i in range(5):
        assert repo.tree().get(f"{POST}/late{i}") in since_blocks


def test_journal_replay_after_lost_files(repo):
    """A crash after the journal fsync but before the block files and HEAD reached the
    disk: recovery rebuilds them from the journal."""
    res = repo.apply_writes([Write("create", POST, "j", post("journal"))])
    assert repo.journal.revs()[-1] == res.rev
    # Simulate the power cut: the block files and the new HEAD never made it.
    for cid in res.blocks:
        os.unlink(repo.blocks.path(cid))
    (repo.root / "HEAD").write_text(f"{res.since} x\n".replace(f"{res.since} x", "junk"))
    (repo.root / "HEAD").unlink()
    assert repo.recover() >= 1
    assert repo.head().cid == res.cid
    assert repo.get_record(f"{POST}/j")[1] == encode(post("journal"))
    assert repo.journal.revs() == []  # checkpointed


def test_torn_journal_entry_is_dropped(repo):
    head = repo.head()
    # A torn entry of the older one-file-per-entry layout, and a torn appended entry.
    repo.journal.legacy.mkdir(exist_ok=True)
    (repo.journal.legacy / "3zzzzzzzzzzzz.car").write_bytes(b"\x0a\xa2garbage")
    with open(repo.journal.path, "ab") as f:
        f.write(b"PJ1\n\x40\x00\x00\x00\x00\x00\x00\x003zzzzzzzzzzzz\n\x0a")
    assert repo.journal.pending()
    repo.recover()
    assert repo.head() == head and repo.journal.revs() == []
    assert not repo.journal.pending()
    assert os.listdir(repo.journal.legacy) == []


def test_recovery_mends_short_blocks_and_an_empty_head(repo):
    """A power cut can leave files written without fsync empty or short: block files of
    the last commits (created in place) and HEAD. Recovery rewrites them from the journal;
    an empty HEAD falls back to the revs log, then moves forward."""
    first = repo.apply_writes([Write("create", POST, "s1", post("one"))])
    repo.checkpoint()
    res = repo.apply_writes([Write("create", POST, "s2", post("two"))])
    rec_cid = res.ops[0].cid
    for cid in res.blocks:
        with open(repo.blocks.path(cid), "r+b") as f:
            f.truncate(3)
    with pytest.raises(KeyError):
        repo.blocks.get_checked(rec_cid)  # what getBlocks uses: a short block is not served
    (repo.root / "HEAD").write_bytes(b"")
    with repo.lock():
        assert repo.recovery_head().cid == res.cid  # from the revs log: its block exists
    assert repo.head().cid == res.cid  # and HEAD is written again
    assert repo.recover() == 1
    assert repo.head().cid == res.cid and repo.head().rev == res.rev
    for cid, data in res.blocks.items():
        assert repo.blocks.path(cid).read_bytes() == data
    assert repo.blocks.get_checked(rec_cid) == encode(post("two"))
    assert repo.get_record(f"{POST}/s1")[0] == first.ops[0].cid


def test_head_replacement_keeps_its_inodes(repo):
    """HEAD is exchanged with HEAD.next: commits allocate no inode for it (and free none)."""
    repo.apply_writes([Write("create", POST, "h0", post("zero"))])
    inodes = {os.stat(repo.root / "HEAD").st_ino, os.stat(repo.root / "HEAD.next").st_ino}
    for i in range(1, 4):
        res = repo.apply_writes([Write("create", POST, f"h{i}", post(str(i)))])
        assert repo.head().cid == res.cid
        assert {os.stat(repo.root / "HEAD").st_ino,
                os.stat(repo.root / "HEAD.next").st_ino} == inodes


def _writer(root, tmp, keybytes, tag, n):
    from pds.repo.signing_keys import load_private_key
    r = Repo(root, tmp, DID, load_private_key(keybytes))
    for i in range(n):
        r.apply_writes([Write("create", POST, f"{tag}{i:03d}", post(tag))])


def test_two_processes_one_repo_linear_history(repo, key, tmp_path):
    from pds.repo.signing_keys import export_private_key
    kb = export_private_key(key)
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(repo.root, repo.tmp, kb, t, 30)) for t in "pq"]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        assert p.exitcode == 0
    items = dict(repo.tree().items())
    assert len(items) == 60
    revs = [line.split()[0] for line in (repo.root / "revs").read_text().splitlines()]
    assert revs == sorted(revs) and len(set(revs)) == len(revs) == 61


def test_put_creates_then_updates_under_the_lock(repo):
    first = repo.apply_writes([Write("put", POST, "p", post("one"))])
    assert first.ops[0].action == "create" and first.ops[0].prev is None
    second = repo.apply_writes([Write("put", POST, "p", post("two"))])
    assert second.ops[0].action == "update" and second.ops[0].prev == first.ops[0].cid
    with pytest.raises(InvalidSwap):
        repo.apply_writes([Write("put", POST, "p", post("three"), swap=None)])
