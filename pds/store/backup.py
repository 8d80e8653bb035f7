"""`pds backup DEST`: a consistent copy of a live data dir, made while it serves.

Order is what makes it consistent without stopping writers:
1. note `seq/CHECKPOINT` (events up to it have their files on disk);
2. snapshot every account's HEAD: a HEAD is written after its blocks, and blocks are
   never rewritten, so everything a snapshotted HEAD reaches exists now;
3. copy blocks, blobs and the rest (files that already exist in DEST with the same size
   are skipped: blocks and blobs never change, so repeated backups are incremental);
4. copy the event log last, with CHECKPOINT set back to the value of step 1, and replay it
   into the copy: commits made during the copy are restored from their events;
5. copy (again) the blobs that the replayed commits' records reference, with their
   metadata: a blob uploaded after step 3 is not in the copy yet, and one copied while it
   was still an unreferenced upload has stale metadata. A blob that is gone from the
   source by then was dropped by a commit made after step 4: copy the new events, replay
   them, and look again;
6. mend what step 3 caught half-deleted: a blob's metadata copied but not its file.
Every write acknowledged before the backup began is in the copy.

What a repeated backup into the same DEST does with what the source deleted since:
- blocks, blobs and events are incremental: content-addressed or append-only, they are
  copied once and never removed (a blob or an expired event deleted in the source stays);
- everything else is small mutable state and is mirrored exactly: account records,
  signing keys, HEAD, refresh sessions, app passwords, handle and email claims, invite
  codes, well-known files, tombstones of deleted accounts, the mail spool (mail the SMTP
  server has not accepted yet), and whole accounts. A session
  revoked, a handle released or an account deleted in the source is gone from the copy
  too (and the deleted account's tombstone is in it), so a backup never brings back
  what was taken away before it was made. (Restoring an older backup is the other half:
  `restore` drops every refresh session, see restore.py.)

DEST must be new, empty, or a previous backup of this same PDS: `BACKUP` (the marker this
module writes first and completes last) names the service and a fingerprint of its PLC
rotation key, so a backup of another PDS, a live data dir or any other non-empty
directory is refused instead of being overwritten or mirrored away.

Files keep the source's permission bits (pds.env and signing keys 0600), directories
too, and a new DEST is never readable by others.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import time
from pathlib import Path

from .blobs import EXPECTED
from .blocks import shard_path
from .copying import copy_dir, copy_file, make_dir, make_parents, private_mode, remove, umask_like
from .envfile import parse_env_file
from .files import fsync_dir, read_file, write_file
from .format import require_current
from .journal import syncfs
from .layout import (
    ACCOUNT_JSON,
    ACCOUNTS,
    BACKUP_MARKER,
    BLOBS,
    BLOCKS,
    CHECKPOINT,
    CHECKPOINT_LOCK,
    EMAILS,
    ENV_FILE,
    FORMAT_FILE,
    HANDLES,
    HEAD,
    HEAD_SPARE,
    INVITES,
    MAIL,
    OAUTH,
    OAUTH_JTI,
    OAUTH_LOCK,
    SEQ,
    SEQ_FLOOR,
    SEQ_HEAD,
    SEQ_HEAD_SPARE,
    SEQ_INODE,
    SIGNING_KEY,
    SNAPSHOT,
    TMP,
    TOMBSTONES,
    WELL_KNOWN,
    DataDir,
)
from .progress import Progress, Ticker
from .recovery import recover
from .seqlog import EventLog

MARKER = BACKUP_MARKER  # at the top of a backup: what it is a backup of, and whether it finished

# Per-account files copied with the HEAD snapshot (small, may change).
_ACCOUNT_FIRST = (ACCOUNT_JSON, SIGNING_KEY, HEAD)
# Content-addressed per-account trees: incremental, never mirrored.
_ACCOUNT_IMMUTABLE = (BLOCKS, BLOBS)
# Derived (the export snapshot, rebuilt on the first export) or a spare: left out.
_ACCOUNT_LEFT_OUT = (SNAPSHOT, HEAD_SPARE)
# Top-level trees of small mutable files: mirrored.
_TOP_DIRS = (HANDLES, EMAILS, INVITES, WELL_KNOWN, TOMBSTONES, MAIL)
_SEQ_ROUNDS = 10  # step 5 repeats at most this often (each round is a short window)


class BackupError(ValueError):
    """A backup or restore refused; the message says why and what to do instead."""


def _copy_tree(src: Path, dst: Path, skip: tuple[str, ...] = (), immutable: bool = False,
               mirror: bool = False, ticker: Ticker | None = None,
               stage: str = "files") -> None:
    """One of the backup's copy steps (a hook for tests to act between steps)."""
    copy_dir(src, dst, skip=skip, if_same_size=immutable, mirror=mirror, ticker=ticker,
             stage=stage)


