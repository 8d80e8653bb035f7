"""The writer half of the crash test (tests/test_crash.py): commits until it is killed.

    python tests/crash_writer.py DATA_DIR DID KEYFILE

Opens the account's repository in DATA_DIR, runs recovery as `pds serve` does at
start-up, creates the repository when it has no HEAD, then applies random batches of
1-5 writes forever. After each acknowledged commit (apply_writes returned) it appends a
line to DATA_DIR/acked.log and fsyncs it, so the test knows what was acknowledged
before the kill:

    <rev> <commit cid> <data cid> <record count> <record set digest>

The digest is the XOR of sha256("<path> <record cid>") over the records the writer
believes the tree holds, tracked from its own writes rather than read back from the MST.

With CRASH_CHECKPOINT_EVERY=N in the environment it checkpoints every N commits.

Progress lines on stdout, for the test: "start" (imports done, about to recover) and
"ready <entries replayed>" (recovered, about to write).
"""

from __future__ import annotations

import hashlib
import os
import random
import sys
from pathlib import Path

from pds.repo.codec import cid_for, encode
from pds.repo.keys import load_private_key
from pds.store import repo as repo_module
from pds.store.layout import DataDir
from pds.store.repo import Repo, Write

COLLECTIONS = ("app.bsky.feed.post", "app.bsky.feed.like", "app.bsky.graph.follow")
RKEY_CHARS = "abcdefghijklmnopqrstuvwxyz234567"
ACKED_LOG = "acked.log"


def entry_hash(path: str, cid_s: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{path} {cid_s}".encode()).digest(), "big")


def records_digest(items) -> int:
    """XOR of entry_hash over (path, CID) pairs; order does not matter."""
    d = 0
    for path, cid in items:
        d ^= entry_hash(path, cid.encode())
    return d


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


def main(argv: list[str]) -> None:
    data_dir, did, keyfile = Path(argv[0]), argv[1], Path(argv[2])
    every = os.environ.get("CRASH_CHECKPOINT_EVERY")
    if every:  # checkpoint more often than the default, to be killed inside some
        assert hasattr(repo_module, "CHECKPOINT_EVERY")
        repo_module.CHECKPOINT_EVERY = int(every)
    key = load_private_key(keyfile.read_bytes())
    layout = DataDir(data_dir)
    layout.ensure()
    root = layout.account(did)
    root.mkdir(parents=True, exist_ok=True)
    repo = Repo(root, layout.tmp, did, key)
    log = open_acked_log(data_dir)
    print("start", flush=True)
    replayed = repo.recover()
    print(f"ready {replayed}", flush=True)

    rng = random.Random()
    if repo.head() is None:
        result = repo.create(key)
        ack(log, result, 0, 0)
    # path -> record CID string, maintained from our own writes.
    records = {path: cid.encode() for path, cid in repo.tree().items()}
    digest = 0
    for path, cid_s in records.items():
        digest ^= entry_hash(path, cid_s)
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


if __name__ == "__main__":
    main(sys.argv[1:])
