"""MST: interop vectors, commit-proof fixtures, and properties against rebuilding."""

import json
import random

import pytest
from cbrrr import CID
from hypothesis import given, settings
from hypothesis import strategies as st

from pds.repo.codec import InvalidData, cid_for
from pds.repo.mst import MST, diff
from pds.repo.mst_node import MissingBlock, Node, NodeLoader, common_prefix_len, key_height

LEAF = CID.decode("bafyreie5cvv4h45feadgeuwhbcutmh6t2ceseocckahdoe6uat64zmz454")


class Blocks(dict):
    """An in-memory block store that records which CIDs were read."""

    def get_block(self, cid):
        return self[cid]


def build(keys, store=None, val=LEAF):
    store = Blocks() if store is None else store
    t = MST.empty(NodeLoader(store.get_block))
    for k in keys:
        t = t.put(k, val)
    return t, store


def persist(t, store):
    for n in t.new_nodes():
        store[n.cid] = n.serialised
        n.stored = True


def test_key_heights(interop):
    for case in json.loads((interop / "mst" / "key_heights.json").read_text()):
        assert key_height(case["key"]) == case["height"], case


def test_common_prefix(interop):
    for case in json.loads((interop / "mst" / "common_prefix.json").read_text()):
        assert common_prefix_len(case["left"].encode(), case["right"].encode()) == case["len"]


def test_example_keys_heights(interop):
    keys = (interop / "mst" / "example_keys.txt").read_text().split()
    assert len(keys) == 156
    for k in keys:
        # Named <Letter><height>/<digits>.
        assert key_height(k) == int(k[1]), k


def test_spec_examples():
    assert key_height("2653ae71") == 0
    assert key_height("blue") == 1
    assert key_height("app.bsky.feed.post/454397e440ec") == 4
    assert key_height("app.bsky.feed.post/9adeb165882c") == 8


def test_empty_tree_cid():
    t, _ = build([])
    # The empty repo is one node {e: [], l: null}.
    assert t.cid == cid_for(bytes.fromhex("a2616580616cf6"))


def _fixtures(interop):
    return json.loads((interop / "firehose" / "commit-proof-fixtures.json").read_text())


def _commit(case):
    """(leaf, tree before, tree after) of a fixture's commit; the before tree is stored."""
    leaf = CID.decode(case["leafValue"])
    before, store = build(case["keys"], val=leaf)
    persist(before, store)
    after = before
    for k in case["adds"]:
        after = after.put(k, leaf)
    for k in case["dels"]:
        after = after.delete(k)
    return leaf, before, after


def test_commit_proof_fixtures(interop):
    cases = _fixtures(interop)
    assert len(cases) == 6
    for case in cases:
        leaf, before, after = _commit(case)
        assert before.cid.encode() == case["rootBeforeCommit"], case["comment"]
        assert after.cid.encode() == case["rootAfterCommit"], case["comment"]

        # What a commit carries: the new nodes and the covering proofs of every op.
        slice_ = {n.cid: n.serialised for n in after.new_nodes()}
        for k in case["adds"] + case["dels"]:
            slice_.update((n.cid, n.serialised) for n in after.covering_proof(k))
        for cid in case["blocksInProof"]:
            assert CID.decode(cid) in slice_, (case["comment"], cid)

        # Inverting the ops with only those blocks gives the old root back.
        inv = MST(NodeLoader(slice_.__getitem__), after.cid)
        for k in case["adds"]:
            inv = inv.delete(k)
        for k in case["dels"]:
            inv = inv.put(k, leaf)
        assert inv.cid.encode() == case["rootBeforeCommit"], case["comment"]


def test_inversion_needs_the_proof(interop):
    """Without the covering proof, inversion of the fixtures must fail somewhere: the
    proof is load-bearing, not decoration."""
    failures = 0
    for case in _fixtures(interop):
        leaf, _, after = _commit(case)
        only_new = {n.cid: n.serialised for n in after.new_nodes()}
        inv = MST(NodeLoader(only_new.__getitem__), after.cid)
        try:
            for k in case["adds"]:
                inv = inv.delete(k)
            for k in case["dels"]:
                inv = inv.put(k, leaf)
            inv.cid  # noqa: B018
        except MissingBlock:
            failures += 1
    assert failures > 0


def test_get_items_and_ranges():
    keys = [f"com.example.record/{i:05d}" for i in range(0, 2000, 3)]
    t, _ = build(random.Random(1).sample(keys, len(keys)))
    assert [k for k, _ in t.items()] == sorted(keys)
    assert [k for k, _ in t.items_reversed()] == sorted(keys, reverse=True)
    lo, hi = "com.example.record/00100", "com.example.record/00200"
    assert [k for k, _ in t.items(lo, hi)] == [k for k in sorted(keys) if lo <= k < hi]
    assert [k for k, _ in t.items_reversed(hi, lo)] == [
        k for k in sorted(keys, reverse=True) if lo <= k < hi
    ]
    for k in keys[:50]:
        assert t.get(k) == LEAF
    assert t.get("com.example.record/00001") is None
    assert len(t) == len(keys)
    assert t.validate() == len(keys)


def test_put_same_value_is_noop_and_delete_absent_is_noop():
    t, _ = build(["a/1", "a/2", "b/3"])
    assert t.put("a/1", LEAF).cid == t.cid
    assert t.delete("zz/9") is t


