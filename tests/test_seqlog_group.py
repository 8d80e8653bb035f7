"""Group commit in the event log (pds/store/seqlog.py `EventLog.append`).

Threads of one process that append while another is writing queue their frame makers;
the next writer takes every queued event in one hold of the seq lock, writes and fsyncs
each file (`files.create_files`), and moves HEAD once. What must hold: every append
gets its own seq, seqs stay contiguous and in queue order, each file holds the frame
made for its seq, a failing frame fails only its own append, a failing write fails the
batch without leaving a thread waiting, the log goes on afterwards, and no append
returns before HEAD has moved past its seq (appenders killed with SIGKILL).
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from harness import kill_script_after

from pds.store.files import create_files
from pds.store.seqlog import EventLog

TIMEOUT = 30.0


def new_log(root: Path) -> EventLog:
    (root / "seq").mkdir(parents=True, exist_ok=True)
    (root / "tmp").mkdir(exist_ok=True)
    return EventLog(root / "seq", root / "tmp")


def wait_until(cond: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.001)


class Appender(threading.Thread):
    """One `append` on its own thread; keeps the seq or the exception."""

    def __init__(self, log: EventLog, make_frame: Callable[[int], bytes]) -> None:
        super().__init__(daemon=True)
        self.log, self.make_frame = log, make_frame
        self.seq: int | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.seq = self.log.append(self.make_frame)
        except BaseException as e:  # noqa: BLE001 - handed to the test
            self.error = e

    def finish(self) -> Appender:
        self.join(TIMEOUT)
        assert not self.is_alive(), "an append is still waiting"
        return self


def held_batch(log: EventLog, makers: list[Callable[[int], bytes]]) -> tuple[Appender,
                                                                             list[Appender]]:
    """A first append whose frame maker blocks (so its thread holds the seq lock) until
    every one of `makers` has been appended and is queued behind it: those form the
    next batch. Returns the first appender and the queued ones, all finished."""
    started, gate = threading.Event(), threading.Event()

    def first_frame(seq: int) -> bytes:
        started.set()
        assert gate.wait(TIMEOUT)
        return f"first {seq}".encode()

    first = Appender(log, first_frame)
    first.start()
    assert started.wait(TIMEOUT), "the first append never made its frame"
    queued = [Appender(log, m) for m in makers]
    for a in queued:
        a.start()
    wait_until(lambda: len(log._queue) == len(makers), "the appends to queue")
    gate.set()
    first.finish()
    for a in queued:
        a.finish()
    return first, queued


def test_concurrent_appends_get_contiguous_seqs_and_their_own_frames(tmp_path: Path) -> None:
    log = new_log(tmp_path)
    got: dict[int, list[int]] = {}

    def run(t: int) -> None:
        got[t] = [log.append(lambda seq, t=t, i=i: f"{t} {i} {seq}".encode())
                  for i in range(40)]

    threads = [threading.Thread(target=run, args=(t,), daemon=True) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(TIMEOUT)
        assert not th.is_alive()
    seqs = sorted(s for v in got.values() for s in v)
    assert seqs == list(range(1, 321))
    assert log.head() == 320
    for t, mine in got.items():
        assert mine == sorted(mine), "one thread's events out of order"
        for i, seq in enumerate(mine):
            assert log.read(seq) == f"{t} {i} {seq}".encode()


def test_queued_events_are_made_and_written_by_one_writer(tmp_path: Path) -> None:
    log = new_log(tmp_path)
    makers_threads: list[int] = []

    def maker(seq: int) -> bytes:
        makers_threads.append(threading.get_ident())
        return f"queued {seq}".encode()

    first, queued = held_batch(log, [maker] * 6)
    assert first.seq == 1 and first.error is None
    assert sorted(a.seq for a in queued) == [2, 3, 4, 5, 6, 7]
    assert all(a.error is None for a in queued)
    # One thread made all six frames: they were one batch, written in one turn.
    assert len(set(makers_threads)) == 1
    for a in queued:
        assert log.read(a.seq) == f"queued {a.seq}".encode()
    assert log.read(1) == b"first 1" and log.head() == 7


def test_a_frame_that_fails_fails_only_its_own_append(tmp_path: Path) -> None:
    log = new_log(tmp_path)

    def bad(seq: int) -> bytes:
        raise ValueError("no frame")

    def good(seq: int) -> bytes:
        return f"good {seq}".encode()

    _, queued = held_batch(log, [good, bad, good, bad, good])
    failed = [a for a in queued if a.error is not None]
    assert len(failed) == 2 and all(isinstance(a.error, ValueError) for a in failed)
    # No seq is used up by a frame that was never written.
    assert sorted(a.seq for a in queued if a.error is None) == [2, 3, 4]
    assert log.head() == 4 and log.read(5) is None
    assert log.append(good) == 5


def test_a_failed_write_fails_its_batch_and_the_log_goes_on(tmp_path: Path) -> None:
    log = new_log(tmp_path)
    tmp, away = tmp_path / "tmp", tmp_path / "tmp-away"

    def maker(seq: int) -> bytes:
        if not away.exists():
            os.rename(tmp, away)  # the staging directory is gone while the batch writes
        return f"lost {seq}".encode()

    first, queued = held_batch(log, [maker] * 4)
    assert first.seq == 1
    for a in queued:
        assert isinstance(a.error, FileNotFoundError), a.error
    assert log.head() == 1
    os.rename(away, tmp)
    assert log.append(lambda seq: f"after {seq}".encode()) == 2
    assert log.read(2) == b"after 2" and log.head() == 2


def test_create_files_writes_every_file_and_remakes_a_missing_directory(
        tmp_path: Path) -> None:
    (tmp_path / "tmp").mkdir()
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    remade: list[str] = []

    def remake(d: str) -> None:
        remade.append(d)
        os.mkdir(d)

    items = [(str(a / "1"), b"one"), (str(b / "2"), b"two"), (str(a / "3"), b"three")]
    create_files(items, tmp_path / "tmp", remake)
    assert remade == [str(b)]
    for path, data in items:
        assert Path(path).read_bytes() == data
    assert list((tmp_path / "tmp").iterdir()) == []  # nothing staged is left
    with pytest.raises(FileNotFoundError):
        create_files([(str(tmp_path / "c" / "4"), b"four")], tmp_path / "tmp")
    assert list((tmp_path / "tmp").iterdir()) == []


# A child appending from four threads; after each append returns it writes the seq (and
# the frame it asked for) to its acknowledgement file, unbuffered.
WRITER = """
import os, sys, threading
from pathlib import Path
from pds.store.seqlog import EventLog
root = Path(sys.argv[1])
log = EventLog(root / "seq", root / "tmp")
acked = os.open(root / "acked", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
def run(t):
    i = 0
    while True:
        i += 1
        frame = f"{os.getpid()} {t} {i}".encode()
        seq = log.append(lambda seq, frame=frame: frame + b" " + str(seq).encode())
        os.write(acked, f"{seq} {frame.decode()}\\n".encode())
for t in range(4):
    threading.Thread(target=run, args=(t,), daemon=True).start()
print("writing", flush=True)
threading.Event().wait()
"""


def test_appenders_killed_at_any_instant_leave_every_acknowledged_event_published(
        tmp_path: Path) -> None:
    """Four threads of a process append (in batches) until SIGKILL at a random instant.
    After each kill every acknowledged seq is at or below HEAD with its own frame, the
    events count up by one, and the next append (another process) goes on above them."""
    log = new_log(tmp_path)
    rng = random.Random()
    total = 0
    for _round in range(10):
        kill_script_after(WRITER, [str(tmp_path)], rng.uniform(0.01, 0.2))
        head = log.head()
        lines = (tmp_path / "acked").read_text().splitlines()
        for line in lines:
            seq_s, _, frame = line.partition(" ")
            if not frame:
                continue  # a line the kill cut short
            seq = int(seq_s)
            assert seq <= head, f"seq {seq} acknowledged but HEAD is {head}"
            assert log.read(seq) == f"{frame} {seq}".encode()
        seqs = [s for s, _ in log.events()]
        assert seqs == list(range(1, len(seqs) + 1)), "a gap or a repeat in the log"
        total = len(lines)
        nxt = EventLog(tmp_path / "seq", tmp_path / "tmp").append(lambda seq: b"next")
        assert nxt == max(seqs) + 1
    assert total > 40, "the writers hardly wrote"
