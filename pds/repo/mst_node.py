"""MST nodes: the block format of atproto Merkle Search Tree nodes (repo v3) and their loading.

Key heights come from `sha256(key)`: leading zero bits // 2 (fanout 4). A node holds sorted
keys of one height with their values and len(keys)+1 subtrees around them; its DAG-CBOR map
(`l`, and `e` entries with prefix-compressed keys) is encoded and hashed once, when asked for.

Parsing comes in two strengths: `Node.from_bytes` checks layout, key order, prefix
compression and heights (untrusted input: imports, peers' CARs, `pds verify`);
`Node.from_stored` trusts our own block store. `NodeLoader` resolves child references
through a block-store getter with a bounded cache. The tree built from these nodes (reads,
edits, proofs, diff) is in `mst.py`.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from typing import Any, Union

import cbrrr
from cbrrr import CID

from .codec import InvalidData, cid_for, decode, encode_trusted

MAX_KEY_BYTES = 1024
# Key mining can build pathologically deep or wide trees; refuse them when reading.
MAX_HEIGHT = 64
MAX_NODE_ENTRIES = 4096

Ref = Union[None, CID, "Node"]
GetBlock = Callable[[CID], bytes]


class MissingBlock(KeyError):
    """A node the walk needs is not in the block store."""


# Per-process memos, sized by `size_mst_caches` (`PDS_CACHE_MB`): key heights (~150
# bytes an entry, cleared when full) and the decoded nodes each NodeLoader keeps.
_HEIGHTS: dict[str, int] = {}
_HEIGHTS_MAX = 65536
NODE_CACHE_SIZE = 4096


def size_mst_caches(heights: int, nodes: int) -> None:
    """How many key heights this process remembers, and how many decoded nodes each
    NodeLoader made from now on keeps."""
    global _HEIGHTS_MAX, NODE_CACHE_SIZE
    _HEIGHTS_MAX, NODE_CACHE_SIZE = max(1, heights), max(1, nodes)
    if len(_HEIGHTS) > _HEIGHTS_MAX:
        _HEIGHTS.clear()


def key_height(key: str) -> int:
    """The MST layer of a key: leading zero bits of sha256(key), halved."""
    h = _HEIGHTS.get(key)
    if h is None:
        digest = hashlib.sha256(key.encode()).digest()
        h = (256 - int.from_bytes(digest, "big").bit_length()) // 2
        if len(_HEIGHTS) >= _HEIGHTS_MAX:
            _HEIGHTS.clear()
        _HEIGHTS[key] = h
    return h


def common_prefix_len(a: bytes, b: bytes) -> int:
    """How many leading bytes two keys share. As integers, the two prefixes differ first
    in the highest set bit of their XOR: a few steps for the long prefixes record keys
    share (`app.bsky.feed.post/3l...`), where comparing byte by byte took one per byte."""
    n = min(len(a), len(b))
    diff = int.from_bytes(a[:n], "big") ^ int.from_bytes(b[:n], "big")
    return n - (diff.bit_length() + 7) // 8


class Node:
    """One MST node: sorted keys with their values, and len(keys)+1 subtrees around them."""

    __slots__ = ("keys", "vals", "subs", "_cid", "_bytes", "stored")

    def __init__(self, keys: tuple, vals: tuple, subs: tuple, stored: bool = False) -> None:
        self.keys: tuple[str, ...] = keys
        self.vals: tuple[CID, ...] = vals
        self.subs: tuple[Ref, ...] = subs
        self._cid: CID | None = None
        self._bytes: bytes | None = None
        # True when the node came from the block store (its block need not be written).
        self.stored = stored

    def is_empty(self) -> bool:
        return not self.keys and self.subs[0] is None

    @property
    def cid(self) -> CID:
        if self._cid is None:
            self._cid = cid_for(self.serialised)
        return self._cid

    @property
    def serialised(self) -> bytes:
        if self._bytes is None:
            self._bytes = encode_trusted(self.to_value())
        return self._bytes

    def to_value(self) -> dict:
        """The node's DAG-CBOR map: `l` and `e` with prefix-compressed keys."""
        entries = []
        prev = b""
        for key, val, sub in zip(self.keys, self.vals, self.subs[1:], strict=True):
            kb = key.encode()
            p = common_prefix_len(prev, kb)
            entries.append({"k": kb[p:], "p": p, "t": ref_cid(sub), "v": val})
            prev = kb
        return {"e": entries, "l": ref_cid(self.subs[0])}

    @classmethod
    def from_bytes(cls, data: bytes, cid: CID | None = None) -> Node:
        """Parse a stored node, checking its layout, key order and prefix compression."""
        value = decode(data)
        if type(value) is not dict or value.keys() != {"e", "l"}:
            raise InvalidData("malformed MST node")
        entries = value["e"]
        if type(entries) is not list or len(entries) > MAX_NODE_ENTRIES:
            raise InvalidData("malformed MST node entries")
        left = _link_or_none(value["l"])
        keys, vals, subs = [], [], [left]
        prev = b""
        for e in entries:
            if type(e) is not dict or e.keys() != {"k", "p", "t", "v"}:
                raise InvalidData("malformed MST entry")
            p, suffix = e["p"], e["k"]
            if type(p) is not int or type(suffix) is not bytes or not 0 <= p <= len(prev):
                raise InvalidData("malformed MST entry key")
            if p < len(prev) and suffix[:1] == prev[p : p + 1]:
                raise InvalidData("MST key prefix not maximal")
            kb = prev[:p] + suffix
            if kb <= prev or len(kb) > MAX_KEY_BYTES:
                raise InvalidData("MST keys out of order")
            if not isinstance(e["v"], CID):
                raise InvalidData("MST entry value must be a link")
            try:
                keys.append(kb.decode("ascii"))
            except UnicodeDecodeError as err:
                raise InvalidData("MST key is not ASCII") from err
            vals.append(e["v"])
            subs.append(_link_or_none(e["t"]))
            prev = kb
        node = cls(tuple(keys), tuple(vals), tuple(subs), stored=True)
        heights = {key_height(k) for k in keys}
        if len(heights) > 1:
            raise InvalidData("MST node mixes key heights")
        node._bytes = data
        node._cid = cid
        return node

    @classmethod
    def from_stored(cls, data: bytes, cid: CID) -> Node:
        """Parse a node from our own block store, which holds only nodes this program
        encoded or checked with `from_bytes` on import: no re-checking of layout, order
        or heights on this hot path (`pds verify` checks stored nodes in full)."""
        try:
            # Any: the shape is ours (see the docstring); a wrong one raises below.
            value: Any = cbrrr.decode_dag_cbor(data)
            keys, vals, subs = [], [], [value["l"]]
            prev = b""
            for e in value["e"]:
                kb = prev[:e["p"]] + e["k"]
                keys.append(kb.decode("ascii"))
                vals.append(e["v"])
                subs.append(e["t"])
                prev = kb
        except (ValueError, TypeError, KeyError, AttributeError, UnicodeDecodeError) as e:
            raise InvalidData(f"malformed MST node {cid.encode()}: {e}") from e
        node = cls(tuple(keys), tuple(vals), tuple(subs), stored=True)
        node._bytes = data
        node._cid = cid
        return node

    def height(self) -> int | None:
        """The node's layer when it holds keys; None for an empty intermediate node."""
        return key_height(self.keys[0]) if self.keys else None


