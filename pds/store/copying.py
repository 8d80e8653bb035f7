"""Copying files and trees with their permission bits, atomically, as backup and restore
do: a copy is never readable by more people than its source, not even while it is being
written, and half-written copies (`*.backup-tmp`) and lock files are never taken for
data.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

from .layout import LOCK
from .progress import Ticker

TMP_SUFFIX = ".backup-tmp"


def is_transient(name: str) -> bool:
    """Lock files and our own half-written copies: never copied, never mirrored away."""
    return name == LOCK or name.endswith((".LOCK", ".lock", TMP_SUFFIX))


def make_dir(path: Path, mode: int) -> None:
    """`path` as a directory with permission bits `mode` (its parent exists)."""
    mode = stat.S_IMODE(mode)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        if stat.S_IMODE(os.stat(path).st_mode) == mode:
            return
    os.chmod(path, mode)


def remove(path: Path) -> None:
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
    tmp = dst.with_name(dst.name + TMP_SUFFIX)
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
    remove(dst)
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
            remove(dst)
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
            remove(dst / name)
        if ticker is not None:
            ticker.tick(stage)
    if mirror:
        for name in os.listdir(dst):
            if name not in seen and name not in skip and not is_transient(name):
                remove(dst / name)


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


def make_parents(src_file: Path, dst_file: Path, src_top: Path) -> None:
    """Make the directories above `dst_file` like those above `src_file` (up to and
    including `src_top`)."""
    rel = src_file.parent.relative_to(src_top)
    dst_top = dst_file.parents[len(rel.parts)]
    make_dir(dst_top, os.stat(src_top).st_mode)
    for i in range(1, len(rel.parts) + 1):
        part = Path(*rel.parts[:i])
        make_dir(dst_top / part, os.stat(src_top / part).st_mode)
