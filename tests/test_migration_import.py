"""importRepo against a real `pds serve --workers 2` (did:web accounts, whose DID documents
this PDS serves, so an account's own export is signed by its DID's current key): a
deactivated account imports a CAR of its repo and serves it (same root on getRepo), the
refusals leave the data dir as it was, activation signs a commit of its own and announces
it; and the three real repositories of the interop vectors import (checked in full, the
signature by the key it was made with) and export to the same root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from harness import kill9
from server_util import (
    Api,
    api_fixture,
    blob_ref,
    diff_snapshots,
    err,
    ok,
    seq_events,
    snapshot,
)

from pds.repo import car
from pds.repo.codec import InvalidData, decode, encode, raw_cid_for
from pds.repo.commit import parse_commit, sign_commit
from pds.repo.repo_import import ImportRefused, check_repo, index_car
from pds.repo.signing_keys import K256PrivateKey
from pds.store.repo import Repo
from pds.store.staged_car import StagedCar

IMPORT_LIMIT = 200_000
CAR = {"Content-Type": "application/vnd.ipld.car"}
COLL = "com.example.note"

api = api_fixture(env={"PDS_MAX_REPO_IMPORT_SIZE": str(IMPORT_LIMIT)})


def _export(api: Api, acct) -> bytes:
    r = api.get("com.atproto.sync.getRepo", did=acct.did, token=acct.access)
    assert r.status_code == 200, r.text
    return r.content


def _import(api: Api, acct, body, **headers):
    return api.post("com.atproto.repo.importRepo", token=acct.access, content=body,
                    headers={**CAR, **headers})


def did_events(api: Api, did: str) -> list[dict]:
    """Every event of one DID in the event log, in order, its type as `$type`."""
    return [{"$type": h["t"], **p} for _s, h, p in seq_events(api.server.data_dir)
            if p.get("did", p.get("repo")) == did]


def _status(api: Api, acct) -> dict:
    return ok(api.get("com.atproto.server.checkAccountStatus", token=acct.access))


def _car_parts(raw: bytes):
    root, blocks = car.read_car_blocks(raw)
    assert root is not None
    return root, blocks


def _resigned(raw: bytes) -> bytes:
    """The same repository, its commit signed by a key the DID does not name."""
    root, blocks = _car_parts(raw)
    commit = parse_commit(blocks[root])
    assert commit.rev is not None
    _c, block, cid = sign_commit(commit.did, commit.rev, commit.data,
                                 K256PrivateKey.generate())
    rest = [(c, b) for c, b in blocks.items() if c != root]
    return car.car_bytes([cid], [(cid, block), *rest])


def _without_a_record(raw: bytes) -> bytes:
    root, blocks = _car_parts(raw)
    records = [c for c, b in blocks.items() if isinstance(decode(b), dict)
               and decode(b).get("$type") == COLL]
    assert records
    return car.car_bytes([root], [(c, b) for c, b in blocks.items() if c != records[0]])


def test_import_refusals_leave_nothing_behind(api):
    alice = api.create_account("impalice")
    bob = api.create_account("impbob")
    for i in range(30):
        ok(api.create_record(alice, {"text": f"note {i}"}))
        ok(api.create_record(bob, {"text": f"bob {i}"}))
    own, others = _export(api, alice), _export(api, bob)
    ok(api.post("com.atproto.server.deactivateAccount", {}, token=alice.access))
    root = api.server.data_dir
    before = snapshot(root)
    cases = [
        ("another DID's repo", others, 400, "the repository is"),
        ("a bad signature", _resigned(own), 400, "not signed by"),
        ("a missing record block", _without_a_record(own), 400, "missing block"),
        ("a CAR cut at a section", own[:len(own) // 2], 400, "Invalid CAR"),
        ("a CAR cut at a block boundary", _cut_at_block(own), 400, "missing block"),
        ("not a CAR", b"\x00garbage", 400, "Invalid CAR"),
        ("an empty body", b"", 400, "Invalid CAR"),
    ]
    for what, body, status, words in cases:
        answer = err(_import(api, alice, body), status, "InvalidRequest")
        assert words in answer["message"], (what, answer)
    # Over the limit: by its declared length, and streamed without one.
    big = own + os.urandom(IMPORT_LIMIT)
    err(_import(api, alice, big), 413, "PayloadTooLarge")
    chunks = (big[i:i + 65536] for i in range(0, len(big), 65536))
    err(_import(api, alice, chunks), 413, "PayloadTooLarge")
    assert diff_snapshots(before, snapshot(root)) == []
    assert not [p for p in (root / "tmp").iterdir() if p.name.startswith("import-")]
    # As in the reference: a password session's token only (no app password).
    app_pw = ok(api.post("com.atproto.server.createAppPassword", {"name": "importer"},
                         token=alice.access))["password"]
    app_tok = ok(api.post("com.atproto.server.createSession",
                          {"identifier": alice.did, "password": app_pw}))["accessJwt"]
    err(api.post("com.atproto.repo.importRepo", token=app_tok, content=own, headers=CAR),
        400, "InvalidToken")
    # Bob may not import into alice's repo with his own token (it is his own repo he
    # names: his export is his, so that one is fine, but alice's is another DID's).
    err(_import(api, bob, own), 400, "InvalidRequest")


def _cut_at_block(raw: bytes) -> bytes:
    """The CAR's header and its first blocks only: well-formed, but incomplete."""
    root, blocks = _car_parts(raw)
    items = list(blocks.items())
    return car.car_bytes([root], items[: len(items) // 2])


def test_deactivated_account_imports_and_activation_signs_anew(api):
    acct = api.create_account("impmover")
    png = b"\x89PNG\r\n\x1a\n" + os.urandom(3000)
    blob = ok(api.post("com.atproto.repo.uploadBlob", token=acct.access, content=png,
                       headers={"Content-Type": "image/png"}))["blob"]
    ok(api.create_record(acct, {"text": "with image", "image": blob_ref(blob)},
                         rkey="img"))
    for i in range(10):
        ok(api.create_record(acct, {"text": f"early {i}"}, rkey=f"early{i}"))
    early = _export(api, acct)
    early_root, _ = _car_parts(early)
    for i in range(5):
        ok(api.create_record(acct, {"text": f"late {i}"}, rkey=f"late{i}"))
    ok(api.post("com.atproto.repo.deleteRecord",
                {"repo": acct.did, "collection": COLL, "rkey": "img"}, token=acct.access))
    ok(api.post("com.atproto.server.deactivateAccount", {}, token=acct.access))
    # The image's record is gone, and so is the blob.
    cid = raw_cid_for(png).encode()
    assert _status(api, acct)["expectedBlobs"] == 0

    # The earlier state imported: HEAD is its commit, as signed then.
    assert ok(_import(api, acct, early)) is None
    status = _status(api, acct)
    assert status["repoCommit"] == early_root.encode()
    assert status["indexedRecords"] == 11 and status["activated"] is False
    assert status["expectedBlobs"] == 1 and status["importedBlobs"] == 0
    missing = ok(api.get("com.atproto.repo.listMissingBlobs", token=acct.access))["blobs"]
    assert missing == [{"cid": cid, "recordUri": f"at://{acct.did}/{COLL}/img"}]
    exported_root, _ = _car_parts(_export(api, acct))
    assert exported_root == early_root
    # pds verify takes the blob that is expected but not uploaded as no damage.
    from harness import run_pds
    res = run_pds("verify", "--data-dir", str(api.server.data_dir), check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    # Writes still refused while deactivated.
    err(api.create_record(acct, {"text": "no"}), 400, "AccountDeactivated")

    # The blob uploaded again lands referenced (served once active).
    ok(api.post("com.atproto.repo.uploadBlob", token=acct.access, content=png,
                headers={"Content-Type": "image/png"}))
    status = _status(api, acct)
    assert status["importedBlobs"] == 1
    assert ok(api.get("com.atproto.repo.listMissingBlobs", token=acct.access))["blobs"] == []

    # Importing the same CAR again changes nothing.
    assert ok(_import(api, acct, early)) is None
    assert _status(api, acct)["repoCommit"] == early_root.encode()

    # Activation: a commit of our own (same data, new rev, our key), then
    # #account, #identity, #sync naming it.
    events_before = len(did_events(api, acct.did))
    ok(api.post("com.atproto.server.activateAccount", {}, token=acct.access))
    status = _status(api, acct)
    assert status["activated"] is True and status["repoCommit"] != early_root.encode()
    assert status["repoRev"] > parse_commit(_car_parts(early)[1][early_root]).rev
    new_root, blocks = _car_parts(_export(api, acct))
    commit = parse_commit(blocks[new_root])
    assert commit.data == parse_commit(_car_parts(early)[1][early_root]).data
    events = did_events(api, acct.did)[events_before:]
    assert [e["$type"] for e in events] == ["#account", "#identity", "#sync"], events
    assert events[2]["rev"] == status["repoRev"]
    r = api.get("com.atproto.sync.getBlob", did=acct.did, cid=cid)
    assert r.status_code == 200 and r.content == png
    ok(api.create_record(acct, {"text": "after"}))


def test_active_account_import_is_announced_under_a_newer_rev(api):
    """An active account may import too (as in the reference): its HEAD becomes a commit
    of ours over the imported records, with a rev after everything relays have seen, and
    #sync says so. A taken-down account may not."""
    acct = api.create_account("impactive")
    for i in range(5):
        ok(api.create_record(acct, {"text": f"kept {i}"}, rkey=f"kept{i}"))
    older = _export(api, acct)
    old_root, old_blocks = _car_parts(older)
    old_commit = parse_commit(old_blocks[old_root])
    for i in range(5):
        ok(api.create_record(acct, {"text": f"dropped {i}"}, rkey=f"dropped{i}"))
    rev_before = _status(api, acct)["repoRev"]
    events_before = len(did_events(api, acct.did))
    assert ok(_import(api, acct, older)) is None
    status = _status(api, acct)
    assert status["indexedRecords"] == 5 and status["repoRev"] > rev_before
    root, blocks = _car_parts(_export(api, acct))
    commit = parse_commit(blocks[root])
    assert commit.data == old_commit.data and root != old_root
    events = did_events(api, acct.did)[events_before:]
    assert [e["$type"] for e in events] == ["#sync"] and events[0]["rev"] == commit.rev
    ok(api.create_record(acct, {"text": "after"}))

    ok(api.post("com.atproto.admin.updateSubjectStatus", {
        "subject": {"$type": "com.atproto.admin.defs#repoRef", "did": acct.did},
        "takedown": {"applied": True, "ref": "t"}}, headers=api.admin_headers()))
    err(_import(api, acct, older), 401)


# --- the real repositories ------------------------------------------------------------------


def _any_signature(commit) -> bool:
    """The interop repos come without their DID documents, so their signers' keys are
    unknown here: their signatures are taken as they are (two are v2 commits of 2023, one
    signed high-S). The server tests check signatures against DID documents."""
    return len(commit.sig) == 64


def test_real_repos_import_and_export_same_root(interop, tmp_path):
    files = sorted((interop / "real" / "repos").glob("*.repo.car"))
    assert len(files) == 3
    (tmp_path / "tmp").mkdir()
    for f in files:
        raw = f.read_bytes()
        root, blocks = _car_parts(raw)
        commit = parse_commit(blocks[root])
        staged = StagedCar(tmp_path / "tmp", None)
        try:
            staged.write(raw)
            index = staged.read_index()
            assert index.roots == [root] and index.size == len(raw)
            # Another key is refused; the signer's is taken.
            with pytest.raises(ImportRefused, match="not signed"):
                check_repo(staged.get, index.roots, commit.did,
                           K256PrivateKey.generate().public_key())
            with pytest.raises(ImportRefused, match="not did:plc:x"):
                check_repo(staged.get, index.roots, "did:plc:x", _any_signature)
            checked = check_repo(staged.get, index.roots, commit.did, _any_signature)
            repo = Repo(tmp_path / f.stem, tmp_path / "tmp", commit.did)
            repo.import_commit(checked.commit_cid, commit.rev or "2222222222222",
                               staged.blocks(checked.blocks))
        finally:
            staged.close()
        assert repo.head().cid == root
        out_root, out_blocks = car.read_car_blocks(b"".join(repo.export_car()))
        assert out_root == root
        assert set(out_blocks) == set(checked.blocks)
        assert len(list(repo.tree().items())) == checked.records > 0
    assert list((tmp_path / "tmp").iterdir()) == []


def test_index_refuses_a_block_that_does_not_hash(tmp_path):
    block = encode({"a": 1})
    bad = car.car_bytes([raw_cid_for(b"x")], [(raw_cid_for(b"x"), block)])
    with open(tmp_path / "c.car", "wb") as f:
        f.write(bad)
    with open(tmp_path / "c.car", "rb") as f, pytest.raises(InvalidData):
        index_car(f)


# --- kill -9 during an import -----------------------------------------------------------------


def _built_car(tmp: Path, data: Path, did: str, trial: int, count: int = 3000) -> bytes:
    """A repository of `did` with `count` records all its own (none of its blocks is in
    the PDS yet), signed with the account's key, read from the data dir."""
    from pds.repo.signing_keys import load_private_key
    from pds.store.layout import DataDir
    from pds.store.repo import Write
    key = load_private_key(DataDir(data).signing_key(did).read_bytes())
    (tmp / "tmp").mkdir(exist_ok=True)
    repo = Repo(tmp / f"build{trial}", tmp / "tmp", did, key)
    repo.create(key, [Write("create", COLL, f"r{i:05d}",
                            {"$type": COLL, "text": f"trial {trial} record {i} " + "x" * 80})
                      for i in range(count)])
    return b"".join(repo.export_car())


@pytest.mark.slow  # restarts a server a dozen times
def test_kill9_during_import_leaves_old_or_new_repo(new_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import random
    import threading
    import time

    from harness import run_pds
    server = new_server()
    data, port = server.data_dir, server.port
    api = Api(server)
    acct = api.create_account("crashmover")
    ok(api.post("com.atproto.server.deactivateAccount", {}, token=acct.access))
    started = time.monotonic()
    first = _built_car(tmp_path, data, acct.did, 0)
    ok(_import(api, acct, first))
    took = time.monotonic() - started
    heads = {_status(api, acct)["repoCommit"]}
    rng = random.Random(14)
    outcomes = set()
    for trial in range(1, 7):
        car_bytes = _built_car(tmp_path, data, acct.did, trial)
        new_root = _car_parts(car_bytes)[0].encode()
        thread = threading.Thread(target=_quiet_import, args=(server, acct, car_bytes))
        thread.start()
        time.sleep(rng.uniform(0.0, took))
        kill9(server)
        thread.join(30)
        api.close()
        # Start (recovery), stop cleanly, check the data dir offline, start again.
        server = new_server.serve(data, port)
        server.stop()
        res = run_pds("verify", "--data-dir", str(data), check=False)
        assert res.returncode == 0, res.stdout + res.stderr
        server = new_server.serve(data, port)
        api = Api(server)
        head = _status(api, acct)["repoCommit"]
        assert head in heads | {new_root}, (trial, head)
        outcomes.add("new" if head == new_root else "old")
        heads.add(head)
        assert not [p for p in (data / "tmp").iterdir() if p.name.startswith("import-")]
        # The repo serves whole, and a new import goes through.
        exported_root, _ = _car_parts(_export(api, acct))
        assert exported_root.encode() == head
        ok(_import(api, acct, car_bytes))
        assert _status(api, acct)["repoCommit"] == new_root
        heads.add(new_root)
    api.close()
    print("outcomes", outcomes)


def _quiet_import(server, acct, body: bytes) -> None:  # type: ignore[no-untyped-def]
    """An import whose connection the kill cuts: any outcome."""
    import httpx
    try:
        httpx.post(server.url + "/xrpc/com.atproto.repo.importRepo", content=body,
                   headers={**CAR, "Authorization": f"Bearer {acct.access}"}, timeout=30)
    except httpx.HTTPError:
        pass
