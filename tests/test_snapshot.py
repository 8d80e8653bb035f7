"""Export snapshots: a whole-repository export is streamed from one file, rebuilt from the
old one by copying unchanged subtrees, and always byte-identical to walking the block files."""

import os
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pds.repo import car
from pds.repo.car import read_car_blocks
from pds.repo.commit import parse_commit
from pds.repo.signing_keys import generate_signing_key
from pds.store.layout import SNAPSHOT
from pds.store.repo import Repo, Write
from pds.store.snapshot import Snapshot

DID = "did:plc:abcdefghijklmnopqrstuvwx"
COLLECTIONS = ("app.bsky.feed.post", "app.bsky.feed.like", "app.bsky.graph.follow")


def record(coll, n):
    return {"$type": coll, "text": f"record {n} " + "x" * (n % 50),
            "createdAt": "2024-01-01T00:00:00.000Z"}


def walk_export(repo: Repo) -> bytes:
    """The export as a walk of the block files gives it, with no snapshot involved."""
    head = repo.head()
    block = repo.blocks.get(head.cid)
    tree = repo.tree(parse_commit(block))
    return b"".join(car.write_car([head.cid], [(head.cid, block), *repo._walk_blocks(tree)]))


def export(repo: Repo) -> bytes:
    return b"".join(repo.export_car())


def make_repo(where, n=600) -> Repo:
    (where / "tmp").mkdir()
    r = Repo(where / "acct", where / "tmp", DID)
    r.create(generate_signing_key(), [Write("create", COLLECTIONS[i % 3], f"3k{i:011d}",
                                            record(COLLECTIONS[i % 3], i))
                                      for i in range(n)])
    return r


@pytest.fixture
def repo(tmp_path):
    return make_repo(tmp_path)


class CountingReads:
    """Counts block-file reads of a repo during an export."""

    def __init__(self, repo: Repo, monkeypatch) -> None:
        self.n = 0
        for name in ("get", "read"):
            monkeypatch.setattr(repo.blocks, name, self.counting(getattr(repo.blocks, name)))

    def counting(self, real):
        def reader(cid):
            self.n += 1
            return real(cid)
        return reader


def test_first_export_writes_a_snapshot_equal_to_the_walk(repo):
    assert not (repo.root / SNAPSHOT).exists()
    data = export(repo)
    assert data == walk_export(repo)
    with Snapshot.open(repo.root / SNAPSHOT) as snap:
        assert snap.root == repo.head().cid and snap.car_len == len(data)
    root, blocks = read_car_blocks(data)
    assert root == repo.head().cid and len(blocks) > 600


def test_current_snapshot_is_streamed_without_reading_blocks(repo, monkeypatch):
    first = export(repo)
    counter = CountingReads(repo, monkeypatch)
    assert export(repo) == first
    assert counter.n == 1  # the commit block only (to know which commit is current)


def test_stale_snapshot_is_rebuilt_from_what_changed(repo, monkeypatch):
    export(repo)
    n_blocks = len(read_car_blocks(walk_export(repo))[1])
    repo.apply_writes([Write("create", COLLECTIONS[0], "3kzzzzzzzzzzz", record(COLLECTIONS[0], 1)),
                       Write("delete", COLLECTIONS[1], "3k00000000001"),
                       Write("update", COLLECTIONS[2], "3k00000000002",
                             record(COLLECTIONS[2], 7))])
    counter = CountingReads(repo, monkeypatch)
    data = export(repo)
    reads = counter.n
    monkeypatch.undo()
    assert data == walk_export(repo)
    # Only the paths to the three changed keys were read, not the whole repository.
    assert 1 < reads < n_blocks // 10


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.randoms(use_true_random=False))
def test_any_edits_then_export_equals_the_walk(tmp_path_factory, rnd: random.Random):
    repo = make_repo(tmp_path_factory.mktemp("edits"), 300)
    export(repo)
    keys = {f"{COLLECTIONS[i % 3]}/3k{i:011d}" for i in range(300)}
    for _round in range(rnd.randint(1, 4)):
        writes = []
        for _ in range(rnd.randint(1, 12)):
            coll = rnd.choice(COLLECTIONS)
            if keys and rnd.random() < 0.4:
                path = rnd.choice(sorted(keys))
                if any(w.path == path for w in writes):
                    continue
                c, rk = path.split("/")
                if rnd.random() < 0.5:
                    writes.append(Write("delete", c, rk))
                    keys.discard(path)
                else:
                    writes.append(Write("update", c, rk, record(c, rnd.randint(0, 999))))
            else:
                rk = f"3k{rnd.randint(0, 10**11):011d}"
                path = f"{coll}/{rk}"
                if path in keys or any(w.path == path for w in writes):
                    continue
                writes.append(Write("create", coll, rk, record(coll, rnd.randint(0, 999))))
                keys.add(path)
        if writes:
            repo.apply_writes(writes)
        if rnd.random() < 0.7:
            assert export(repo) == walk_export(repo)
    assert export(repo) == walk_export(repo)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "other-repo"])
def test_a_damaged_or_foreign_snapshot_is_ignored(repo, tmp_path, damage):
    good = export(repo)
    path = repo.root / SNAPSHOT
    raw = path.read_bytes()
    if damage == "garbage":
        path.write_bytes(os.urandom(len(raw)))
    elif damage == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    else:  # a valid snapshot of another commit: never served for this one
        other = Repo(tmp_path / "other", tmp_path / "tmp", DID)
        other.create(generate_signing_key(), [Write("create", COLLECTIONS[0], "3kaaaaaaaaaaa",
                                                    record(COLLECTIONS[0], 3))])
        export(other)
        os.replace(other.root / SNAPSHOT, path)
    assert export(repo) == good
    with Snapshot.open(path) as snap:
        assert snap.root == repo.head().cid


def test_export_streams_from_blocks_when_no_snapshot_can_be_written(repo, tmp_path):
    os.rmdir(tmp_path / "tmp")  # the snapshot's temporary file has nowhere to go
    assert export(repo) == walk_export(repo)
    assert not (repo.root / SNAPSHOT).exists()


def test_refresh_rewrites_only_an_old_snapshot_behind_head(repo):
    path = repo.root / SNAPSHOT
    assert repo.refresh_snapshot(max_age=3600)  # none yet: built
    assert not repo.refresh_snapshot(max_age=0)  # at HEAD already
    res = repo.apply_writes([Write("create", COLLECTIONS[0], "3kzzzzzzzzzzy",
                                   record(COLLECTIONS[0], 5))])
    assert not repo.refresh_snapshot(max_age=3600)  # behind, but young
    with Snapshot.open(path) as snap:
        assert snap.root != res.cid
    assert repo.refresh_snapshot(max_age=0)
    with Snapshot.open(path) as snap:
        assert snap.root == res.cid
    assert export(repo) == walk_export(repo)


def test_maintenance_refreshes_every_account(tmp_path):
    """AppContext.refresh_snapshots (the server's minute task) over real accounts."""
    import asyncio

    from server_util import app_context

    from pds.services import accounts as svc

    ctx = app_context(tmp_path)
    dids = [asyncio.run(svc.create_account(ctx, {"handle": f"snap{i}.test", "password": "pw-1",
                                                 "email": f"s{i}@example.com"}, None))["did"]
            for i in range(2)]
    assert ctx.refresh_snapshots(max_age=0) == 2
    assert ctx.refresh_snapshots(max_age=0) == 0
    for did in dids:
        repo = ctx.repo(did)
        with Snapshot.open(repo.root / SNAPSHOT) as snap:
            assert snap.root == repo.head().cid
