"""Is the firehose event also the commit's write-ahead record? Measure both ways.

A: the repo's own journal makes the commit durable (fsync), then the #commit event is
   written (a second fsync).  B: the #commit event is the write-ahead record (one fsync).
Prints per-commit wall time (p50/p90) for one-record commits into a 1k-record repo on the
real disk.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from pds.config import Settings
from pds.repo.signing_keys import generate_signing_key
from pds.services.context import AppContext
from pds.store.repo import Repo, Write

POST = "app.bsky.feed.post"


def record(i: int) -> dict:
    return {"$type": POST, "text": f"post number {i} " * 8, "createdAt": "2026-01-01T00:00:00Z",
            "langs": ["en"]}


def run(mode: str, n: int, base: Path) -> list[float]:
    root = base / mode
    (root / "tmp").mkdir(parents=True)
    (root / "pds.env").write_text("PDS_JWT_SECRET=x\nPDS_HOSTNAME=localhost\n")
    ctx = AppContext(Settings.load(root, env={}))
    did = "did:web:bench.test"
    key = generate_signing_key()
    ctx.accounts.put({"did": did, "handle": "bench.test", "status": None,
                      "createdAt": "2026-01-01T00:00:00.000Z"})
    (ctx.data.account(did) / "signing.key").write_bytes(b"")
    wal = ctx.events if mode == "event-as-wal" else None
    repo = Repo(ctx.data.account(did), ctx.data.tmp, did, key, wal=wal)
    repo.create(key, [Write("create", POST, f"a{i:05d}", record(i)) for i in range(1000)])
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        res = repo.apply_writes([Write("create", POST, f"b{i:05d}", record(i))])
        if wal is None:
            ctx.events.commit(res)  # the event, written after the journal
        times.append((time.perf_counter() - t0) * 1000)
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--commits", type=int, default=300)
    ap.add_argument("--dir", default=None, help="where to write (default: a temp dir here)")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(dir=args.dir or Path(__file__).parent))
    results = {}
    for mode in ("journal-then-event", "event-as-wal", "journal-then-event", "event-as-wal"):
        times = run(mode + str(len(results)), args.commits, base)
        results.setdefault(mode, []).extend(times)
    for mode, times in results.items():
        times.sort()
        print(f"{mode:20s} p50 {statistics.median(times):6.2f} ms  "
              f"p90 {times[int(len(times) * 0.9)]:6.2f} ms  (n={len(times)})")
    import shutil
    shutil.rmtree(base)


if __name__ == "__main__":
    main()
