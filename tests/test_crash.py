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

import pytest
from cbrrr import CID
from crash_writer import ACKED_LOG, entry_hash

from pds.repo.codec import cid_for, decode
from pds.repo.commit import parse_commit
from pds.repo.keys import PublicKey
from pds.repo.mst import MST, diff
from pds.repo.mst_node import NodeLoader
from pds.repo.signing_keys import export_private_key, generate_signing_key
from pds.store.layout import DataDir
from pds.store.repo import Repo

pytestmark = pytest.mark.slow  # SIGKILLs a writer hundreds of times

TRIALS = 200
WRITER = Path(__file__).with_name("crash_writer.py")
DID = "did:plc:crashtestcrashtestcrasht"
# Share of trials whose writer is a fresh `python crash_writer.py` killed at random during
# its start-up (the others are forked from a warm fork server, to save Python start-up),
# of trials killed while the writer recovers, and of trials checked before any recovery.
SPAWNED, IN_RECOVERY = 0.1, 0.15
NO_RECOVER = 0.15
# Share of trials whose writer checkpoints every few commits (so some kills land in one).
CHECKPOINTING = 0.25
STARTUP_MS = 250  # spawned writers: kill within this; start-up is ~100-200 ms, more if busy
WRITE_MS = (5, 80)
WATCHDOG_S = 120


class Spawned:
    """A writer in a fresh Python process."""

    def __init__(self, args: list[str], every: int | None, err) -> None:
        env = dict(os.environ)
        if every:
            env["CRASH_CHECKPOINT_EVERY"] = str(every)
        self.proc = subprocess.Popen([sys.executable, str(WRITER), *args], env=env,
                                     stdout=subprocess.PIPE, stderr=err)

    def readline(self) -> bytes:
        return self.proc.stdout.readline()

    def kill(self) -> tuple[bytes, int]:
        """SIGKILL; the rest of its output and its exit code."""
        self.proc.send_signal(signal.SIGKILL)
        out, _ = self.proc.communicate()
        return out, self.proc.returncode


class ForkServer:
    """`crash_writer.py --fork-server`: forks writers on demand (see its fork_server)."""

    def __init__(self, args: list[str], err) -> None:
        self.proc = subprocess.Popen([sys.executable, str(WRITER), "--fork-server", *args],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err)
        assert self.readline() == b"zygote\n"

    def start(self, every: int | None) -> ForkServer:
        self.proc.stdin.write(f"go {every or ''}\n".encode())
        self.proc.stdin.flush()
        return self

    def readline(self) -> bytes:
        return self.proc.stdout.readline()

    def kill(self) -> tuple[bytes, int]:
        self.proc.stdin.write(b"kill\n")
        self.proc.stdin.flush()
        out = []
        while not (line := self.readline()).startswith(b"dead "):
            assert line, "the fork server died"
            out.append(line)
        return b"".join(out), int(line.split()[1])

    def close(self) -> None:
        self.proc.kill()  # its writers die with it (PR_SET_PDEATHSIG)
        self.proc.communicate()


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

    def __init__(self, repo: Repo) -> None:
        self.root = str(repo.blocks.root)
        self.names: dict[CID, str] = {}
        self.seen: dict[CID, tuple[int, int, int]] = {}

    def name(self, cid: CID) -> str:
        name = self.names.get(cid)
        if name is None:
            name = self.names[cid] = cid.encode()
        return name

    def get(self, cid: CID) -> bytes | None:
        """The block's bytes when they need checking, None when verified earlier."""
        name = self.name(cid)
        path = os.path.join(self.root, name[-2:], name)  # as BlockStore.path
        st = os.stat(path)  # FileNotFoundError: a referenced block is missing
        sig = (st.st_ino, st.st_size, st.st_mtime_ns)
        if self.seen.get(cid) == sig:
            return None
        with open(path, "rb") as f:
            data = f.read()
        assert cid_for(data) == cid, f"block {name} does not hash to its name"
        self.seen[cid] = sig
        return data

    def digest(self, items) -> int:
        """crash_writer's record set digest of (path, CID) pairs."""
        d = 0
        for path, cid in items:
            d ^= entry_hash(path, self.name(cid))
        return d