def _link_or_none(v: object) -> CID | None:
    if v is None:
        return None
    if not isinstance(v, CID):
        raise InvalidData("MST subtree must be a link or null")
    return v


def ref_cid(ref: Ref) -> CID | None:
    """The CID a child reference stands for (computing it for a new node)."""
    if ref is None or isinstance(ref, CID):
        return ref
    return ref.cid


# Stands for a missing subtree while reading; never returned as part of a tree.
EMPTY = Node((), (), (None,))


class NodeLoader:
    """Loads nodes from a block source, keeping decoded nodes in a bounded cache."""

    def __init__(self, get_block: GetBlock, cache_size: int | None = None,
                 trusted: bool = False) -> None:
        self.get_block = get_block
        self.cache: dict[CID, Node] = {}
        self.cache_size = NODE_CACHE_SIZE if cache_size is None else cache_size
        # A loader may be shared by reads in several threads: evicting is two steps.
        self._evict_lock = threading.Lock()
        # Blocks from our own store skip the checks that untrusted input (an import, a
        # peer's CAR, `pds verify`) gets.
        self._parse = Node.from_stored if trusted else Node.from_bytes

    def load(self, ref: Ref) -> Node:
        """The node a reference points to (an empty node for None)."""
        if ref is None:
            return EMPTY
        if isinstance(ref, Node):
            return ref
        node = self.cache.get(ref)
        if node is None:
            try:
                data = self.get_block(ref)
            except KeyError as e:
                raise MissingBlock(ref) from e
            node = self._parse(data, ref)
            with self._evict_lock:
                if len(self.cache) >= self.cache_size:
                    # Drop the oldest entry; dicts keep insertion order.
                    self.cache.pop(next(iter(self.cache)), None)
                self.cache[ref] = node
        return node