# --- what a backup is a backup of --------------------------------------------------------------


def identity(root: Path) -> dict:
    """Who a data dir is: its service DID and a fingerprint of its PLC rotation key (the
    JWT secret where there is none). Both are generated by `pds init` and kept by a
    restore, so a restored PDS still backs up into its old backups; a different PDS,
    even on the same host name, does not."""
    env = parse_env_file(root / ENV_FILE)
    hostname = env.get("PDS_HOSTNAME", "")
    secret = env.get("PDS_PLC_ROTATION_KEY") or env.get("PDS_JWT_SECRET") or ""
    digest = hashlib.sha256(b"pds backup identity\0" + secret.encode()).hexdigest()[:32]
    return {"service": "did:web:" + hostname.replace(":", "%3A"), "fingerprint": digest}


def read_marker(root: Path) -> dict | None:
    """The BACKUP marker of a directory: None when it has none; `{}` when unreadable."""
    data = read_file(root / MARKER)
    if data is None:
        return None
    try:
        marker = json.loads(data)
    except ValueError:
        return {}
    return marker if isinstance(marker, dict) else {}


def _write_marker(dest: Path, marker: dict) -> None:
    write_file(dest / MARKER, (json.dumps(marker, indent=1) + "\n").encode(), dest / TMP,
               mode=0o640)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def check_apart(src: Path, dest: Path, what: str) -> None:
    """Refuse a destination that is `src`, lies inside it or contains it (paths resolved)."""
    if dest == src or (dest.exists() and os.path.samefile(dest, src)):
        raise BackupError(f"the {what} destination {dest} is the data dir itself; choose "
                          "another directory")
    if src in dest.parents:
        raise BackupError(f"the {what} destination {dest} is inside {src}; choose a "
                          "directory outside it")
    if dest in src.parents:
        raise BackupError(f"the {what} destination {dest} contains {src}; choose a "
                          "directory outside it")


def last_seq(seq_dir: Path) -> int:
    """The highest seq an event log holds or has published (0 when none): its HEAD, or
    the last event file where that is ahead."""
    log = EventLog(seq_dir, seq_dir)
    try:
        head = log.head()
    except ValueError:
        head = 0
    for shard in reversed(log.shards()):
        names = [int(n) for n in os.listdir(seq_dir / f"{shard:08d}") if n.isdigit()]
        if names:
            return max(head, *names)
    return head


def _lost_event(src: Path, dest: Path) -> int | None:
    """A seq of an event in DEST that the source's history never had (restored from a
    backup older than DEST since), or None. Each restore raised the source's seq floor
    and noted the head it restored (seqlog.py): the seqs between the two are events the
    source lost, and a DEST holding one of them is of the lost history. (A restore by an
    earlier version raised no floor: then the source's log ends before DEST's does.)"""
    src_log, dest_log = EventLog(src / SEQ, src / TMP), EventLog(dest / SEQ, dest / TMP)
    floors = src_log.floors()
    for floor, head in floors:
        lost = next(dest_log.seqs(head, floor - 1), None)
        if lost is not None:
            return lost
    theirs, ours = last_seq(dest / SEQ), last_seq(src / SEQ)
    return theirs if not floors and theirs > ours else None


