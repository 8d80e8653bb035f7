"""The event log's seq floor (pds/store/seqlog.py): what keeps a restored PDS from going back.

seq is the previous one + 1 until a floor is raised; then the next event jumps to the
floor and counts on from there. The floor never lowers the next seq, holds for a new
EventLog on the same directory (a restart), is on disk before any event above it (so a
writer killed with SIGKILL at any instant leaves no event above the old head without its
floor), and range reads cross the jump (up to 10^15 missing numbers) in one step.
"""

from __future__ import annotations

import random
import textwrap
import threading
from pathlib import Path

import pytest
from harness import kill_script_after

from pds.store.seqlog import MAX_SEQ, EventLog

NOW_US = 1_700_000_000_000_000  # a floor like a restore's: Unix time in microseconds


def new_log(root: Path) -> EventLog:
    (root / "seq").mkdir(parents=True, exist_ok=True)
    (root / "tmp").mkdir(exist_ok=True)
    return EventLog(root / "seq", root / "tmp")


def add(log: EventLog, n: int = 1) -> list[int]:
    return [log.append(lambda seq: f"event {seq}".encode()) for _ in range(n)]


def in_thread(fn, timeout: float = 60.0):
    """fn() on a thread; fails (rather than hanging the run) if it takes longer."""
    out: list = []
    t = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"{fn} still running after {timeout}s"
    return out[0]


def test_seq_counts_up_by_one_without_a_floor(tmp_path: Path) -> None:
    log = new_log(tmp_path)
    assert add(log, 3) == [1, 2, 3]
    assert log.floor() == 0 and log.floors() == [] and log.head() == 3


def test_a_floor_makes_the_next_seq_jump_and_counting_goes_on(tmp_path: Path) -> None:
    log = new_log(tmp_path)
    add(log, 3)
    assert log.raise_floor(NOW_US) == NOW_US
    # Published at once: a consumer's cursor anywhere below the floor is not in the future.
    assert log.head() == NOW_US - 1
    assert add(log, 2) == [NOW_US, NOW_US + 1]
    assert [s for s, _ in log.events()] == [1, 2, 3, NOW_US, NOW_US + 1]
    assert log.floors() == [(NOW_US, 3)]
    # Range reads by number cross the jump in one step (not 10^15 tries), whole or in
    # chunks, and say how far they got.
    frames, upto = in_thread(lambda: log.read_range(0, log.head()))
    assert [s for s, _ in frames] == [1, 2, 3, NOW_US, NOW_US + 1] and upto == NOW_US + 1
    assert frames[3][1] == f"event {NOW_US}".encode()
    frames, upto = in_thread(lambda: log.read_range(2, log.head(), limit=2))
    assert [s for s, _ in frames] == [3, NOW_US] and upto == NOW_US
    frames, upto = in_thread(lambda: log.read_range(upto, log.head(), limit=2))
    assert [s for s, _ in frames] == [NOW_US + 1] and upto == NOW_US + 1
    # Nothing at all after a floor raised with no event yet.
    log.raise_floor(NOW_US * 2)
    assert in_thread(lambda: log.read_range(NOW_US + 1, log.head())) == ([], NOW_US * 2 - 1)


def test_a_floor_never_takes_seq_back(tmp_path: Path) -> None:
    log = new_log(tmp_path)
    add(log, 5)
    assert log.raise_floor(3) == 6  # below the head: the next seq is simply head + 1
    assert add(log) == [6]
    assert log.raise_floor(NOW_US) == NOW_US
    assert log.raise_floor(1000) == NOW_US  # lower than the floor in force: unchanged
    add(log)
    assert log.raise_floor(NOW_US) == NOW_US + 1
    assert add(log) == [NOW_US + 1]
    seqs = [s for s, _ in log.events()]
    assert seqs == sorted(set(seqs))
    assert log.floors() == [(6, 5), (NOW_US, 6), (NOW_US, NOW_US - 1), (NOW_US + 1, NOW_US)]


