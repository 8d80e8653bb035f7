"""Server CPU per createRecord, by process and thread: which threads of which process
work for each commit (with no firehose subscriber).

It starts `pds serve --workers N` as http_bench.py does (from the checkout given, default
this one), creates an account, sends `--writes` sequential createRecord after a warm-up,
and reads every thread's CPU time (`/proc/<pid>/task/<tid>/stat`, utime + stime) before
and after. Threads are named by `py-spy dump` (so py-spy must be installed): the
event loop (MainThread), watchdog's observer threads (any stack in `watchdog`, as the
notifier was before issue 16), and the rest (the worker thread pool: commits, reads).

    python bench/thread_cpu.py                      # this checkout, 500 writes
    python bench/thread_cpu.py --root ../main --writes 1000
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TICK = os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds per thread of `pid`."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            f = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(tid)] = (int(f[11]) + int(f[12])) / TICK
    return out


def thread_groups(pid: int) -> dict[int, str]:
    """Thread id -> group, from a `py-spy dump` of `pid`."""
    dump = subprocess.run(["py-spy", "dump", "--pid", str(pid)], capture_output=True,
                          text=True, check=False).stdout
    out: dict[int, str] = {}
    cur = None
    for line in dump.splitlines():
        m = re.match(r'Thread (0x[0-9A-Fa-f]+|\d+) .*?"(.*)"', line)
        if m:
            cur = int(m.group(1), 0)
            out[cur] = "event loop" if m.group(2) == "MainThread" else "other threads"
        elif cur is not None and "watchdog" in line:
            out[cur] = "watchdog threads"
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, default=HERE.parent, help="the checkout to serve")
    p.add_argument("--writes", type=int, default=500)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    sys.path.insert(0, str(HERE))
    import http_bench as hb
    hb.ROOT = args.root.resolve()  # start_ours runs `python -m pds.cli` there
    work = Path(tempfile.mkdtemp(prefix="pds-thread-cpu-"))
    srv = hb.start_ours(work, args.workers)
    try:
        c = srv.client
        out = c.call("POST", "com.atproto.server.createAccount",
                     body={"handle": "threadcpu.test", "email": "t@example.com",
                           "password": hb.PASSWORD})
        rng = random.Random(1)

        def write() -> None:
            c.call("POST", "com.atproto.repo.createRecord",
                   body={"repo": out["did"], "collection": hb.POST,
                         "record": hb.make_post(rng)}, token=out["accessJwt"])
        for _ in range(20):
            write()
        procs = hb.process_tree(srv.pid)
        before = {pid: thread_cpu(pid) for pid in procs}
        t0 = time.perf_counter()
        for _ in range(args.writes):
            write()
        wall = time.perf_counter() - t0
        after = {pid: thread_cpu(pid) for pid in procs}
        print(f"{hb.ROOT}: {args.writes} createRecord, {args.writes / wall:.0f}/s; "
              f"CPU ms per write")
        total = 0.0
        for pid in procs:
            names = thread_groups(pid)
            groups: dict[str, float] = {}
            for tid, cpu in after[pid].items():
                g = names.get(tid, "other threads")
                groups[g] = groups.get(g, 0.0) + cpu - before[pid].get(tid, 0.0)
            role = "master" if pid == srv.pid else f"worker {pid}"
            per = {g: 1e3 * v / args.writes for g, v in sorted(groups.items())}
            total += sum(per.values())
            print(f"  {role:>14}: " + ", ".join(f"{g} {v:.2f}" for g, v in per.items())
                  + f"  = {sum(per.values()):.2f}")
        print(f"  all processes: {total:.2f}")
    finally:
        srv.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
