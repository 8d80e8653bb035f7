"""Checking a repository CAR that is imported as an account's repo (importRepo): pure, no
I/O beyond the byte source it is handed.

An import is taken in two passes over a CAR that sits in a file, so a repo of any size is
never held whole in memory:

1. `index_car` reads every section once, checks each block hashes to its CID (sha2-256,
   as `car.read_car` does) and keeps only where each block lies: CID -> (offset, length).
2. `check_repo` walks the repository from the CAR's one root through a block getter
   (reading at those offsets): the root is a v3 commit of the expected DID, signed by the
   DID's current `#atproto` key; every MST node is present, well-formed (heights, order,
   prefix compression, key ranges) and every record block is present and decodes. It
   returns what the store needs: the commit, and every reachable block's CID in walk
   order (blocks the CAR holds beyond them are not stored).

A truncated CAR fails either pass: a section cut short fails the first, one cut at a
section boundary leaves a node or record missing for the second.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO

from cbrrr import CID

from . import car
from .codec import InvalidData, decode, find_blob_refs
from .commit import Commit, parse_commit
from .keys import PublicKey
from .mst import MST
from .mst_node import MissingBlock, NodeLoader

GetBlock = Callable[[CID], bytes]
Signed = Callable[[Commit], bool]


class ImportRefused(ValueError):
    """The CAR is not a repository this account may import (the message says why)."""


@dataclass
class CarIndex:
    """Where each block of a CAR file lies: CID -> (offset of its bytes, length)."""

    roots: list[CID]
    spans: dict[CID, tuple[int, int]] = field(default_factory=dict)
    size: int = 0  # bytes of the whole CAR


def _header_length(src: BinaryIO) -> int:
    """Bytes of the CAR's length-prefixed header (its varint and the header itself)."""
    head = src.read(10)
    n = shift = 0
    for i, b in enumerate(head):
        n |= (b & 0x7F) << shift
        if not b & 0x80:
            return i + 1 + n
        shift += 7
    raise InvalidData("bad CAR header length")


def index_car(src: BinaryIO) -> CarIndex:
    """Index a CAR read from `src` (a seekable file, at its start): its roots and where
    each block lies, every block hash-checked. InvalidData when it is not a well-formed
    CAR of sha2-256 blocks that hash to their CIDs."""
    start = src.tell()
    pos = _header_length(src)
    src.seek(start)
    roots, blocks = car.read_car(src, verify=True)
    index = CarIndex(roots=roots)
    for cid, data in blocks:
        cid_len = len(cid.cid_bytes)
        pos += len(car.varint(cid_len + len(data))) + cid_len
        index.spans.setdefault(cid, (start + pos, len(data)))
        pos += len(data)
    index.size = pos
    return index


@dataclass
class CheckedRepo:
    """A repository that passed `check_repo`."""

    commit_cid: CID
    commit: Commit
    blocks: list[CID]  # every reachable block (commit, MST nodes, records), each once
    records: int
    blob_refs: dict[str, list[str]]  # blob CID -> record paths referring to it


def check_repo(get_block: GetBlock, roots: list[CID], did: str,
               key: PublicKey | Signed | None) -> CheckedRepo:
    """Check that the CAR (its `roots`, its blocks through `get_block`, which raises
    KeyError for a block the CAR lacks) is `did`'s repository, signed by `key` (a public
    key, or a check of the commit's signature; None: the DID has no key to check
    against: refused). ImportRefused says what is wrong."""
    if len(roots) != 1:
        raise ImportRefused("expected one root")
    root = roots[0]
    commit = _checked_commit(get_block, root, did, key)
    loader = NodeLoader(get_block, trusted=False)
    tree = MST(loader, commit.data)
    try:
        records = tree.validate()
        order: list[CID] = [root]
        order.extend(node.cid for node in tree.walk_nodes())
        refs: dict[str, list[str]] = {}
        for path, cid in tree.items():
            order.append(cid)
            _record_refs(get_block, path, cid, refs)
    except MissingBlock as e:
        raise ImportRefused(f"missing block {_cid_text(e)}: the CAR is incomplete") from None
    except InvalidData as e:
        raise ImportRefused(f"invalid repository: {e}") from None
    unique = list(dict.fromkeys(order))  # a record shared by two paths is stored once
    return CheckedRepo(root, commit, unique, records, refs)


def _cid_text(e: Exception) -> str:
    arg = e.args[0] if e.args else None
    return arg.encode() if isinstance(arg, CID) else str(arg)


def _checked_commit(get_block: GetBlock, root: CID, did: str,
                    key: PublicKey | Signed | None) -> Commit:
    try:
        commit = parse_commit(get_block(root))
    except KeyError:
        raise ImportRefused("the CAR lacks its root commit") from None
    except (InvalidData, ValueError) as e:
        raise ImportRefused(f"the root is not a repository commit: {e}") from None
    # v2 commits (no rev) are still found in old repositories; activation signs a v3
    # one over the same tree.
    if commit.did != did:
        raise ImportRefused(f"the repository is {commit.did}'s, not {did}'s")
    if key is None:
        raise ImportRefused(f"no signing key found for {did}")
    if not (commit.verify(key) if isinstance(key, PublicKey) else key(commit)):
        raise ImportRefused(f"the commit is not signed by {did}'s current signing key")
    return commit


def _record_refs(get_block: GetBlock, path: str, cid: CID,
                 refs: dict[str, list[str]]) -> None:
    """Check a record block is there and decodes; note the blobs it refers to."""
    try:
        data = get_block(cid)
    except KeyError:
        raise MissingBlock(cid) from None
    if hashlib.sha256(data).digest() != cid.cid_bytes[4:]:  # get_block may be any source
        raise InvalidData(f"record block {cid.encode()} does not match its CID")
    try:
        value = decode(data)
        found = {ref.cid.encode() for ref in find_blob_refs(value)}
    except (InvalidData, ValueError) as e:
        raise InvalidData(f"record {path} does not decode: {e}") from None
    for c in sorted(found):
        refs.setdefault(c, []).append(path)
