"""One account's repository in the data dir: HEAD, blocks, journal, and the write path.

Every write (create, update, delete, a batch of them, an import) is applied by
`Repo.apply_writes` or `Repo.import_car` under the repo's `LOCK` (flock), so writers in
any worker process are serialised per repository, while different repositories commit in
parallel.

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
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cbrrr import CID

from ..repo import car
from ..repo.codec import InvalidData, cid_for, cid_str, encode
from ..repo.commit import Commit, parse_commit, sign_commit
from ..repo.keys import PublicKey
from ..repo.mst import MST, diff
from ..repo.mst_node import NodeLoader
from ..repo.signing_keys import PrivateKey
from ..repo.syntax import InvalidSyntax, ensure_valid_nsid, ensure_valid_record_key
from ..repo.tid import next_tid
from .blocks import BlockStore
from .files import flock, read_file, read_whole, replace_in_place, write_file
from .journal import Journal, syncfs
from .snapshot import Snapshot
from .snapshot import build as build_snapshot

# A swap value meaning "no check" (None means "must not exist").
ANY: Any = object()
CHECKPOINT_EVERY = 64
ZERO_REV = "2222222222222"
SNAPSHOT = "export.car"  # the export snapshot, in the repo directory


class RepoError(Exception):
    """A write (or read) the repository refuses."""


class RecordExists(RepoError):
    """A create of a record that is already there."""


class RecordNotFound(RepoError):
    """An update or delete of a record that isn't there."""


class InvalidSwap(RepoError):
    """The commit or record is not at the CID the write expected."""


class RepoNotFound(RepoError):
    """No repository (no HEAD) for the account."""


class CorruptRepo(RepoError):
    """The repository's own files are unreadable."""


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


