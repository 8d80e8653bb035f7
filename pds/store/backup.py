"""`pds backup DEST`: a consistent copy of a live data dir, made while it serves.

Order is what makes it consistent without stopping writers:
1. note `seq/CHECKPOINT` (events up to it have their files on disk);
2. snapshot every account's HEAD: a HEAD is written after its blocks, and blocks are
   never rewritten, so everything a snapshotted HEAD reaches exists now;
3. copy blocks, blobs and the rest (files that already exist in DEST with the same size
   are skipped: blocks and blobs never change, so repeated backups are incremental);
4. copy the event log last, with CHECKPOINT set back to the value of step 1, and replay it
   into the copy: commits made during the copy are restored from their events.
Every write acknowledged before the backup began is in the copy.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .files import read_file

# Per-account files copied with the HEAD snapshot (small, may change).
_ACCOUNT_FIRST = ("account.json", "signing.key", "HEAD")
_TOP_DIRS = ("handles", "emails", "invites", "well-known")


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
            _copy_file(Path(dirpath) / name, dst / rel / name, if_changed=immutable)


def backup(src_root: str | os.PathLike, dest_root: str | os.PathLike) -> dict:
    """Copy a data dir (live or not) to DEST so that DEST is itself a valid data dir."""
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
        _copy_tree(a_src / "blobs", a_dst / "blobs", immutable=False)
        _copy_tree(a_src, a_dst, skip={"blocks", "blobs", *_ACCOUNT_FIRST})
    for d in _TOP_DIRS:
        _copy_tree(src / d, dest / d)
    _copy_file(src / "pds.env", dest / "pds.env")
    (dest / "tmp").mkdir(exist_ok=True)
    # Step 4: the event log, last, then replay it into the copy.
    _copy_tree(src / "seq", dest / "seq", skip={"CHECKPOINT", "CHECKPOINT.LOCK"},
               immutable=True)
    (dest / "seq").mkdir(exist_ok=True)
    (dest / "seq" / "CHECKPOINT").write_text(checkpoint)
    from ..config import Settings
    from ..server import recover
    replayed = recover(Settings.load(dest, env={}))
    return {"accounts": len(accounts), "replayed": replayed}