def _check_destination(src: Path, dest: Path, ident: dict) -> bool:
    """Refuse a destination backup() must not write to; True when it is a previous
    backup of this PDS (an incremental backup), False when it is new or empty."""
    check_apart(src, dest, "backup")
    if not dest.exists():
        return False
    if not dest.is_dir():
        raise BackupError(f"the backup destination {dest} exists and is not a directory")
    marker = read_marker(dest)
    if marker is not None:
        if marker.get("service") == ident["service"] and \
                marker.get("fingerprint") == ident["fingerprint"]:
            lost = _lost_event(src, dest)
            if lost is not None:
                # This PDS went back in time (restored from an older backup): DEST holds
                # events its history no longer has, which would mix with the new ones.
                raise BackupError(
                    f"{dest} holds event {lost}, which this data dir no longer has: it was "
                    "made before this PDS was restored from an older backup; back up into "
                    "a new directory")
            return True
        if not marker:
            raise BackupError(f"{dest} has an unreadable {MARKER} file, so it can't be told "
                              "to be a backup of this PDS; back up into a new directory")
        raise BackupError(f"{dest} is a backup of another PDS ({marker.get('service')}); "
                          "back up into a new directory")
    if (dest / ENV_FILE).exists():
        raise BackupError(f"{dest} holds a PDS data dir (it has {ENV_FILE}) that is not a "
                          f"backup of {src}; refusing to overwrite it: back up into a new "
                          "directory")
    if any(os.scandir(dest)):
        raise BackupError(f"{dest} is not empty and is not a previous backup of {src}; "
                          "back up into a new or empty directory")
    return False


# --- the backup --------------------------------------------------------------------------------


def backup(src_root: str | os.PathLike, dest_root: str | os.PathLike,
           progress: Progress | None = None) -> dict:
    """Copy a data dir (live or not) to DEST so that DEST is itself a valid data dir.

    Returns counts: accounts, files (examined), replayed (commits replayed into the
    copy), incremental (DEST was a previous backup). Raises FormatError for a source that
    is not a data dir or is too new, BackupError for a destination it must not touch.
    """
    src, dest = Path(src_root).resolve(), Path(dest_root).resolve()
    require_current(src)
    ident = identity(src)
    incremental = _check_destination(src, dest, ident)
    ticker = Ticker(progress)
    src_mode = os.stat(src).st_mode
    _start(src, dest, ident, src_mode)
    checkpoint = (read_file(src / SEQ / CHECKPOINT) or b"0").decode().strip() or "0"
    accounts = sorted(os.listdir(src / ACCOUNTS)) if (src / ACCOUNTS).is_dir() else []
    _copy_heads(src, dest, accounts, ticker)
    _copy_rest(src, dest, accounts, ticker)
    # Step 4: the event log, last, then replay it into the copy.
    _copy_events(src, dest, ticker)
    ticker.end("events")
    seq_cp = src / SEQ / CHECKPOINT
    write_file(dest / SEQ / CHECKPOINT, checkpoint.encode(), dest / TMP,
               mode=stat.S_IMODE(os.stat(seq_cp).st_mode) if seq_cp.exists() else 0o640)
    replayed = _replay(src, dest, int(checkpoint), src_mode, ticker)
    _mend_lone_blob_meta(src, dest)
    syncfs(dest)
    _write_marker(dest, {**ident, "started": (read_marker(dest) or {}).get("started"),
                         "finished": _now()})
    fsync_dir(dest)
    return {"accounts": len(accounts), "files": ticker.counts.get("files", 0),
            "replayed": replayed, "incremental": incremental}


def _start(src: Path, dest: Path, ident: dict, src_mode: int) -> None:
    """DEST and its tmp/ made, and the marker written first: an interrupted backup is
    recognised (and resumed) next time, and a restore refuses it until a backup into it
    finishes."""
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        make_dir(dest, private_mode(src_mode))  # an existing top keeps its mode
    make_dir(dest / TMP, os.stat(src / TMP).st_mode if (src / TMP).is_dir() else 0o750)
    _write_marker(dest, {**ident, "started": _now(), "finished": None})


