"""Pruning the event log (pds/store/seqlog.py `EventLog.prune`): the checkpoint loop runs
it every two seconds, idle or not, so a round (the checkpoint's walk included) costs what
it finds to do, not what the log holds. It removes old events oldest first, stops at the
first it keeps, passes events another worker pruned and a floor's jump, and drops the
shard directories it empties."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from pds.repo import events as ev
from pds.store.layout import DataDir
from pds.store.recovery import checkpoint
from pds.store.seqlog import SHARD, EventLog

OLD = time.time() - 3600
DID = "did:plc:abcdefghijklmnopqrstuvwx"


def new_log(root: Path) -> EventLog:
    (root / "seq").mkdir(parents=True, exist_ok=True)
    (root / "tmp").mkdir(exist_ok=True)
    return EventLog(root / "seq", root / "tmp")


def add(log: EventLog, n: int, old: bool) -> list[int]:
    seqs = [log.append(lambda seq: f"event {seq}".encode()) for _ in range(n)]
    if old:
        for seq in seqs:
            os.utime(log.path(seq), (OLD, OLD))
    return seqs


def remaining(log: EventLog) -> list[int]:
    return list(log.seqs())


@pytest.fixture
def listings(monkeypatch) -> list[str]:
    """Directories listed (os.listdir), counted from when a test asks."""
    seen: list[str] = []
    real = os.listdir

    def counting(path="."):
        seen.append(str(path))
        return real(path)

    monkeypatch.setattr(os, "listdir", counting)
    return seen


def test_prunes_oldest_first_up_to_the_first_event_it_keeps(tmp_path):
    log = new_log(tmp_path)
    old = add(log, 5, old=True)
    new = add(log, 3, old=False)
    add(log, 1, old=True)  # older by its file time, but after one that stays
    assert log.prune(time.time() - 60, keep_after=log.head()) == 5
    assert remaining(log) == new + [new[-1] + 1]
    assert old == [1, 2, 3, 4, 5]


def test_keep_after_holds_back_old_events(tmp_path):
    log = new_log(tmp_path)
    add(log, 6, old=True)
    assert log.prune(time.time() - 60, keep_after=4) == 4
    assert remaining(log) == [5, 6]
    assert log.prune(time.time() - 60, keep_after=6) == 2
    assert remaining(log) == []


def test_a_round_with_nothing_to_prune_lists_no_directory(tmp_path, listings):
    log = new_log(tmp_path)
    add(log, 50, old=True)
    add(log, 50, old=False)
    assert log.prune(time.time() - 60, keep_after=log.head()) == 50
    listings.clear()
    for _ in range(3):
        assert log.prune(time.time() - 60, keep_after=log.head()) == 0
    assert listings == []
    # Nor does a later round that prunes: it goes on from where the last one stopped.
    for seq in range(51, 61):
        os.utime(log.path(seq), (OLD, OLD))
    assert log.prune(time.time() - 60, keep_after=log.head()) == 10
    assert listings == [] and remaining(log)[0] == 61


def test_events_another_worker_pruned_are_passed(tmp_path):
    log = new_log(tmp_path)
    add(log, 10, old=True)
    assert log.prune(time.time() - 60, keep_after=3) == 3
    add(log, 20, old=True)
    other = EventLog(log.root, log.tmp)  # the other worker's own prune state is its own;
    for seq in range(4, 20):             # here it is played by deleting what it took
        os.unlink(other.path(seq))
    assert log.prune(time.time() - 60, keep_after=log.head()) == 11
    assert remaining(log) == []


def test_a_floor_jump_is_crossed(tmp_path):
    log = new_log(tmp_path)
    add(log, 3, old=True)
    log.raise_floor(10**12)
    after = add(log, 3, old=True)
    assert after[0] == 10**12
    assert log.prune(time.time() - 60, keep_after=log.head()) == 6
    assert remaining(log) == []


def test_emptied_shard_directories_go_but_not_the_heads(tmp_path):
    log = new_log(tmp_path)
    log.raise_floor(SHARD - 2)
    add(log, 4, old=True)  # SHARD-2 .. SHARD+1: two shards
    assert sorted(os.listdir(log.root / "00000000")) and (log.root / "00000001").is_dir()
    assert log.prune(time.time() - 60, keep_after=SHARD) == 3
    assert not (log.root / "00000000").exists() and (log.root / "00000001").is_dir()
    assert log.prune(time.time() - 60, keep_after=log.head()) == 1
    assert (log.root / "00000001").is_dir()  # the head's shard stays, empty
    assert add(log, 1, old=False) == [SHARD + 2]


def test_a_log_made_again_at_the_same_path_is_pruned_afresh(tmp_path):
    log = new_log(tmp_path)
    add(log, 5, old=True)
    log.prune(time.time() - 60, keep_after=log.head())
    os.rename(tmp_path / "seq", tmp_path / "seq.old")
    again = new_log(tmp_path)
    add(again, 3, old=True)  # seqs 1-3 again, below where the old log's prune stopped
    assert again.prune(time.time() - 60, keep_after=again.head()) == 3


def test_an_idle_checkpoint_round_lists_no_directory(tmp_path, listings):
    """The whole round the checkpoint loop runs every two seconds: with nothing new, it
    reads no event and lists no directory, however many events the log holds."""
    data = DataDir(tmp_path / "data")
    for p in data.init_dirs():
        p.mkdir(parents=True)
    log = EventLog(data.seq, data.tmp)
    for _ in range(30):
        log.append(lambda seq: ev.frame("#identity", ev.identity_payload(seq, DID, None)))
    assert checkpoint(data, retention_s=3600) == 30
    listings.clear()
    assert checkpoint(data, retention_s=3600) == 30
    assert listings == []
