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

What a repeated backup into the same DEST does with what the source deleted since:
- blocks, blobs and events are incremental: content-addressed or append-only, they are
  copied once and never removed (a blob or an expired event deleted in the source stays);
- everything else is small mutable state and is mirrored exactly: account records,
  signing keys, HEAD, refresh sessions, app passwords, handle and email claims, invite
  codes, well-known files, and whole accounts. A session revoked, a handle released or an
  account deleted in the source is gone from the copy too, so a backup never brings back
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

import contextlib
import errno
import hashlib
import json
import os
import shutil
import stat
import time
from collections.abc import Iterator
from pathlib import Path

from ..config import ENV_FILE, parse_env_file
from .blocks import shard_path
from .files import fsync_dir, read_file, write_file
from .format import require_current
from .journal import syncfs
from .progress import Progress, Ticker

MARKER = "BACKUP"  # at the top of a backup: what it is a backup of, and whether it finished

# Per-account files copied with the HEAD snapshot (small, may change).
_ACCOUNT_FIRST = ("account.json", "signing.key", "HEAD")
# Content-addressed per-account trees: incremental, never mirrored.
_ACCOUNT_IMMUTABLE = ("blocks", "blobs")
# Derived (the export snapshot, rebuilt on the first export) or a spare: left out.
_ACCOUNT_LEFT_OUT = ("export.car", "HEAD.next")
# Top-level trees of small mutable files: mirrored.
_TOP_DIRS = ("handles", "emails", "invites", "well-known")
_SEQ_ROUNDS = 10  # step 5 repeats at most this often (each round is a short window)
_TMP_SUFFIX = ".backup-tmp"


class BackupError(ValueError):
    """A backup or restore refused; the message says why and what to do instead."""


# --- copying --------------------------------------------------------------------------------


def is_transient(name: str) -> bool:
    """Lock files and our own half-written copies: never copied, never mirrored away."""
    return name == "LOCK" or name.endswith((".LOCK", ".lock", _TMP_SUFFIX))


def make_dir(path: Path, mode: int) -> None:
    """`path` as a directory with permission bits `mode` (its parent exists)."""
    mode = stat.S_IMODE(mode)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        if stat.S_IMODE(os.stat(path).st_mode) == mode:
            return
    os.chmod(path, mode)


