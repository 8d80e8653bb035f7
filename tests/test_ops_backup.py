"""`pds backup DEST` of a live data dir, taken while a write storm goes on.

Several threads create, update and delete records (some with blobs) on several accounts
of a `pds serve --workers 2`; every acknowledged write is recorded with the time its answer
arrived. At time T `pds backup` starts while the storm continues; when it is done the storm
stops. Then `pds verify DEST` passes, a copy of DEST serves (restore: the backup is a data
dir), and every write acknowledged before T is in it: each record is in the state of its
last write acknowledged before T or of a later write (same CID via getRecord; deleted
ones absent), every blob a restored record references is served, and the restored server
takes new writes and continues the firehose's seq.
"""

from __future__ import annotations

import os
import random
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from harness import Background, Server, run_pds, running_server, serving, wait_for
from server_util import Account, Api, blob_ref, ok, seq_events

pytestmark = pytest.mark.slow  # backups during write storms, restored servers

ACCOUNTS = 4
PRELOAD = 120          # records per account before the storm (so the copy takes a while)
NOTE = "com.example.note"
PIC = "com.example.pic"
BACKUP_TIMEOUT = 300


@dataclass
class History:
    """Acknowledged writes of one record path, in order: (ack time, CID or None)."""

    writes: list[tuple[float, str | None]] = field(default_factory=list)

    def allowed(self, t: float) -> set[str | None]:
        """States a backup begun at `t` may hold: that of the last write acknowledged
        before `t`, or of any later one (never an older one)."""
        before = [i for i, (ack, _) in enumerate(self.writes) if ack < t]
        if not before:
            return {None} | {cid for _, cid in self.writes}
        return {cid for _, cid in self.writes[before[-1]:]}

    def acked_before(self, t: float) -> bool:
        return any(ack < t for ack, _ in self.writes)


class Storm(Background):
    """One thread per account writing as fast as it can until stopped: creates, updates,
    deletes, and records that embed a freshly uploaded blob (and their deletion, which
    removes the blob)."""

    def __init__(self, server: Server, accounts: list[Account], seed: int) -> None:
        super().__init__()
        self.server, self.accounts, self.seed = server, accounts, seed
        self.histories: dict[tuple[str, str], History] = {}
        self.blobs: dict[str, bytes] = {}
        self.lock = threading.Lock()
        self.acks: list[float] = []

    def start(self) -> None:
        for i, acct in enumerate(self.accounts):
            self.spawn(self._run, acct, self.seed + i)

    def note(self, did: str, path: str, cid: str | None) -> None:
        now = time.monotonic()
        with self.lock:
            self.histories.setdefault((did, path), History()).writes.append((now, cid))
            self.acks.append(now)

    def count(self) -> int:
        with self.lock:
            return len(self.acks)

    def _run(self, acct: Account, seed: int) -> None:
        rng = random.Random(seed)
        live: dict[str, str] = {}   # path -> CID, records this thread has made
        n = 0

        def delete(path: str) -> None:
            collection, rkey = path.split("/")
            ok(api.post("com.atproto.repo.deleteRecord", {
                "repo": acct.did, "collection": collection, "rkey": rkey}, token=acct.access))
            del live[path]
            self.note(acct.did, path, None)

        with Api(self.server) as api:
            while not self.stop_event.is_set():
                n += 1
                roll = rng.random()
                notes = [p for p in live if p.startswith(NOTE)]
                pics = [p for p in live if p.startswith(PIC)]
                if roll < 0.35 or not notes:
                    rkey = f"s{seed}-{n}"
                    r = ok(api.create_record(acct, {"text": f"storm {n}", "n": n}, NOTE,
                                             rkey=rkey))
                    path = f"{NOTE}/{rkey}"
                elif roll < 0.55:
                    path = rng.choice(notes)
                    r = ok(api.post("com.atproto.repo.putRecord", {
                        "repo": acct.did, "collection": NOTE, "rkey": path.split("/")[1],
                        "record": {"$type": NOTE, "text": f"updated {n}", "n": n}},
                        token=acct.access))
                elif roll < 0.70:
                    delete(rng.choice(notes))
                    continue
                elif roll < 0.90 or not pics:
                    data = os.urandom(rng.randint(100, 20_000))
                    up = ok(api.post("com.atproto.repo.uploadBlob", content=data,
                                     token=acct.access,
                                     headers={"Content-Type": "image/jpeg"}))["blob"]
                    with self.lock:
                        self.blobs[up["ref"]["$link"]] = data
                    rkey = f"p{seed}-{n}"
                    r = ok(api.create_record(acct, {"image": blob_ref(up)}, PIC, rkey=rkey))
                    path = f"{PIC}/{rkey}"
                else:
                    delete(rng.choice(pics))
                    continue
                live[path] = r["cid"]
                self.note(acct.did, path, r["cid"])