def _copy_heads(src: Path, dest: Path, accounts: list[str], ticker: Ticker) -> None:
    """Steps 1-2: the format and settings, then every account's HEAD (and records)."""
    for name in (FORMAT_FILE, ENV_FILE):  # the format: a restore must not migrate it again
        if not copy_file(src / name, dest / name):
            remove(dest / name)
    if (src / ACCOUNTS).is_dir():
        make_dir(dest / ACCOUNTS, os.stat(src / ACCOUNTS).st_mode)
    for i, did in enumerate(accounts):
        a_src, a_dst = src / ACCOUNTS / did, dest / ACCOUNTS / did
        if not a_src.is_dir():
            continue
        make_dir(a_dst, os.stat(a_src).st_mode)
        for name in _ACCOUNT_FIRST:
            if not copy_file(a_src / name, a_dst / name):
                remove(a_dst / name)  # mirrored, like the rest
        ticker.step("heads", i + 1, len(accounts))


def _copy_rest(src: Path, dest: Path, accounts: list[str], ticker: Ticker) -> None:
    """Step 3: everything else of each account (blocks and blobs incrementally, the rest
    mirrored), accounts deleted in the source removed, and the top-level trees."""
    for i, did in enumerate(accounts):
        a_src, a_dst = src / ACCOUNTS / did, dest / ACCOUNTS / did
        if a_src.is_dir():
            for name in _ACCOUNT_IMMUTABLE:
                _copy_tree(a_src / name, a_dst / name, immutable=True, ticker=ticker)
            _copy_tree(a_src, a_dst, skip=(*_ACCOUNT_IMMUTABLE, *_ACCOUNT_LEFT_OUT,
                                           *_ACCOUNT_FIRST), mirror=True, ticker=ticker)
        ticker.step("accounts", i + 1, len(accounts))
    # Accounts deleted in the source (since the last backup, or during this one) go
    # from the copy too, blocks and blobs included.
    if (dest / ACCOUNTS).is_dir():
        for did in os.listdir(dest / ACCOUNTS):
            if not (src / ACCOUNTS / did).is_dir():
                remove(dest / ACCOUNTS / did)
    for d in _TOP_DIRS:
        _copy_tree(src / d, dest / d, mirror=True, ticker=ticker)
    # OAuth grants and remembered browsers, so apps stay signed in after a restore; the
    # DPoP jti claims (minutes-long) and the lock are left out.
    _copy_tree(src / OAUTH, dest / OAUTH, skip=(OAUTH_JTI, OAUTH_LOCK), mirror=True,
               ticker=ticker)
    ticker.end("files")


def _replay(src: Path, dest: Path, checkpoint: int, src_mode: int, ticker: Ticker) -> int:
    """Steps 4-5: the copied events rolled forward into the copy, and the blobs of the
    replayed commits copied (again, as long as the source drops some meanwhile). The
    repos' own journals are not replayed: a live source's journal holds only what its
    last checkpoint left, which need not reach back to the HEAD copied in step 2 (the
    commits it acknowledged before the backup began are in that HEAD)."""
    data = DataDir(dest)
    ticker.step("replay", 0, None)
    with umask_like(src_mode):
        replayed = recover(data, journals=False)
        after = checkpoint
        for _ in range(_SEQ_ROUNDS):
            if not _copy_replayed_blobs(src, dest, after):
                break
            after = EventLog(data.seq, data.tmp).checkpoint()
            _copy_events(src, dest, ticker)
            replayed += recover(data, journals=False)
        else:
            raise RuntimeError("blobs kept disappearing from the source during the backup; "
                               "run it again")
    ticker.step("replay", replayed, replayed)
    return replayed


