"""Backups and restores at the store level: `pds.store.backup.backup` and
`pds.store.restore.restore` on data dirs made by a real `pds serve`.

One server makes a history: three accounts, posts, a blob and several sessions; a first
backup is taken while it serves; then a session is revoked (logout), an account deleted
and a handle changed, and the server stops. The tests work on copies of that:
- an incremental backup mirrors small mutable state (sessions, claims, well-known files,
  deleted accounts) and keeps blocks incremental;
- a restore of the older backup brings back no refresh session at all, so the one revoked
  after the backup was taken never works again (served over HTTP);
- FORMAT travels with a backup and a restore; permission bits too;
- destinations that must not be written to are refused, and a failed or interrupted
  restore leaves nothing behind;
- progress is reported at a modest rate and nothing is printed.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from harness import init_data_dir, running_server, serving
from server_util import Api, blob_ref, err, ok

from pds.store.backup import MARKER, BackupError, backup
from pds.store.format import CURRENT, FormatError, read_format, require_current
from pds.store.restore import restore
from pds.store.seqlog import EventLog
from pds.store.verify import verify_data_dir

NOTE = "com.example.note"
# Trees a repeated backup mirrors exactly (per account: all but blocks/ and blobs/).
MIRRORED_TOPS = ("handles", "emails", "invites", "well-known")


@dataclass
class History:
    data: Path          # the source data dir, its server stopped
    first: Path         # the backup taken while it served, before the changes below
    alice: dict         # did, handle, password, posts, blob, revoked + kept refresh tokens
    bob_did: str        # deleted after the first backup
    carol_handle: str   # carol's handle at the first backup (changed since)


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Iterator[History]:
    base = tmp_path_factory.mktemp("history")
    with running_server(base, workers=1) as server, Api(server) as api:
        alice, bob, carol = (api.create_account(n) for n in ("alice", "bob", "carol"))
        posts = [ok(api.create_record(alice, {"text": f"post {i}"}, NOTE, rkey=f"p{i}"))
                 for i in range(3)]
        up = ok(api.post("com.atproto.repo.uploadBlob", content=os.urandom(4000),
                         token=alice.access, headers={"Content-Type": "image/png"}))["blob"]
        ok(api.create_record(alice, {"image": blob_ref(up)}, "com.example.pic", rkey="pic"))
        ok(api.create_record(bob, {"text": "bob was here"}, NOTE))
        # A second session of alice's: the one she revokes after the first backup.
        revoked = ok(api.post("com.atproto.server.createSession",
                              {"identifier": alice.handle, "password": alice.password}))
        first = base / "first"
        out = backup(server.data_dir, first)
        assert out["accounts"] == 3 and not out["incremental"]
        # After the first backup: a logout, an account deletion, a handle change.
        ok(api.post("com.atproto.server.deleteSession", token=revoked["refreshJwt"]))
        err(api.post("com.atproto.server.refreshSession", token=revoked["refreshJwt"]),
            400, "ExpiredToken")
        ok(api.post("com.atproto.admin.deleteAccount", {"did": bob.did},
                    headers=api.admin_headers()))
        ok(api.post("com.atproto.identity.updateHandle", {"handle": "carol2.test"},
                    token=carol.access))
        ok(api.create_record(alice, {"text": "after the first backup"}, NOTE, rkey="late"))
    yield History(server.data_dir, first,
                  {"did": alice.did, "handle": alice.handle, "password": alice.password,
                   "posts": posts, "blob": up["ref"]["$link"],
                   "revoked": revoked["refreshJwt"], "kept": alice.refresh},
                  bob.did, carol.handle)


def copy_of(path: Path, dest: Path) -> Path:
    shutil.copytree(path, dest, symlinks=True)
    return dest


def files(root: Path, *, skip_transient: bool = True) -> dict[str, int]:
    """Every file and directory under `root` (relative path -> permission bits), lock
    files and tmp/ left out."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root)
        if rel.parts[:1] == ("tmp",):
            continue
        for n in dirnames + filenames:
            if skip_transient and (n == "LOCK" or n.endswith(".LOCK")):
                continue
            p = Path(dirpath) / n
            out[str(rel / n)] = stat.S_IMODE(p.lstat().st_mode)
    return out


def under(tree: dict[str, int], prefix: str) -> set[str]:
    return {k for k in tree if k == prefix or k.startswith(prefix + "/")}


def sessions(root: Path, did: str) -> set[str]:
    d = root / "accounts" / did / "sessions"
    return set(os.listdir(d)) if d.is_dir() else set()


# --- incremental backups ------------------------------------------------------------------------


