"""Blocking work off the event loop: `await blocking(fn, *args)`.

What `asyncio.to_thread` does, at half its CPU (issue 16). `to_thread` goes through the
loop's default executor: a `concurrent.futures.Future` with its lock and condition,
chained to an asyncio future by callbacks on both sides, and a copy of the caller's
context. Every write and every cold read takes that hop, so here a job is a tuple on a
queue, and the thread that runs it hands the answer straight to the caller's future.

The threads are started on demand, in the process that needs them (never in gunicorn's
master before it forks), up to the default executor's number. Jobs run in the thread's
own context, not a copy of the caller's: nothing here reads a context variable set by
the caller (`store.clock.cached_only` is meant for the event loop only). At exit the
threads finish the jobs they hold, as the default executor's do.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import os
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

MAX_THREADS = min(32, (os.cpu_count() or 1) + 4)  # as asyncio's default executor

_Job = tuple[asyncio.AbstractEventLoop, asyncio.Future, Callable[[], Any]]


class _Pool:
    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []
        self.waiting = 0  # threads blocked on the queue
        self.queued = 0  # jobs on the queue

    def submit(self, job: _Job) -> None:
        with self.lock:
            # A thread more when the jobs outnumber the threads free to take them.
            self.queued += 1
            if self.queued > self.waiting and len(self.threads) < MAX_THREADS:
                t = threading.Thread(target=self._work, name=f"blocking-{len(self.threads)}",
                                     daemon=True)
                self.threads.append(t)
                t.start()
        self.jobs.put(job)

    def _work(self) -> None:
        while True:
            with self.lock:
                self.waiting += 1
            job = self.jobs.get()
            with self.lock:
                self.waiting -= 1
                self.queued -= 1
            if job is None:
                return
            loop, fut, fn = job
            try:
                result = fn()
            except BaseException as e:  # noqa: BLE001 - handed to the awaiting caller
                _hand(loop, _fail, fut, e)
            else:
                _hand(loop, _done, fut, result)
            del job, fut, fn

    def stop(self) -> None:
        """At exit: let each thread finish what it holds, then end it."""
        for _ in self.threads:
            with self.lock:
                self.queued += 1
            self.jobs.put(None)
        for t in self.threads:
            t.join(timeout=30)


def _hand(loop: asyncio.AbstractEventLoop, how: Callable[..., None], *args: Any) -> None:
    try:
        loop.call_soon_threadsafe(how, *args)
    except RuntimeError:  # the loop is closed: nobody waits for this any more
        pass


def _done(fut: asyncio.Future, result: Any) -> None:
    if not fut.done():  # the caller may have been cancelled meanwhile
        fut.set_result(result)


def _fail(fut: asyncio.Future, error: BaseException) -> None:
    if not fut.done():
        fut.set_exception(error)


_POOL = _Pool()


def _new_pool() -> None:
    """In a forked child: the parent's threads are not there, nor are their jobs."""
    global _POOL
    _POOL = _Pool()


os.register_at_fork(after_in_child=_new_pool)
atexit.register(lambda: _POOL.stop())


async def blocking(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Run `fn(*args, **kwargs)` in a worker thread and await its result."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[T] = loop.create_future()
    _POOL.submit((loop, fut, functools.partial(fn, *args, **kwargs)))
    return await fut
