"""Crash safety: a writer killed with SIGKILL at random moments always leaves HEAD on a
complete commit whose signature and MST verify, and loses nothing it acknowledged.

One data dir is reused by every trial, so the repository grows and later trials kill
commits that touch a deeper MST. Each trial starts `crash_writer.py`, kills it at a
random moment (during Python start-up, during its recovery, or while it commits), and
then checks the data dir from this process: usually after `recover()` (as `pds serve`
does at start-up), sometimes before any recovery, which must already be valid since a
killed process leaves the page cache, and so every renamed file, intact.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from cbrrr import CID
from crash_writer import ACKED_LOG, records_digest

from pds.repo.codec import cid_for, decode
from pds.repo.commit import parse_commit
from pds.repo.keys import PublicKey, export_private_key, generate_signing_key
from pds.repo.mst import MST, NodeLoader, diff
from pds.store.layout import DataDir
from pds.store.repo import Repo

TRIALS = 200
WRITER = Path(__file__).with_name("crash_writer.py")
DID = "did:plc:crashtestcrashtestcrasht"
# Share of trials killed while Python starts, while the writer recovers, and while it
# commits; and of trials checked before any recovery by this process.
EARLY, IN_RECOVERY = 0.1, 0.15
NO_RECOVER = 0.15
# Share of trials whose writer checkpoints every few commits (so some kills land in one).
CHECKPOINTING = 0.25
STARTUP_MS = 150  # upper bound of an "early" kill; Python start-up is ~100 ms here
WRITE_MS = (5, 80)


@dataclass
class Ack:
    rev: str
    cid: str
    data: str
    count: int
    digest: int


def read_acks(path: Path) -> list[Ack]:
    """Every complete line of the ack log (a torn last line was never acknowledged)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    lines = text.split("\n")[:-1]
    acks = []
    for line in lines:
        rev, cid, data, count, digest = line.split()
        acks.append(Ack(rev, cid, data, int(count), int(digest, 16)))
    return acks


class VerifiedBlocks:
    """Reads blocks from the store, checking each hashes to its CID.

    A block file found right once is not hashed again while it is the same file (same
    inode, size and mtime): block files are replaced only by rename, which changes the
    inode, so anything rewritten since is read and hashed again."""

    def __init__(self) -> None:
        self.seen: dict[str, tuple[int, int, int]] = {}

    def get(self, repo: Repo, cid) -> bytes | None:
        """The block's bytes when they need checking, None when verified earlier."""
        path = repo.blocks.path(cid)
        st = os.stat(path)  # FileNotFoundError: a referenced block is missing
        sig = (st.st_ino, st.st_size, st.st_mtime_ns)
        key = cid.encode()
        if self.seen.get(key) == sig:
            return None
        data = path.read_bytes()
        assert cid_for(data) == cid, f"block {key} does not hash to its name"
        self.seen[key] = sig
        return data


def check_commit(repo: Repo, pub: PublicKey, cid, rev: str | None = None):
    block = repo.blocks.get(cid)
    assert cid_for(block) == cid, f"commit block {cid.encode()} does not hash to its name"
    commit = parse_commit(block)
    assert commit.did == DID
    assert commit.verify(pub), f"commit {cid.encode()} signature does not verify"
    if rev is not None:
        assert commit.rev == rev
    return commit


def check_tree(repo: Repo, verified: VerifiedBlocks, data_cid) -> MST:
    """Validate the MST of `data_cid` and check every node and record block on disk."""

    def get_block(cid):
        return verified.get(repo, cid) or repo.blocks.get(cid)

    tree = MST(NodeLoader(get_block, cache_size=1 << 20), data_cid)
    count = tree.validate()
    keys = 0
    for node in tree.walk_nodes():
        keys += len(node.keys)
        for val in node.vals:
            data = verified.get(repo, val)
            if data is not None:
                decode(data)
    assert keys == count
    return tree


