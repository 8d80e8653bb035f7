"""`pds restore BACKUP`: make a data dir from a backup.

The destination must not exist or be empty. The restore is built in a staging directory
next to it (same filesystem) and renamed into place only when complete and recovered, so
a restore that fails or is interrupted leaves no half-made data dir behind (at worst a
`.<name>.restore-*` staging directory, if the process was killed outright).

The copy is exact (FORMAT included, so nothing is migrated again; permission bits kept)
except for:
- every refresh session (`accounts/<did>/sessions/`): a backup is older than the PDS it
  replaces, and a session revoked after the backup was taken (a logout, a password
  change, a takedown) would work again if it came back. Nothing in the backup can tell
  which sessions were revoked since, so none is restored: everyone logs in again. Access
  tokens are not stored at all; the ones issued before expire within two hours, as they
  do after a logout.
- the backup's own `BACKUP` marker, lock files and the contents of `tmp/`;
- what announces the restore to relays (restored.py): the event log's seq floor (FLOOR),
  #account, #identity and #sync events, and a new (empty) commit of every active repo.

A backup whose `pds backup` did not finish (its marker says so) is refused.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
from pathlib import Path

from .backup import MARKER, BackupError, check_apart, read_marker
from .copying import copy_dir, copy_file, is_transient, make_dir, private_mode, umask_like
from .files import fsync_dir
from .format import require_current
from .journal import syncfs
from .layout import ACCOUNT_JSON, ACCOUNTS, ENV_FILE, SESSIONS, TMP, DataDir
from .progress import Progress, Ticker
from .recovery import recover
from .restored import announce_restore

# Per-account directories a restore leaves out (see above).
DROPPED = (SESSIONS,)


def restore(backup_dir: str | os.PathLike, dest_dir: str | os.PathLike,
            progress: Progress | None = None) -> dict:
    """Restore the backup (or stopped data dir) `backup_dir` into `dest_dir`, which must
    not exist or be empty. Returns counts: accounts, files, replayed (commits replayed by
    recovery), sessions_dropped; floor (the event log's new seq floor) and synced
    (accounts announced with #sync). Raises BackupError for what it refuses, FormatError for a
    backup newer than this program."""
    src, dest = Path(backup_dir).resolve(), Path(dest_dir).resolve()
    if not src.is_dir() or not (src / ENV_FILE).is_file():
        raise BackupError(f"{src} is not a backup (no {ENV_FILE} in it)")
    marker = read_marker(src)
    if marker is not None and not marker.get("finished"):
        raise BackupError(f"the backup in {src} is incomplete (its `pds backup` did not "
                          "finish); run that backup again, or restore another one")
    require_current(src)
    check_apart(src, dest, "restore")
    _check_destination(dest)
    parent = dest.parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = parent / f".{dest.name}.restore-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        os.mkdir(staging, 0o700)
    except PermissionError as e:
        raise BackupError(f"can't create a staging directory in {parent} ({e.strerror}); "
                          f"run pds restore as a user that may write there") from None
    ticker = Ticker(progress)
    src_mode = os.stat(src).st_mode
    try:
        dropped = _copy(src, staging, ticker)
        ticker.step("replay", 0, None)
        with umask_like(src_mode):
            replayed = recover(DataDir(staging))
            # The event log's seq floor above every seq this PDS emitted before, and
            # #account, #identity and #sync per account (restored.py), so relays neither
            # drop the host for going back nor keep a stale view of its repos. Here: in
            # the staging dir, after recovery, before the rename makes it the data dir
            # (which keeps seq/'s inode, so `pds serve` sees no copy).
            announced = announce_restore(DataDir(staging))
        ticker.step("replay", replayed, replayed)
        syncfs(staging)
        os.chmod(staging, private_mode(src_mode))
        try:
            os.rename(staging, dest)  # replaces an empty directory; refuses a non-empty one
        except OSError as e:
            if e.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
                raise BackupError(f"{dest} was changed while the restore ran; nothing "
                                  "was restored, try again") from None
            raise
        fsync_dir(parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    accounts = dest / ACCOUNTS
    n_accounts = sum(1 for d in os.listdir(accounts) if (accounts / d / ACCOUNT_JSON).exists()) \
        if accounts.is_dir() else 0
    return {"accounts": n_accounts, "files": ticker.counts.get("files", 0),
            "replayed": replayed, "sessions_dropped": dropped,
            "floor": announced["floor"], "synced": announced["synced"]}


def _check_destination(dest: Path) -> None:
    if not dest.exists():
        if dest.is_symlink():
            raise BackupError(f"{dest} is a dangling symlink; give the real path")
        return
    if not dest.is_dir():
        raise BackupError(f"the restore destination {dest} exists and is not a directory")
    if any(os.scandir(dest)):
        raise BackupError(f"the restore destination {dest} is not empty; restore into a new "
                          "or empty directory (move the old data dir aside first)")
    if os.stat(dest).st_dev != os.stat(dest.parent).st_dev:
        raise BackupError(f"{dest} is a mount point, so a restore can't be renamed into "
                          f"place there; restore into a directory inside it (e.g. {dest}/data) "
                          "and point PDS_DATA_DIR at that")


def _copy(src: Path, dest: Path, ticker: Ticker) -> int:
    """Copy the backup into the staging dir; returns how many session files it left out."""
    dropped = {name: 0 for name in DROPPED}
    for entry in sorted(os.scandir(src), key=lambda e: e.name):
        name = entry.name
        if name == MARKER or is_transient(name):
            continue
        if name == TMP:
            make_dir(dest / name, entry.stat().st_mode)
        elif name == ACCOUNTS and entry.is_dir(follow_symlinks=False):
            make_dir(dest / name, entry.stat().st_mode)
            dids = sorted(os.listdir(entry.path))
            for i, did in enumerate(dids):
                a_src = Path(entry.path) / did
                if a_src.is_dir() and not a_src.is_symlink():
                    copy_dir(a_src, dest / name / did, ticker=ticker, dropped=dropped)
                else:
                    copy_file(a_src, dest / name / did)
                ticker.step("accounts", i + 1, len(dids))
        elif entry.is_dir(follow_symlinks=False):
            copy_dir(Path(entry.path), dest / name, ticker=ticker)
        else:
            copy_file(Path(entry.path), dest / name)
            ticker.tick("files")
    (dest / TMP).mkdir(exist_ok=True)
    ticker.end("files")
    return sum(dropped.values())