def test_node_parse_rejects_bad_layouts():
    t, _ = build([f"x/{i}" for i in range(40)])
    good = t.root.serialised
    assert Node.from_bytes(good).keys == t.root.keys
    with pytest.raises(InvalidData):
        Node.from_bytes(bytes.fromhex("a1616580"))  # no "l"
    # A node whose entries are out of order.
    n = Node(("b/1", "a/1"), (LEAF, LEAF), (None, None, None))
    with pytest.raises(InvalidData):
        Node.from_bytes(n.serialised)


def test_validate_rejects_wrong_height():
    # Put a height-0 key and a key of another height in one node by hand.
    k0 = next(f"x/{i}" for i in range(1000) if key_height(f"x/{i}") == 0)
    k1 = next(f"x/{i}" for i in range(1000) if key_height(f"x/{i}") == 1)
    bad = Node(tuple(sorted([k0, k1])), (LEAF, LEAF), (None, None, None))
    with pytest.raises(InvalidData):
        Node.from_bytes(bad.serialised)


def test_proof_paths_verify_presence_and_absence():
    keys = [f"com.example.record/{i:04d}" for i in range(500)]
    t, store = build(keys)
    persist(t, store)
    for k in ["com.example.record/0007", "com.example.record/0444x", "zzz/1"]:
        proof = {n.cid: n.serialised for n in t.path(k)}
        check = MST(NodeLoader(proof.__getitem__), t.cid)
        assert check.get(k) == t.get(k)


def test_diff_matches_record_sets():
    rng = random.Random(7)
    keys = [f"c.d.e/{i:04d}" for i in range(600)]
    a, store = build(keys)
    persist(a, store)
    b = a
    deleted = rng.sample(keys, 40)
    for k in deleted:
        b = b.delete(k)
    created = [f"c.d.e/n{i:03d}" for i in range(30)]
    for k in created:
        b = b.put(k, LEAF)
    other = cid_for(b"other")
    updated = rng.sample(sorted(set(keys) - set(deleted)), 10)
    for k in updated:
        b = b.put(k, other)
    d = diff(a, b)
    assert set(d.creates) == set(created)
    assert set(d.deletes) == set(deleted)
    assert set(d.updates) == set(updated)
    # Every new node is in b and not in a; every removed node is in a and not in b.
    a_nodes = {n.cid for n in a.walk_nodes()}
    b_nodes = {n.cid for n in b.walk_nodes()}
    assert set(d.new_nodes) == b_nodes - a_nodes
    assert set(d.removed_nodes) == a_nodes - b_nodes


KEYS = st.text(alphabet="abcdefghij0123456789", min_size=1, max_size=6).map(lambda s: "col/" + s)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), KEYS, st.integers(0, 3)), max_size=120))
def test_any_edit_sequence_equals_rebuild(ops):
    """Puts and deletes in any order give the tree that building the final map gives."""
    vals = [cid_for(bytes([i])) for i in range(4)]
    t = MST.empty(NodeLoader({}.__getitem__))
    model: dict[str, CID] = {}
    for is_put, key, v in ops:
        if is_put:
            t = t.put(key, vals[v])
            model[key] = vals[v]
        else:
            t = t.delete(key)
            model.pop(key, None)
    rebuilt = MST.empty(NodeLoader({}.__getitem__))
    for key in sorted(model, key=lambda _: random.random()):
        rebuilt = rebuilt.put(key, model[key])
    assert t.cid == rebuilt.cid
    assert dict(t.items()) == model
    if model:
        t.validate()


@settings(max_examples=100, deadline=None)
@given(st.sets(KEYS, min_size=1, max_size=80), st.data())
def test_any_commit_inverts_with_its_slice(keys, data):
    """For random trees and random multi-op commits, the commit's slice suffices to invert."""
    keys = sorted(keys)
    before, store = build(keys)
    persist(before, store)
    dels = data.draw(st.lists(st.sampled_from(keys), unique=True, max_size=5))
    adds = data.draw(st.lists(KEYS.filter(lambda k: k not in keys), unique=True, max_size=5))
    after = before
    for k in adds:
        after = after.put(k, LEAF)
    for k in dels:
        after = after.delete(k)
    slice_ = {n.cid: n.serialised for n in after.new_nodes()}
    slice_[after.cid] = after.root.serialised  # as Repo sends it, for empty commits
    for k in adds + dels:
        slice_.update((n.cid, n.serialised) for n in after.covering_proof(k))
    inv = MST(NodeLoader(slice_.__getitem__), after.cid)
    for k in adds:
        inv = inv.delete(k)
    for k in dels:
        inv = inv.put(k, LEAF)
    assert inv.cid == before.cid


@given(st.sets(KEYS, min_size=1, max_size=150))
def test_trusted_parse_of_stored_nodes_equals_the_checked_parse(keys):
    """The store's fast parse (no checks) reads every node as the checked parse does."""
    t, store = build(sorted(keys))
    persist(t, store)
    for cid, data in store.items():
        fast, checked = Node.from_stored(data, cid), Node.from_bytes(data, cid)
        assert (fast.keys, fast.vals, fast.subs) == (checked.keys, checked.vals, checked.subs)
        assert fast.cid == cid and fast.serialised == data
    trusted = MST(NodeLoader(store.__getitem__, trusted=True), t.cid)
    assert list(trusted.items()) == list(t.items())


def test_trusted_parse_reports_a_broken_block_as_invalid_data():
    with pytest.raises(InvalidData):
        Node.from_stored(b"\xa1ax\x01", cid_for(b"\xa1ax\x01"))