def test_sigkill_leaves_valid_head(tmp_path: Path) -> None:
    seed = int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    key = generate_signing_key()
    pub = key.public_key()
    keyfile = tmp_path / "key"
    fd = os.open(keyfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, export_private_key(key))
    os.close(fd)
    data_dir = tmp_path / "data"
    layout = DataDir(data_dir)
    layout.ensure()
    account = layout.account(DID)
    acked_log = data_dir / ACKED_LOG
    verified = VerifiedBlocks()
    stats: Counter[str] = Counter()
    n_acked = 0
    seen: tuple[str, str, str] | None = None  # rev, CID, data CID of the last HEAD checked
    seen_recovered = True
    check_time = 0.0
    t0 = time.monotonic()

    for trial in range(TRIALS):
        where = f"trial {trial} (seed {seed})"
        r = rng.random()
        phase = "early" if r < EARLY else "recovery" if r < EARLY + IN_RECOVERY else "writing"
        if not seen_recovered and rng.random() < 0.5:
            phase = "recovery"  # the writer has a journal to replay: kill it while it does
        env = dict(os.environ)
        if rng.random() < CHECKPOINTING:
            env["CRASH_CHECKPOINT_EVERY"] = str(rng.randint(4, 16))
        proc = subprocess.Popen(
            [sys.executable, str(WRITER), str(data_dir), DID, str(keyfile)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
        )
        watchdog = threading.Timer(60, proc.kill)  # a hung writer fails the trial, not CI
        watchdog.start()
        got: list[bytes] = []  # the writer's progress lines
        if phase == "early":
            time.sleep(rng.uniform(0, STARTUP_MS) / 1000)
        else:
            got.append(proc.stdout.readline())
            assert got[-1] == b"start\n", f"{where}: writer said {got[-1]!r}"
            if phase == "recovery":
                time.sleep(rng.uniform(0, 3) / 1000)
            else:
                got.append(proc.stdout.readline())
                assert got[-1].startswith(b"ready "), f"{where}: writer said {got[-1]!r}"
                time.sleep(rng.uniform(*WRITE_MS) / 1000)
        proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate()
        watchdog.cancel()
        assert proc.returncode == -signal.SIGKILL, f"{where}: writer died: {err.decode()}"

        repo = Repo(account, layout.tmp, DID)
        # What the writer got to, for the statistics.
        lines = b"".join([*got, out]).decode().split("\n")
        if "start" not in lines:
            stats["killed before recovery"] += 1
        elif len(lines) < 3:
            stats["killed during recovery"] += 1
            if repo.journal.revs():
                stats["killed during recovery, journal left"] += 1
        else:
            stats["killed while writing"] += 1
            if lines[1] != "ready 0":
                stats["writer replayed journal"] += 1

        acks = read_acks(acked_log)
        new_acks, n_acked = acks[n_acked:], len(acks)
        if new_acks:
            stats["acked log grew"] += 1
        if not account.is_dir():
            assert not acks, f"{where}: acknowledged commits but no repository"
            continue

        before = repo.head()
        recovered = rng.random() >= NO_RECOVER
        if not recovered:
            stats["checked before recovery"] += 1
            assert before is not None or not acks, f"{where}: no HEAD after an ack"
            if before is None:
                continue
            head = before
        else:
            replayed = repo.recover()
            if replayed:
                stats["recover() replayed entries"] += 1
                stats["entries replayed"] += replayed
            assert repo.journal.revs() == [], f"{where}: journal not empty after recovery"
            head = repo.head()
            assert head is not None or not acks, f"{where}: no HEAD after recovery"
            if head is None:
                continue
            if before is None or head.rev > before.rev:
                stats["recovery moved HEAD"] += 1
            assert before is None or head.rev >= before.rev, where

        t_check = time.monotonic()
        commit = check_commit(repo, pub, head.cid, head.rev)
        tree = check_tree(repo, verified, commit.data)

        for ack in new_acks:
            acked = check_commit(repo, pub, CID.decode(ack.cid), ack.rev)
            assert acked.data.encode() == ack.data, where
        last = acks[-1] if acks else None
        if last is not None:
            assert head.rev >= last.rev, f"{where}: HEAD {head.rev} lost ack {last.rev}"
            if head.cid.encode() == last.cid:
                assert len(tree) == last.count, where
                assert records_digest(tree.items()) == last.digest, where
            else:
                stats["HEAD ahead of last ack"] += 1
        # HEAD is the newest state known (the HEAD the last trial saw, or a newer ack) or
        # at most a batch ahead of it (the writer's unacknowledged commit); two when the
        # last trial skipped recovery and nothing newer was acked since (a journal entry
        # ahead of that HEAD, replayed by this writer, then its unacknowledged commit).
        base, batches = seen, 1 if seen_recovered else 2
        if last is not None and (base is None or last.rev > base[0]):
            base, batches = (last.rev, last.cid, last.data), 1
        if base is not None:
            assert head.rev >= base[0], f"{where}: HEAD {head.rev} went back from {base[0]}"
            if head.rev == base[0]:
                assert head.cid.encode() == base[1], where
            else:
                d = diff(MST(repo.loader, CID.decode(base[2])), tree)
                n_ops = len(d.creates) + len(d.updates) + len(d.deletes)
                assert 1 <= n_ops <= 5 * batches, f"{where}: HEAD {n_ops} ops from {base[0]}"
        check_time += time.monotonic() - t_check
        seen, seen_recovered = (head.rev, head.cid.encode(), commit.data.encode()), recovered
        stats["max records"] = max(stats["max records"], len(tree))
        stats["max MST height"] = max(stats["max MST height"], tree.height)

    elapsed = time.monotonic() - t0
    print(f"\n{TRIALS} trials in {elapsed:.1f}s ({check_time:.1f}s checking), seed {seed}, "
          f"{n_acked} acked commits")
    stats["tmp files left by kills"] = len(os.listdir(layout.tmp))
    for name, n in sorted(stats.items()):
        print(f"  {name}: {n}")
    # Every commit ever acknowledged is still there and verifies.
    repo = Repo(account, layout.tmp, DID)
    for ack in read_acks(acked_log):
        check_commit(repo, pub, CID.decode(ack.cid), ack.rev)
    # The kills did land while commits were under way, not only between them.
    assert stats["acked log grew"] >= TRIALS // 10, "the writer hardly ever committed"
    assert stats["recovery moved HEAD"] + stats["HEAD ahead of last ack"] > 0
