"""Recovery at the store level: one roll-forward (pds/store/rollforward.py) behind the
data dir's start-up recovery, the next writer's redo of a dead writer's commit, and the
event log's checkpoints (pds/store/recovery.py); all on a data dir path, no settings."""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import pytest

import pds
from pds.repo import events as ev
from pds.repo.signing_keys import generate_signing_key
from pds.store import layout, rollforward
from pds.store.layout import DataDir
from pds.store.recovery import LogWriteAhead, checkpoint, recover
from pds.store.repo import Repo, Write
from pds.store.seqlog import EventLog

DID = "did:plc:abcdefghijklmnopqrstuvwx"
POST = "app.bsky.feed.post"


def post(text: str) -> dict:
    return {"$type": POST, "text": text, "createdAt": "2024-01-01T00:00:00.000Z"}


class Died(BaseException):
    """A writer killed between its durable record and HEAD."""


class EventWal(LogWriteAhead):
    """The server's write-ahead record, as the Sequencer writes it (#commit events), with
    a switch to die right after the event is durable."""

    die = False

    def log(self, repo, result) -> bool:
        self.seqlog.append(lambda seq: ev.frame("#commit", ev.commit_payload(seq, result)))
        if self.die:
            raise Died
        return True


@pytest.fixture
def data(tmp_path) -> DataDir:
    d = DataDir(tmp_path / "data")
    for p in d.init_dirs():
        p.mkdir(parents=True)
    d.account(DID).mkdir()
    (d.account(DID) / layout.ACCOUNT_JSON).write_text(json.dumps({"did": DID}))
    return d


@pytest.fixture
def spy(monkeypatch) -> list[str]:
    """Revs rolled forward, whichever path did it."""
    seen: list[str] = []
    real = rollforward.roll_forward

    def counting(repo, rev, commit, blocks):
        seen.append(rev)
        return real(repo, rev, commit, blocks)

    monkeypatch.setattr(rollforward, "roll_forward", counting)
    return seen


def _lose_files(repo: Repo, result, back_to) -> None:
    """What a power cut may do to a commit written without fsync: its block files and
    its HEAD never reach the disk."""
    for cid in result.blocks:
        os.unlink(repo.blocks.path(cid))
    (repo.root / layout.HEAD).write_text(f"{back_to.cid.encode()} {back_to.rev}\n")


def _wal_repo(data: DataDir, key=None) -> Repo:
    return Repo(data.account(DID), data.tmp, DID, key,
                wal=EventWal(EventLog(data.seq, data.tmp)))


def test_start_up_recovery_rolls_events_forward_and_checkpoints(data, spy):
    key = generate_signing_key()
    repo = _wal_repo(data, key)
    repo.create(key)
    before = repo.head()
    last = repo.apply_writes([Write("create", POST, "a", post("a"))])
    _lose_files(repo, last, before)
    log_ = EventLog(data.seq, data.tmp)
    assert log_.checkpoint() == 0 and log_.head() == 2

    assert recover(data) == 2  # both commits' events (the first is rewritten in place)
    fresh = Repo(data.account(DID), data.tmp, DID)
    assert fresh.head().cid == last.cid and fresh.get_record(f"{POST}/a") is not None
    assert log_.checkpoint() == 2
    assert spy == [before.rev, last.rev]
    assert recover(data) == 0  # nothing after the checkpoint now


def test_start_up_recovery_replays_a_pending_journal(data, spy):
    """An account off the firehose commits through its own journal.log: recovery of the
    data dir replays it (it once looked only for the older journal/ directory)."""
    key = generate_signing_key()
    repo = Repo(data.account(DID), data.tmp, DID, key)
    repo.create(key)
    repo.checkpoint()
    before = repo.head()
    last = repo.apply_writes([Write("create", POST, "j", post("journal"))])
    assert repo.journal.pending()
    _lose_files(repo, last, before)

    assert recover(data) == 1
    fresh = Repo(data.account(DID), data.tmp, DID)
    assert fresh.head().cid == last.cid and not fresh.journal.pending()
    assert fresh.get_record(f"{POST}/j") is not None
    assert spy == [last.rev]


