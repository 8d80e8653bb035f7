"""One account's repository in the data dir: HEAD, blocks, journal, and the write path.

Every write (create, update, delete, a batch of them) is applied by `Repo.apply_writes`
(or `Repo.create`, the first commit), through `Repo._commit`, under the repo's `LOCK`
(flock), so writers in any worker process are serialised per repository, while different
repositories commit in parallel. Reads and exports are in repo_read.py; rolling a logged
commit forward (after a crash) in rollforward.py.

Durability: the commit's new blocks go to the write-ahead record first (the repo's
journal, or the server's event log) with one flush, then the block files and HEAD are
written without fsync; `checkpoint()` flushes them later. HEAD is replaced atomically
(exchanged with `HEAD.next`, or renamed), so it always names a commit whose blocks are all
on disk.

Per commit the write path creates one file per new block and frees none: the pending
marker lives in LOCK, the journal is one appended file, HEAD is exchanged with a spare.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cbrrr import CID

from ..repo import car
from ..repo.codec import InvalidData, cid_for, cid_str, encode
from ..repo.commit import Commit, parse_commit, sign_commit
from ..repo.mst import MST
from ..repo.mst_node import Node, NodeLoader
from ..repo.signing_keys import PrivateKey
from ..repo.syntax import InvalidSyntax, ensure_valid_nsid, ensure_valid_record_key
from ..repo.tid import next_tid
from .blocks import BlockStore
from .clock import HEADS, ChangeClock
from .files import flock, read_file, read_whole, replace_in_place, write_file
from .journal import Journal, syncfs
from .layout import BLOCKS, HEAD, HEAD_SPARE, LOCK, REVS
from .repo_errors import (  # noqa: F401 (re-exported: callers import them from here)
    CorruptRepo,
    InvalidSwap,
    RecordExists,
    RecordNotFound,
    RepoError,
    RepoNotFound,
)
from .repo_read import RepoReads
from .rollforward import replay_journal

# A swap value meaning "no check" (None means "must not exist").
ANY: Any = object()
CHECKPOINT_EVERY = 64

# The pending marker is "<rev> <commit cid>\n" in LOCK; a commit that finished overwrites
# its first byte with this (an empty LOCK is clear too). Overwriting in place, rather than
# truncating, keeps the file's block allocated and its inode off ext4's orphan list: a
# cheaper call than a truncate, and less for the commit's journal transaction to log.
_CLEAR = b"-"


@dataclass
class Write:
    """One record change. `swap` is the CID the record must have now (None: must not
    exist; ANY: no check)."""

    action: str  # "create" | "update" | "delete" | "put" (create or update)
    collection: str
    rkey: str
    record: Any = None
    swap: Any = ANY

    @property
    def path(self) -> str:
        return f"{self.collection}/{self.rkey}"


@dataclass
class Op:
    """What a commit did to one record, as the firehose tells it."""

    action: str
    path: str
    cid: CID | None
    prev: CID | None


class WriteAhead:
    """A durable record of a commit written before any of its files (see `_persist`)."""

    def check(self, result: CommitResult) -> None:
        """Refuse (RepoError) a commit the log can't carry, before anything is written."""

    def log(self, repo: Repo, result: CommitResult) -> bool:
        """Make `result` durable; False to leave it to the repo's own journal."""
        return False

    def redo(self, repo: Repo) -> None:
        """Under the repo lock: roll forward a commit that was logged but whose writer died
        before HEAD moved (blocks written, HEAD set; nothing when there is none)."""


class CommitHooks:
    """Work that must happen under the repo lock around a commit (e.g. blob references)."""

    def prepare(self, ops: list[Op], writes: list[Write]) -> None:
        """Before persisting; raising refuses the commit and nothing is written."""

    def finish(self, result: CommitResult) -> None:
        """After the commit is durable and HEAD moved."""


@dataclass
class Head:
    cid: CID
    rev: str


@dataclass
class CommitResult:
    """A new commit and everything a subscriber needs to verify it."""

    did: str
    cid: CID
    rev: str
    since: str | None
    data: CID
    prev_data: CID | None
    blocks: dict[CID, bytes]  # new blocks: the commit, new MST nodes, new records
    proof: dict[CID, bytes] = field(default_factory=dict)  # inversion nodes not in blocks
    ops: list[Op] = field(default_factory=list)

    def car_slice(self) -> bytes:
        """The commit's CAR slice (commit first), as `#commit.blocks` carries it."""
        commit = self.blocks[self.cid]
        rest = ((c, b) for c, b in {**self.blocks, **self.proof}.items() if c != self.cid)
        return car.car_bytes([self.cid], [(self.cid, commit), *rest])


