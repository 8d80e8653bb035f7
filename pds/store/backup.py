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
   them, and look again.
Every write acknowledged before the backup began is in the copy.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .blocks import shard_path
from .files import read_file

# Per-account files copied with the HEAD snapshot (small, may change).
_ACCOUNT_FIRST = ("account.json", "signing.key", "HEAD")
_TOP_DIRS = ("handles", "emails", "invites", "well-known")
_SEQ_ROUNDS = 10  # step 5 repeats at most this often (each round is a short window)


def _copy_file(src: Path, dst: Path, if_changed: bool = False) -> None:
    if if_changed:
        try:
            if dst.stat().st_size == src.stat().st_size:
                return
        except FileNotFoundError:
            pass
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".backup-tmp")
    try:
        shutil.copy2(src, tmp)
    except FileNotFoundError:
        return  # removed meanwhile (a temporary upload, a pruned event)
    os.replace(tmp, dst)


def _copy_tree(src: Path, dst: Path, skip: set[str] = frozenset(),
               immutable: bool = False) -> None:
    if not src.is_dir():
        return
    for dirpath, dirnames, filenames in os.walk(src):
        rel = Path(dirpath).relative_to(src)
        dirnames[:] = [d for d in dirnames if not (rel == Path(".") and d in skip)]
        for name in filenames:
            if rel == Path(".") and name in skip:
                continue
            if name.endswith((".lock", ".backup-tmp")) or name in ("LOCK",):
                continue
            # Blob metadata (<cid>.json) changes; block and blob bytes never do.
            _copy_file(Path(dirpath) / name, dst / rel / name,
                       if_changed=immutable and not name.endswith(".json"))


def backup(src_root: str | os.PathLike, dest_root: str | os.PathLike, *,
           recover: Callable[[Any], int]) -> dict:
    """Copy a data dir (live or not) to DEST so that DEST is itself a valid data dir.

    `recover(settings)` replays a data dir's event log and journals and returns how many
    commits it replayed (`pds.server.recover`, which sits above the store)."""
    src, dest = Path(src_root).resolve(), Path(dest_root).resolve()
    if not (src / "pds.env").exists():
        raise ValueError(f"{src} is not a PDS data dir")
    dest.mkdir(parents=True, exist_ok=True)
    checkpoint = (read_file(src / "seq" / "CHECKPOINT") or b"0").decode().strip() or "0"
    accounts = sorted(os.listdir(src / "accounts")) if (src / "accounts").is_dir() else []
    # Steps 1-2: HEADs (and the account records) first.
    for did in accounts:
        for name in _ACCOUNT_FIRST:
            f = src / "accounts" / did / name
            if f.exists():
                _copy_file(f, dest / "accounts" / did / name)
    # Step 3: everything else of each account; blocks and blobs incrementally.
    for did in accounts:
        a_src, a_dst = src / "accounts" / did, dest / "accounts" / did
        _copy_tree(a_src / "blocks", a_dst / "blocks", immutable=True)
        _copy_tree(a_src / "blobs", a_dst / "blobs", immutable=True)
        # The export snapshot is derived (rebuilt on the first export), HEAD.next a spare.
        _copy_tree(a_src, a_dst, skip={"blocks", "blobs", "export.car", "HEAD.next",
                                       *_ACCOUNT_FIRST})
    for d in _TOP_DIRS:
        _copy_tree(src / d, dest / d)
    _copy_file(src / "pds.env", dest / "pds.env")
    (dest / "tmp").mkdir(exist_ok=True)
    # Step 4: the event log, last, then replay it into the copy.
    _copy_events(src, dest)
    (dest / "seq" / "CHECKPOINT").write_text(checkpoint)
    from ..config import Settings
    settings = Settings.load(dest, env={})
    replayed = recover(settings)
    # Step 5: the blobs of the replayed commits.
    after = int(checkpoint)
    for _ in range(_SEQ_ROUNDS):
        if not _copy_replayed_blobs(src, dest, after):
            break
        after = int((read_file(dest / "seq" / "CHECKPOINT") or b"0").decode().strip() or 0)
        _copy_events(src, dest)
        replayed += recover(settings)
    else:
        raise RuntimeError("blobs kept disappearing from the source during the backup; "
                           "run it again")
    return {"accounts": len(accounts), "replayed": replayed}


def _copy_events(src: Path, dest: Path) -> None:
    """The event log's new files (HEAD first, so it never names an event not copied)."""
    (dest / "seq").mkdir(parents=True, exist_ok=True)
    if (src / "seq" / "HEAD").exists():
        _copy_file(src / "seq" / "HEAD", dest / "seq" / "HEAD")
    _copy_tree(src / "seq", dest / "seq",
               skip={"CHECKPOINT", "CHECKPOINT.LOCK", "HEAD", "HEAD.next"},
               immutable=True)


def _copy_replayed_blobs(src: Path, dest: Path, after: int) -> bool:
    """Copy every blob (and its metadata) that a record written by a commit event after
    `after` references, if that record is still current in the copy. True when some
    such blob is gone from the source (a later commit dropped it)."""
    from ..repo import events as ev
    from ..repo.car import read_car_blocks
    from ..repo.codec import decode, find_blob_refs
    from .repo import Repo
    from .seqlog import EventLog

    gone = False
    for _seq, raw in EventLog(dest / "seq", dest / "tmp").events(after=after):
        try:
            header, payload = ev.split_frame(raw)
            if header.get("t") != "#commit":
                continue
            did = payload["repo"]
            _root, blocks = read_car_blocks(payload["blocks"])
        except (ValueError, KeyError):
            continue  # unreadable: recovery skipped it too
        a_src, a_dst = src / "accounts" / did, dest / "accounts" / did
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
            repo = repo or Repo(a_dst, dest / "tmp", did)
            current = repo.get_record(op["path"])
            if current is None or current[0] != cid:
                continue  # changed again by a later replayed commit
            for ref in refs:
                name = ref.cid.encode()
                b_src = shard_path(a_src / "blobs", name)
                b_dst = shard_path(a_dst / "blobs", name)
                meta_src = b_src.with_name(name + ".json")
                if not (meta_src.exists() and b_src.exists()):
                    gone = True
                    continue
                _copy_file(b_src, b_dst, if_changed=True)
                _copy_file(meta_src, b_dst.with_name(name + ".json"))
    return gone