class Repo:
    """An account's repository directory: `HEAD`, `LOCK`, `blocks/`, `journal.log`, `revs`,
    `export.car`."""

    def __init__(self, root: Path, tmp: Path, did: str, key: PrivateKey | None = None,
                 wal: WriteAhead | None = None) -> None:
        self.root = root
        self.tmp = tmp
        self.did = did
        self.key = key
        self.blocks = BlockStore(root / "blocks", tmp)
        self.journal = Journal(root)
        # Where a commit becomes durable first: the repo's own journal, or (in the
        # server) the firehose event log, whose #commit event carries the same blocks.
        self.wal = wal
        self.loader = NodeLoader(self.blocks.get, trusted=True)
        self._since_checkpoint = 0
        self._lock_fd: int | None = None
        self._head_file = str(root / "HEAD")
        self._revs_file = str(root / "revs")
        # The last HEAD read and commit parsed (reads check HEAD on every call).
        self._last_head: tuple[bytes, Head] | None = None
        self._last_commit: tuple[CID, Commit] | None = None

    # --- HEAD -----------------------------------------------------------------------

    def head(self) -> Head | None:
        """The current commit (CID and rev), read from disk; None before the first."""
        try:
            data = read_whole(self._head_file)
        except FileNotFoundError:
            return None
        last = self._last_head
        if last is not None and last[0] == data:
            return last[1]  # unchanged since the last read: skip parsing the CID again
        try:
            cid_s, rev = data.decode().split()
            head = Head(CID.decode(cid_s), rev)
        except (ValueError, UnicodeDecodeError) as e:
            raise CorruptRepo(f"unreadable HEAD for {self.did}") from e
        self._last_head = (data, head)
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
            replace_in_place(self._head_file, self._head_file + ".next", data, self.tmp)

    def append_rev(self, rev: str, cid: CID) -> None:
        """Add a commit to the `revs` log (what `export_car(since)` looks revs up in)."""
        fd = os.open(self._revs_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{rev} {cid_str(cid)}\n".encode())
        finally:
            os.close(fd)

    def commit(self, head: Head | None = None) -> Commit:
        """The current (or given) commit object."""
        head = head or self.head()
        if head is None:
            raise RepoNotFound(f"no repository for {self.did}")
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

    # --- reads ----------------------------------------------------------------------

    def get_record(self, path: str, tree: MST | None = None) -> tuple[CID, bytes] | None:
        """A record's CID and DAG-CBOR bytes, or None."""
        tree = tree or self.tree()
        cid = tree.get(path)
        if cid is None:
            return None
        return cid, self.blocks.get(cid)

    def list_records(self, collection: str, limit: int = 50, cursor: str | None = None,
                     reverse: bool = False) -> list[tuple[str, CID, bytes]]:
        """Records of a collection as (rkey, cid, bytes); newest rkey first unless
        `reverse`, starting after `cursor` (an rkey), at most `limit`."""
        tree = self.tree()
        prefix = collection + "/"
        hi = collection + "0"  # "0" follows "/" in ASCII: the end of the collection
        out = []
        if reverse:
            start = prefix + cursor + "\x00" if cursor else prefix
            items = tree.items(start, hi)
        else:
            end = prefix + cursor if cursor else hi
            items = tree.items_reversed(end, prefix)
        for key, cid in items:
            out.append((key[len(prefix):], cid, self.blocks.get(cid)))
            if len(out) >= limit:
                break
        return out

    def record_proof_car(self, path: str) -> bytes:
        """A CAR proving a record's presence or absence: the commit, the MST path to the
        key, and the record when present."""
        head = self.head()
        if head is None:
            raise RepoNotFound(f"no repository for {self.did}")
        commit_block = self.blocks.get(head.cid)
        tree = self.tree(parse_commit(commit_block))
        blocks = [(head.cid, commit_block)]
        blocks += [(n.cid, n.serialised) for n in tree.path(path)]
        found = tree.get(path)
        if found is not None:
            blocks.append((found, self.blocks.get(found)))
        return car.car_bytes([head.cid], blocks)

    def collections(self) -> list[str]:
        """The collections holding records, in order: hops from one collection to the
        next instead of walking every record."""
        tree = self.tree()
        out: list[str] = []
        key = ""
        while (nxt := next(tree.items(key), None)) is not None:
            out.append(nxt[0].split("/")[0])
            key = out[-1] + "0"  # "0" follows "/": just past "<collection>/..."
        return out

    # --- writes ---------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self) -> Iterator[int]:
        """The repo's writer lock (flock on LOCK), shared by all worker processes.

        The LOCK file's content is the pending-commit marker (see `_persist`): kept in the
        file already open for the lock, it costs a write and a truncate per commit rather
        than creating and removing a file."""
        with flock(self.root / "LOCK") as fd:
            self._lock_fd = fd
            try:
                yield fd
            finally:
                self._lock_fd = None

    def create(self, key: PrivateKey, writes: Iterable[Write] = ()) -> CommitResult:
        """Start a new repository: an empty tree (plus `writes`) and its first commit."""
        self.key = key
        for d in (self.root, self.root / "blocks"):
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
            head = self.head()
            if head is None:
                raise RepoNotFound(f"no repository for {self.did}")
            if swap_commit is not ANY and swap_commit != head.cid:
                raise InvalidSwap("commit was at " + head.cid.encode())
            commit = self.commit(head)
            return self._commit(head, MST(self.loader, commit.data), writes, hooks)

    def _commit(self, head: Head | None, tree: MST, writes: list[Write],
                hooks: CommitHooks | None = None) -> CommitResult:
        if self.key is None:
            raise RepoError("no signing key for this repository")
        prev_data = tree.cid if head is not None else None
        records: dict[CID, bytes] = {}
        ops: list[Op] = []
        seen: set[str] = set()
        for w in writes:
            path = w.path
            record_path_parts(path)
            if path in seen:
                raise RepoError(f"more than one write to {path}")
            seen.add(path)
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
                tree = tree.delete(path)
                ops.append(Op("delete", path, None, cur))
                continue
            if action not in ("create", "update"):
                raise RepoError(f"unknown write action {w.action!r}")
            try:
                data = encode(w.record)
            except InvalidData as e:
                raise RepoError(f"invalid record {path}: {e}") from e
            cid = cid_for(data)
            records[cid] = data
            tree = tree.put(path, cid)
            ops.append(Op(action, path, cid, cur))
        rev = next_tid(head.rev if head else None)
        _commit, commit_block, commit_cid = sign_commit(self.did, rev, tree.cid, self.key)
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
            did=self.did, cid=commit_cid, rev=rev, since=head.rev if head else None,
            data=tree.cid, prev_data=prev_data, blocks=blocks, proof=proof, ops=ops,
        )
        if self.wal is not None:
            self.wal.check(result)
        if hooks is not None:
            hooks.prepare(ops, writes)
        self._persist(result)
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
        lock_fd = self._lock_fd
        os.pwrite(lock_fd, f"{result.rev} {cid_str(result.cid)}\n".encode(), 0)
        if self.wal is None or not self.wal.log(self, result):
            self.journal.append(result.rev, result.cid, result.blocks)
            self._since_checkpoint += 1
        self.blocks.put_many(result.blocks.items())
        self.append_rev(result.rev, result.cid)
        self._set_head(result.cid, result.rev)
        os.ftruncate(lock_fd, 0)
        if self._since_checkpoint >= CHECKPOINT_EVERY:
            self._checkpoint_locked()

    def _redo_locked(self) -> None:
        """After a writer died mid-commit (a pending marker left in LOCK): its durable
        record, in the repo's journal or in the write-ahead log, becomes HEAD before
        anything else."""
        if os.fstat(self._lock_fd).st_size == 0:
            return
        if self.journal.pending():
            self._recover_locked()
        if self.wal is not None:
            self.wal.redo(self)
        os.ftruncate(self._lock_fd, 0)

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
        head = self.recovery_head()
        replayed = 0
        for rev, commit_cid, blocks in self.journal.entries():
            self.blocks.put_many(blocks.items(), overwrite=True)
            if head is None or rev > head.rev:
                self.append_rev(rev, commit_cid)
                self._set_head(commit_cid, rev)
                head = Head(commit_cid, rev)
            replayed += 1
        self._checkpoint_locked()
        return replayed

    # --- export / import ------------------------------------------------------------

    def export_car(self, since: str | None = None) -> Iterator[bytes]:
        """The repository as a CAR stream: commit first, then each MST node (pre-order)
        followed by the records it holds. With `since` (a rev), only what changed after
        it, when that rev is known; the whole repository otherwise."""
        head = self.head()
        if head is None:
            raise RepoNotFound(f"no repository for {self.did}")
        commit_block = self.blocks.get(head.cid)
        tree = MST(self.loader, self.commit(head).data)
        old = self._commit_at(since) if since else None
        if old is not None:
            blocks = self._diff_blocks(MST(self.loader, parse_commit(self.blocks.get(old)).data),
                                       tree)
            yield from car.write_car([head.cid], _chain([(head.cid, commit_block)], blocks))
            return
        try:
            snap, _built = self.snapshot(head)
        except OSError:  # no room or a read-only copy: stream from the block files
            snap = None
        if snap is not None:
            yield from snap.chunks()
        else:
            yield from car.write_car([head.cid], _chain([(head.cid, commit_block)],
                                                        self._walk_blocks(tree)))

    def refresh_snapshot(self, max_age: float) -> bool:
        """Rewrite the export snapshot if it is older than `max_age` seconds and HEAD has
        moved since (or there is none); True when it was rewritten."""
        try:
            age = time.time() - os.stat(self.root / SNAPSHOT).st_mtime
        except FileNotFoundError:
            age = float("inf")
        head = self.head()
        if age < max_age or head is None:
            return False
        snap, built = self.snapshot(head)
        snap.close()
        return built

    def snapshot(self, head: Head) -> tuple[Snapshot, bool]:
        """The export snapshot of commit `head` (see `snapshot.py`), open, and whether it
        was built now: the one on disk when it is that commit's, else a new one built
        from it."""
        path = self.root / SNAPSHOT
        old = Snapshot.open(path)
        if old is not None and old.root == head.cid:
            return old, False
        try:
            return build_snapshot(path, self.tmp, head.cid, self.blocks.get(head.cid),
                                  self.commit(head).data,
                                  NodeLoader(self.blocks.read, trusted=True),
                                  self.blocks.read, old), True
        finally:
            if old is not None:
                old.close()

    def _walk_blocks(self, tree: MST) -> Iterator[tuple[CID, bytes]]:
        for node in tree.walk_nodes():
            yield node.cid, node.serialised
            for val in node.vals:
                yield val, self.blocks.get(val)

    def _diff_blocks(self, old: MST, new: MST) -> Iterator[tuple[CID, bytes]]:
        d = diff(old, new)
        for cid, node in d.new_nodes.items():
            yield cid, node.serialised
        for cid in {*d.creates.values(), *(n for _, n in d.updates.values())}:
            yield cid, self.blocks.get(cid)

    def _commit_at(self, rev: str) -> CID | None:
        data = read_file(self.root / "revs")
        if data is None:
            return None
        for line in data.decode().splitlines():
            r, _, c = line.partition(" ")
            if r == rev:
                return CID.decode(c)
        return None

    def import_car(self, src: bytes, verify_key: PublicKey | None = None,
                   resign: bool = False) -> CommitResult:
        """Load a repository CAR: every block hashed, the commit checked (and its signature
        when `verify_key` is given), the MST walked for shape and completeness, every
        record present. The imported commit becomes HEAD, or with `resign` a new commit
        by this repo's key over the same tree."""
        try:
            root, blocks = car.read_car_blocks(src)
        except InvalidData as e:
            raise RepoError(f"invalid CAR: {e}") from e
        if root is None or root not in blocks:
            raise RepoError("CAR has no commit root")
        try:
            commit = parse_commit(blocks[root])
        except InvalidData as e:
            raise RepoError(f"invalid commit: {e}") from e
        if commit.did != self.did:
            raise RepoError(f"CAR is the repository of {commit.did}, not {self.did}")
        if verify_key is not None and not commit.verify(verify_key):
            raise RepoError("commit signature does not verify")
        tree = MST(NodeLoader(blocks.__getitem__), commit.data)
        try:
            tree.validate()
            needed = {root}
            for node in tree.walk_nodes():
                needed.add(node.cid)
                needed.update(node.vals)
        except (InvalidData, KeyError) as e:
            raise RepoError(f"invalid repository tree: {e}") from e
        missing = [c for c in needed if c not in blocks]
        if missing:
            raise RepoError(f"CAR lacks {len(missing)} blocks, e.g. {missing[0].encode()}")
        kept = {c: blocks[c] for c in needed}
        for d in (self.root, self.root / "blocks"):
            d.mkdir(parents=True, exist_ok=True)
        with self.lock():
            self._redo_locked()
            head = self.head()
            prev_data = self.commit(head).data if head else None
            if resign:
                return self._resign(head, commit.data, kept, root, prev_data)
            # Old v2 commits carry no rev: they sort before every real one.
            rev = commit.rev or ZERO_REV
            if head is not None and rev <= head.rev:
                raise RepoError("imported commit is not newer than the current one")
            result = CommitResult(did=self.did, cid=root, rev=rev,
                                  since=head.rev if head else None, data=commit.data,
                                  prev_data=prev_data, blocks=kept)
            self._persist(result)
            return result

    def _resign(self, head: Head | None, data: CID, blocks: dict[CID, bytes], old_root: CID,
                prev_data: CID | None) -> CommitResult:
        if self.key is None:
            raise RepoError("no signing key for this repository")
        rev = next_tid(head.rev if head else None)
        _c, commit_block, commit_cid = sign_commit(self.did, rev, data, self.key)
        blocks = {commit_cid: commit_block, **{c: b for c, b in blocks.items() if c != old_root}}
        result = CommitResult(did=self.did, cid=commit_cid, rev=rev,
                              since=head.rev if head else None, data=data,
                              prev_data=prev_data, blocks=blocks)
        self._persist(result)
        return result


def _chain(*its: Iterable) -> Iterator:
    for it in its:
        yield from it
