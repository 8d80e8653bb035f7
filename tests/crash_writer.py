"""The writer half of the crash test (tests/test_crash.py): commits until it is killed.

    python tests/crash_writer.py DATA_DIR DID KEYFILE
    python tests/crash_writer.py --fork-server DATA_DIR DID KEYFILE   (see fork_server)

Opens the account's repository in DATA_DIR, runs recovery as `pds serve` does at
start-up, creates the repository when it has no HEAD, then applies random batches of
1-5 writes forever. After each acknowledged commit (apply_writes returned) it appends a
line to DATA_DIR/acked.log and fsyncs it, so the test knows what was acknowledged
before the kill:

    <rev> <commit cid> <data cid> <record count> <record set digest>

The digest is the XOR of sha256("<path> <record cid>") over the records the writer
believes the tree holds, tracked from its own writes rather than read back from the MST.

With CRASH_CHECKPOINT_EVERY=N in the environment it checkpoints every N commits.

Progress lines on stdout, for the test: "start" (imports done, about to recover),
"ready <entries replayed>" (recovered) and "writing" (tree loaded, about to commit).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import os
import random
import signal
import sys
import traceback
from pathlib import Path

from pds.repo.codec import cid_for, encode
from pds.repo.signing_keys import PrivateKey, load_private_key
from pds.store import repo as repo_module
from pds.store.layout import DataDir
from pds.store.repo import Repo, Write

COLLECTIONS = ("app.bsky.feed.post", "app.bsky.feed.like", "app.bsky.graph.follow")
RKEY_CHARS = "abcdefghijklmnopqrstuvwxyz234567"
ACKED_LOG = "acked.log"
PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def entry_hash(path: str, cid_s: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{path} {cid_s}".encode()).digest(), "big")


def say(line: str) -> None:
    """A progress line on stdout in one write: a kill never leaves half of one (print
    may write the text and the newline separately) for the next line to run into."""
    os.write(1, f"{line}\n".encode())


def open_acked_log(data_dir: Path) -> int:
    """The ack log, opened for appending, with a torn last line (if any) cut off."""
    path = data_dir / ACKED_LOG
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    size = os.fstat(fd).st_size
    if size:
        data = os.pread(fd, size, 0)
        keep = data.rfind(b"\n") + 1
        if keep != size:
            os.ftruncate(fd, keep)
            os.fsync(fd)
    return fd


def ack(fd: int, result, count: int, digest: int) -> None:
    line = f"{result.rev} {result.cid.encode()} {result.data.encode()} {count} {digest:x}\n"
    os.write(fd, line.encode())
    os.fsync(fd)


def random_record(rng: random.Random, collection: str) -> dict:
    return {
        "$type": collection,
        "text": "".join(rng.choices(RKEY_CHARS, k=rng.randint(0, 40))),
        "n": rng.randint(0, 2**31),
        "createdAt": "2024-01-01T00:00:00.000Z",
    }


def random_batch(rng: random.Random, records: dict[str, str]) -> list[Write]:
    writes: list[Write] = []
    used: set[str] = set()
    existing = list(records)
    for _ in range(rng.randint(1, 5)):
        action = rng.choices(("create", "update", "delete"), weights=(7, 2, 1))[0]
        if action != "create" and existing:
            path = rng.choice(existing)
            if path in used:
                continue
            used.add(path)
            collection, _, rkey = path.partition("/")
            record = random_record(rng, collection) if action == "update" else None
            writes.append(Write(action, collection, rkey, record))
            continue
        collection = rng.choice(COLLECTIONS)
        rkey = "".join(rng.choices(RKEY_CHARS, k=13))
        path = f"{collection}/{rkey}"
        if path in used or path in records:
            continue
        used.add(path)
        writes.append(Write("create", collection, rkey, random_record(rng, collection)))
    return writes


def run(data_dir: Path, did: str, key: PrivateKey, checkpoint_every: int | None) -> None:
    """Recover, then commit random batches until killed."""
    if checkpoint_every:  # checkpoint more often than the default, to be killed inside some
        assert hasattr(repo_module, "CHECKPOINT_EVERY")
        repo_module.CHECKPOINT_EVERY = checkpoint_every
    layout = DataDir(data_dir)
    layout.ensure()
    root = layout.account(did)
    root.mkdir(parents=True, exist_ok=True)
    repo = Repo(root, layout.tmp, did, key)
    log = open_acked_log(data_dir)
    say("start")
    replayed = repo.recover()
    say(f"ready {replayed}")

    rng = random.Random()
    if repo.head() is None:
        result = repo.create(key)
        ack(log, result, 0, 0)
    # path -> record CID string, maintained from our own writes.
    records = {path: cid.encode() for path, cid in repo.tree().items()}
    digest = 0
    for path, cid_s in records.items():
        digest ^= entry_hash(path, cid_s)
    say("writing")
    while True:
        writes = random_batch(rng, records)
        if not writes:
            continue
        result = repo.apply_writes(writes)
        for w in writes:
            old = records.pop(w.path, None)
            if old is not None:
                digest ^= entry_hash(w.path, old)
            if w.action != "delete":
                cid_s = cid_for(encode(w.record)).encode()
                records[w.path] = cid_s
                digest ^= entry_hash(w.path, cid_s)
        ack(log, result, len(records), digest)


def fork_server(data_dir: Path, did: str, key: PrivateKey) -> None:
    """Start writers by fork, saving the test Python's start-up on every trial.

    Commands on stdin: `go [CHECKPOINT_EVERY]` forks a writer (its progress lines come
    out on our stdout); `kill` sends it SIGKILL, reaps it and prints `dead <exit code>`
    (-9 when the kill ended it). Only this process reaps the writer, so the PID it kills
    is never a reused one. Writers die with this process (PR_SET_PDEATHSIG).
    """
    say("zygote")
    me = os.getpid()
    child = None
    while line := sys.stdin.readline():
        cmd = line.split()
        if cmd[0] == "go":
            every = int(cmd[1]) if len(cmd) > 1 else None
            child = os.fork()
            if child == 0:
                try:
                    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
                    if os.getppid() == me:
                        run(data_dir, did, key, every)
                except BaseException:
                    traceback.print_exc()
                finally:
                    os._exit(1)
        elif cmd[0] == "kill" and child is not None:
            os.kill(child, signal.SIGKILL)
            _, status = os.waitpid(child, 0)
            child = None
            say(f"dead {os.waitstatus_to_exitcode(status)}")


def main(argv: list[str]) -> None:
    fork = argv[:1] == ["--fork-server"]
    if fork:
        argv = argv[1:]
    data_dir, did, keyfile = Path(argv[0]), argv[1], Path(argv[2])
    key = load_private_key(keyfile.read_bytes())
    if fork:
        fork_server(data_dir, did, key)
    else:
        every = os.environ.get("CRASH_CHECKPOINT_EVERY")
        run(data_dir, did, key, int(every) if every else None)


if __name__ == "__main__":
    main(sys.argv[1:])
