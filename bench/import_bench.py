"""importRepo's server-side work, in process: index the staged CAR, check it as the DID's
repository, store it (`Repo.import_commit`, real disk, durable), per repository size.

    python bench/import_bench.py                 # sizes 1k, 10k, 50k records
    python bench/import_bench.py --sizes 1000 --runs 5

Each size is built once (a repo of `app.bsky.feed.post`-like records signed with a fresh
key, exported to a CAR file); each run imports it into a fresh repo directory, in a new
process (caches empty), and reports the phases' wall times and the process's peak RSS
(what the CAR index and the walk cost in memory: the CAR itself is never held whole).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def build(path: Path, count: int) -> tuple[str, str]:
    """A CAR of `count` records at `path`; returns (did, public did:key)."""
    from pds.repo.signing_keys import K256PrivateKey
    from pds.store.repo import Repo, Write
    key = K256PrivateKey.generate()
    did = "did:plc:" + "b" * 24
    tmp = path.parent / "buildtmp"
    tmp.mkdir(exist_ok=True)
    repo = Repo(path.parent / f"build{count}", tmp, did, key)
    ts = "2026-01-01T00:00:00.000Z"
    repo.create(key, [Write("create", "app.bsky.feed.post", f"3l{i:011d}",
                            {"$type": "app.bsky.feed.post", "createdAt": ts,
                             "text": f"post number {i}, about as long as a post is"})
                      for i in range(min(count, 5000))])
    for start in range(5000, count, 5000):
        repo.apply_writes([Write("create", "app.bsky.feed.post", f"3l{i:011d}",
                                 {"$type": "app.bsky.feed.post", "createdAt": ts,
                                  "text": f"post number {i}, about as long as a post is"})
                           for i in range(start, min(count, start + 5000))])
    with open(path, "wb") as f:
        for chunk in repo.export_car():
            f.write(chunk)
    return did, key.public_key().did_key()


def run_one(car_path: str, did: str, did_key: str, dest: str) -> dict:
    """One import in this process: the phases' times and the peak RSS."""
    from pds.repo.keys import parse_did_key
    from pds.repo.repo_import import check_repo
    from pds.store.repo import Repo
    from pds.store.staged_car import StagedCar
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    dest_p = Path(dest)
    (dest_p / "tmp").mkdir(parents=True)
    t0 = time.perf_counter()
    staged = StagedCar(dest_p / "tmp", None)
    with open(car_path, "rb") as f:
        while chunk := f.read(1 << 20):
            staged.write(chunk)
    t1 = time.perf_counter()
    index = staged.read_index()
    t2 = time.perf_counter()
    checked = check_repo(staged.get, index.roots, did, parse_did_key(did_key))
    t3 = time.perf_counter()
    repo = Repo(dest_p / "repo", dest_p / "tmp", did)
    assert checked.commit.rev is not None
    repo.import_commit(checked.commit_cid, checked.commit.rev, staged.blocks(checked.blocks))
    t4 = time.perf_counter()
    staged.close()
    return {"receive_s": t1 - t0, "index_s": t2 - t1, "check_s": t3 - t2, "store_s": t4 - t3,
            "total_s": t4 - t0, "blocks": len(checked.blocks), "records": checked.records,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rss_before_mb": rss0 / 1024}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 50000])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(run_one(*args.child)))
        return
    with tempfile.TemporaryDirectory(dir=ROOT / "bench") as d:
        base = Path(d)
        print(f"{'records':>8} {'blocks':>7} {'CAR MB':>7} {'index s':>8} {'check s':>8} "
              f"{'store s':>8} {'total s':>8} {'peak RSS MB':>12}")
        for size in args.sizes:
            car = base / f"{size}.car"
            did, did_key = build(car, size)
            for run in range(args.runs):
                dest = base / f"import-{size}-{run}"
                out = subprocess.run([sys.executable, __file__, "--child", str(car), did,
                                      did_key, str(dest)], capture_output=True, text=True,
                                     check=True)
                r = json.loads(out.stdout)
                print(f"{r['records']:>8} {r['blocks']:>7} {car.stat().st_size / 1e6:>7.1f} "
                      f"{r['index_s']:>8.3f} {r['check_s']:>8.3f} {r['store_s']:>8.3f} "
                      f"{r['total_s']:>8.3f} {r['peak_rss_mb']:>12.1f}")


if __name__ == "__main__":
    main()