def check_commit(repo: Repo, pub: PublicKey, cid, rev: str | None = None):
    block = repo.blocks.get(cid)
    assert cid_for(block) == cid, f"commit block {cid.encode()} does not hash to its name"
    commit = parse_commit(block)
    assert commit.did == DID
    assert commit.verify(pub), f"commit {cid.encode()} signature does not verify"
    if rev is not None:
        assert commit.rev == rev
    return commit


def check_tree(repo: Repo, verified: VerifiedBlocks, data_cid) -> tuple[MST, int]:
    """Validate the MST of `data_cid` and check every node and record block on disk;
    the tree and its record count."""

    def get_block(cid):
        return verified.get(cid) or repo.blocks.get(cid)

    tree = MST(NodeLoader(get_block, cache_size=1 << 20), data_cid)
    count = tree.validate()
    keys = 0
    for node in tree.walk_nodes():
        keys += len(node.keys)
        for val in node.vals:
            data = verified.get(val)
            if data is not None:
                decode(data)
    assert keys == count
    return tree, count


class CrashTrials:
    """The state carried from trial to trial, and one trial's kill and checks."""

    def __init__(self, tmp_path: Path, seed: int) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        key = generate_signing_key()
        self.pub = key.public_key()
        keyfile = tmp_path / "key"
        fd = os.open(keyfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, export_private_key(key))
        os.close(fd)
        data_dir = tmp_path / "data"
        self.layout = DataDir(data_dir)
        self.layout.ensure()
        self.account = self.layout.account(DID)
        self.acked_log = data_dir / ACKED_LOG
        self.args = [str(data_dir), DID, str(keyfile)]
        self.verified = VerifiedBlocks(self.repo())
        self.stats: Counter[str] = Counter()
        self.n_acked = 0
        self.seen: tuple[str, str, str] | None = None  # rev, CID, data CID of last HEAD
        self.seen_recovered = True
        self.check_time = 0.0

    def repo(self) -> Repo:
        return Repo(self.account, self.layout.tmp, DID)

    def kill_writer(self, where: str, server: ForkServer, err) -> list[str]:
        """Start a writer, kill it at a random moment; its progress lines."""
        rng, stats = self.rng, self.stats
        r = rng.random()
        phase = "spawn" if r < SPAWNED else "recovery" if r < SPAWNED + IN_RECOVERY else "write"
        if not self.seen_recovered and rng.random() < 0.5:
            phase = "recovery"  # the writer has a journal to replay: kill it while it does
        every = rng.randint(4, 16) if rng.random() < CHECKPOINTING else None
        writer = Spawned(self.args, every, err) if phase == "spawn" else server.start(every)
        # A hung writer fails the test instead of hanging it ("writer said b''" or "the
        # fork server died"); generous, as a syncfs on a busy disk can take seconds.
        watchdog = threading.Timer(WATCHDOG_S, writer.proc.kill)
        watchdog.start()
        got: list[bytes] = []
        if phase == "spawn":
            time.sleep(rng.uniform(0, STARTUP_MS) / 1000)
        else:
            got.append(writer.readline())
            assert got[-1] == b"start\n", f"{where}: writer said {got[-1]!r}"
            if phase == "recovery":
                time.sleep(rng.uniform(0, 3) / 1000)
            else:
                got += [writer.readline(), writer.readline()]
                assert got[-1] == b"writing\n", f"{where}: writer said {got[-2:]!r}"
                time.sleep(rng.uniform(*WRITE_MS) / 1000)
        out, code = writer.kill()
        watchdog.cancel()
        assert code == -signal.SIGKILL, f"{where}: writer exited with {code}, see its stderr"

        lines = b"".join([*got, out]).decode().split()
        if "start" not in lines:
            stats["killed in start-up"] += 1
        elif "ready" not in lines:
            stats["killed in recovery"] += 1
            if self.repo().journal.revs():
                stats["killed in recovery, journal left"] += 1
        else:
            stats["killed in writing"] += 1
            if lines[lines.index("ready") + 1] != "0":
                stats["writer replayed journal"] += 1
        return lines

    def trial(self, trial: int, server: ForkServer, err) -> None:
        where = f"trial {trial} (seed {self.seed})"
        stats = self.stats
        t0 = time.monotonic()
        self.kill_writer(where, server, err)
        stats["slowest writer run ms"] = max(stats["slowest writer run ms"],
                                             int(1000 * (time.monotonic() - t0)))

        acks = read_acks(self.acked_log)
        new_acks, self.n_acked = acks[self.n_acked:], len(acks)
        if new_acks:
            stats["acked log grew"] += 1
        if not self.account.is_dir():
            assert not acks, f"{where}: acknowledged commits but no repository"
            return

        repo = self.repo()
        before = repo.head()
        recovered = self.rng.random() >= NO_RECOVER
        if not recovered:
            stats["checked before recovery"] += 1
            head = before
        else:
            replayed = repo.recover()
            if replayed:
                stats["recover() replayed entries"] += 1
                stats["entries replayed"] += replayed
            assert repo.journal.revs() == [], f"{where}: journal not empty after recovery"
            head = repo.head()
            if head is not None and (before is None or head.rev > before.rev):
                stats["recovery moved HEAD"] += 1
            assert before is None or head.rev >= before.rev, where
        if head is None:
            assert not acks, f"{where}: no HEAD after an acknowledged commit"
            return

        t_check = time.monotonic()
        commit = check_commit(repo, self.pub, head.cid, head.rev)
        tree, count = check_tree(repo, self.verified, commit.data)

        for ack in new_acks:
            acked = check_commit(repo, self.pub, CID.decode(ack.cid), ack.rev)
            assert acked.data.encode() == ack.data, where
        last = acks[-1] if acks else None
        if last is not None:
            assert head.rev >= last.rev, f"{where}: HEAD {head.rev} lost ack {last.rev}"
            if head.cid.encode() == last.cid:
                assert count == last.count, where
                assert self.verified.digest(tree.items()) == last.digest, where
            else:
                stats["HEAD ahead of last ack"] += 1
        # HEAD is the newest state known (the HEAD the last trial saw, or a newer ack) or
        # at most a batch ahead of it (the writer's unacknowledged commit); two when the
        # last trial skipped recovery and nothing newer was acked since (a journal entry
        # ahead of that HEAD, replayed by this writer, then its unacknowledged commit).
        base, batches = self.seen, 1 if self.seen_recovered else 2
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
        self.check_time += time.monotonic() - t_check
        self.seen = (head.rev, head.cid.encode(), commit.data.encode())
        self.seen_recovered = recovered
        stats["max records"] = max(stats["max records"], count)
        stats["max MST height"] = max(stats["max MST height"], tree.height)