def test_incremental_backup_mirrors_small_files_and_keeps_blocks(history: History,
                                                                 tmp_path: Path) -> None:
    """Backing up into the first backup again: what the source deleted since (a revoked
    session, a deleted account, a released handle and its well-known file) is deleted
    from the backup too; blocks stay incremental."""
    dest = copy_of(history.first, tmp_path / "backup")
    did = history.alice["did"]
    blocks_before = under(files(dest), f"accounts/{did}/blocks")
    assert len(sessions(dest, did)) == 2 and (dest / "accounts" / history.bob_did).is_dir()
    assert (dest / "handles" / history.carol_handle).exists()

    out = backup(history.data, dest)
    assert out["incremental"] and out["accounts"] == 2

    assert sessions(dest, did) == sessions(history.data, did)
    assert len(sessions(dest, did)) == 1
    assert not (dest / "accounts" / history.bob_did).exists()
    assert not (dest / "handles" / history.carol_handle).exists()
    src, got = files(history.data), files(dest)
    for top in MIRRORED_TOPS:
        assert under(got, top) == under(src, top), top
    for acct in os.listdir(history.data / "accounts"):
        a = f"accounts/{acct}"
        mine = {k for k in under(src, a) if not k.startswith((f"{a}/blocks", f"{a}/blobs"))
                and k not in (f"{a}/export.car", f"{a}/HEAD.next")}
        theirs = {k for k in under(got, a) if not k.startswith((f"{a}/blocks", f"{a}/blobs"))
                  and k not in (f"{a}/export.car", f"{a}/HEAD.next")}
        assert mine == theirs, (acct, mine ^ theirs)
    assert blocks_before <= under(got, f"accounts/{did}/blocks")
    report = verify_data_dir(dest)
    assert report.ok, report.problems


def test_backup_carries_the_format(history: History, tmp_path: Path) -> None:
    assert read_format(history.first) == read_format(history.data) == CURRENT
    assert (history.first / "FORMAT").read_bytes() == (history.data / "FORMAT").read_bytes()
    restored = tmp_path / "restored"
    restore(history.first, restored)
    assert (restored / "FORMAT").read_bytes() == (history.data / "FORMAT").read_bytes()


# --- restore --------------------------------------------------------------------------------


