"""How long a worker takes to notice a new seq/HEAD: watchdog's inotify observer (the
notifier before issue 16) against the inotify watch read on the event loop
(`pds.store.dirwatch.DirWatch`, the notifier now).

A thread replaces HEAD by an exchange, as `EventLog.append` publishes a seq, `--events`
times at `--rate` per second; the time from each exchange to the event loop running the
wake-up is recorded. `--busy N` adds N Python threads spinning on the GIL beside the
loop, as a worker's commit threads do under a write load (the GIL hands over every 5 ms
when threads contend). Also counts watchdog's move-grouper sleeps (its 0.5 s wait for the
second half of a rename, taken whenever it looks before that half is queued).

    python bench/notifier_bench.py                 # both notifiers, 0 and 1 busy threads
    python bench/notifier_bench.py --rate 300 --events 3000 --busy 1

It needs watchdog installed (no longer a dependency of pds).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pds.store.dirwatch import DirWatch  # noqa: E402
from pds.store.files import replace_in_place  # noqa: E402


class GrouperSleeps:
    """Counts the sleeps of watchdog's DelayedQueue (its `time` module, wrapped)."""

    def __init__(self) -> None:
        import watchdog.utils.delayed_queue as dq
        self.count = 0
        real = dq.time
        counter = self

        class _Time:
            monotonic = staticmethod(real.monotonic)

            @staticmethod
            def sleep(s: float) -> None:
                counter.count += 1
                real.sleep(s)

        dq.time = _Time  # type: ignore[assignment]


def watch_watchdog(loop: asyncio.AbstractEventLoop, d: str, wake) -> object:
    from watchdog.events import FileCreatedEvent, FileMovedEvent, FileSystemEventHandler
    from watchdog.observers import Observer

    class Handler(FileSystemEventHandler):
        def on_any_event(self, event) -> None:  # the handler of the old Broadcaster
            names = (os.path.basename(event.src_path),
                     os.path.basename(getattr(event, "dest_path", "") or ""))
            if "HEAD" in names:
                loop.call_soon_threadsafe(wake)

    obs = Observer()
    obs.schedule(Handler(), d, recursive=False, event_filter=[FileCreatedEvent, FileMovedEvent])
    obs.daemon = True
    obs.start()
    return obs


def watch_dirwatch(loop: asyncio.AbstractEventLoop, d: str, wake) -> object:
    w = DirWatch(d)

    def readable() -> None:
        names = w.read()
        if names is None or "HEAD" in names:
            wake()
    loop.add_reader(w.fileno(), readable)
    return w


async def run(kind: str, args: argparse.Namespace) -> dict:
    work = tempfile.mkdtemp(prefix="notifier-bench-")
    d, tmp = os.path.join(work, "seq"), os.path.join(work, "tmp")
    os.mkdir(d)
    os.mkdir(tmp)
    head, spare = os.path.join(d, "HEAD"), os.path.join(d, "HEAD.spare")
    Path(head).write_bytes(b"0")
    loop = asyncio.get_running_loop()
    sent: dict[int, float] = {}
    lat: list[float] = []

    def wake() -> None:  # on the loop: every exchange up to HEAD's value is noticed
        now = time.perf_counter()
        upto = int(Path(head).read_bytes())
        for i in [i for i in sent if i <= upto]:
            lat.append((now - sent.pop(i)) * 1e3)

    sleeps = GrouperSleeps() if kind == "watchdog" else None
    handle = (watch_watchdog if kind == "watchdog" else watch_dirwatch)(loop, d, wake)
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            sum(range(1000))

    def writer() -> None:
        for i in range(1, args.events + 1):
            sent[i] = time.perf_counter()
            replace_in_place(head, spare, str(i).encode(), tmp)
            time.sleep(1 / args.rate)

    spinners = [threading.Thread(target=spin, daemon=True) for _ in range(args.busy)]
    for t in spinners:
        t.start()
    await asyncio.to_thread(writer)
    await asyncio.sleep(1.0)
    stop.set()
    if kind == "watchdog":
        handle.stop()  # type: ignore[attr-defined]
    else:
        loop.remove_reader(handle.fileno())  # type: ignore[attr-defined]
        handle.close()  # type: ignore[attr-defined]
    shutil.rmtree(work, ignore_errors=True)
    lat.sort()
    n = len(lat)
    return {"kind": kind, "busy": args.busy, "n": n, "p50": lat[n // 2],
            "p99": lat[min(n - 1, int(n * 0.99))], "max": lat[-1],
            "sleeps": sleeps.count if sleeps else 0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=2000)
    p.add_argument("--rate", type=float, default=150.0)
    p.add_argument("--busy", type=int, default=None, help="busy threads (default: 0, then 1)")
    args = p.parse_args()
    print(f"{args.events} HEAD exchanges at {args.rate:g}/s; latency to the loop's wake-up, ms")
    print(f"{'notifier':<10} {'busy':>4} {'n':>6} {'p50':>7} {'p99':>7} {'max':>7} "
          f"{'0.5 s sleeps':>12}")
    for busy in ([args.busy] if args.busy is not None else [0, 1]):
        for kind in ("watchdog", "dirwatch"):
            args_k = argparse.Namespace(**{**vars(args), "busy": busy})
            r = asyncio.run(run(kind, args_k))
            print(f"{r['kind']:<10} {r['busy']:>4} {r['n']:>6} {r['p50']:>7.2f} "
                  f"{r['p99']:>7.2f} {r['max']:>7.1f} {r['sleeps']:>12}")


if __name__ == "__main__":
    main()