def test_sigkill_leaves_valid_head(tmp_path: Path) -> None:
    seed = int.from_bytes(os.urandom(4), "big")
    trials = CrashTrials(tmp_path, seed)
    err_path = tmp_path / "writer.err"  # writers' tracebacks
    t0 = time.monotonic()
    with open(err_path, "wb") as err:
        server = ForkServer(trials.args, err)
        try:
            for trial in range(TRIALS):
                try:
                    trials.trial(trial, server, err)
                except AssertionError:
                    err.flush()
                    print(err_path.read_text()[-3000:], file=sys.stderr)
                    raise
        finally:
            server.close()
    elapsed = time.monotonic() - t0

    stats = trials.stats
    print(f"\n{TRIALS} trials in {elapsed:.1f}s ({trials.check_time:.1f}s checking), "
          f"seed {seed}, {trials.n_acked} acked commits")
    stats["tmp files left by kills"] = len(os.listdir(trials.layout.tmp))
    for name, n in sorted(stats.items()):
        print(f"  {name}: {n}")
    # Every commit ever acknowledged is still there and verifies.
    repo = trials.repo()
    for ack in read_acks(trials.acked_log):
        check_commit(repo, trials.pub, CID.decode(ack.cid), ack.rev)
    # The kills did land while commits were under way, not only between them.
    assert stats["acked log grew"] >= TRIALS // 10, "the writer hardly ever committed"
    assert stats["recovery moved HEAD"] + stats["HEAD ahead of last ack"] > 0
