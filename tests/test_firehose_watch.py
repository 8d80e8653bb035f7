"""The firehose's watch on seq/: held only by a worker with subscribers, and delivery
right across it starting and stopping.

- `DirWatch` (pds/store/dirwatch.py) on a real directory: an exchange onto HEAD (as
  `EventLog.append` publishes a seq) and a rename into the directory are reported, a
  file written in a subdirectory is not, nothing pending reads as nothing (no wait),
  and a watch whose directory is deleted says events were lost.
- A running `pds serve --workers 2`: no worker holds an inotify descriptor until a
  subscriber connects; then only the subscriber's worker holds one, and none after it
  leaves.
- A worker that lost its last subscriber and then saw commits pass unwatched serves the
  next one (with a cursor from before those commits, and live) every event once, in
  order: nothing is served from what it remembered before the gap.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from harness import children, wait_for
from server_util import Api, Subscriber, subscribe_url

from pds.store.dirwatch import DirWatch
from pds.store.files import replace_in_place, write_file
from pds.store.seqlog import EventLog

RECORD = {"text": "hello", "createdAt": "2026-01-01T00:00:00.000Z"}


def test_dirwatch_reports_names_moved_into_the_directory(tmp_path: Path) -> None:
    seq, tmp = tmp_path / "seq", tmp_path / "tmp"
    seq.mkdir()
    tmp.mkdir()
    (seq / "HEAD").write_bytes(b"1")
    (seq / "00000000").mkdir()
    watch = DirWatch(seq)
    try:
        assert watch.read() == set()  # nothing yet: an answer, not a wait
        replace_in_place(str(seq / "HEAD"), str(seq / "HEAD.spare"), b"2", tmp)
        assert "HEAD" in (watch.read() or set())
        assert (seq / "HEAD").read_bytes() == b"2"
        write_file(seq / "00000000" / "0000000000000002", b"event", tmp, durable=False)
        assert watch.read() == set()  # not recursive: an event file is no news
        write_file(seq / "FLOOR", b"5 1\n", tmp, durable=False)  # a rename from tmp/
        assert watch.read() == {"FLOOR"}
        os.rename(seq / "FLOOR", tmp / "FLOOR")  # moved out: not reported
        assert watch.read() == set()
        for name in os.listdir(seq):
            p = seq / name
            if p.is_dir():
                for f in os.listdir(p):
                    os.unlink(p / f)
                p.rmdir()
            else:
                p.unlink()
        seq.rmdir()
        assert watch.read() is None  # the watch is gone: the caller must look itself
    finally:
        watch.close()
    assert watch.fileno() == -1


def inotify_fds(pid: int) -> int:
    """How many inotify descriptors process `pid` holds."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:inotify":
                count += 1
        except OSError:
            continue  # closed meanwhile
    return count


def test_only_a_worker_with_subscribers_watches_seq(new_server) -> None:
    server = new_server(workers=2)
    workers = wait_for(lambda: len(w := children(server.proc.pid)) == 2 and w, 30,
                       "two workers")
    assert isinstance(workers, list)
    with Api(server) as api:
        acct = api.create_account()
        api.create_record(acct, RECORD).raise_for_status()
        assert [inotify_fds(w) for w in workers] == [0, 0]

        sub = Subscriber(subscribe_url(server.url))
        try:
            # Once a write reaches it, the subscriber's worker is watching.
            def delivered() -> bool:
                api.create_record(acct, RECORD).raise_for_status()
                return bool(sub.seqs())
            wait_for(delivered, 30, "a live event", interval=0.2)
            assert sorted(inotify_fds(w) for w in workers) == [0, 1]
        finally:
            sub.close()
        wait_for(lambda: [inotify_fds(w) for w in workers] == [0, 0], 30,
                 "the watch to stop after the last subscriber left")
    assert "Traceback" not in server.log(), server.log()[-4000:]


def level_with(sub: Subscriber, log: EventLog) -> Callable[[], bool]:
    return lambda: sub.last_seq() == log.head()


def test_delivery_after_the_last_subscriber_left_and_a_new_one_came(new_server) -> None:
    # One worker: every subscriber meets the same broadcaster, the one whose memory of
    # recent events went stale while nobody watched.
    server = new_server(workers=1)
    log = EventLog(server.data_dir / "seq", server.data_dir / "tmp")
    with Api(server) as api:
        acct = api.create_account()
        for round_ in range(3):
            first = Subscriber(subscribe_url(server.url))
            try:
                # Live (no cursor) once one of these writes reaches it.
                def delivered(sub: Subscriber = first) -> bool:
                    api.create_record(acct, RECORD).raise_for_status()
                    return bool(sub.seqs())
                wait_for(delivered, 30, "a live event", interval=0.2)
                for _ in range(3):
                    api.create_record(acct, RECORD).raise_for_status()
                wait_for(level_with(first, log), 30, "live events")
            finally:
                first.close()
            cursor = first.last_seq() - 2
            # Commits nobody watches (the worker has just let go of its watch, or soon).
            for _ in range(4):
                api.create_record(acct, RECORD).raise_for_status()
            second = Subscriber(subscribe_url(server.url, cursor))
            try:
                wait_for(level_with(second, log), 30, "the replay")
                api.create_record(acct, RECORD).raise_for_status()
                wait_for(level_with(second, log), 30, "a live event")
                want = [s for s, _ in log.events(cursor)]
                assert second.seqs() == want, f"round {round_}"
                got = [d for _, _, d in second.snapshot()]
                assert got == [log.read(s) for s in want]
            finally:
                second.close()
    assert "Traceback" not in server.log(), server.log()[-4000:]
