"""Benchmark of the repository core: one-record commits, record lookups, CAR export.

For each repository size (default 1k, 10k and 100k records) it measures:

- one-record commit: a createRecord of an app.bsky.feed.post record under a fresh TID
  through `Repo.apply_writes([Write("create", ...)])`, twice:
  (a) with every fsync/fdatasync/syncfs turned into a no-op in-process (wall and process
      CPU time per commit: the CPU cost of the write path), and
  (b) with real fsync on the real disk (wall time: what a client waits for);
- lookup: `Repo.get_record` (reads HEAD and the commit, then the tree) and `MST.get` on a
  tree already in hand, for random existing keys;
- CAR export: `b"".join(repo.export_car())`, in MB/s, each in a new process: the first
  export (no export snapshot yet: built from the block files), after the run's commits
  (the snapshot is rebuilt from the old one and what changed: at 1k records the run adds
  ~45% to the repository), again (the snapshot is current: streamed as is), and after 20
  more commits (a busy account's 5 minutes: the most a server's snapshot lags, since its
  maintenance refreshes any older than that); then repeated in this process.

Commits are measured in small batches rotating over the sizes, so that load from other
work on the machine falls on every size alike. Repositories are built once per size with
`Repo.create(key, writes=[...])` (one commit of n creates) and cached under `--cache DIR`.
A run commits into the cached repository and then puts it back: the built HEAD and revs,
no journal entries, and the new block files removed. (Working on a hard-linked copy
instead was tried: creating and removing ~130k links kept ext4 busy enough to make the
first seconds of commits several times slower.)

    python bench/repo_core.py --quick
    python bench/repo_core.py --sizes 1000,10000,100000 --commits 200 --profile 10000
    python bench/repo_core.py --json > out.json
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import datetime as dt
import fcntl
import gc
import io
import json
import math
import os
import platform
import pstats
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cbrrr import CID

# Benchmark the checkout this file is in, whatever `pds` is installed (an editable install
# may point at another clone).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pds  # noqa: E402
from pds.repo.codec import encode  # noqa: E402
from pds.repo.signing_keys import (  # noqa: E402
    export_private_key,
    generate_signing_key,
    load_private_key,
)
from pds.repo.tid import next_tid, tid_timestamp_micros  # noqa: E402
from pds.store import journal as journal_mod  # noqa: E402
from pds.store import repo as repo_mod  # noqa: E402
from pds.store.files import write_file  # noqa: E402
from pds.store.layout import SNAPSHOT  # noqa: E402
from pds.store.repo import Head, Repo, Write  # noqa: E402

COLLECTION = "app.bsky.feed.post"
DID = "did:plc:benchrepocore2k4xq7mzl3vh"
CACHE_FORMAT = 2  # bump when the way cached repositories are built changes
DEFAULT_SIZES = (1000, 10000, 100000)
QUICK_SIZES = (1000, 10000)
LOOKUPS = 1000
EXPORT_RUNS = 3
RECENT_COMMITS = 20  # one-record commits: a busy account's 5 minutes

# Targets from the issue.
TARGET_COMMIT_CPU_MS_AT_10K = 1.0
TARGET_EXPORT_MBPS = 50.0

_WORDS = (
    "the a of to and in is it that for on with as was at by this be from or have an they "
    "which one you were all we when your can said there use each she do how their if will "
    "up other about out many then them these so some her would make like him into time has "
    "look two more write go see number no way could people my than first water been call "
    "who oil its now find long down day did get come made may part today posting photo "
    "morning coffee thread repo network protocol federation garden sunset train weekend"
).split()


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- records ------------------------------------------------------------------------


def make_post(rng: random.Random, rkey: str) -> dict[str, Any]:
    """A plain post: 110 to 210 characters of text, createdAt from the rkey, one lang.
    Encodes to roughly 200 to 300 bytes of DAG-CBOR."""
    want = rng.randint(110, 210)
    words: list[str] = []
    length = -1
    while length < want:
        w = rng.choice(_WORDS)
        words.append(w)
        length += len(w) + 1
    text = " ".join(words)[:want].rstrip() + "."
    when = dt.datetime.fromtimestamp(tid_timestamp_micros(rkey) / 1e6, dt.UTC)
    post: dict[str, Any] = {
        "$type": COLLECTION,
        "text": text[0].upper() + text[1:],
        "createdAt": when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z",
        "langs": ["en"],
    }
    return post


# --- fsync switch ---------------------------------------------------------------------


class FsyncSwitch:
    """Wraps every flush the store can issue (os.fdatasync, os.fsync, os.sync, and the
    journal's syncfs as imported by the repo module), counting calls and, when `durable`
    is False, skipping them. Everything else on the write path runs unchanged."""

    def __init__(self) -> None:
        self.durable = True
        self.calls = 0
        self._saved: list[tuple[Any, str, Any]] = []

    def _wrap(self, owner: Any, name: str) -> None:
        real = getattr(owner, name, None)
        if real is None:  # the store no longer uses it
            return
        self._saved.append((owner, name, real))

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            if self.durable:
                return real(*args, **kwargs)
            return None

        setattr(owner, name, wrapper)

    def install(self) -> None:
        for name in ("fdatasync", "fsync", "sync"):
            self._wrap(os, name)
        # `syncfs` goes through libc, not os; the repo module holds its own reference.
        self._wrap(repo_mod, "syncfs")
        self._wrap(journal_mod, "syncfs")

    def restore(self) -> None:
        while self._saved:
            owner, name, real = self._saved.pop()
            setattr(owner, name, real)


# --- statistics -----------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(values)
    if not s:
        return float("nan")
    k = max(0, math.ceil(p / 100 * len(s)) - 1)
    return s[k]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": max(values) if values else float("nan"),
        "mean": sum(values) / len(values) if values else float("nan"),
    }


# --- building and caching repositories ------------------------------------------------


def fs_type(path: Path) -> str:
    """The filesystem type holding `path` (from /proc/mounts), or "?". ext4 without a
    journal is said so: there every file create scans the inodes freed in the last
    minutes (ext4's `recently_deleted`), so a write's cost grows after a deletion (of an
    earlier run's work dir, say) and runs back to back measure differently."""
    best, kind, dev = "", "?", ""
    p = str(path.resolve())
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 3:
                    continue
                mnt = parts[1].replace("\\040", " ")
                if (p == mnt or p.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                    best, kind, dev = mnt, parts[2], parts[0]
    except OSError:
        pass
    if kind == "ext4" and dev.startswith("/dev/") and os.path.isdir("/proc/fs/jbd2") \
            and not os.path.exists(f"/proc/fs/jbd2/{os.path.basename(dev)}-8"):
        return "ext4, no journal"
    return kind


def build_repo(dest: Path, n: int, seed: int) -> dict[str, Any]:
    """Build an n-record repository in `dest` in one commit; returns its metadata."""
    if dest.exists():
        shutil.rmtree(dest)
    (dest / "tmp").mkdir(parents=True)
    rng = random.Random(seed)
    key = generate_signing_key("k256")
    t0 = time.perf_counter()
    rkeys = [next_tid() for _ in range(n)]
    writes = [Write("create", COLLECTION, rk, make_post(rng, rk)) for rk in rkeys]
    t1 = time.perf_counter()
    repo = Repo(dest / "repo", dest / "tmp", DID)
    repo.create(key, writes)
    t2 = time.perf_counter()
    repo.checkpoint()
    t3 = time.perf_counter()
    sizes = [len(encode(w.record)) for w in writes[: min(n, 2000)]]
    (dest / "key").write_bytes(export_private_key(key))
    (dest / "rkeys").write_text("\n".join(rkeys) + "\n")
    meta = {
        "format": CACHE_FORMAT,
        "records": n,
        "did": DID,
        "gen_s": t1 - t0,
        "create_s": t2 - t1,
        "checkpoint_s": t3 - t2,
        "record_bytes_mean": sum(sizes) / len(sizes),
        "record_bytes_min": min(sizes),
        "record_bytes_max": max(sizes),
        # What a run puts back afterwards (runs commit into the cached repository).
        "head": (dest / "repo" / "HEAD").read_text(),
        "revs": (dest / "repo" / "revs").read_text(),
    }
    # Written last: its presence means the build finished.
    (dest / "meta.json").write_text(json.dumps(meta, indent=1))
    return meta


def load_cached(dest: Path, n: int) -> dict[str, Any] | None:
    """The metadata of a finished, usable cached build, or None."""
    try:
        meta = json.loads((dest / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    if meta.get("format") != CACHE_FORMAT or meta.get("records") != n:
        return None
    try:
        key = load_private_key((dest / "key").read_bytes())
        repo = Repo(dest / "repo", dest / "tmp", DID, key)
        commit = repo.commit()
        if not commit.verify(key.public_key()):
            return None
        rkeys = (dest / "rkeys").read_text().split()
        tree = repo.tree(commit)
        if len(rkeys) != n or any(tree.get(f"{COLLECTION}/{rk}") is None
                                  for rk in (rkeys[0], rkeys[n // 2], rkeys[-1])):
            return None
    except Exception as e:  # a stale cache from an older library: rebuild it
        log(f"  cache at {dest} unusable ({type(e).__name__}: {e}); rebuilding")
        return None
    return meta


def block_names(blocks_dir: Path) -> set[str]:
    """The names (CIDs) of every block file under `blocks_dir`."""
    names: set[str] = set()
    for shard in os.listdir(blocks_dir):
        names.update(os.listdir(blocks_dir / shard))
    return names


def built_block_names(dest: Path, meta: dict[str, Any]) -> set[str]:
    """The blocks of the built commit: the commit, every MST node, every record."""
    repo = Repo(dest / "repo", dest / "tmp", DID)
    cid_s, rev = meta["head"].split()
    commit = repo.commit(Head(CID.decode(cid_s), rev))
    names = {cid_s}
    for node in repo.tree(commit).walk_nodes():
        names.add(node.cid.encode())
        names.update(v.encode() for v in node.vals)
    return names


def reset_repo(dest: Path, meta: dict[str, Any], keep: set[str] | None = None) -> int:
    """Put a cached repository back as it was built: HEAD and revs as built, no journal
    entries, and no block files but `keep` (by default those of the built commit).
    Returns how many block files it removed."""
    root = dest / "repo"
    if keep is None:
        keep = built_block_names(dest, meta)
    write_file(root / "HEAD", meta["head"].encode(), dest / "tmp", durable=False)
    (root / "revs").write_text(meta["revs"])
    with contextlib.suppress(FileNotFoundError):
        os.unlink(root / SNAPSHOT)  # of a commit the reset discards
    journal = root / "journal"
    if journal.is_dir():
        for name in os.listdir(journal):
            os.unlink(journal / name)
    removed = 0
    blocks = root / "blocks"
    for shard in os.listdir(blocks):
        for name in os.listdir(blocks / shard):
            if name not in keep:
                os.unlink(blocks / shard / name)
                removed += 1
    return removed


# --- measurements ---------------------------------------------------------------------


class CommitSamples:
    """Per-commit wall and process CPU times of one repository and mode, gathered over
    several batches, with the kernel's user/sys split and flush calls summed."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self.user_s = 0.0
        self.sys_s = 0.0
        self.flush_calls = 0
        self.batch_cpu_p50: list[float] = []
        self.batch_wall_p50: list[float] = []

    def result(self) -> dict[str, Any]:
        n = max(len(self.wall), 1)
        return {
            "wall_ms": summary(self.wall),
            "cpu_ms": summary(self.cpu),
            # The quietest batch's median: a floor estimate when other work interferes.
            "cpu_ms_best_batch_p50": min(self.batch_cpu_p50, default=float("nan")),
            "wall_ms_best_batch_p50": min(self.batch_wall_p50, default=float("nan")),
            # Kernel-sampled split of CPU time over the batches (it includes building the
            # record between commits, so it sums to a little more than the cpu_ms mean).
            "user_ms_mean": self.user_s * 1e3 / n,
            "sys_ms_mean": self.sys_s * 1e3 / n,
            "flush_calls_per_commit": self.flush_calls / n,
        }


def run_commits(repo: Repo, count: int, rng: random.Random, switch: FsyncSwitch,
                durable: bool, out: CommitSamples | None = None) -> CommitSamples:
    """`count` one-record createRecord commits; wall and process CPU time of each."""
    out = out if out is not None else CommitSamples()
    switch.durable = durable
    calls0 = switch.calls
    first = len(out.wall)
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    try:
        for _ in range(count):
            rkey = next_tid()
            w = Write("create", COLLECTION, rkey, make_post(rng, rkey))
            t0 = time.perf_counter_ns()
            c0 = time.process_time_ns()
            repo.apply_writes([w])
            c1 = time.process_time_ns()
            t1 = time.perf_counter_ns()
            out.wall.append((t1 - t0) / 1e6)
            out.cpu.append((c1 - c0) / 1e6)
    finally:
        switch.durable = True
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    out.user_s += ru1.ru_utime - ru0.ru_utime
    out.sys_s += ru1.ru_stime - ru0.ru_stime
    out.flush_calls += switch.calls - calls0
    if count:
        out.batch_cpu_p50.append(percentile(out.cpu[first:], 50))
        out.batch_wall_p50.append(percentile(out.wall[first:], 50))
    return out


def run_lookups(repo: Repo, paths: list[str]) -> dict[str, Any]:
    """Per-call time of Repo.get_record and of MST.get (tree in hand) over `paths`."""
    rec_us: list[float] = []
    for p in paths:
        t0 = time.perf_counter_ns()
        r = repo.get_record(p)
        t1 = time.perf_counter_ns()
        if r is None:
            raise RuntimeError(f"record {p} missing")
        rec_us.append((t1 - t0) / 1e3)
    tree = repo.tree()
    get_us: list[float] = []
    for p in paths:
        t0 = time.perf_counter_ns()
        c = tree.get(p)
        t1 = time.perf_counter_ns()
        if c is None:
            raise RuntimeError(f"key {p} missing")
        get_us.append((t1 - t0) / 1e3)
    return {"get_record_us": summary(rec_us), "mst_get_us": summary(get_us),
            "loader_cache_nodes": len(repo.loader.cache)}


def export_once(repo_dir: Path) -> dict[str, Any]:
    """One whole-repository export by a fresh Repo; bytes and seconds."""
    repo = Repo(repo_dir / "repo", repo_dir / "tmp", DID)
    t0 = time.perf_counter()
    data = b"".join(repo.export_car())
    t1 = time.perf_counter()
    return {"bytes": len(data), "seconds": t1 - t0}


def run_export_cold(repo_dir: Path) -> dict[str, Any]:
    """One export in a new process: whatever the library caches in-process (decoded
    nodes, block bytes) starts empty; the OS page cache stays warm."""
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()),
                           "--export-child", str(repo_dir)],
                          capture_output=True, text=True, check=True)
    r = json.loads(proc.stdout)
    return {"bytes": r["bytes"], "mb": r["bytes"] / 1e6, "seconds": r["seconds"],
            "mbps": r["bytes"] / 1e6 / r["seconds"]}


def run_export(repo: Repo, runs: int) -> dict[str, Any]:
    """Whole-repository CAR export in this process: `runs` times, MB/s of each (1 MB =
    10^6 bytes). Repeats run with whatever the library cached from the runs before."""
    times: list[float] = []
    size = 0
    for _ in range(runs):
        gc.collect()
        t0 = time.perf_counter()
        data = b"".join(repo.export_car())
        t1 = time.perf_counter()
        size = len(data)
        times.append(t1 - t0)
        del data
    mbps = [size / 1e6 / t for t in times]
    return {"bytes": size, "mb": size / 1e6, "seconds": times,
            "mbps_median": percentile(mbps, 50), "mbps_best": max(mbps)}


def profile_commits(repo: Repo, count: int, rng: random.Random, switch: FsyncSwitch,
                    top: int = 15) -> str:
    """cProfile of `count` one-record commits with fsync off, top lines by cumtime."""
    switch.durable = False
    writes = []
    for _ in range(count):
        rkey = next_tid()
        writes.append(Write("create", COLLECTION, rkey, make_post(rng, rkey)))
    prof = cProfile.Profile()
    try:
        prof.enable()
        for w in writes:
            repo.apply_writes([w])
        prof.disable()
    finally:
        switch.durable = True
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    stats.sort_stats(os.environ.get("PROFILE_SORT", "cumulative")).print_stats(top)
    return out.getvalue()


class Subject:
    """One repository size under test: the cached repository (commits go into it and are
    undone by `reset`), its open Repo and record source."""

    def __init__(self, n: int, args: argparse.Namespace, cache: Path):
        self.n = n
        self.dir = cache / f"repo-{n}"
        meta = None if args.rebuild else load_cached(self.dir, n)
        self.cached = meta is not None
        if meta is None:
            log(f"[{n}] building repository of {n} records (cached for later runs) ...")
            meta = build_repo(self.dir, n, seed=n)
            log(f"[{n}]   built in {meta['create_s']:.1f} s (Repo.create with {n} writes)")
        elif (self.dir / "repo" / "HEAD").read_text() != meta["head"]:
            log(f"[{n}] an earlier run did not finish; resetting the cached repository ...")
            reset_repo(self.dir, meta)
        self.meta = meta
        self.blocks_before = block_names(self.dir / "repo" / "blocks")
        key = load_private_key((self.dir / "key").read_bytes())
        self.rkeys = (self.dir / "rkeys").read_text().split()
        self.repo = Repo(self.dir / "repo", self.dir / "tmp", DID, key)
        self.rng = random.Random(n * 7 + 1)
        self.nofsync = CommitSamples()
        self.fsync = CommitSamples()
        self.result: dict[str, Any] = {"records": n, "cached_build": self.cached,
                                       "build": meta}

    def reset(self) -> None:
        """Undo this run's commits: the built HEAD, and no block files but the old ones."""
        removed = reset_repo(self.dir, self.meta, self.blocks_before)
        log(f"[{self.n}] reset to the built commit ({removed} new block files removed)")


def commit_phase(subjects: list[Subject], args: argparse.Namespace, switch: FsyncSwitch,
                 durable: bool) -> None:
    """Warm up, then measure commits in small batches, rotating over the sizes so that
    load from other work on the machine falls on every size alike."""
    name = "with fsync" if durable else "without fsync"
    warmup = args.warmup_fsync if durable else args.warmup
    log(f"commits {name}: {warmup} warm-up + {args.commits} per size, "
        f"in batches of {args.batch} rotating over sizes ...")
    for sub in subjects:
        run_commits(sub.repo, warmup, sub.rng, switch, durable)
    gc.collect()
    done, order = 0, list(subjects)
    while done < args.commits:
        k = min(args.batch, args.commits - done)
        for sub in order:
            run_commits(sub.repo, k, sub.rng, switch, durable,
                        sub.fsync if durable else sub.nofsync)
        order = order[1:] + order[:1]
        done += k


def run_all(args: argparse.Namespace, cache: Path, switch: FsyncSwitch,
            subjects: list[Subject]) -> list[dict[str, Any]]:
    """Measure every size; `subjects` collects them as they are opened (to be reset)."""
    for n in args.size_list:
        subjects.append(Subject(n, args, cache))
    for sub in subjects:
        # The first export ever: no snapshot yet, so it is built from the block files.
        log(f"[{sub.n}] first CAR export (new process, no snapshot yet) ...")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(sub.dir / "repo" / SNAPSHOT)
        sub.result["export_first"] = run_export_cold(sub.dir)
    os.sync()
    commit_phase(subjects, args, switch, durable=False)
    # Start the durable phase clean: flush what the no-fsync phase left dirty.
    for sub in subjects:
        sub.repo.checkpoint()
    os.sync()
    commit_phase(subjects, args, switch, durable=True)
    for sub in subjects:
        sub.repo.checkpoint()
        sub.result["commit_nofsync"] = sub.nofsync.result()
        sub.result["commit_fsync"] = sub.fsync.result()
    for sub in subjects:
        n = sub.n
        log(f"[{n}] lookups of {args.lookups} random existing records; CAR export once "
            f"in a new process, then x{EXPORT_RUNS} here ...")
        sample = random.Random(n).sample(sub.rkeys, min(args.lookups, len(sub.rkeys)))
        sub.result["lookup"] = run_lookups(sub.repo, [f"{COLLECTION}/{rk}" for rk in sample])
        # The snapshot is now behind by every commit of this run.
        sub.result["export_run_behind"] = run_export_cold(sub.dir)
        sub.result["export_current"] = run_export_cold(sub.dir)
        # Behind by a few minutes of a busy account: the most the server's minute task
        # (refresh_snapshots, every snapshot older than 5 minutes) lets it lag.
        run_commits(sub.repo, RECENT_COMMITS, sub.rng, switch, durable=False)
        sub.repo.checkpoint()
        sub.result["export_cold"] = run_export_cold(sub.dir)
        sub.result["export"] = run_export(sub.repo, EXPORT_RUNS)
        if args.profile == n:
            log(f"[{n}] profiling {args.commits} commits (fsync off) ...")
            sub.result["profile"] = profile_commits(sub.repo, args.commits, sub.rng, switch)
    return [sub.result for sub in subjects]


# --- report ---------------------------------------------------------------------------


def machine_info(path: Path) -> dict[str, Any]:
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": model,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "pds": str(Path(pds.__file__).resolve().parent),
        "work_dir": str(path),
        "work_fs": fs_type(path),
        "loadavg_start": os.getloadavg(),
    }


def size_label(n: int) -> str:
    if n >= 1000 and n % 1000 == 0:
        return f"{n // 1000}k"
    return str(n)


def evaluate_targets(results: list[dict[str, Any]]) -> dict[str, Any]:
    by_n = {r["records"]: r for r in results}
    out: dict[str, Any] = {}
    if 10000 in by_n:
        c = by_n[10000]["commit_nofsync"]
        cpu = c["cpu_ms"]["p50"]
        out["commit_cpu_at_10k"] = {"value_ms": cpu, "target_ms": TARGET_COMMIT_CPU_MS_AT_10K,
                                    "quietest_batch_ms": c["cpu_ms_best_batch_p50"],
                                    "ok": cpu <= TARGET_COMMIT_CPU_MS_AT_10K}
    # Judged on a new process exporting a repository whose snapshot is RECENT_COMMITS
    # behind: what a server that refreshes snapshots older than 5 minutes serves for a
    # busy account. (The first export, and one behind by the whole run, are reported.)
    out["export"] = {
        size_label(r["records"]): {"mbps": r["export_cold"]["mbps"],
                                   "mbps_repeat": r["export"]["mbps_median"],
                                   "ok": r["export_cold"]["mbps"] >= TARGET_EXPORT_MBPS}
        for r in results
    }
    out["export_target_mbps"] = TARGET_EXPORT_MBPS
    if len(by_n) >= 2:
        lo, hi = min(by_n), max(by_n)
        a, b = by_n[lo]["commit_nofsync"], by_n[hi]["commit_nofsync"]
        ratio = b["cpu_ms"]["p50"] / a["cpu_ms"]["p50"]
        quiet = b["cpu_ms_best_batch_p50"] / a["cpu_ms_best_batch_p50"]
        log_ratio = math.log(hi) / math.log(lo)
        user = b["user_ms_mean"] / a["user_ms_mean"] if a["user_ms_mean"] else float("nan")
        out["growth"] = {"from": lo, "to": hi, "cpu_ratio": ratio, "log_ratio": log_ratio,
                         "cpu_ratio_quietest_batch": quiet, "user_cpu_ratio": user,
                         "ok": ratio <= log_ratio}
    return out


def print_table(info: dict[str, Any], results: list[dict[str, Any]],
                targets: dict[str, Any], args: argparse.Namespace) -> None:
    labels = [size_label(r["records"]) for r in results]
    w0, w = 38, 17

    def row(name: str, cells: list[str]) -> None:
        print(f"  {name:<{w0}}" + "".join(f"{c:>{w}}" for c in cells))

    def pair(a: float, b: float, fmt: str = "{:.3f}") -> str:
        return f"{fmt.format(a)} / {fmt.format(b)}"

    print("repo_core benchmark")
    print(f"  machine: {info['cpu_count']} CPUs ({info['cpu_model']}), "
          f"{info['implementation']} {info['python']}, {info['platform']}")
    print(f"  pds: {info['pds']}")
    print(f"  work dir: {info['work_dir']} ({info['work_fs']}); load average at start "
          + " ".join(f"{x:.2f}" for x in info["loadavg_start"])
          + ", at end " + " ".join(f"{x:.2f}" for x in info["loadavg_end"]))
    rb = results[0]["build"]
    print(f"  records: {COLLECTION}, TID rkeys, DAG-CBOR {rb['record_bytes_min']}-"
          f"{rb['record_bytes_max']} bytes (mean {rb['record_bytes_mean']:.0f}); "
          f"{args.commits} measured commits")
    print(f"  per size and mode after {args.warmup} warm-up, in batches of {args.batch} "
          "rotating over the sizes (load hits every size alike)")
    print("  note: timings are noisy when other work runs on the machine; compare runs.")
    print()
    row("", labels)
    print("  one-record commit (createRecord)")
    row("no fsync: wall p50 / p90 (ms)",
        [pair(r["commit_nofsync"]["wall_ms"]["p50"], r["commit_nofsync"]["wall_ms"]["p90"])
         for r in results])
    row("no fsync: CPU  p50 / p90 (ms)",
        [pair(r["commit_nofsync"]["cpu_ms"]["p50"], r["commit_nofsync"]["cpu_ms"]["p90"])
         for r in results])
    row("no fsync: CPU  quietest batch p50 (ms)",
        [f"{r['commit_nofsync']['cpu_ms_best_batch_p50']:.3f}" for r in results])
    row("no fsync: user / sys, mean (ms)",
        [pair(r["commit_nofsync"]["user_ms_mean"], r["commit_nofsync"]["sys_ms_mean"])
         for r in results])
    row("fsync:    wall p50 / p90 (ms)",
        [pair(r["commit_fsync"]["wall_ms"]["p50"], r["commit_fsync"]["wall_ms"]["p90"], "{:.2f}")
         for r in results])
    row("fsync:    wall p99 / max (ms)",
        [pair(r["commit_fsync"]["wall_ms"]["p99"], r["commit_fsync"]["wall_ms"]["max"], "{:.1f}")
         for r in results])
    row("fsync:    wall quietest batch p50 (ms)",
        [f"{r['commit_fsync']['wall_ms_best_batch_p50']:.2f}" for r in results])
    row("fsync:    CPU  p50 / p90 (ms)",
        [pair(r["commit_fsync"]["cpu_ms"]["p50"], r["commit_fsync"]["cpu_ms"]["p90"])
         for r in results])
    row("flush calls per commit (fsync run)",
        [f"{r['commit_fsync']['flush_calls_per_commit']:.2f}" for r in results])
    print("  lookup of a random existing record")
    row("Repo.get_record p50 / p90 (us)",
        [pair(r["lookup"]["get_record_us"]["p50"], r["lookup"]["get_record_us"]["p90"], "{:.1f}")
         for r in results])
    row("MST.get (tree in hand) p50 / p90 (us)",
        [pair(r["lookup"]["mst_get_us"]["p50"], r["lookup"]["mst_get_us"]["p90"], "{:.1f}")
         for r in results])
    print("  CAR export (b''.join(repo.export_car()))")
    row("size (MB)", [f"{r['export']['mb']:.2f}" for r in results])
    row("MB/s, new process, first (no snapshot)",
        [f"{r['export_first']['mbps']:.1f}" for r in results])
    row("MB/s, new process, behind by the run",
        [f"{r['export_run_behind']['mbps']:.1f}" for r in results])
    row("MB/s, new process, snapshot current",
        [f"{r['export_current']['mbps']:.1f}" for r in results])
    row(f"MB/s, new process, {RECENT_COMMITS} commits behind",
        [f"{r['export_cold']['mbps']:.1f}" for r in results])
    row("MB/s, repeated: median / best", [pair(r["export"]["mbps_median"],
                                               r["export"]["mbps_best"], "{:.1f}")
                                          for r in results])
    print("  build (one Repo.create commit of n writes)")
    row("Repo.create time (s)",
        [f"{r['build']['create_s']:.1f}" + (" (cached)" if r["cached_build"] else "")
         for r in results])
    print()
    print("targets (from the issue)")
    ok = {True: "ok", False: "MISSED"}
    if "commit_cpu_at_10k" in targets:
        t = targets["commit_cpu_at_10k"]
        print(f"  commit CPU at 10k records <= {t['target_ms']:.1f} ms: "
              f"p50 {t['value_ms']:.3f} ms (quietest batch {t['quietest_batch_ms']:.3f})  "
              f"[{ok[t['ok']]}]")
    else:
        print("  commit CPU at 10k records <= 1 ms: (10k not in --sizes)")
    ex = ", ".join(f"{k}: {v['mbps']:.1f} (repeated {v['mbps_repeat']:.1f}) [{ok[v['ok']]}]"
                   for k, v in targets["export"].items())
    print(f"  export >= {targets['export_target_mbps']:.0f} MB/s, new process: {ex}")
    if "growth" in targets:
        g = targets["growth"]
        print(f"  growth no faster than log n: CPU p50 ratio {size_label(g['to'])}/"
              f"{size_label(g['from'])} = {g['cpu_ratio']:.2f} (quietest batches "
              f"{g['cpu_ratio_quietest_batch']:.2f}, user CPU only {g['user_cpu_ratio']:.2f})")
        print(f"    vs log({g['to']})/log({g['from']}) = {g['log_ratio']:.2f}  "
              f"[{ok[g['ok']]}]")
    for r in results:
        if "profile" in r:
            print()
            print(f"profile: {args.commits} one-record commits at {size_label(r['records'])} "
                  "records, fsync off (cProfile, by cumulative time)")
            print(_trim_profile(r["profile"]))


def _trim_profile(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return "\n".join(ln for ln in lines if not ln.lstrip().startswith("Ordered by"))


# --- main -------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default=None,
                    help="comma-separated record counts (default 1000,10000,100000)")
    ap.add_argument("--commits", type=int, default=None,
                    help="measured commits per size and mode (default 200)")
    ap.add_argument("--warmup", type=int, default=None, help="warm-up commits (default 20)")
    ap.add_argument("--batch", type=int, default=10,
                    help="commits per size before rotating to the next size (default 10)")
    ap.add_argument("--lookups", type=int, default=LOOKUPS, help="lookups per size")
    ap.add_argument("--quick", action="store_true", help="sizes 1000,10000; 50 commits")
    ap.add_argument("--cache", type=Path, default=None,
                    help="directory for built repositories (default: "
                         "<tmp>/pds-bench-repo-core); must not be tmpfs for the fsync column")
    ap.add_argument("--rebuild", action="store_true", help="ignore cached repositories")
    ap.add_argument("--profile", type=int, default=None, metavar="SIZE",
                    help="also cProfile the commits at this size (fsync off)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of the table")
    ap.add_argument("--export-child", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.sizes:
        args.size_list = [int(s) for s in args.sizes.split(",") if s.strip()]
    else:
        args.size_list = list(QUICK_SIZES if args.quick else DEFAULT_SIZES)
    if args.commits is None:
        args.commits = 50 if args.quick else 200
    if args.warmup is None:
        args.warmup = 10 if args.quick else 20
    args.warmup_fsync = max(3, args.warmup // 4)
    if any(n < 1 for n in args.size_list) or args.commits < 1 or args.batch < 1:
        ap.error("sizes, --commits and --batch must be positive")
    return args


@contextlib.contextmanager
def cache_lock(cache: Path) -> Iterator[None]:
    """One run at a time per cache dir (runs commit into the cached repositories)."""
    fd = os.open(cache / "LOCK", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for another run using {cache} ...")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.export_child is not None:  # the cold-export subprocess
        print(json.dumps(export_once(args.export_child)))
        return 0
    cache: Path = args.cache or Path(tempfile.gettempdir()) / "pds-bench-repo-core"
    cache.mkdir(parents=True, exist_ok=True)
    info = machine_info(cache)
    if info["work_fs"] in ("tmpfs", "ramfs"):
        log(f"warning: {cache} is on {info['work_fs']}: the fsync column is not real disk")
    subjects: list[Subject] = []
    with cache_lock(cache):
        switch = FsyncSwitch()
        switch.install()
        try:
            results = run_all(args, cache, switch, subjects)
        finally:
            switch.restore()
            for sub in subjects:
                sub.reset()
    info["loadavg_end"] = os.getloadavg()
    targets = evaluate_targets(results)
    if args.json:
        json.dump({"machine": info, "settings": {
            "sizes": args.size_list, "commits": args.commits, "warmup": args.warmup,
            "warmup_fsync": args.warmup_fsync, "batch": args.batch,
            "lookups": args.lookups, "export_runs": EXPORT_RUNS, "cache": str(cache)},
            "results": results, "targets": targets}, sys.stdout, indent=1, default=str)
        print()
    else:
        print_table(info, results, targets, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

