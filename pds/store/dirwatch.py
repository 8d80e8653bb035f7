"""A watch on one directory through Linux inotify, as a plain non-blocking descriptor.

The firehose needs one signal: seq/HEAD was replaced (a rename or an exchange onto it).
A descriptor that an event loop polls (`loop.add_reader`) gives it with no thread: the
kernel queues the event, the loop wakes, one `read` drains it. (watchdog's inotify
observer, used before, passes each event through four threads and holds every rename
for up to 0.5 s while it pairs the halves of moves; see the README's design notes.)

Only libc's three inotify calls are used, through ctypes: no dependency, Linux only (as
the rest of the data dir's contract: flock, renameat2).
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct

IN_CREATE = 0x00000100
IN_MOVED_TO = 0x00000080
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000    # the watch is gone (the directory was deleted or unmounted)
_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len (struct inotify_event)
_READ_SIZE = 64 * 1024

_libc = ctypes.CDLL(None, use_errno=True)
_libc.inotify_init1.argtypes = [ctypes.c_int]
_libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]


def _check(result: int) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return result


class DirWatch:
    """Names that appeared in one directory (created, or renamed or exchanged into it)."""

    def __init__(self, path: str | os.PathLike, mask: int = IN_MOVED_TO | IN_CREATE) -> None:
        self.fd = _check(_libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC))
        try:
            _check(_libc.inotify_add_watch(self.fd, os.fsencode(path), mask))
        except OSError:
            os.close(self.fd)
            raise

    def fileno(self) -> int:
        return self.fd

    def read(self) -> set[str] | None:
        """The names of every event queued so far (without waiting); None when events
        were lost (queue overflow) or the watch ended: anything may have changed."""
        names: set[str] = set()
        lost = False
        while True:
            try:
                buf = os.read(self.fd, _READ_SIZE)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno == errno.EINTR:
                    continue
                raise
            pos = 0
            while pos + _HEADER.size <= len(buf):
                _, mask, _, size = _HEADER.unpack_from(buf, pos)
                pos += _HEADER.size
                if mask & (IN_Q_OVERFLOW | IN_IGNORED):
                    lost = True
                name = buf[pos:pos + size].split(b"\0", 1)[0]
                pos += size
                if name:
                    names.add(os.fsdecode(name))
            if len(buf) < _READ_SIZE:
                break  # drained: skip the read that would only say EAGAIN
        return None if lost else names

    def close(self) -> None:
        """Stop watching (closing the descriptor removes the watch)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
