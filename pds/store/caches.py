"""The per-process caches of blocks, CID texts, MST key heights and decoded MST nodes,
sized together from one setting, `PDS_CACHE_MB` (README.md).

The setting is the block cache's size in MiB; the others scale with it: 4096 CID texts
and 4096 key heights per MiB (~200 and ~150 bytes each), and 256 decoded nodes per MiB
in each repository a process has open (~1 KB each). The default, 16, is the sizes the
caches had before they were configurable. Full, they take about three times the setting
in memory plus the nodes (bench/README.md, Memory): a worker of a big repository grows
by that much over its first hours, then stays.
"""

from __future__ import annotations

from ..repo.codec import size_cid_text_cache
from ..repo.mst_node import size_mst_caches
from .blocks import size_block_cache

MIB = 1024 * 1024
ENTRIES_PER_MIB = 4096
NODES_PER_MIB = 256


def size_caches(mb: int) -> None:
    """Size this process's caches for `PDS_CACHE_MB` = `mb` (repositories opened
    afterwards get the new node cache size)."""
    size_block_cache(mb * MIB)
    size_cid_text_cache(mb * ENTRIES_PER_MIB)
    size_mst_caches(heights=mb * ENTRIES_PER_MIB, nodes=mb * NODES_PER_MIB)