def record_path_parts(path: str) -> tuple[str, str]:
    """Split and check `<collection>/<rkey>`."""
    collection, _, rkey = path.partition("/")
    try:
        ensure_valid_nsid(collection)
        ensure_valid_record_key(rkey)
    except InvalidSyntax as e:
        raise RepoError(str(e)) from e
    return collection, rkey


class Repo(RepoReads):
    """An account's repository directory: `HEAD`, `LOCK`, `blocks/`, `journal.log`, `revs`,
    `export.car` (names in layout.py)."""

    def __init__(self, root: Path, tmp: Path, did: str, key: PrivateKey | None = None,
                 wal: WriteAhead | None = None, clock: ChangeClock | None = None) -> None:
        self.root = root
        self.tmp = tmp
        self.did = did
        self.key = key
        self.blocks = BlockStore(root / BLOCKS, tmp)
        self.journal = Journal(root)
        # Where a commit becomes durable first: the repo's own journal, or (in the
        # server) the firehose event log, whose #commit event carries the same blocks.
        self.wal = wal
        self.loader = NodeLoader(self.blocks.get, trusted=True)
        self._since_checkpoint = 0
        self._lock_fd: int | None = None
        self._head_file = str(root / HEAD)
        self._head_spare = str(root / HEAD_SPARE)
        self._revs_file = str(root / REVS)
        # Ticked after every change of HEAD; the last HEAD read is reused while the
        # clock still shows the stamp read before it (clock.py).
        self.clock = clock
        self._last_head: tuple[bytes | None, bytes, Head] | None = None
        self._last_commit: tuple[CID, Commit] | None = None

    # --- HEAD -----------------------------------------------------------------------

    def head(self) -> Head | None:
        """The current commit (CID and rev); None before the first. From memory while
        the change clock shows no HEAD changed since the last read, else from disk."""
        stamp = None if self.clock is None else self.clock.stamp(HEADS)
        last = self._last_head
        if last is not None and stamp is not None and last[0] == stamp:
            return last[2]
        try:
            data = read_whole(self._head_file)
        except FileNotFoundError:
            return None
        if last is not None and last[1] == data:
            self._last_head = (stamp, data, last[2])
            return last[2]  # unchanged since the last read: skip parsing the CID again
        try:
            cid_s, rev = data.decode().split()
            head = Head(CID.decode(cid_s), rev)
        except (ValueError, UnicodeDecodeError) as e:
            raise CorruptRepo(f"unreadable HEAD for {self.did}") from e
        self._last_head = (stamp, data, head)
        return head

    def recovery_head(self) -> Head | None:
        """HEAD for recovery, under the lock: after a power cut HEAD itself may be empty
        or torn (it is written without fsync between checkpoints); then it is rewritten
        to the newest commit of the `revs` log whose block is present, and replay moves
        on from there."""
        try:
            return self.head()
        except CorruptRepo:
            pass
        for line in reversed((read_file(self._revs_file) or b"").splitlines()):
            try:
                rev, cid_s = line.decode().split()
                cid = CID.decode(cid_s)
            except (ValueError, UnicodeDecodeError):
                continue
            if not self.blocks.has(cid):
                continue
            self._set_head(cid, rev)
            return Head(cid, rev)
        return None

    def _set_head(self, cid: CID, rev: str, durable: bool = False) -> None:
        data = f"{cid_str(cid)} {rev}\n".encode()
        if durable:
            write_file(self._head_file, data, self.tmp, durable=True)
        else:  # flushed by the next checkpoint; the write-ahead record covers it until then
            replace_in_place(self._head_file, self._head_spare, data, self.tmp)
        if self.clock is not None:
            self.clock.tick(HEADS)
            if self._lock_fd is not None:
                # Under the lock nobody else moves this HEAD: what was just written is
                # current while the clock shows the stamp read after our own tick, so
                # the next commit (or read) of this process needn't read HEAD again.
                self._last_head = (self.clock.stamp(HEADS), data, Head(cid, rev))

    def append_rev(self, rev: str, cid: CID) -> None:
        """Add a commit to the `revs` log (what `export_car(since)` looks revs up in)."""
        fd = os.open(self._revs_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{rev} {cid_str(cid)}\n".encode())
        finally:
            os.close(fd)

    def require_head(self) -> Head:
        """The current commit; RepoNotFound before the first."""
        head = self.head()
        if head is None:
            raise RepoNotFound(f"no repository for {self.did}")
        return head

    def commit(self, head: Head | None = None) -> Commit:
        """The current (or given) commit object."""
        head = head or self.require_head()
        last = self._last_commit
        if last is not None and last[0] == head.cid:
            return last[1]
        commit = parse_commit(self.blocks.get(head.cid))
        self._last_commit = (head.cid, commit)
        return commit

    def tree(self, commit: Commit | None = None) -> MST:
        """The MST of the current (or given) commit."""
        commit = commit or self.commit()
        return MST(self.loader, commit.data)

    # --- writes ---------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self) -> Iterator[int]:
        """The repo's writer lock (flock on LOCK), shared by all worker processes.

        The LOCK file's content is the pending-commit marker (see `_persist`): kept in the
        file already open for the lock, it costs two small writes per commit rather than
        creating and removing a file."""
        with flock(self.root / LOCK) as fd:
            self._lock_fd = fd
            try:
                yield fd
            finally:
                self._lock_fd = None

    def create(self, key: PrivateKey, writes: Iterable[Write] = ()) -> CommitResult:
        """Start a new repository: an empty tree (plus `writes`) and its first commit."""
        self.key = key
        for d in (self.root, self.root / BLOCKS):
            d.mkdir(parents=True, exist_ok=True)
        with self.lock():
            if self.head() is not None:
                raise RepoError(f"repository for {self.did} already exists")
            return self._commit(None, MST.empty(self.loader), list(writes))

    def apply_writes(self, writes: list[Write], swap_commit: Any = ANY,
                     hooks: CommitHooks | None = None) -> CommitResult:
        """Apply writes as one signed commit; the single write path for records.

        `hooks.prepare(ops, writes)` runs under the lock before anything is persisted (it
        may refuse the commit by raising); `hooks.finish(result)` runs after.
        """
        with self.lock():
            self._redo_locked()
            head = self.require_head()
            if swap_commit is not ANY and swap_commit != head.cid:
                raise InvalidSwap("commit was at " + head.cid.encode())
            commit = self.commit(head)
            return self._commit(head, MST(self.loader, commit.data), writes, hooks)

    def import_commit(self, commit_cid: CID, rev: str,
                      blocks: Iterable[tuple[CID, bytes]],
                      before_head: Callable[[], None] | None = None) -> Head:
        """Make an imported repository (checked by `repo.repo_import`) this repo's state:
        its commit becomes HEAD (importRepo; no firehose event carries it). Under the
        repo lock, after rolling forward any dead writer's commit: the blocks are
        written, flushed with the journal's pending entries (a checkpoint), then HEAD
        moves, durably: a kill leaves HEAD at the old commit or the new one, each whole.
        `before_head` runs under the lock once the blocks are durable (blob references)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with self.lock():
            self._redo_locked()
            # Each block written whole or not at all (staged and renamed, a block already
            # here replaced too): no log holds these blocks to mend a file a kill left
            # short, as the write-ahead record does for commits.
            self.blocks.put_many(blocks, overwrite=True)
            syncfs(self.root)
            if self.journal.pending():
                self.journal.clear()
            self._since_checkpoint = 0
            if before_head is not None:
                before_head()
            self.append_rev(rev, commit_cid)
            self._set_head(commit_cid, rev, durable=True)
            self._last_commit = None
            return Head(commit_cid, rev)

    def _commit(self, head: Head | None, tree: MST, writes: list[Write],
                hooks: CommitHooks | None = None) -> CommitResult:
        """The one commit function: apply `writes` to `tree` (the tree of `head`), sign,
        persist, move HEAD. Refusals (RepoError) come before anything is written."""
        if self.key is None:
            raise RepoError("no signing key for this repository")
        prev_data = tree.cid if head is not None else None
        tree, records, ops = apply_to_tree(tree, writes)
        result, new_nodes, commit = build_commit(self.did, self.key, head, prev_data, tree,
                                                 records, ops)
        if self.wal is not None:
            self.wal.check(result)
        if hooks is not None:
            hooks.prepare(ops, writes)
        self._persist(result)
        # The next commit builds on this one: keep it rather than read it back.
        self._last_commit = (result.cid, commit)
        for n in new_nodes:
            n.stored = True
            self.loader.cache[n.cid] = n
        if hooks is not None:
            hooks.finish(result)
        return result

    def _persist(self, result: CommitResult) -> None:
        """Write-ahead record (durable), then block files, rev log and HEAD (flushed by a
        later checkpoint).

        A pending marker brackets the commit (the LOCK file's content, written through
        the lock's descriptor): a writer killed between its durable record and HEAD
        leaves it behind, and the next writer of this repo (any worker) rolls that
        commit forward before its own (`_redo_locked`), so no commit is ever built on
        the stale HEAD: the record was published on the firehose and must stay in the
        chain."""
        lock_fd = self._locked_fd()
        os.pwrite(lock_fd, f"{result.rev} {cid_str(result.cid)}\n".encode(), 0)
        if self.wal is None or not self.wal.log(self, result):
            self.journal.append(result.rev, result.cid, result.blocks)
            self._since_checkpoint += 1
        self.blocks.put_many(result.blocks.items())
        self.append_rev(result.rev, result.cid)
        self._set_head(result.cid, result.rev)
        os.pwrite(lock_fd, _CLEAR, 0)
        if self._since_checkpoint >= CHECKPOINT_EVERY:
            self._checkpoint_locked()

    def _locked_fd(self) -> int:
        """The descriptor of the held repo lock (only called under it)."""
        if self._lock_fd is None:
            raise RuntimeError("repo lock not held")
        return self._lock_fd

    def _redo_locked(self) -> None:
        """After a writer died mid-commit (a pending marker left in LOCK): its durable
        record, in the repo's journal or in the write-ahead log, becomes HEAD before
        anything else."""
        lock_fd = self._locked_fd()
        if os.pread(lock_fd, 1, 0) in (b"", _CLEAR):
            return
        if self.journal.pending():
            self._recover_locked()
        if self.wal is not None:
            self.wal.redo(self)
        os.pwrite(lock_fd, _CLEAR, 0)

    # --- durability -----------------------------------------------------------------

    def checkpoint(self) -> None:
        """Flush block files and HEAD to disk and drop the journal entries they cover."""
        with self.lock():
            self._checkpoint_locked()

    def _checkpoint_locked(self) -> None:
        if self.journal.pending():
            syncfs(self.root)
            self.journal.clear()
        self._since_checkpoint = 0

    def recover(self) -> int:
        """Replay journal entries (after a crash) and checkpoint; returns entries replayed.

        Blocks are rewritten (a crash may have left them empty); HEAD moves to the newest
        complete entry whose rev is ahead of it.
        """
        with self.lock():
            return self._recover_locked()

    def _recover_locked(self) -> int:
        replayed = replay_journal(self)
        self._checkpoint_locked()
        return replayed


# --- building a commit ------------------------------------------------------------------


def apply_to_tree(tree: MST, writes: list[Write]) -> tuple[MST, dict[CID, bytes], list[Op]]:
    """Apply writes to a tree: the new tree, the new records' blocks, and the ops."""
    records: dict[CID, bytes] = {}
    ops: list[Op] = []
    seen: set[str] = set()
    for w in writes:
        path = w.path
        record_path_parts(path)
        if path in seen:
            raise RepoError(f"more than one write to {path}")
        seen.add(path)
        tree, op, record = _apply_one(tree, w, path)
        if record is not None and op.cid is not None:
            records[op.cid] = record
        ops.append(op)
    return tree, records, ops


def _apply_one(tree: MST, w: Write, path: str) -> tuple[MST, Op, bytes | None]:
    cur = tree.get(path)
    action = w.action
    if action == "put":  # create or update, decided here under the lock
        action = "update" if cur is not None else "create"
    if w.swap is not ANY and w.swap != cur:
        raise InvalidSwap(f"record {path} is at {cur.encode() if cur else 'nothing'}")
    if action == "create" and cur is not None:
        raise RecordExists(f"record {path} already exists")
    if action in ("update", "delete") and cur is None:
        raise RecordNotFound(f"record {path} not found")
    if action == "delete":
        return tree.delete(path), Op("delete", path, None, cur), None
    if action not in ("create", "update"):
        raise RepoError(f"unknown write action {w.action!r}")
    try:
        data = encode(w.record)
    except InvalidData as e:
        raise RepoError(f"invalid record {path}: {e}") from e
    cid = cid_for(data)
    return tree.put(path, cid), Op(action, path, cid, cur), data


def build_commit(did: str, key: PrivateKey, head: Head | None, prev_data: CID | None,
                 tree: MST, records: dict[CID, bytes],
                 ops: list[Op]) -> tuple[CommitResult, list[Node], Commit]:
    """Sign a commit of `tree` after `head`: the result (new blocks, inversion proof,
    ops), the tree's new nodes and the commit object."""
    rev = next_tid(head.rev if head else None)
    commit, commit_block, commit_cid = sign_commit(did, rev, tree.cid, key)
    new_nodes = list(tree.new_nodes())
    blocks = {commit_cid: commit_block}
    blocks.update((n.cid, n.serialised) for n in new_nodes)
    blocks.update(records)
    # The root always travels with the commit, so even an empty commit's tree loads.
    proof = {tree.cid: tree.root.serialised}
    for op in ops:
        proof.update((n.cid, n.serialised) for n in tree.covering_proof(op.path))
    proof = {c: b for c, b in proof.items() if c not in blocks}
    result = CommitResult(
        did=did, cid=commit_cid, rev=rev, since=head.rev if head else None,
        data=tree.cid, prev_data=prev_data, blocks=blocks, proof=proof, ops=ops,
    )
    return result, new_nodes, commit
