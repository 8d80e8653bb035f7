"""`services.threads.blocking`: the thread hop every write and cold read takes."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest

from pds.services import threads
from pds.services.threads import blocking


def test_answers_raises_and_runs_off_the_loop() -> None:
    async def main() -> None:
        loop_thread = threading.get_ident()
        value, where = await blocking(lambda a, b=0: (a + b, threading.get_ident()), 1, b=2)
        assert value == 3 and where != loop_thread
        with pytest.raises(KeyError):
            await blocking(lambda: {}["missing"])
    asyncio.run(main())


def test_jobs_run_side_by_side_up_to_the_limit() -> None:
    # 6 sleeps of 0.2 s each at once: in parallel well under their 1.2 s in a row.
    async def main() -> float:
        start = time.monotonic()
        await asyncio.gather(*[blocking(time.sleep, 0.2) for _ in range(6)])
        return time.monotonic() - start
    assert threads.MAX_THREADS >= 6
    assert asyncio.run(main()) < 0.8
    assert len(threads._POOL.threads) <= threads.MAX_THREADS


def test_a_cancelled_caller_leaves_the_job_to_finish_quietly() -> None:
    done = threading.Event()

    def slow() -> None:
        time.sleep(0.2)
        done.set()

    async def main() -> None:
        task = asyncio.ensure_future(blocking(slow))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.3)  # the job's answer arrives for a cancelled future
    asyncio.run(main())
    assert done.is_set()


def test_a_forked_child_starts_its_own_threads() -> None:
    async def once() -> int:
        return await blocking(os.getpid)
    assert asyncio.run(once()) == os.getpid()  # the parent has threads now
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the parent's threads did not come along
        try:
            ok = asyncio.run(asyncio.wait_for(once(), 5)) == os.getpid()
        except BaseException:
            ok = False
        os.write(w, b"1" if ok else b"0")
        os._exit(0)
    os.close(w)
    assert os.read(r, 1) == b"1"
    os.waitpid(pid, 0)


def test_a_job_wakes_the_thread_that_went_idle_last() -> None:
    """Sequential jobs run on one thread, the others left asleep. (On a shared queue every
    job woke two idle threads, one of them for nothing, and which one ran it rotated.)"""
    async def main() -> set[int]:
        await asyncio.gather(*[blocking(time.sleep, 0.05) for _ in range(4)])  # 4 threads
        return {await blocking(threading.get_ident) for _ in range(50)}
    assert len(asyncio.run(main())) == 1


def test_jobs_beyond_the_limit_wait_their_turn() -> None:
    """More jobs than threads: the rest wait, and each thread takes the next as it ends
    one (a job lost on the way would time out here)."""
    async def main() -> list[int]:
        n = threads.MAX_THREADS * 3
        return await asyncio.wait_for(asyncio.gather(
            *[blocking(lambda i=i: (time.sleep(0.01), i)[1]) for i in range(n)]), 10)
    assert asyncio.run(main()) == list(range(threads.MAX_THREADS * 3))
    assert len(threads._POOL.threads) <= threads.MAX_THREADS
