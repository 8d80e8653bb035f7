"""Cursor pagination, one way for every paginated method.

A page is taken from items sorted by a string key (a DID, a CID, an rkey, an invite
code): the items after the cursor, at most `limit` of them. The page's own cursor is the
key of its last item when the page is full, and absent when it is not (the client has
seen everything). This is how the reference PDS pages, and a cursor is never anything
but a key, so a client can't be handed one that skips or repeats an item.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def _same(item: Any) -> str:
    return item


@dataclass
class Page(Generic[R]):
    items: list[R]
    cursor: str | None  # the key of the last item, when the page is full

    def answer(self, name: str, shape: Callable[[R], Any] | None = None) -> dict[str, Any]:
        """The method's answer: `{name: [items...], "cursor": ...}` (cursor when full)."""
        out: dict[str, Any] = {name: [shape(i) for i in self.items] if shape else self.items}
        if self.cursor is not None:
            out["cursor"] = self.cursor
        return out


def _after(items: Iterable[T], cursor: str | None, key: Callable[[T], str],
           descending: bool) -> Iterable[T]:
    if cursor is None:
        return items
    if isinstance(items, Sequence) and not descending:
        # A sorted sequence: seek to the cursor instead of scanning up to it.
        return itertools.islice(items, bisect.bisect_right(items, cursor, key=key), None)
    if descending:
        return itertools.dropwhile(lambda i: key(i) >= cursor, items)
    return itertools.dropwhile(lambda i: key(i) <= cursor, items)


def paginate(items: Iterable[T], limit: int, cursor: str | None = None, *,
             key: Callable[[T], str] = _same, descending: bool = False,
             load: Callable[[T], R | None] | None = None) -> Page[R]:
    """One page of `items`, which are sorted by `key` (ascending, or `descending`).

    The items after `cursor` are taken in order, each passed through `load` when it is
    given (an item it turns into None is skipped: `load` may read and filter), until
    `limit` are had; only as many items are looked at as the page needs, so `items` may be
    a lazy iterator. Sources that seek to the cursor themselves (an MST walk) pass no
    `cursor`, only the next page's rule is then applied."""
    taken: list[Any] = []
    last: T | None = None
    for item in _after(items, cursor, key, descending):
        row = item if load is None else load(item)
        if row is None:
            continue
        taken.append(row)
        last = item
        if len(taken) >= limit:
            break
    if last is None or len(taken) < limit:
        return Page(taken, None)
    return Page(taken, key(last))