def test_next_writer_rolls_a_dead_writers_event_forward(data, spy):
    """A writer dies after its #commit event is durable, before HEAD: the event was
    published, so the next writer (another worker) makes it HEAD first and builds on it;
    until then the checkpoint stops short of it."""
    key = generate_signing_key()
    first = _wal_repo(data, key)
    first.create(key)
    checkpoint(data)
    before = first.head()
    first.wal.die = True
    with pytest.raises(Died):
        first.apply_writes([Write("create", POST, "lost", post("logged"))])
    log_ = EventLog(data.seq, data.tmp)
    dead = rollforward.logged_commit(log_.read(log_.head()))
    assert first.head() == before and dead.rev > before.rev
    assert checkpoint(data) == 1  # its repo lacks the commit: not past it

    other = _wal_repo(data, key)
    res = other.apply_writes([Write("create", POST, "next", post("next"))])
    assert res.since == dead.rev and spy == [dead.rev]
    assert other.get_record(f"{POST}/lost") is not None
    assert (other.root / layout.LOCK).read_bytes()[:1] == b"-"  # the pending marker is cleared
    assert checkpoint(data) == log_.head() == 3


def test_checkpoint_passes_an_unreadable_event(data):
    """Recovery skips an event it can't read; so does the checkpoint (it used to fail on
    it every round, holding back the log's pruning for good)."""
    log_ = EventLog(data.seq, data.tmp)
    log_.append(lambda seq: b"\xff not a frame")
    assert checkpoint(data) == 1
    assert recover(data) == 0


def test_recovery_drops_an_unpublished_event_a_power_cut_left_short(data):
    """An event file is in place before its fsync returns (files.create_files), so a power
    cut can leave it empty or short where names reach the disk before data. Its seq was
    never published: recovery removes it, keeps every readable event, and the next event
    is whole."""
    log_ = EventLog(data.seq, data.tmp)
    for _ in range(2):
        log_.append(lambda seq: ev.frame("#identity", ev.identity_payload(seq, DID, None)))
    whole = ev.frame("#identity", ev.identity_payload(3, DID, None))
    log_.path(3).write_bytes(whole[: len(whole) // 2])  # HEAD still says 2
    log_.path(4).write_bytes(b"")
    assert log_.head() == 2

    recover(data)
    assert not log_.path(3).exists() and not log_.path(4).exists()
    assert [seq for seq, _ in log_.events()] == [1, 2]
    seq = log_.append(lambda seq: ev.frame("#identity", ev.identity_payload(seq, DID, None)))
    assert seq == 3 and rollforward.logged_commit(log_.read(3)) is None  # a whole frame


def test_recovery_keeps_readable_unpublished_and_unreadable_published_events(data, spy):
    """What recovery may not drop: a whole event past HEAD (durable, its writer died before
    publishing: it is rolled forward) and an unreadable one at or below HEAD (fsynced
    before HEAD moved: not a torn write, and not ours to delete)."""
    key = generate_signing_key()
    repo = _wal_repo(data, key)
    repo.create(key)
    log_ = EventLog(data.seq, data.tmp)
    log_.append(lambda seq: b"\xff not a frame")
    last = repo.apply_writes([Write("create", POST, "a", post("a"))])
    (data.seq / layout.SEQ_HEAD).write_text("2")  # the writer died before publishing 3

    recover(data)
    assert log_.path(2).read_bytes() == b"\xff not a frame"
    assert rollforward.logged_commit(log_.read(3)).rev == last.rev
    assert spy[-1] == last.rev


def test_one_worker_checkpoints_at_a_time(data):
    from pds.store.files import try_flock
    log_ = EventLog(data.seq, data.tmp)
    log_.append(lambda seq: ev.frame("#identity", ev.identity_payload(seq, DID, None)))
    with try_flock(log_.checkpoint_lock) as held:
        assert held
        assert checkpoint(data) is None and log_.checkpoint() == 0
    assert checkpoint(data) == 1


# --- the shape: the store below everything, its names in one place ---------------------------

STORE = Path(pds.__file__).parent / "store"
ABOVE = ("config", "server", "services", "xrpc", "cli")


def _imports(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            out.add("." * node.level + mod)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_the_store_imports_nothing_above_it():
    bad = []
    for path in sorted(STORE.glob("*.py")):
        for name in _imports(path):
            top = name.lstrip(".").split(".")[0] if name.startswith("..") else (
                name.split(".")[1] if name.startswith("pds.") else "")
            if top in ABOVE:
                bad.append(f"{path.name} imports {name}")
    assert not bad, bad


def test_data_dir_names_are_spelled_only_in_the_layout():
    """No `<path> / "accounts"` (or any other name the layout spells) outside it."""
    names = {v for k, v in vars(layout).items() if k.isupper() and isinstance(v, str)}
    root = Path(pds.__file__).parent
    bad = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel == "store/layout.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div)
                    and isinstance(node.right, ast.Constant) and node.right.value in names):
                bad.append(f"{rel}:{node.lineno} / {node.right.value!r}")
    assert not bad, bad