def test_the_floor_survives_a_restart(tmp_path: Path) -> None:
    log = new_log(tmp_path)
    add(log, 2)
    log.raise_floor(NOW_US)
    again = EventLog(tmp_path / "seq", tmp_path / "tmp")  # another process, later
    assert again.floor() == NOW_US
    assert add(again) == [NOW_US]
    # Even if HEAD went back (it is a hint, written without fsync between events).
    (tmp_path / "seq" / "HEAD").write_text("2")
    assert add(EventLog(tmp_path / "seq", tmp_path / "tmp")) == [NOW_US + 1]


def test_the_floor_is_on_disk_before_the_first_event_above_it(tmp_path: Path) -> None:
    """What a frame is made under the seq lock, once its seq is allocated: by then the
    floor file says so."""
    log = new_log(tmp_path)
    add(log, 2)
    log.raise_floor(NOW_US)
    seen = []

    def frame(seq: int) -> bytes:
        seen.append((tmp_path / "seq" / "FLOOR").read_text())
        return b"x"

    assert log.append(frame) == NOW_US
    assert seen == [f"{NOW_US} 2\n"]


def test_seq_stays_within_what_consumers_read_exactly(tmp_path: Path) -> None:
    log = new_log(tmp_path)
    with pytest.raises(ValueError):
        log.raise_floor(MAX_SEQ + 1)
    assert log.floor() == 0
    log.raise_floor(MAX_SEQ)
    add(log)
    with pytest.raises(ValueError):
        add(log)
    assert MAX_SEQ == 2**53 - 1 and NOW_US < MAX_SEQ


WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from pds.store.seqlog import EventLog
    root = Path(sys.argv[1])
    log = EventLog(root / "seq", root / "tmp")
    n = 0
    while True:
        n += 1
        if n % 7 == 0:
            log.raise_floor(time.time_ns() // 1000)
        log.append(lambda seq: b"event %d" % seq)
        if n == 1:
            print("writing", flush=True)
""")


def test_a_writer_killed_at_any_instant_leaves_the_floor_behind_its_events(
        tmp_path: Path) -> None:
    """A process appending events and raising the floor now and then is killed with
    SIGKILL at random instants; after each kill, no event lies inside a jump, every jump
    in seq has its floor on disk, and the next event (another process) is above them all
    and at least the floor."""
    log = new_log(tmp_path)
    rng = random.Random()
    for _round in range(12):
        kill_script_after(WRITER, [str(tmp_path)], rng.uniform(0.0, 0.15))
        seqs = [s for s, _ in log.events()]
        assert seqs == sorted(set(seqs))
        floors = log.floors()
        for f, head in floors:
            inside = [s for s in seqs if head < s < f]
            assert not inside, f"events {inside} inside the jump {head}..{f}"
        # Events count up by one; every jump is one a floor on disk explains.
        for a, b in zip(seqs, seqs[1:], strict=False):
            assert b == a + 1 or any(a <= head < f <= b for f, head in floors), \
                f"a jump from {a} to {b} with no floor for it: {floors}"
        nxt = add(EventLog(tmp_path / "seq", tmp_path / "tmp"))[0]
        assert nxt > max(seqs) and nxt >= log.floor()
    assert len(log.floors()) >= 2


def test_appending_goes_on_after_its_shard_directory_was_pruned_away(tmp_path: Path) -> None:
    # The writer remembers the last shard directory it saw; pruning may remove that
    # directory once it is empty, and the next event must make it again, not fail.
    log = new_log(tmp_path)
    assert add(log, 2) == [1, 2]
    shard = tmp_path / "seq" / "00000000"
    for f in shard.iterdir():
        f.unlink()
    shard.rmdir()
    assert add(log) == [3]
    assert log.read(3) == b"event 3" and log.head() == 3


def test_a_floor_raised_through_another_object_holds_for_a_new_writer(tmp_path: Path) -> None:
    # A writer reads FLOOR once and then keeps it; a restart (a new EventLog) reads it anew.
    add(new_log(tmp_path), 2)
    new_log(tmp_path).raise_floor(NOW_US)
    assert add(new_log(tmp_path)) == [NOW_US]
