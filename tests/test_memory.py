"""What keeps a worker's memory small, where it is behaviour (bench/README.md, Memory)."""

from __future__ import annotations

import pytest

from pds.services.auth import hash_password, verify_password

# Made with the parameters used before (argon2id, 19 MiB, 2 passes), from
# "correct horse battery staple".
OLD_HASH = ("$argon2id$v=19$m=19456,t=2,p=1$AOGH2oRLP6HjIUq7pkW+PA$"
            "FnQWXnY0K2EGudZIQDe8SCr64Mrg2k8XI8z+zriDebA")


def test_password_hashes_take_7_mib():
    """OWASP's argon2id setting of least memory: 7 MiB, 5 passes, one lane."""
    hashed = hash_password("correct horse battery staple")
    assert hashed.startswith("$argon2id$v=19$m=7168,t=5,p=1$")
    assert verify_password("correct horse battery staple", hashed)
    assert not verify_password("correct horse battery stapler", hashed)


def test_hashes_made_with_the_old_parameters_still_verify():
    """Stored hashes keep their own parameters: accounts made before the change log in."""
    assert verify_password("correct horse battery staple", OLD_HASH)
    assert not verify_password("correct horse battery stapler", OLD_HASH)


def test_a_tuned_malloc_maps_large_blocks_after_a_larger_one_was_freed():
    """`server.tune_malloc` fixes glibc's mmap threshold: after a 10 MB block was freed
    (an argon2 buffer), a 1 MB one still gets its own mapping, given back when freed,
    where glibc's default would have raised the threshold and taken it from the heap."""
    import platform
    import subprocess
    import sys

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc only")
    code = """
import ctypes, sys
from pds.server import tune_malloc
class Info(ctypes.Structure):  # struct mallinfo2: hblks, the blocks mapped on their own
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks",
                "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
if sys.argv[1] == "tuned":
    assert tune_malloc()
big = bytearray(10 * 1024 * 1024)
del big
before = libc.mallinfo2().hblks
block = bytearray(1024 * 1024)
print(libc.mallinfo2().hblks - before)
"""

    def mapped(mode: str) -> int:
        return int(subprocess.run([sys.executable, "-c", code, mode], capture_output=True,
                                  text=True, check=True).stdout)

    assert mapped("default") == 0  # what the test relies on: glibc's dynamic threshold
    assert mapped("tuned") == 1


def test_gunicorns_chunk_size_table_is_only_a_shortcut():
    """Each worker empties gunicorn's table of chunk-size lines (`server.py`,
    `_trim_gunicorn_tables`): right only while gunicorn formats a size the table lacks."""
    import inspect

    from gunicorn.asgi import protocol

    src = inspect.getsource(protocol)
    assert '_CHUNK_PREFIXES.get(size) or f"{size:x}\\r\\n".encode("latin-1")' in src
    assert src.count("_CHUNK_PREFIXES") == 2  # made, and read only there


def test_pds_cache_mb_bounds_every_cache_of_blocks_cids_and_mst_nodes(tmp_path):
    """`PDS_CACHE_MB` sizes the per-process caches (pds/store/caches.py); what a worker's
    caches can hold stays within it, however much it reads."""
    import os

    from pds.config import Settings, SettingsError
    from pds.repo import codec, mst_node
    from pds.repo.mst_node import NodeLoader, key_height
    from pds.services.context import AppContext
    from pds.store import blocks

    assert Settings.load(tmp_path, env={"PDS_CACHE_MB": "1"}).cache_mb == 1
    with pytest.raises(SettingsError, match="PDS_CACHE_MB"):
        Settings.load(tmp_path, env={"PDS_CACHE_MB": "0"})
    (tmp_path / "d" / "tmp").mkdir(parents=True)
    try:
        AppContext(Settings(data_dir=tmp_path / "d", hostname="localhost:1", dev=True,
                            jwt_secret="s" * 32, cache_mb=1))
        assert NodeLoader(lambda cid: b"").cache_size == 256
        for i in range(5000):
            key_height(f"app.bsky.feed.post/{i:013d}")
            codec.cid_str(codec.cid_for(str(i).encode()))
            blocks._CACHE.put(os.urandom(36), bytes(1000))
        assert len(mst_node._HEIGHTS) <= 4096 and len(codec._CID_TEXT) <= 4096
        assert blocks._CACHE.size <= 1024 * 1024 < 5000 * 1000
    finally:
        from pds.store.caches import size_caches
        size_caches(Settings.cache_mb)  # the default, for the tests after this one
    assert NodeLoader(lambda cid: b"").cache_size == 4096
    assert blocks._CACHE.max_bytes == 16 * 1024 * 1024
