"""Blocking reads run where they cost least: on the event loop when memory has all they
need, current (the change clock, pds/store/clock.py), else in a worker thread.

A thread hop costs about 0.1 ms here, more than a whole getRecord served from memory;
running every read in a thread made reads measurably slower. Only the store's reads
touch the disk, and inside `cached_only()` each refuses (`WouldBlock`) rather than do it,
so the inline attempt never blocks the loop: it either finishes from memory or gives up
before its first system call, and the thread does the read from the start.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from ..store.clock import WouldBlock, cached_only
from .threads import blocking

T = TypeVar("T")


async def read(fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)`, a read with no side effects before its first disk access: inline
    when it needs no disk, else in a thread."""
    try:
        with cached_only():
            return fn(*args)
    except WouldBlock:
        return await blocking(fn, *args)
