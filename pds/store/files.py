"""Atomic file replacement and file locks.

Like git's refs: write a temporary file in the same filesystem, fsync it, rename it over
the target, fsync the directory. Readers see the old or the new file, never a mix.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import itertools
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

from .clock import need_disk


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a directory's entries (renames, new files) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    """Write all of `data` to `fd` (os.write may write less than asked)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def discard(fd: int, path: str | os.PathLike) -> None:
    """Close `fd` (unless it is -1) and remove the temporary file at `path`, if it is still
    there: what an upload or a staged import leaves when it is given up or done with."""
    if fd >= 0:
        os.close(fd)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def read_whole(path: str | os.PathLike) -> bytes:
    """A file's bytes through plain descriptors (no buffered file object: the store reads
    many small files). FileNotFoundError when absent; WouldBlock inside `cached_only`
    (clock.py), where a read must not touch the disk."""
    need_disk()
    fd = os.open(path, os.O_RDONLY)
    try:
        data = os.read(fd, _READ_SIZE)
        if len(data) == _READ_SIZE:
            parts = [data]
            while chunk := os.read(fd, 1 << 20):
                parts.append(chunk)
            data = b"".join(parts)
        return data
    finally:
        os.close(fd)


_READ_SIZE = 65536


class _StagingNames:
    """Staging file names, ".<pid>.<random>" (which recovery's `clean_tmp` knows): the
    random part is drawn once per process and counted on from there, rather than asking
    the kernel for randomness (and the pid) on every write. Drawn again after a fork."""

    def __init__(self) -> None:
        self.reset()
        os.register_at_fork(after_in_child=self.reset)

    def reset(self) -> None:
        self.prefix = f".{os.getpid()}.{secrets.token_hex(6)}"
        self.count = itertools.count()

    def next(self) -> str:
        return f"{self.prefix}{next(self.count):x}"


_NAMES = _StagingNames()


def _staged(data: bytes, tmp_dir: str | os.PathLike, mode: int) -> tuple[int, str]:
    """A new staging file in `tmp_dir` holding `data`: its open descriptor and path."""
    tmp = os.path.join(tmp_dir, _NAMES.next())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        write_all(fd, data)
    except BaseException:
        discard(fd, tmp)
        raise
    return fd, tmp


def write_file(path: str | os.PathLike, data: bytes, tmp_dir: str | os.PathLike,
               durable: bool = True, mode: int = 0o644) -> None:
    """Replace `path` with `data` atomically; with `durable`, fsync file and directory."""
    fd, tmp = _staged(data, tmp_dir, mode)
    try:
        if durable:
            os.fdatasync(fd)
    except BaseException:
        discard(fd, tmp)
        raise
    os.close(fd)
    try:
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(os.path.dirname(path) or ".")


def create_files(items: list[tuple[str, bytes]], tmp_dir: str | os.PathLike,
                 remake_dir: Callable[[str], None] | None = None, mode: int = 0o644) -> None:
    """Create the new files `items` ((path, data) pairs) durably, for one device flush
    where the filesystem journals, against `write_file`'s two each: the event log's
    batch (group commit), one event or several.

    Each file is renamed into place first and fsynced after: on ext4, XFS or btrfs that
    fsync commits the file's data and its rename in one journal transaction, and the
    directory's fsync that follows (POSIX asks for it) finds nothing left to commit.
    `write_file` must flush the data before the rename, so that a replaced file is never
    seen empty after a power cut; for a new name there is nothing to lose, but its bytes
    may be short for as long as this runs. So a name must not be trusted until it is
    published elsewhere after this returns (the event log's seq/HEAD), and a file that a
    power cut left short is never published (recovery drops it: `drop_torn_events`).

    Of several files, writeback of each is started before the fsyncs: the first fsync's
    journal commit then carries all of their data and names, and the fsyncs after it
    find little left (about 0.08 ms each on ext4, against a whole commit, ~0.45 ms, when
    each file's delayed allocation waits for its own fsync). `remake_dir(dir)` is called
    once when a rename finds its directory gone (an event log shard pruned meanwhile),
    then the rename is tried again. On an error, files already renamed stay, unpublished."""
    fds: list[int] = []
    dirs: dict[str, None] = {}
    try:
        for path, data in items:
            fd, tmp = _staged(data, tmp_dir, mode)
            try:
                _rename_new(tmp, path, remake_dir)
            except BaseException:
                discard(fd, tmp)
                raise
            fds.append(fd)
            dirs[os.path.dirname(path) or "."] = None
        if len(fds) > 1:
            for fd in fds:
                _start_writeback(fd)
        for fd in fds:
            os.fsync(fd)  # fsync, not fdatasync: the rename changed the inode (its ctime)
    finally:
        for fd in fds:
            os.close(fd)
    for d in dirs:
        fsync_dir(d)