def test_restore_of_an_older_backup_revives_no_session(history: History,
                                                      tmp_path: Path) -> None:
    """The first backup holds alice's two sessions; one was revoked after it was taken.
    After a restore of that backup neither refresh token works (nothing can tell which
    were revoked since), logging in does, and the data is there."""
    first = copy_of(history.first, tmp_path / "first")
    did = history.alice["did"]
    assert len(sessions(first, did)) == 2
    restored = tmp_path / "restored"
    out = restore(first, restored)
    assert out["accounts"] == 3 and out["sessions_dropped"] >= 4  # 2 of alice's + others
    assert sessions(restored, did) == set()
    assert not (restored / MARKER).exists()
    assert verify_data_dir(restored).ok
    with serving(restored, workers=1, wait=60) as server, \
            httpx.Client(base_url=server.url, timeout=60) as http:
        for token in (history.alice["revoked"], history.alice["kept"]):
            r = http.post("/xrpc/com.atproto.server.refreshSession",
                          headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 400 and r.json()["error"] == "ExpiredToken", r.text
        r = http.post("/xrpc/com.atproto.server.createSession",
                      json={"identifier": history.alice["handle"],
                            "password": history.alice["password"]})
        assert r.status_code == 200, r.text
        for post in history.alice["posts"]:
            rkey = post["uri"].rsplit("/", 1)[1]
            r = http.get("/xrpc/com.atproto.repo.getRecord",
                         params={"repo": did, "collection": NOTE, "rkey": rkey})
            assert r.status_code == 200 and r.json()["cid"] == post["cid"], r.text
        r = http.get("/xrpc/com.atproto.sync.getBlob",
                     params={"did": did, "cid": history.alice["blob"]})
        assert r.status_code == 200, r.text


def test_a_restored_pds_backs_up_into_its_old_backup(history: History, tmp_path: Path) -> None:
    """A restore keeps who the PDS is: its old backups still take incremental backups."""
    restored = tmp_path / "restored"
    restore(history.first, restored)
    dest = copy_of(history.first, tmp_path / "backup")
    assert backup(restored, dest)["incremental"]


def test_a_restored_pds_does_not_back_up_into_a_newer_backup(history: History,
                                                            tmp_path: Path) -> None:
    """Restored from the first backup, the PDS is behind a backup made later: that one
    holds events the restored PDS will number again, so it is refused."""
    newer = tmp_path / "newer"
    backup(history.data, newer)
    restored = tmp_path / "restored"
    restore(history.first, restored)
    with pytest.raises(BackupError, match="restored from an older backup"):
        backup(restored, newer)
    assert json.loads((newer / MARKER).read_text())["finished"]


def test_restore_keeps_everything_but_sessions(history: History, tmp_path: Path) -> None:
    restored = tmp_path / "restored"
    restore(history.first, restored)
    want = {k: m for k, m in files(history.first).items()
            if "/sessions" not in k and k != MARKER}
    got = files(restored)
    assert set(got) >= set(want), set(want) - set(got)
    # What announces the restore (test_restore_announcements.py): the floor, events from
    # the floor on (in their own shard), each active repo's new commit, and where seq/ is.
    floor = EventLog(restored / "seq", restored / "tmp").floor()
    shard = f"seq/{floor // 100_000:08d}"
    new_commits = {f"accounts/{p['did']}/blocks/{p['cid'][-2:]}/{p['cid']}"
                   for p in _sync_events(restored) if p["seq"] >= floor}
    announced = {"seq/FLOOR", "seq/INODE", shard} | new_commits | \
        {k.rsplit("/", 1)[0] for k in new_commits}
    extra = {k for k in set(got) - set(want) - announced
             if not k.endswith(("HEAD.next", "journal.log"))
             and not (k.startswith(shard + "/") and int(k.rsplit("/", 1)[1]) >= floor)}
    assert not extra, extra
    assert len(new_commits) == 3  # alice, bob and carol, all active in this backup
    for k, mode in want.items():
        assert got[k] == mode, (k, oct(got[k]), oct(mode))
        p, q = history.first / k, restored / k
        if p.is_file() and not k.endswith(("HEAD", "CHECKPOINT", "revs")):
            assert p.read_bytes() == q.read_bytes(), k


def _sync_events(root: Path) -> list[dict]:
    """The #sync payloads of a data dir's event log, with the commit's CID as text."""
    from server_util import seq_events

    from pds.repo.car import read_car_blocks
    out = []
    for _seq, header, payload in seq_events(root):
        if header.get("t") == "#sync":
            cid, _blocks = read_car_blocks(payload["blocks"])
            out.append({**payload, "cid": cid.encode()})
    return out


# --- permissions --------------------------------------------------------------------------------


def _make_private(root: Path) -> None:
    """What the service's UMask=0027 and `install -d -m 0750` make: dirs 0750, files
    0640, pds.env and signing keys 0600 (as written)."""
    os.chmod(root, 0o750)
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            os.chmod(Path(dirpath) / d, 0o750)
        for f in filenames:
            p = Path(dirpath) / f
            if stat.S_IMODE(p.stat().st_mode) != 0o600:
                os.chmod(p, 0o640)


def test_backup_and_restore_keep_permission_bits(history: History, tmp_path: Path) -> None:
    data = copy_of(history.data, tmp_path / "data")
    _make_private(data)
    did = history.alice["did"]
    assert stat.S_IMODE((data / "pds.env").stat().st_mode) == 0o600
    assert stat.S_IMODE((data / "accounts" / did / "signing.key").stat().st_mode) == 0o600
    dest = tmp_path / "backups" / "today"
    backup(data, dest)
    src, got = files(data), files(dest)
    assert stat.S_IMODE(dest.stat().st_mode) == 0o750
    for k, mode in got.items():
        if k in src:
            assert mode == src[k], (k, oct(mode), oct(src[k]))
    assert got["pds.env"] == 0o600 and got[f"accounts/{did}/signing.key"] == 0o600
    assert not any(m & 0o007 for k, m in got.items() if k != MARKER), \
        {k: oct(m) for k, m in got.items() if m & 0o007}
    restored = tmp_path / "restored"
    restore(dest, restored)
    assert stat.S_IMODE(restored.stat().st_mode) == 0o750
    back = files(restored)
    for k, mode in back.items():
        if k in got:
            assert mode == got[k], (k, oct(mode), oct(got[k]))
    assert back["pds.env"] == 0o600 and back[f"accounts/{did}/signing.key"] == 0o600


def test_a_new_backup_dir_is_not_open_to_others(history: History, tmp_path: Path) -> None:
    """Even from a source that is (wrongly) 0755, the new top directory is not."""
    data = copy_of(history.data, tmp_path / "data")
    os.chmod(data, 0o755)
    dest = tmp_path / "backup"
    backup(data, dest)
    assert stat.S_IMODE(dest.stat().st_mode) & 0o007 == 0


# --- refusals ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh (`pds init`) data dir, no server: enough for the refusals."""
    data = tmp_path_factory.mktemp("small") / "data"
    init_data_dir(data, "localhost:2583")
    return data


def test_backup_refuses_itself_inside_and_around(small: Path) -> None:
    for dest, word in ((small, "is the data dir itself"), (small / "backup", "inside"),
                       (small / "accounts" / "x", "inside"), (small.parent, "contains")):
        with pytest.raises(BackupError, match=word):
            backup(small, dest)
    assert not (small / "backup").exists() and not (small / "accounts" / "x").exists()


def test_backup_refuses_a_data_dir_or_a_foreign_backup(small: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    init_data_dir(other, "localhost:2583")   # same host name, another PDS
    env_before = (other / "pds.env").read_bytes()
    with pytest.raises(BackupError, match="holds a PDS data dir"):
        backup(small, other)
    assert (other / "pds.env").read_bytes() == env_before
    assert not (other / MARKER).exists()
    theirs = tmp_path / "theirs"
    backup(other, theirs)
    with pytest.raises(BackupError, match="backup of another PDS"):
        backup(small, theirs)
    assert (theirs / "pds.env").read_bytes() == env_before


def test_backup_refuses_a_non_empty_dir_and_takes_an_empty_one(small: Path,
                                                               tmp_path: Path) -> None:
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(BackupError, match="not empty"):
        backup(small, busy)
    assert os.listdir(busy) == ["notes.txt"]
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(BackupError, match="not a directory"):
        backup(small, a_file)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert backup(small, empty)["incremental"] is False
    assert backup(small, empty)["incremental"] is True
    marker = json.loads((empty / MARKER).read_text())
    assert marker["finished"] and marker["service"] == "did:web:localhost%3A2583"


def test_backup_refuses_a_source_that_is_no_data_dir_or_too_new(small: Path,
                                                                tmp_path: Path) -> None:
    with pytest.raises(FormatError, match="not a PDS data dir"):
        backup(tmp_path / "nothing", tmp_path / "b1")
    newer = copy_of(small, tmp_path / "newer")
    (newer / "FORMAT").write_text(f"{CURRENT + 1}\n")
    with pytest.raises(FormatError, match="newer than this pds"):
        backup(newer, tmp_path / "b2")
    assert not (tmp_path / "b1").exists() and not (tmp_path / "b2").exists()


def test_require_current(small: Path, tmp_path: Path) -> None:
    require_current(small)
    older = copy_of(small, tmp_path / "older")
    (older / "FORMAT").unlink()   # format 0: older is fine to read
    require_current(older)
    for bad, word in ((tmp_path / "missing", "does not exist"), (tmp_path, "has no pds.env")):
        with pytest.raises(FormatError, match=word) as e:
            require_current(bad)
        assert "--data-dir" in str(e.value)
    (older / "FORMAT").write_text(f"{CURRENT + 1}\n")
    with pytest.raises(FormatError, match=f"data format {CURRENT + 1}, newer"):
        require_current(older)
    assert issubclass(FormatError, ValueError) and issubclass(BackupError, ValueError)


def test_restore_refuses(small: Path, tmp_path: Path) -> None:
    bk = tmp_path / "bk"
    backup(small, bk)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep").write_text("x")
    with pytest.raises(BackupError, match="not empty"):
        restore(bk, busy)
    assert os.listdir(busy) == ["keep"]
    for dest, word in ((bk, "is the data dir itself"), (bk / "sub", "inside"),
                       (tmp_path, "contains")):
        with pytest.raises(BackupError, match=word):
            restore(bk, dest)
    with pytest.raises(BackupError, match="not a backup"):
        restore(tmp_path / "nothing", tmp_path / "r1")
    # An unfinished backup (its marker says so) is refused.
    unfinished = copy_of(bk, tmp_path / "unfinished")
    marker = json.loads((unfinished / MARKER).read_text())
    (unfinished / MARKER).write_text(json.dumps({**marker, "finished": None}))
    with pytest.raises(BackupError, match="incomplete"):
        restore(unfinished, tmp_path / "r2")
    newer = copy_of(bk, tmp_path / "newer")
    (newer / "FORMAT").write_text(f"{CURRENT + 1}\n")
    with pytest.raises(FormatError, match="newer"):
        restore(newer, tmp_path / "r3")
    for name in ("r1", "r2", "r3"):
        assert not (tmp_path / name).exists()
    assert not [n for n in os.listdir(tmp_path) if ".restore-" in n]
    # An existing empty directory is a fine destination.
    empty = tmp_path / "empty"
    empty.mkdir()
    restore(bk, empty)
    assert (empty / "pds.env").exists() and verify_data_dir(empty).ok


def test_a_failed_restore_leaves_nothing(small: Path, tmp_path: Path) -> None:
    """A restore interrupted mid-copy (Ctrl-C, raised from its progress callback), or
    whose destination is taken while it runs, leaves neither a restored data dir nor a
    staging directory behind."""
    bk = tmp_path / "bk"
    backup(small, bk)

    def interrupt(stage: str, done: int, total: int | None) -> None:
        if stage == "files":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        restore(bk, tmp_path / "restored", progress=interrupt)
    assert sorted(os.listdir(tmp_path)) == ["bk"]

    dest = tmp_path / "dest"
    dest.mkdir()

    def intrude(stage: str, done: int, total: int | None) -> None:
        if stage == "replay":
            (dest / "someone-else").write_text("x")

    with pytest.raises(BackupError, match="changed while the restore ran"):
        restore(bk, dest, progress=intrude)
    assert os.listdir(dest) == ["someone-else"]
    assert sorted(os.listdir(tmp_path)) == ["bk", "dest"]


def test_sockets_and_fifos_in_a_data_dir_are_left_out(small: Path, tmp_path: Path) -> None:
    """A unix socket bound in the data dir (PDS_BIND=unix:...) or a FIFO is no data: the
    backup neither fails on it nor waits for a writer."""
    data = copy_of(small, tmp_path / "data")
    fifo, sock_path = data / "well-known" / "fifo", data / "pds.sock"
    os.mkfifo(fifo)
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(sock_path))
        backup(data, tmp_path / "bk")
    finally:
        sock.close()
        # Not left for the end-of-run check of every data dir against README's layout:
        # they are this test's, not the program's.
        fifo.unlink()
        sock_path.unlink(missing_ok=True)
    assert not (tmp_path / "bk" / "well-known" / "fifo").exists()
    assert not (tmp_path / "bk" / "pds.sock").exists()
    restore(tmp_path / "bk", tmp_path / "restored")


# --- progress -------------------------------------------------------------------------------


def test_progress_is_reported_modestly_and_nothing_is_printed(
        history: History, tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    calls: dict[str, list[tuple[str, int, int | None]]] = {}

    def recorder(name: str):
        def progress(stage: str, done: int, total: int | None) -> None:
            calls.setdefault(name, []).append((stage, done, total))
        return progress

    dest = tmp_path / "backup"
    out = backup(history.data, dest, progress=recorder("backup"))
    restored = tmp_path / "restored"
    rout = restore(dest, restored, progress=recorder("restore"))
    report = verify_data_dir(restored, progress=recorder("verify"))
    assert report.ok, report.problems
    printed = capfd.readouterr()
    assert printed.out == "" and printed.err == ""

    n = out["accounts"]
    b = calls["backup"]
    assert ("accounts", n, n) in b and ("heads", 1, n) in b
    assert ("files", out["files"], out["files"]) in b
    assert len(b) <= 4 * n + out["files"] // 1000 + 10, b
    r = calls["restore"]
    assert ("files", rout["files"], rout["files"]) in r and ("accounts", n, n) in r
    v = calls["verify"]
    assert [c for c in v if c[0] == "accounts"] == [("accounts", i + 1, n) for i in range(n)]
    assert ("blocks", report.blocks, report.blocks) in v
    assert ("events", report.events, report.events) in v
    assert len(v) <= n + report.blocks // 1000 + report.events // 1000 + 4, v


def test_counted_stages_report_every_thousand() -> None:
    from pds.store.progress import Ticker
    seen = []
    t = Ticker(lambda s, d, tot: seen.append((s, d, tot)))
    for _ in range(2500):
        t.tick("blocks")
    t.end("blocks")
    assert seen == [("blocks", 1000, None), ("blocks", 2000, None), ("blocks", 2500, 2500)]


def test_restore_does_not_migrate(small: Path, tmp_path: Path) -> None:
    """A backup of an older data dir (format 0: no FORMAT) is restored as it is: `pds
    serve` migrates it when it starts, as for any older data dir."""
    old = copy_of(small, tmp_path / "old")
    (old / "FORMAT").unlink()
    bk = tmp_path / "bk"
    backup(old, bk)
    assert not (bk / "FORMAT").exists()
    restored = tmp_path / "restored"
    restore(bk, restored)
    assert not (restored / "FORMAT").exists() and read_format(restored) == 0