def _mend_lone_blob_meta(src: Path, dest: Path) -> None:
    """Step 6: no blob metadata without its file in the copy. A blob is deleted file
    first, then metadata, and step 3 copies a shard in directory order, so a blob
    deleted meanwhile can be in the copy as its metadata alone. Such a blob is copied
    again when the source has it (file, then metadata), else its metadata leaves the
    copy: the source deleted it, so the commit that dropped its last reference came
    before the deletion and is in the copied events, or it was an unreferenced upload
    that expired. (Metadata of a blob an imported repo expects has no file by design.)"""
    accounts = dest / ACCOUNTS
    for did in os.listdir(accounts) if accounts.is_dir() else ():
        root = accounts / did / BLOBS
        for shard in os.listdir(root) if root.is_dir() else ():
            try:
                names = set(os.listdir(root / shard))
            except NotADirectoryError:
                continue
            for meta in names:
                blob = meta.removesuffix(".json")
                if blob == meta or blob in names or _expected(root / shard / meta):
                    continue
                s_dir = src / ACCOUNTS / did / BLOBS / shard
                if not (copy_file(s_dir / blob, root / shard / blob)
                        and copy_file(s_dir / meta, root / shard / meta)):
                    remove(root / shard / meta)


def _expected(meta_path: Path) -> bool:
    try:
        return bool(json.loads(read_file(meta_path) or b"{}").get(EXPECTED))
    except (ValueError, AttributeError):
        return False


def _copy_events(src: Path, dest: Path, ticker: Ticker | None = None) -> None:
    """The event log's new files (HEAD first, so it never names an event not copied).
    Incremental: events pruned from the source stay in the copy."""
    if not (src / SEQ).is_dir():
        (dest / SEQ).mkdir(exist_ok=True)
        return
    make_dir(dest / SEQ, os.stat(src / SEQ).st_mode)
    # The floor first (its lines only grow: a copy of the same size may still differ),
    # then HEAD. INODE is the source's own seq/ (restored.py): a copy has another.
    if not copy_file(src / SEQ / SEQ_FLOOR, dest / SEQ / SEQ_FLOOR):
        remove(dest / SEQ / SEQ_FLOOR)
    copy_file(src / SEQ / SEQ_HEAD, dest / SEQ / SEQ_HEAD)
    _copy_tree(src / SEQ, dest / SEQ,
               skip=(CHECKPOINT, CHECKPOINT_LOCK, SEQ_HEAD, SEQ_HEAD_SPARE, SEQ_FLOOR,
                     SEQ_INODE),
               immutable=True, ticker=ticker, stage="events")


def _copy_replayed_blobs(src: Path, dest: Path, after: int) -> bool:
    """Copy every blob (and its metadata) that a record written by a commit event after
    `after` references, if that record is still current in the copy. True when some
    such blob is gone from the source (a later commit dropped it)."""
    from ..repo import events as ev
    from ..repo.car import read_car_blocks
    from ..repo.codec import decode, find_blob_refs
    from .repo import Repo

    gone = False
    for _seq, raw in EventLog(dest / SEQ, dest / TMP).events(after=after):
        try:
            header, payload = ev.split_frame(raw)
            if header.get("t") != "#commit":
                continue
            did = payload["repo"]
            _root, blocks = read_car_blocks(payload["blocks"])
        except (ValueError, KeyError):
            continue  # unreadable: recovery skipped it too
        a_src, a_dst = src / ACCOUNTS / did, dest / ACCOUNTS / did
        if not (a_src.is_dir() and a_dst.is_dir()):
            continue  # deleted meanwhile
        repo = None
        for op in payload["ops"]:
            cid = op.get("cid")
            if op.get("action") == "delete" or cid is None or cid not in blocks:
                continue
            refs = list(find_blob_refs(decode(blocks[cid])))
            if not refs:
                continue
            repo = repo or Repo(a_dst, dest / TMP, did)
            current = repo.get_record(op["path"])
            if current is None or current[0] != cid:
                continue  # changed again by a later replayed commit
            for ref in refs:
                name = ref.cid.encode()
                b_src = shard_path(a_src / BLOBS, name)
                b_dst = shard_path(a_dst / BLOBS, name)
                meta_src = b_src.with_name(name + ".json")
                if not (meta_src.exists() and b_src.exists()):
                    gone = True
                    continue
                make_parents(b_src, b_dst, a_src / BLOBS)
                copy_file(b_src, b_dst, if_same_size=True)
                copy_file(meta_src, b_dst.with_name(name + ".json"))
    return gone


