"""Reading a repository: records, proofs, collections, and CAR exports (whole, or since
a rev, from the export snapshot when it is current).

`RepoReads` is the read half of `Repo` (repo.py holds HEAD and the write path); nothing
here takes the repo lock or writes, except the export snapshot, a derived file.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from cbrrr import CID

from ..repo import car
from ..repo.commit import Commit, parse_commit
from ..repo.mst import MST, NodeLoader, diff
from .blocks import BlockStore
from .files import read_file
from .layout import REVS, SNAPSHOT
from .snapshot import Snapshot
from .snapshot import build as build_snapshot

if TYPE_CHECKING:
    from .repo import Head


class RepoReads:
    """Reads of the repository in directory `root` (mixed into `Repo`)."""

    did: str
    root: Path
    tmp: Path
    blocks: BlockStore
    loader: NodeLoader

    if TYPE_CHECKING:  # provided by Repo
        def head(self) -> Head | None: ...
        def require_head(self) -> Head: ...
        def commit(self, head: Head | None = None) -> Commit: ...
        def tree(self, commit: Commit | None = None) -> MST: ...

    # --- records --------------------------------------------------------------------

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
        head = self.require_head()
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

    # --- exports --------------------------------------------------------------------

    def export_car(self, since: str | None = None) -> Iterator[bytes]:
        """The repository as a CAR stream: commit first, then each MST node (pre-order)
        followed by the records it holds. With `since` (a rev), only what changed after
        it, when that rev is known; the whole repository otherwise."""
        head = self.require_head()
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

    def records_since(self, since: str) -> list[CID]:
        """The records (their CIDs) created or updated by commits after rev `since`
        (revs are TIDs, so they sort by time): every record when no commit of this repo
        is at or before it."""
        tree = self.tree()
        old = self._commit_at_or_before(since)
        if old is None:
            return [cid for _path, cid in tree.items()]
        d = diff(MST(self.loader, parse_commit(self.blocks.get(old)).data), tree)
        return [*d.creates.values(), *(new for _old, new in d.updates.values())]

    def _commit_at_or_before(self, rev: str) -> CID | None:
        data = read_file(self.root / REVS)
        found = None
        for line in (data or b"").decode().splitlines():
            r, _, c = line.partition(" ")
            if r <= rev:
                found = c
        return CID.decode(found) if found else None

    def writes_since(self, rev: str, limit: int) -> list[tuple[str, dict[str, CID | None]]] | None:
        """What each commit after `rev` wrote, oldest first: its rev and the records it
        created or changed (path -> CID) or deleted (path -> None). The base is the last
        commit at or before `rev`; None when there is none, or more than `limit` commits
        follow it (read-after-write: a reader that far behind is not patched)."""
        data = read_file(self.root / REVS)
        if data is None:
            return None
        chain = [tuple(line.split(" ", 1)) for line in data.decode().splitlines() if line]
        older = [i for i, (r, _) in enumerate(chain) if r <= rev]
        if not older or len(chain) - older[-1] - 1 > limit:
            return None
        out: list[tuple[str, dict[str, CID | None]]] = []
        prev = self._tree_of(chain[older[-1]][1])
        for r, c in chain[older[-1] + 1:]:
            tree = self._tree_of(c)
            d = diff(prev, tree)
            wrote: dict[str, CID | None] = dict(d.creates)
            wrote.update((k, v) for k, (_, v) in d.updates.items())
            wrote.update(dict.fromkeys(d.deletes))
            out.append((r, wrote))
            prev = tree
        return out

    def _tree_of(self, commit_cid: str) -> MST:
        return MST(self.loader, parse_commit(self.blocks.get(CID.decode(commit_cid))).data)

    def _commit_at(self, rev: str) -> CID | None:
        data = read_file(self.root / REVS)
        if data is None:
            return None
        for line in data.decode().splitlines():
            r, _, c = line.partition(" ")
            if r == rev:
                return CID.decode(c)
        return None


def _chain(*its: Iterable) -> Iterator:
    for it in its:
        yield from it