def _remove(path: Path) -> None:
    """Remove a file or a whole tree (gone already is fine)."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            os.unlink(path)
    except FileNotFoundError:
        pass


def copy_file(src: Path, dst: Path, if_same_size: bool = False) -> bool:
    """Copy `src` over `dst` atomically, with its permission bits and times (a symlink as
    a symlink); False when `src` is gone (removed meanwhile) or is no regular file (a
    socket someone bound in the data dir, a FIFO: nothing to copy, and opening a FIFO
    for reading would wait for a writer). With `if_same_size`, a
    `dst` of the same size is taken as the same file (content-addressed files never
    change) and only its permission bits are corrected. The copy is never readable by
    more people than the source file, not even while it is being written."""
    if if_same_size:
        try:
            have = os.lstat(dst)
            st = os.lstat(src)
        except FileNotFoundError:
            pass
        else:
            if have.st_size == st.st_size and stat.S_ISREG(have.st_mode):
                if stat.S_IMODE(have.st_mode) != stat.S_IMODE(st.st_mode):
                    os.chmod(dst, stat.S_IMODE(st.st_mode))
                return True
    try:
        fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return False
    except OSError as e:
        if e.errno == errno.ENXIO:  # a socket
            return False
        if e.errno != errno.ELOOP:
            raise
        return _copy_symlink(src, dst)
    tmp = dst.with_name(dst.name + _TMP_SUFFIX)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return False
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            remaining = st.st_size
            while remaining > 0:
                sent = os.sendfile(out, fd, None, min(remaining, 1 << 30))
                if sent == 0:
                    break  # the file shrank meanwhile: copy what there is
                remaining -= sent
            while chunk := os.read(fd, 1 << 20):  # ... or grew
                os.write(out, chunk)
            os.fchmod(out, stat.S_IMODE(st.st_mode))
        finally:
            os.close(out)
        os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
        os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    finally:
        os.close(fd)
    return True


def _copy_symlink(src: Path, dst: Path) -> bool:
    try:
        target = os.readlink(src)
    except FileNotFoundError:
        return False
    _remove(dst)
    os.symlink(target, dst)
    return True


def copy_dir(src: Path, dst: Path, *, skip: tuple[str, ...] = (), if_same_size: bool = False,
             mirror: bool = False, ticker: Ticker | None = None, stage: str = "files",
             dropped: dict[str, int] | None = None) -> None:
    """Copy the tree `src` into `dst` (directories with the source's permission bits).

    `skip`: names at the top of `src` neither copied nor, with `mirror`, removed.
    `if_same_size`: see `copy_file` (metadata `*.json` files are always copied).
    `mirror`: what is in `dst` but not (or no longer) in `src` is removed.
    `dropped`: names of directories left out at any depth, counting their files there.
    `ticker` counts the files under `stage`.
    """
    try:
        st = os.stat(src)
        entries = list(os.scandir(src))
    except (FileNotFoundError, NotADirectoryError):
        if mirror:
            _remove(dst)
        return
    make_dir(dst, st.st_mode)
    seen: set[str] = set()
    for entry in entries:
        name = entry.name
        if name in skip or is_transient(name):
            continue
        if dropped is not None and name in dropped and entry.is_dir(follow_symlinks=False):
            dropped[name] += sum(len(files) for _d, _s, files in os.walk(entry.path))
            continue
        seen.add(name)
        if entry.is_dir(follow_symlinks=False):
            copy_dir(Path(entry.path), dst / name, if_same_size=if_same_size, mirror=mirror,
                     ticker=ticker, stage=stage, dropped=dropped)
            continue
        copied = copy_file(Path(entry.path), dst / name,
                           if_same_size=if_same_size and not name.endswith(".json"))
        if not copied and mirror:
            _remove(dst / name)
        if ticker is not None:
            ticker.tick(stage)
    if mirror:
        for name in os.listdir(dst):
            if name not in seen and name not in skip and not is_transient(name):
                _remove(dst / name)


def _copy_tree(src: Path, dst: Path, skip: tuple[str, ...] = (), immutable: bool = False,
               mirror: bool = False, ticker: Ticker | None = None,
               stage: str = "files") -> None:
    """One of the backup's copy steps (a hook for tests to act between steps)."""
    copy_dir(src, dst, skip=skip, if_same_size=immutable, mirror=mirror, ticker=ticker,
             stage=stage)


@contextlib.contextmanager
def umask_like(mode: int) -> Iterator[None]:
    """While replaying into a copy, new files and directories get the permissions that a
    top directory of `mode` implies for its contents (0750 -> 0640 files, 0750 dirs),
    as the service's `UMask=0027` gives them in the source."""
    old = os.umask(0o777 & ~stat.S_IMODE(mode))
    try:
        yield
    finally:
        os.umask(old)


def private_mode(mode: int) -> int:
    """The permission bits of a new backup or restored dir: the source's, never open to
    others."""
    return stat.S_IMODE(mode) & ~0o007 | 0o700


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
    write_file(dest / MARKER, (json.dumps(marker, indent=1) + "\n").encode(), dest / "tmp",
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
    from .seqlog import EventLog
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
            theirs, ours = last_seq(dest / "seq"), last_seq(src / "seq")
            if theirs > ours:
                # This PDS went back in time (restored from an older backup): its new
                # events would take the seqs, and file names, of events in DEST.
                raise BackupError(
                    f"{dest} holds events up to seq {theirs}, beyond this data dir's last "
                    f"({ours}): it was made before this PDS was restored from an older "
                    "backup; back up into a new directory")
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
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        make_dir(dest, private_mode(src_mode))  # an existing top keeps its mode
    make_dir(dest / "tmp", os.stat(src / "tmp").st_mode if (src / "tmp").is_dir() else 0o750)
    # The marker first: an interrupted backup is recognised (and resumed) next time, and
    # a restore refuses it until a backup into it finishes.
    _write_marker(dest, {**ident, "started": _now(), "finished": None})

    checkpoint = (read_file(src / "seq" / "CHECKPOINT") or b"0").decode().strip() or "0"
    accounts = sorted(os.listdir(src / "accounts")) if (src / "accounts").is_dir() else []
    for name in ("FORMAT", ENV_FILE):  # the format: a restore must not migrate it again
        if not copy_file(src / name, dest / name):
            _remove(dest / name)
    if (src / "accounts").is_dir():
        make_dir(dest / "accounts", os.stat(src / "accounts").st_mode)
    # Steps 1-2: HEADs (and the account records) first.
    for i, did in enumerate(accounts):
        a_src = src / "accounts" / did
        if not a_src.is_dir():
            continue
        make_dir(dest / "accounts" / did, os.stat(a_src).st_mode)
        for name in _ACCOUNT_FIRST:
            if not copy_file(a_src / name, dest / "accounts" / did / name):
                _remove(dest / "accounts" / did / name)  # mirrored, like the rest
        ticker.step("heads", i + 1, len(accounts))
    # Step 3: everything else of each account; blocks and blobs incrementally, the rest
    # mirrored.
    for i, did in enumerate(accounts):
        a_src, a_dst = src / "accounts" / did, dest / "accounts" / did
        if a_src.is_dir():
            for name in _ACCOUNT_IMMUTABLE:
                _copy_tree(a_src / name, a_dst / name, immutable=True, ticker=ticker)
            _copy_tree(a_src, a_dst, skip=(*_ACCOUNT_IMMUTABLE, *_ACCOUNT_LEFT_OUT,
                                           *_ACCOUNT_FIRST), mirror=True, ticker=ticker)
        ticker.step("accounts", i + 1, len(accounts))
    # Accounts deleted in the source (since the last backup, or during this one) go
    # from the copy too, blocks and blobs included.
    if (dest / "accounts").is_dir():
        for did in os.listdir(dest / "accounts"):
            if not (src / "accounts" / did).is_dir():
                _remove(dest / "accounts" / did)
    for d in _TOP_DIRS:
        _copy_tree(src / d, dest / d, mirror=True, ticker=ticker)
    ticker.end("files")
    # Step 4: the event log, last, then replay it into the copy.
    _copy_events(src, dest, ticker)
    ticker.end("events")
    seq_cp = src / "seq" / "CHECKPOINT"
    write_file(dest / "seq" / "CHECKPOINT", checkpoint.encode(), dest / "tmp",
               mode=stat.S_IMODE(os.stat(seq_cp).st_mode) if seq_cp.exists() else 0o640)
    from ..config import Settings
    from ..server import recover
    settings = Settings.load(dest, env={})
    ticker.step("replay", 0, None)
    with umask_like(src_mode):
        replayed = recover(settings)
        # Step 5: the blobs of the replayed commits.
        after = int(checkpoint)
        for _ in range(_SEQ_ROUNDS):
            if not _copy_replayed_blobs(src, dest, after):
                break
            after = int((read_file(dest / "seq" / "CHECKPOINT") or b"0").decode().strip()
                        or 0)
            _copy_events(src, dest, ticker)
            replayed += recover(settings)
        else:
            raise RuntimeError("blobs kept disappearing from the source during the backup; "
                               "run it again")
    ticker.step("replay", replayed, replayed)
    syncfs(dest)
    _write_marker(dest, {**ident, "started": read_marker(dest).get("started"),
                         "finished": _now()})
    fsync_dir(dest)
    return {"accounts": len(accounts), "files": ticker.counts.get("files", 0),
            "replayed": replayed, "incremental": incremental}


def _copy_events(src: Path, dest: Path, ticker: Ticker | None = None) -> None:
    """The event log's new files (HEAD first, so it never names an event not copied).
    Incremental: events pruned from the source stay in the copy."""
    if not (src / "seq").is_dir():
        (dest / "seq").mkdir(exist_ok=True)
        return
    make_dir(dest / "seq", os.stat(src / "seq").st_mode)
    copy_file(src / "seq" / "HEAD", dest / "seq" / "HEAD")
    _copy_tree(src / "seq", dest / "seq",
               skip=("CHECKPOINT", "CHECKPOINT.LOCK", "HEAD", "HEAD.next"),
               immutable=True, ticker=ticker, stage="events")


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
                _make_parents(b_src, b_dst, a_src / "blobs")
                copy_file(b_src, b_dst, if_same_size=True)
                copy_file(meta_src, b_dst.with_name(name + ".json"))
    return gone


def _make_parents(src_file: Path, dst_file: Path, src_top: Path) -> None:
    """Make the directories above `dst_file` like those above `src_file` (up to and
    including `src_top`)."""
    rel = src_file.parent.relative_to(src_top)
    dst_top = dst_file.parents[len(rel.parts)]
    make_dir(dst_top, os.stat(src_top).st_mode)
    for i in range(1, len(rel.parts) + 1):
        part = Path(*rel.parts[:i])
        make_dir(dst_top / part, os.stat(src_top / part).st_mode)
