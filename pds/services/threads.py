"""Blocking work off the event loop: `await blocking(fn, *args)`.

What `asyncio.to_thread` does, at half its CPU (issue 16). `to_thread` goes through the
loop's default executor: a `concurrent.futures.Future` with its lock and condition,
chained to an asyncio future by callbacks on both sides, and a copy of the caller's
context. Every write and every cold read takes that hop, so here a job is a tuple handed
to one idle thread, and the thread that runs it hands the answer straight to the
caller's future.

The threads are started on demand, in the process that needs them (never in gunicorn's
master before it forks), up to the default executor's number. Jobs run in the thread's
own context, not a copy of the caller's: nothing here reads a context variable set by
the caller (`store.clock.cached_only` is meant for the event loop only). At exit the
threads finish the jobs they hold, as the default executor's do.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import functools
import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

MAX_THREADS = min(32, (os.cpu_count() or 1) + 4)  # as asyncio's default executor

_Job = tuple[asyncio.AbstractEventLoop, asyncio.Future, Callable[[], Any]]


class _Worker:
    """A pool thread, and the lock it sleeps on while idle (released to wake it)."""

    def __init__(self) -> None:
        self.wake = threading.Lock()
        self.wake.acquire()
        self.job: _Job | None = None


class _Pool:
    """Idle threads wait each on their own lock, so a job wakes the one thread that runs it.
    (On one shared `queue.SimpleQueue`, every job also woke a second idle thread: the one
    that took the job releases the queue's lock on its way out, and the next waiter wakes
    to find the queue empty. That second wake, and its fight for the GIL with the thread
    starting the job, was a third of a write's futex calls.) The most recently idle thread
    is woken first: its stack and caches are warm, and the others stay asleep."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []
        self.idle: list[_Worker] = []  # a stack: the last to go idle wakes first
        self.pending: collections.deque[_Job | None] = collections.deque()

    def submit(self, job: _Job | None) -> None:
        with self.lock:
            if self.idle:
                worker = self.idle.pop()
                worker.job = job
                worker.wake.release()
                return
            if job is not None and len(self.threads) < MAX_THREADS:
                worker = _Worker()
                worker.job = job
                t = threading.Thread(target=self._work, args=(worker,),
                                     name=f"blocking-{len(self.threads)}", daemon=True)
                self.threads.append(t)
                t.start()
                return
            self.pending.append(job)  # every thread is busy: the next one free takes it

    def _work(self, worker: _Worker) -> None:
        job, worker.job = worker.job, None  # not kept alive by the idle thread
        while job is not None:
            loop, fut, fn = job
            how: Callable[[asyncio.Future, Any], None]
            try:
                how, answer = _done, fn()
            except BaseException as e:  # noqa: BLE001 - handed to the awaiting caller
                how, answer = _fail, e
            del job, fn
            # Idle (or onto the next pending job) before the answer goes out: the caller's
            # next job, sent as soon as it has the answer, then finds this thread free
            # instead of starting another.
            with self.lock:
                idle = not self.pending
                if idle:
                    self.idle.append(worker)
                else:
                    job = self.pending.popleft()
            _hand(loop, how, fut, answer)
            del loop, fut, how, answer
            if idle:
                worker.wake.acquire()
                job, worker.job = worker.job, None

    def stop(self) -> None:
        """At exit: let each thread finish what it holds, then end it."""
        for _ in self.threads:
            self.submit(None)
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