def preload(api: Api, acct: Account, storm: Storm) -> None:
    """PRELOAD records in a few applyWrites batches (recorded like any other write)."""
    for batch in range(PRELOAD // 40):
        writes = [{"$type": "com.atproto.repo.applyWrites#create", "collection": NOTE,
                   "rkey": f"pre-{batch}-{i}",
                   "value": {"$type": NOTE, "text": "preloaded " + "x" * 200, "i": i}}
                  for i in range(40)]
        out = ok(api.post("com.atproto.repo.applyWrites", {"repo": acct.did, "writes": writes},
                          token=acct.access))
        for w, res in zip(writes, out["results"], strict=True):
            storm.note(acct.did, f"{NOTE}/{w['rkey']}", res["cid"])


def test_backup_during_write_storm_restores_every_acknowledged_write(tmp_path: Path) -> None:
    seed = random.randrange(1 << 30)
    print("seed", seed)
    with running_server(tmp_path, wait=60) as server, Api(server) as api:
        data = server.data_dir
        accounts = [api.create_account(f"bk{i}") for i in range(ACCOUNTS)]
        storm = Storm(server, accounts, seed)
        for acct in accounts:
            preload(api, acct, storm)
        storm.start()
        try:
            base = storm.count()
            wait_for(lambda: storm.count() >= base + 40, 120, "the storm to get going")
            dest = tmp_path / "backup"
            t_start = time.monotonic()
            out = run_pds("backup", str(dest), "--data-dir", str(data),
                          timeout=BACKUP_TIMEOUT).stdout
            t_end = time.monotonic()
            # Let the storm run on a little past the end, as a live server would.
            n_end = storm.count()
            wait_for(lambda: storm.count() >= n_end + 5, 60, "writes after the backup")
        finally:
            storm.stop(120)
        during = [a for a in storm.acks if t_start < a < t_end]
        print(f"backup took {t_end - t_start:.2f}s; {len(during)} writes acknowledged "
              f"while it ran; {sum(1 for a in storm.acks if a < t_start)} before; {out!r}")
        assert during, "no write was acknowledged while the backup ran"

        # The backup is a consistent data dir.
        res = run_pds("verify", "--data-dir", str(dest), check=False)
        assert res.returncode == 0, f"pds verify of the backup failed:\n{res.stdout}"
        assert ", 0 problems" not in res.stdout and res.stdout.strip().endswith("OK")

        # Restore: copy the backup to a new data dir and serve it.
        restored = tmp_path / "restored"
        shutil.copytree(dest, restored, symlinks=True)
        events_before = max(s for s, _, _ in seq_events(restored))
        with serving(restored, wait=60) as restored_server, Api(restored_server) as rapi:
            checked = present = absent = 0
            for (did, path), hist in sorted(storm.histories.items()):
                collection, rkey = path.split("/")
                r = rapi.get("com.atproto.repo.getRecord", repo=did, collection=collection,
                             rkey=rkey)
                if r.status_code == 200:
                    got: str | None = r.json()["cid"]
                    if collection == PIC:
                        cid = r.json()["value"]["image"]["ref"]["$link"]
                        b = rapi.http.get("/xrpc/com.atproto.sync.getBlob",
                                          params={"did": did, "cid": cid})
                        assert b.status_code == 200, (path, b.text)
                        assert b.content == storm.blobs[cid]
                else:
                    assert r.status_code == 400 and r.json()["error"] == "RecordNotFound", r.text
                    got = None
                allowed = hist.allowed(t_start)
                assert got in allowed, (
                    f"{did} {path}: backup has {got}, acknowledged before the backup: "
                    f"{[w for w in hist.writes if w[0] < t_start]}, later: "
                    f"{[w for w in hist.writes if w[0] >= t_start]}")
                if hist.acked_before(t_start):
                    checked += 1
                    present += got is not None
                    absent += got is None
            print(f"{checked} records written before the backup checked: "
                  f"{present} present, {absent} deleted")
            assert checked > ACCOUNTS * PRELOAD

            # The restored server is a working PDS: login, a new write, the seq goes on.
            acct = accounts[0]
            session = ok(rapi.post("com.atproto.server.createSession",
                                   {"identifier": acct.handle, "password": acct.password}))
            r = ok(rapi.post("com.atproto.repo.createRecord",
                             {"repo": acct.did, "collection": NOTE,
                              "record": {"$type": NOTE, "text": "after restore"}},
                             token=session["accessJwt"]))
            new = wait_for(lambda: [s for s, h, p in seq_events(restored)
                                    if h.get("t") == "#commit"
                                    and p["commit"].encode() == r["commit"]["cid"]],
                           30, "the restored server's #commit event")
            assert new[0] > events_before


def test_backup_of_a_stopped_dir_is_repeatable_and_verifies(tmp_path: Path) -> None:
    """Backing up into the same DEST again (incremental) after more writes keeps it a
    valid data dir with the new writes."""
    with running_server(tmp_path, workers=1, wait=60) as server, Api(server) as api:
        data = server.data_dir
        acct = api.create_account("inc")
        first = ok(api.create_record(acct, {"text": "one"}, NOTE, rkey="one"))
        dest = tmp_path / "backup"
        run_pds("backup", str(dest), "--data-dir", str(data))
        second = ok(api.create_record(acct, {"text": "two"}, NOTE, rkey="two"))
        ok(api.post("com.atproto.repo.deleteRecord", {"repo": acct.did, "collection": NOTE,
                                                      "rkey": "one"}, token=acct.access))
    run_pds("backup", str(dest), "--data-dir", str(data))
    res = run_pds("verify", "--data-dir", str(dest), check=False)
    assert res.returncode == 0, res.stdout
    with serving(dest, workers=1, wait=60) as restored:
        r = httpx.get(f"{restored.url}/xrpc/com.atproto.repo.getRecord",
                      params={"repo": acct.did, "collection": NOTE, "rkey": "two"}, timeout=60)
        assert r.status_code == 200 and r.json()["cid"] == second["cid"], r.text
        r = httpx.get(f"{restored.url}/xrpc/com.atproto.repo.getRecord",
                      params={"repo": acct.did, "collection": NOTE, "rkey": "one"}, timeout=60)
        assert r.status_code == 400 and first["cid"] not in r.text


def test_a_blob_caught_half_deleted_leaves_no_lone_metadata(tmp_path: Path, monkeypatch) -> None:
    """A blob is deleted file first, then metadata; the backup copies a shard in
    directory order, so a blob deleted while its shard is copied can land in the copy
    as metadata alone (a write storm caught it in CI). Made exact here: after the blobs
    are copied, one blob's file is taken from the copy and its record deleted in the
    source (the blob goes with it), another's file only taken from the copy. The copy
    verifies: the first blob's metadata is dropped, the second's file copied again."""
    from pds.store import backup as backup_mod
    from pds.store.blobs import BlobStore
    from pds.store.verify import verify_data_dir

    with running_server(tmp_path, workers=1, wait=60) as server, Api(server) as api:
        acct = api.create_account("halfway")
        posted = {}
        for rkey in ("doomed", "kept"):
            payload = os.urandom(2000)
            up = ok(api.post("com.atproto.repo.uploadBlob", content=payload,
                             token=acct.access, headers={"Content-Type": "image/png"}))["blob"]
            ok(api.create_record(acct, {"image": blob_ref(up)}, PIC, rkey=rkey))
            posted[rkey] = (up["ref"]["$link"], payload)
        dest = tmp_path / "backup"
        blobs = BlobStore(dest / "accounts" / acct.did / "blobs", dest / "tmp")
        real_copy_tree = backup_mod._copy_tree

        def copy_tree(src: Path, dst: Path, *args, **kwargs) -> None:
            real_copy_tree(src, dst, *args, **kwargs)
            if src.name == "blobs":
                for cid, _ in posted.values():
                    blobs.path(cid).unlink()
                ok(api.post("com.atproto.repo.deleteRecord",
                            {"repo": acct.did, "collection": PIC, "rkey": "doomed"},
                            token=acct.access))

        monkeypatch.setattr(backup_mod, "_copy_tree", copy_tree)
        backup_mod.backup(server.data_dir, dest)

    report = verify_data_dir(dest)
    assert report.ok, report.problems
    doomed_cid, kept_cid = posted["doomed"][0], posted["kept"][0]
    assert blobs.meta(doomed_cid) is None and not blobs.path(doomed_cid).exists()
    assert blobs.path(kept_cid).read_bytes() == posted["kept"][1]
    with serving(dest, workers=1, wait=60) as restored, Api(restored) as rapi:
        r = rapi.get("com.atproto.repo.getRecord", repo=acct.did, collection=PIC, rkey="doomed")
        assert r.status_code == 400 and r.json()["error"] == "RecordNotFound", r.text
        b = rapi.http.get("/xrpc/com.atproto.sync.getBlob",
                          params={"did": acct.did, "cid": kept_cid})
        assert b.status_code == 200 and b.content == posted["kept"][1], b.text


def test_backup_with_writes_landing_between_its_steps(tmp_path: Path, monkeypatch) -> None:
    """Writes placed exactly in the windows of the backup's copy order (run in-process,
    with the server live): a blob uploaded and referenced after the account's blobs were
    copied but before the event log is copied, and a record with a blob deleted right
    after the event log is copied. The copy must still verify and serve every blob its
    records reference."""
    from pds.store import backup as backup_mod
    from pds.store.verify import verify_data_dir

    with running_server(tmp_path, workers=1, wait=60) as server, Api(server) as api:
        data = server.data_dir
        acct = api.create_account("winner")
        ok(api.create_record(acct, {"text": "before"}, NOTE, rkey="before"))
        late: dict[str, object] = {}

        def upload_and_post(rkey: str) -> tuple[str, bytes, dict]:
            payload = os.urandom(3000)
            up = ok(api.post("com.atproto.repo.uploadBlob", content=payload,
                             token=acct.access, headers={"Content-Type": "image/png"}))["blob"]
            rec = ok(api.create_record(acct, {"image": blob_ref(up)}, PIC, rkey=rkey))
            return up["ref"]["$link"], payload, rec

        # A record whose blob exists before the backup, deleted just after the event log
        # is copied (its blob goes with it).
        doomed_cid, _, _ = upload_and_post("doomed")
        real_copy_tree = backup_mod._copy_tree

        def copy_tree(src: Path, dst: Path, *args, **kwargs) -> None:
            real_copy_tree(src, dst, *args, **kwargs)
            if src.name == "blobs" and "after-blobs" not in late:
                late["after-blobs"] = upload_and_post("late")
            elif src.name == "seq" and "after-seq" not in late:
                ok(api.post("com.atproto.repo.deleteRecord",
                            {"repo": acct.did, "collection": PIC, "rkey": "doomed"},
                            token=acct.access))
                late["after-seq"] = True

        monkeypatch.setattr(backup_mod, "_copy_tree", copy_tree)
        dest = tmp_path / "backup"
        backup_mod.backup(data, dest)
        assert "after-blobs" in late and "after-seq" in late

    report = verify_data_dir(dest)
    assert report.ok, report.problems
    late_cid, late_bytes, late_rec = late["after-blobs"]  # type: ignore[misc]
    with serving(dest, workers=1, wait=60) as restored, Api(restored) as rapi:
        # The late record's event was copied, so the record is in the copy: so is its blob.
        r = rapi.get("com.atproto.repo.getRecord", repo=acct.did, collection=PIC, rkey="late")
        assert r.status_code == 200 and r.json()["cid"] == late_rec["cid"], r.text
        b = rapi.http.get("/xrpc/com.atproto.sync.getBlob",
                          params={"did": acct.did, "cid": late_cid})
        assert b.status_code == 200 and b.content == late_bytes, b.text
        # The doomed record is either still there with its blob, or gone with it.
        r = rapi.get("com.atproto.repo.getRecord", repo=acct.did, collection=PIC, rkey="doomed")
        if r.status_code == 200:
            b = rapi.http.get("/xrpc/com.atproto.sync.getBlob",
                              params={"did": acct.did, "cid": doomed_cid})
            assert b.status_code == 200, b.text
        else:
            assert r.json()["error"] == "RecordNotFound", r.text
