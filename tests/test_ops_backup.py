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
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from harness import Server, free_port, init_data_dir, start_server
from ops_util import clean_env, pds_command, run_pds, seq_events, wait_for
from server_util import Account, Api, blob_ref, ok

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


class Storm:
    """One thread per account writing as fast as it can until stopped: creates, updates,
    deletes, and records that embed a freshly uploaded blob (and their deletion, which
    removes the blob)."""

    def __init__(self, server: Server, accounts: list[Account], seed: int) -> None:
        self.server = server
        self.histories: dict[tuple[str, str], History] = {}
        self.blobs: dict[str, bytes] = {}
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.errors: list[BaseException] = []
        self.acks: list[float] = []
        self.threads = [threading.Thread(target=self._run, args=(a, seed + i), daemon=True)
                        for i, a in enumerate(accounts)]

    def start(self) -> None:
        for t in self.threads:
            t.start()

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
        api = Api(self.server)
        live: dict[str, str] = {}   # path -> CID, records this thread has made
        n = 0
        try:
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
                    path = rng.choice(notes)
                    ok(api.post("com.atproto.repo.deleteRecord", {
                        "repo": acct.did, "collection": NOTE, "rkey": path.split("/")[1]},
                        token=acct.access))
                    del live[path]
                    self.note(acct.did, path, None)
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
                    path = rng.choice(pics)
                    ok(api.post("com.atproto.repo.deleteRecord", {
                        "repo": acct.did, "collection": PIC, "rkey": path.split("/")[1]},
                        token=acct.access))
                    del live[path]
                    self.note(acct.did, path, None)
                    continue
                live[path] = r["cid"]
                self.note(acct.did, path, r["cid"])
        except BaseException as e:  # noqa: BLE001 - reported by stop()
            self.errors.append(e)
        finally:
            api.close()

    def stop(self) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(120)
        assert not any(t.is_alive() for t in self.threads), "a storm thread hangs"
        assert not self.errors, self.errors


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
    port = free_port()
    data = tmp_path / "data"
    init_data_dir(data, port, did_method="web")
    server = start_server(data, port, workers=2, wait=60)
    restored_server: Server | None = None
    try:
        api = Api(server)
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
            proc = subprocess.Popen([*pds_command(), "backup", str(dest), "--data-dir",
                                     str(data)], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, env=clean_env())
            out, err = proc.communicate(timeout=BACKUP_TIMEOUT)
            t_end = time.monotonic()
            assert proc.returncode == 0, f"pds backup failed:\n{out}\n{err}"
            # Let the storm run on a little past the end, as a live server would.
            n_end = storm.count()
            wait_for(lambda: storm.count() >= n_end + 5, 60, "writes after the backup")
        finally:
            storm.stop()
        during = [a for a in storm.acks if t_start < a < t_end]
        print(f"backup took {t_end - t_start:.2f}s; {len(during)} writes acknowledged "
              f"while it ran; {sum(1 for a in storm.acks if a < t_start)} before; {out!r}")
        assert during, "no write was acknowledged while the backup ran"
        api.close()

        # The backup is a consistent data dir.
        res = run_pds("verify", "--data-dir", str(dest), check=False)
        assert res.returncode == 0, f"pds verify of the backup failed:\n{res.stdout}"
        assert ", 0 problems" not in res.stdout and res.stdout.strip().endswith("OK")

        # Restore: copy the backup to a new data dir and serve it.
        restored = tmp_path / "restored"
        shutil.copytree(dest, restored, symlinks=True)
        events_before = max(s for s, _, _ in seq_events(restored))
        rport = free_port()
        restored_server = start_server(restored, rport, workers=2, wait=60)
        rapi = Api(restored_server)
        try:
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
        finally:
            rapi.close()
    finally:
        server.stop()
        if restored_server is not None:
            restored_server.stop()
            log = restored_server.log()
            assert "Traceback" not in log, log[-4000:]
    log = server.log()
    assert "Traceback" not in log, log[-4000:]


def test_backup_of_a_stopped_dir_is_repeatable_and_verifies(tmp_path: Path) -> None:
    """Backing up into the same DEST again (incremental) after more writes keeps it a
    valid data dir with the new writes."""
    port = free_port()
    data = tmp_path / "data"
    init_data_dir(data, port, did_method="web")
    server = start_server(data, port, workers=1, wait=60)
    try:
        api = Api(server)
        acct = api.create_account("inc")
        first = ok(api.create_record(acct, {"text": "one"}, NOTE, rkey="one"))
        dest = tmp_path / "backup"
        run_pds("backup", str(dest), "--data-dir", str(data))
        second = ok(api.create_record(acct, {"text": "two"}, NOTE, rkey="two"))
        ok(api.post("com.atproto.repo.deleteRecord", {"repo": acct.did, "collection": NOTE,
                                                      "rkey": "one"}, token=acct.access))
        api.close()
    finally:
        server.stop()
    run_pds("backup", str(dest), "--data-dir", str(data))
    res = run_pds("verify", "--data-dir", str(dest), check=False)
    assert res.returncode == 0, res.stdout
    rport = free_port()
    restored = start_server(dest, rport, workers=1, wait=60)
    try:
        r = httpx.get(f"{restored.url}/xrpc/com.atproto.repo.getRecord",
                      params={"repo": acct.did, "collection": NOTE, "rkey": "two"}, timeout=60)
        assert r.status_code == 200 and r.json()["cid"] == second["cid"], r.text
        r = httpx.get(f"{restored.url}/xrpc/com.atproto.repo.getRecord",
                      params={"repo": acct.did, "collection": NOTE, "rkey": "one"}, timeout=60)
        assert r.status_code == 400 and first["cid"] not in r.text
    finally:
        restored.stop()


def test_backup_with_writes_landing_between_its_steps(tmp_path: Path, monkeypatch) -> None:
    """Writes placed exactly in the windows of the backup's copy order (run in-process,
    with the server live): a blob uploaded and referenced after the account's blobs were
    copied but before the event log is copied, and a record with a blob deleted right
    after the event log is copied. The copy must still verify and serve every blob its
    records reference."""
    from pds.store import backup as backup_mod
    from pds.store.verify import verify_data_dir

    port = free_port()
    data = tmp_path / "data"
    init_data_dir(data, port, did_method="web")
    server = start_server(data, port, workers=1, wait=60)
    api = Api(server)
    try:
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
    finally:
        api.close()
        server.stop()

    report = verify_data_dir(dest)
    assert report.ok, report.problems
    late_cid, late_bytes, late_rec = late["after-blobs"]  # type: ignore[misc]
    rport = free_port()
    restored = start_server(dest, rport, workers=1, wait=60)
    try:
        rapi = Api(restored)
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
        rapi.close()
    finally:
        restored.stop()
