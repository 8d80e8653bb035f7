"""The repo journal: one append-only file of CRC-checked entries, read back whole even
after torn writes, and replaced HEAD files that free no inode."""

import os

from pds.repo.codec import cid_for, encode
from pds.store import files
from pds.store.journal import LOG, Journal


def blocks_of(n: int) -> tuple:
    recs = {}
    for i in range(3):
        data = encode({"n": n, "i": i})
        recs[cid_for(data)] = data
    commit = next(iter(recs))
    return commit, recs


def test_entries_round_trip_in_order(tmp_path):
    j = Journal(tmp_path)
    assert not j.pending() and j.revs() == []
    written = []
    for n in range(5):
        commit, recs = blocks_of(n)
        j.append(f"3k{n:011d}", commit, recs)
        written.append((f"3k{n:011d}", commit, recs))
    assert j.pending()
    assert list(j.entries()) == written
    j.clear()
    assert not j.pending() and j.revs() == []


def test_torn_and_garbage_entries_are_skipped_and_later_ones_found(tmp_path):
    j = Journal(tmp_path)
    c0, b0 = blocks_of(0)
    j.append("3k00000000000", c0, b0)
    good_len = os.path.getsize(tmp_path / LOG)
    c1, b1 = blocks_of(1)
    j.append("3k00000000001", c1, b1)
    raw = (tmp_path / LOG).read_bytes()
    # The second entry torn half way (a crash mid-append), then garbage, then an entry
    # appended after it (acknowledged): the first and the last are found.
    torn = raw[: good_len + (len(raw) - good_len) // 2]
    (tmp_path / LOG).write_bytes(torn + b"PJ1\n\xff\xff\xff\x7fjunk")
    c2, b2 = blocks_of(2)
    j.append("3k00000000002", c2, b2)
    assert j.revs() == ["3k00000000000", "3k00000000002"]
    # A flipped byte inside an entry: its CRC fails, the entry is not used.
    raw = bytearray((tmp_path / LOG).read_bytes())
    raw[20] ^= 0xFF
    (tmp_path / LOG).write_bytes(bytes(raw))
    assert j.revs() == ["3k00000000002"]


def test_replace_in_place_makes_a_missing_file(tmp_path):
    path, spare = str(tmp_path / "HEAD"), str(tmp_path / "HEAD.next")
    files.replace_in_place(path, spare, b"first\n", tmp_path)
    assert open(path, "rb").read() == b"first\n"


def test_replace_in_place_swaps_without_new_inodes(tmp_path):
    path, spare = str(tmp_path / "HEAD"), str(tmp_path / "HEAD.next")
    files.write_file(path, b"one\n", tmp_path)
    files.replace_in_place(path, spare, b"two\n", tmp_path)
    assert open(path, "rb").read() == b"two\n"
    if not files._exchange_works:  # a filesystem without RENAME_EXCHANGE: plain rename
        return
    inodes = {os.stat(path).st_ino, os.stat(spare).st_ino}
    for word in (b"three\n", b"a longer line than before\n", b"4\n"):
        files.replace_in_place(path, spare, word, tmp_path)
        assert open(path, "rb").read() == word
        assert {os.stat(path).st_ino, os.stat(spare).st_ino} == inodes
