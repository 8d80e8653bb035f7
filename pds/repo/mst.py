"""The Merkle Search Tree of atproto repositories (repo v3): the tree value and what it does.

Nodes are immutable. A child reference (`Ref`) is `None` (empty subtree), a `CID` (not
loaded yet) or a `Node` (loaded, or built by an edit). Edits build new nodes only along the
path they touch and never serialise them; a node's bytes and CID are computed once, when
asked for, so a batch of writes pays for hashing only the nodes of the final tree.

A node's height is that of its keys; empty intermediate nodes sit at their parent's height
minus one so that links never skip a level. The shape is a pure function of the key -> CID
map. This module holds the tree (`MST`: reads, edits, record and covering proofs,
validation) and `diff` between two trees; the node block format, key heights and the node
loader are in `mst_node.py`.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator

from cbrrr import CID

from .codec import InvalidData
from .mst_node import EMPTY, MAX_HEIGHT, MAX_KEY_BYTES, Node, NodeLoader, Ref, key_height


def _prune(node: Node) -> Ref:
    """A node with no keys and no children stands for an empty subtree."""
    return None if node.is_empty() else node


class MST:
    """An immutable MST value: a root reference and the loader that resolves it."""

    __slots__ = ("loader", "_root", "_height")

    def __init__(self, loader: NodeLoader, root: Ref, height: int | None = None) -> None:
        self.loader = loader
        # The root loads on first use: a tree known only by its CID costs nothing.
        # A fresh empty node, never the shared EMPTY: writers mark a root as stored.
        self._root: Node | CID = Node((), (), (None,)) if root is None else root
        self._height = height

    @property
    def root(self) -> Node:
        if not isinstance(self._root, Node):
            self._root = self.loader.load(self._root)
        return self._root

    @property
    def height(self) -> int:
        if self._height is None:
            self._height = self._root_height()
        return self._height

    @classmethod
    def empty(cls, loader: NodeLoader) -> MST:
        return cls(loader, None, 0)

    def _root_height(self) -> int:
        # An empty intermediate root only appears mid-edit or in odd input: descend.
        node, depth = self.root, 0
        while not node.keys:
            if node.subs[0] is None:
                return depth
            node = self.loader.load(node.subs[0])
            depth += 1
        return key_height(node.keys[0]) + depth

    @property
    def cid(self) -> CID:
        return self._root if isinstance(self._root, CID) else self._root.cid

    # --- reads --------------------------------------------------------------------

    def get(self, key: str) -> CID | None:
        """The value stored under `key`, or None."""
        kh = key_height(key)
        node, h = self.root, self.height
        while True:
            if kh > h:
                return None
            i = bisect_left(node.keys, key)
            if kh == h:
                if i < len(node.keys) and node.keys[i] == key:
                    return node.vals[i]
                return None
            sub = node.subs[i]
            if sub is None:
                return None
            node, h = self.loader.load(sub), h - 1

    def items(self, start: str = "", end: str | None = None) -> Iterator[tuple[str, CID]]:
        """(key, value) pairs in key order with start <= key < end."""
        yield from self._items(self.root, start, end)

    def _items(self, node: Node, start: str, end: str | None) -> Iterator[tuple[str, CID]]:
        # Skip entries (and the subtrees left of them) that lie wholly before `start`.
        i = bisect_left(node.keys, start)
        for j in range(i, len(node.keys) + 1):
            sub = node.subs[j]
            if sub is not None:
                yield from self._items(self.loader.load(sub), start, end)
            if j == len(node.keys):
                return
            key = node.keys[j]
            if end is not None and key >= end:
                return
            yield key, node.vals[j]

    def items_reversed(self, end: str | None = None, start: str = "") -> Iterator[tuple[str, CID]]:
        """(key, value) pairs in descending key order with start <= key < end."""
        yield from self._items_rev(self.root, start, end)

    def _items_rev(self, node: Node, start: str, end: str | None) -> Iterator[tuple[str, CID]]:
        i = len(node.keys) if end is None else bisect_left(node.keys, end)
        for j in range(i, -1, -1):
            if j < i:
                key = node.keys[j]
                if key < start:
                    return
                yield key, node.vals[j]
            sub = node.subs[j]
            if sub is not None:
                yield from self._items_rev(self.loader.load(sub), start, end)

    def walk_nodes(self) -> Iterator[Node]:
        """Every node, pre-order, left to right."""
        stack = [self.root]
        while stack:
            node = stack.pop()
            yield node
            for sub in reversed(node.subs):
                if sub is not None:
                    stack.append(self.loader.load(sub))

    def __len__(self) -> int:
        return sum(len(n.keys) for n in self.walk_nodes())

    # --- edits --------------------------------------------------------------------

    def put(self, key: str, val: CID) -> MST:
        """A new tree with `key` set to `val`."""
        _check_key(key)
        kh = key_height(key)
        if self.root.is_empty():
            return MST(self.loader, Node((key,), (val,), (None, None)), kh)
        root, h = self.root, self.height
        while kh > h:
            # Grow upwards: a keyless node above the old root, then insert there.
            root, h = Node((), (), (root,)), h + 1
        return MST(self.loader, self._put(root, h, key, kh, val), h)

    def _put(self, node: Node, h: int, key: str, kh: int, val: CID) -> Node:
        i = bisect_left(node.keys, key)
        if kh == h:
            if i < len(node.keys) and node.keys[i] == key:
                if node.vals[i] == val:
                    return node
                return Node(node.keys, _replace(node.vals, i, val), node.subs)
            left, right = self._split(node.subs[i], key)
            return Node(
                node.keys[:i] + (key,) + node.keys[i:],
                node.vals[:i] + (val,) + node.vals[i:],
                node.subs[:i] + (left, right) + node.subs[i + 1 :],
            )
        sub = node.subs[i]
        child = EMPTY if sub is None else self.loader.load(sub)
        new_child = self._put(child, h - 1, key, kh, val)
        if new_child is child:
            return node
        return Node(node.keys, node.vals, _replace(node.subs, i, new_child))

    def _split(self, ref: Ref, key: str) -> tuple[Ref, Ref]:
        """Split a subtree into the parts below and above `key`."""
        if ref is None:
            return None, None
        node = self.loader.load(ref)
        i = bisect_left(node.keys, key)
        lsub, rsub = self._split(node.subs[i], key)
        left = Node(node.keys[:i], node.vals[:i], node.subs[:i] + (lsub,))
        right = Node(node.keys[i:], node.vals[i:], (rsub,) + node.subs[i + 1 :])
        return _prune(left), _prune(right)

    def delete(self, key: str) -> MST:
        """A new tree without `key` (the same tree if it was absent)."""
        kh = key_height(key)
        new = self._delete(self.root, self.height, key, kh)
        if new is self.root:
            return self
        if new is None:
            node, h = Node((), (), (None,)), 0
        else:  # a changed subtree is always a new (loaded) node
            node, h = (new if isinstance(new, Node) else self.loader.load(new)), self.height
        # Trim keyless nodes off the top.
        while not node.keys and node.subs[0] is not None:
            sub, h = node.subs[0], h - 1
            if h == 0 and isinstance(sub, CID):
                # A height-0 node always holds keys: no need to load it to know.
                return MST(self.loader, sub, 0)
            node = self.loader.load(sub)
        if not node.keys:
            h = 0
        return MST(self.loader, node, h)

    def _delete(self, node: Node, h: int, key: str, kh: int) -> Ref:
        if kh > h:
            return node
        i = bisect_left(node.keys, key)
        if kh == h:
            if i == len(node.keys) or node.keys[i] != key:
                return node
            merged = self._merge(node.subs[i], node.subs[i + 1])
            return _prune(
                Node(
                    node.keys[:i] + node.keys[i + 1 :],
                    node.vals[:i] + node.vals[i + 1 :],
                    node.subs[:i] + (merged,) + node.subs[i + 2 :],
                )
            )
        sub = node.subs[i]
        if sub is None:
            return node
        child = self.loader.load(sub)
        new_child = self._delete(child, h - 1, key, kh)
        if new_child is child:
            return node
        return _prune(Node(node.keys, node.vals, _replace(node.subs, i, new_child)))

    def _merge(self, a: Ref, b: Ref) -> Ref:
        """Join two adjacent subtrees of one height (all of a's keys below b's)."""
        if a is None:
            return b
        if b is None:
            return a
        na, nb = self.loader.load(a), self.loader.load(b)
        mid = self._merge(na.subs[-1], nb.subs[0])
        return Node(na.keys + nb.keys, na.vals + nb.vals, na.subs[:-1] + (mid,) + nb.subs[1:])

    # --- blocks and proofs ------------------------------------------------------------

    def new_nodes(self) -> Iterator[Node]:
        """Nodes of this tree that did not come from the block store (to be written)."""
        stack = [self.root]
        while stack:
            node = stack.pop()
            if node.stored:
                continue
            yield node
            for sub in node.subs:
                if isinstance(sub, Node) and not sub.stored:
                    stack.append(sub)

    def path(self, key: str) -> list[Node]:
        """Nodes from the root down to where `key` is, or would be (a record proof).

        It descends by key order alone, not by height, so that a verifier that walks the
        same way (as the reference's does) finds every node it looks at.
        """
        out = []
        node = self.root
        while True:
            out.append(node)
            i = bisect_left(node.keys, key)
            if i < len(node.keys) and node.keys[i] == key:
                return out
            sub = node.subs[i]
            if sub is None:
                return out
            node = self.loader.load(sub)

    def covering_proof(self, key: str) -> list[Node]:
        """The nodes needed to add or remove `key` from this tree: its path, and where the
        key is present, the inner spines of its two neighbouring subtrees (a removal
        merges them)."""
        out = self.path(key)
        last = out[-1]
        i = bisect_left(last.keys, key)
        if i < len(last.keys) and last.keys[i] == key:
            out.extend(self._spine(last.subs[i], right=True))
            out.extend(self._spine(last.subs[i + 1], right=False))
        return out

    def _spine(self, ref: Ref, right: bool) -> Iterator[Node]:
        while ref is not None:
            node = self.loader.load(ref)
            yield node
            ref = node.subs[-1] if right else node.subs[0]

    def validate(self) -> int:
        """Check every node's height, key bounds and pruning; return the record count.

        Use on trees from outside (imports): edits assume a well-formed tree.
        """
        count = 0
        stack: list[tuple[Node, int, str, str | None, bool]] = [
            (self.root, self.height, "", None, True)
        ]
        while stack:
            node, h, lo, hi, is_root = stack.pop()
            if h > MAX_HEIGHT or h < 0:
                raise InvalidData("MST too deep")
            if not is_root and node.is_empty():
                raise InvalidData("empty MST node below the root")
            if is_root and not node.keys and node.subs[0] is not None:
                raise InvalidData("MST root has no keys")
            for k in node.keys:
                if key_height(k) != h:
                    raise InvalidData(f"MST key {k!r} at the wrong height")
            # Keys are never empty, so "" works as "no lower bound".
            if node.keys and (node.keys[0] <= lo or (hi is not None and node.keys[-1] >= hi)):
                raise InvalidData("MST key outside its subtree's range")
            count += len(node.keys)
            lows, highs = (lo, *node.keys), (*node.keys, hi)  # subtree j lies between
            for j, sub in enumerate(node.subs):
                if sub is not None:
                    if h == 0:
                        raise InvalidData("MST subtree below height 0")
                    stack.append((self.loader.load(sub), h - 1, lows[j], highs[j], False))
        return count


def _replace(t: tuple, i: int, v: object) -> tuple:
    return t[:i] + (v,) + t[i + 1 :]


def _check_key(key: str) -> None:
    if not key or len(key) > MAX_KEY_BYTES:
        raise InvalidData("MST key must be 1 to 1024 bytes")


# --- diff ---------------------------------------------------------------------------


class Diff:
    """What changed between two trees: nodes and record ops."""

    __slots__ = ("new_nodes", "removed_nodes", "creates", "updates", "deletes")

    def __init__(self) -> None:
        self.new_nodes: dict[CID, Node] = {}
        self.removed_nodes: dict[CID, Node] = {}
        self.creates: dict[str, CID] = {}
        self.updates: dict[str, tuple[CID, CID]] = {}  # key -> (old, new)
        self.deletes: dict[str, CID] = {}


def diff(old: MST, new: MST) -> Diff:
    """Nodes and records that differ between two trees, skipping shared subtrees.

    Both trees are walked layer by layer from the top; a node present in both layers is
    shared with everything under it. A node sits at one place in a tree, so shared
    subtrees always meet in the same layer.
    """
    out = Diff()
    fa: dict[CID, Node] = {old.cid: old.root} if not old.root.is_empty() else {}
    fb: dict[CID, Node] = {new.cid: new.root} if not new.root.is_empty() else {}
    ha, hb = old.height, new.height
    while fa or fb:
        h = max(ha if fa else -1, hb if fb else -1)
        la = fa if ha == h else {}
        lb = fb if hb == h else {}
        for cid in la.keys() & lb.keys():
            del la[cid], lb[cid]
        for layer, removed, src in ((la, out.removed_nodes, old), (lb, out.new_nodes, new)):
            nxt: dict[CID, Node] = {}
            for cid, node in layer.items():
                removed[cid] = node
                for sub in node.subs:
                    if sub is not None:
                        child = src.loader.load(sub)
                        nxt[child.cid] = child
            layer.clear()
            layer.update(nxt)
        if ha == h:
            ha -= 1
        if hb == h:
            hb -= 1
    before = {k: v for n in out.removed_nodes.values() for k, v in zip(n.keys, n.vals, strict=True)}
    after = {k: v for n in out.new_nodes.values() for k, v in zip(n.keys, n.vals, strict=True)}
    for k, v in after.items():
        if k not in before:
            out.creates[k] = v
        elif before[k] != v:
            out.updates[k] = (before[k], v)
    for k, v in before.items():
        if k not in after:
            out.deletes[k] = v
    return out
