"""TIDs: timestamp identifiers used for record keys and repo revisions.

A TID (``specs/tid``) is a 64-bit integer laid out as::

    0 | 53 bits: microseconds since the Unix epoch | 10 bits: clock id

encoded big-endian as exactly 13 characters of base32-sortable
(``234567abcdefghijklmnopqrstuvwxyz``), so string order equals numeric order.

Repo ``rev`` values must strictly increase per repo (consumers drop anything
not greater than what they saw), so :class:`TidClock` never goes backwards
even when the wall clock does.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Callable

from pds.repo.syntax import ensure_valid_tid

__all__ = [
    "TID_LENGTH",
    "TidClock",
    "next_tid",
    "tid_clock_id",
    "tid_from_int",
    "tid_from_parts",
    "tid_timestamp_micros",
    "tid_to_int",
]

_ALPHABET = "234567abcdefghijklmnopqrstuvwxyz"
_DECODE = {c: i for i, c in enumerate(_ALPHABET)}

TID_LENGTH = 13
_TIMESTAMP_BITS = 53
_CLOCK_ID_BITS = 10
_MAX_TIMESTAMP = (1 << _TIMESTAMP_BITS) - 1
_MAX_CLOCK_ID = (1 << _CLOCK_ID_BITS) - 1
# The top bit of the 64-bit value is always 0 for TIDs we produce.
_MAX_TID_INT = (1 << 63) - 1


# Two characters per 10 bits: a TID (65 bits of characters) is one lookup of the top 5
# bits and six of these, where a loop over 13 characters was every write's rev and rkey.
_PAIRS = tuple(a + b for a in _ALPHABET for b in _ALPHABET)


def tid_from_int(n: int) -> str:
    """Encode a non-negative integer below 2**63 as a 13-char TID string."""
    if not 0 <= n <= _MAX_TID_INT:
        raise ValueError(f"TID integer out of range: {n}")
    p = _PAIRS
    return (_ALPHABET[n >> 60] + p[(n >> 50) & 1023] + p[(n >> 40) & 1023]
            + p[(n >> 30) & 1023] + p[(n >> 20) & 1023] + p[(n >> 10) & 1023] + p[n & 1023])


def tid_to_int(s: str) -> int:
    """Decode a TID string to its integer value.

    Raises :class:`pds.repo.syntax.InvalidSyntax` (a ``ValueError``) if ``s``
    is not valid TID syntax.
    """
    ensure_valid_tid(s)
    n = 0
    for c in s:
        n = (n << 5) | _DECODE[c]
    return n


def tid_from_parts(micros: int, clock_id: int) -> str:
    """Build a TID from a microsecond timestamp and a 10-bit clock id."""
    if not 0 <= micros <= _MAX_TIMESTAMP:
        raise ValueError(f"TID timestamp out of range: {micros}")
    if not 0 <= clock_id <= _MAX_CLOCK_ID:
        raise ValueError(f"TID clock id out of range: {clock_id}")
    return tid_from_int((micros << _CLOCK_ID_BITS) | clock_id)


def tid_timestamp_micros(s: str) -> int:
    """Return the microseconds-since-epoch part of a TID."""
    return (tid_to_int(s) >> _CLOCK_ID_BITS) & _MAX_TIMESTAMP


def tid_clock_id(s: str) -> int:
    """Return the 10-bit clock id part of a TID."""
    return tid_to_int(s) & _MAX_CLOCK_ID


def _wall_clock_micros() -> int:
    return time.time_ns() // 1000


class TidClock:
    """Issues strictly increasing TIDs.

    Each instance picks one random clock id for its lifetime; timestamps come
    from ``now_micros`` (wall-clock microseconds by default, injectable for
    tests). Safe to share between threads.
    """

    def __init__(
        self,
        now_micros: Callable[[], int] | None = None,
        clock_id: int | None = None,
    ) -> None:
        """Create a clock; ``clock_id`` defaults to a random 10-bit value."""
        if clock_id is None:
            clock_id = secrets.randbelow(_MAX_CLOCK_ID + 1)
        elif not 0 <= clock_id <= _MAX_CLOCK_ID:
            raise ValueError(f"TID clock id out of range: {clock_id}")
        self._now = now_micros if now_micros is not None else _wall_clock_micros
        self._clock_id = clock_id
        self._last = -1  # timestamp part of the last TID issued
        self._lock = threading.Lock()

    @property
    def clock_id(self) -> int:
        """The 10-bit clock id stamped into every TID from this clock."""
        return self._clock_id

    def next(self, prev: str | None = None) -> str:
        """Return a TID greater than every earlier one from this clock and ``prev``.

        The timestamp is ``max(now, last + 1, prev_timestamp + 1)``: bumping the
        timestamp part (rather than comparing whole TIDs) guarantees the result
        sorts after ``prev`` whatever clock id ``prev`` carries.
        """
        floor = tid_timestamp_micros(prev) + 1 if prev is not None else 0
        with self._lock:
            ts = max(self._now(), self._last + 1, floor)
            if ts > _MAX_TIMESTAMP:
                raise OverflowError("TID timestamp space exhausted")
            self._last = ts
            return tid_from_parts(ts, self._clock_id)


_default_clock = TidClock()


def _new_clock_after_fork() -> None:
    # gunicorn forks its workers from a master that has already imported this module: each
    # needs a clock id of its own, or two workers issue the same TID (e.g. the rkey of two
    # createRecords) in the same microsecond. The lock is new too: a thread of the parent
    # may have held it at the fork.
    global _default_clock
    clock = TidClock()
    clock._last = _default_clock._last
    _default_clock = clock


os.register_at_fork(after_in_child=_new_clock_after_fork)


def next_tid(prev: str | None = None) -> str:
    """Next TID from the process-wide default clock (see :meth:`TidClock.next`)."""
    return _default_clock.next(prev)