def _rename_new(tmp: str, path: str, remake_dir: Callable[[str], None] | None) -> None:
    try:
        os.rename(tmp, path)
    except FileNotFoundError:
        if remake_dir is None:
            raise
        remake_dir(os.path.dirname(path))
        os.rename(tmp, path)


libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_renameat2 = getattr(libc, "renameat2", None)
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_exchange_works = _renameat2 is not None
_sync_file_range = getattr(libc, "sync_file_range", None)
if _sync_file_range is not None:
    _sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
_SYNC_FILE_RANGE_WRITE = 2


def _start_writeback(fd: int) -> None:
    """Start writing a file's dirty pages to disk without waiting (Linux's
    sync_file_range); a hint that makes a later fsync cheaper, never a durability
    promise. Does nothing where the call is missing or refused."""
    if _sync_file_range is not None:
        _sync_file_range(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)


def exchange(a: str, b: str) -> bool:
    """Swap two existing files' names in one atomic step (renameat2 RENAME_EXCHANGE):
    like a rename, readers of `b` see the old or the new file, but no inode is freed.
    False (nothing done) where the kernel or filesystem can't; OSError otherwise."""
    global _exchange_works
    if not _exchange_works or _renameat2 is None:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        _exchange_works = False
        return False
    raise OSError(err, os.strerror(err), b)


def replace_in_place(path: str, spare: str, data: bytes, tmp_dir: str | os.PathLike) -> None:
    """Replace small file `path` atomically (not durably) by writing `data` over `spare`
    and exchanging the two: the old content becomes the spare, to be overwritten next
    time. Creating a file and freeing the old one per update costs far more (and on
    ext4 without a journal, freed inodes slow every later create); `write_file` is the
    fallback where exchange is unsupported. Callers serialise updates of `path`."""
    if _exchange_works:
        fd = os.open(spare, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.pwrite(fd, data, 0)
            # Truncating costs more than asking: the contents (a seq, a CID and rev)
            # rarely shrink.
            if os.fstat(fd).st_size > len(data):
                os.ftruncate(fd, len(data))
        finally:
            os.close(fd)
        try:
            if exchange(spare, path):
                return
        except FileNotFoundError:  # no `path` yet: the first write makes it
            pass
    write_file(path, data, tmp_dir, durable=False)


def read_file(path: str | os.PathLike) -> bytes | None:
    """A file's bytes, or None when it does not exist."""
    try:
        return read_whole(path)
    except FileNotFoundError:
        return None


def fsync_file(path: str | os.PathLike) -> None:
    """fsync a file already written (for checkpoints); a missing file is skipped."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def flock(path: str | os.PathLike, shared: bool = False) -> Iterator[int]:
    """Hold an advisory lock on `path` (created if needed) for the block's duration.

    flock locks belong to the open file, so two workers (or two threads with their own
    opens) exclude each other, and the kernel drops the lock if the holder dies.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)


@contextlib.contextmanager
def try_flock(path: str | os.PathLike) -> Iterator[bool]:
    """Hold an exclusive lock on `path` if no one else does: yields True when held, False
    (at once) when another process has it. For jobs one worker at a time runs."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
        else:
            yield True
    finally:
        os.close(fd)


def ensure_dir(path: Path, mode: int = 0o755) -> Path:
    """mkdir -p, returning the path."""
    path.mkdir(parents=True, exist_ok=True, mode=mode)
    return path
