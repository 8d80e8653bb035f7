"""Rolling a logged commit forward: how a commit that is durable in its write-ahead record
(the repo's journal, or its #commit event in the firehose log) becomes the repository's
state when its writer did not get that far.

`roll_forward` is the one place that does it. Its callers:
- start-up recovery (`recovery.recover`): every #commit event after the log's checkpoint,
  then every repo's journal (`replay_journal`);
- the next writer of a repo whose last writer died mid-commit (`Repo._redo_locked`): the
  repo's journal, and its events after the checkpoint (`redo_from_log`);
- checkpoints read the same events (`logged_commit`) to see how far repos have got.

Rolling forward is idempotent: blocks are rewritten (a power cut may have left files
written without fsync empty or short) and HEAD moves only to a commit ahead of it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cbrrr import CID

from ..repo import events as ev
from ..repo.car import read_car_blocks
from .seqlog import EventLog

if TYPE_CHECKING:
    from .repo import Repo

log = logging.getLogger("pds.recovery")


def roll_forward(repo: Repo, rev: str, commit: CID, blocks: dict[CID, bytes]) -> bool:
    """Under the repo lock: (re)write a logged commit's blocks, and make it HEAD when it
    is ahead of HEAD. True when HEAD moved."""
    repo.blocks.put_many(blocks.items(), overwrite=True)
    head = repo.recovery_head()
    if head is not None and rev <= head.rev:
        return False
    repo.append_rev(rev, commit)
    repo._set_head(commit, rev)
    return True


def replay_journal(repo: Repo) -> int:
    """Under the repo lock: roll every entry of the repo's journal forward (the caller
    then checkpoints, which empties it). Returns entries replayed."""
    repo.recovery_head()  # mends an empty or torn HEAD even when nothing is pending
    replayed = 0
    for rev, commit, blocks in repo.journal.entries():
        roll_forward(repo, rev, commit, blocks)
        replayed += 1
    return replayed


@dataclass
class LoggedCommit:
    """A #commit event of the firehose log, as far as recovery needs it."""

    did: str
    rev: str
    commit: CID
    car: bytes  # the event's CAR slice, decoded only when rolled forward

    def blocks(self) -> dict[CID, bytes]:
        return read_car_blocks(self.car)[1]


def logged_commit(frame: bytes) -> LoggedCommit | None:
    """The commit a stored event frame carries; None for other events. ValueError when
    the frame is unreadable."""
    header, payload = ev.split_frame(frame)
    if header.get("t") != "#commit":
        return None
    return LoggedCommit(payload["repo"], payload["rev"], payload["commit"], payload["blocks"])


def roll_forward_event(repo: Repo, event: LoggedCommit) -> bool:
    """`roll_forward` for a #commit event."""
    return roll_forward(repo, event.rev, event.commit, event.blocks())


def logged_commits(log_: EventLog, after: int, upto: int | None = None,
                   did: str | None = None) -> Iterator[tuple[int, LoggedCommit | None]]:
    """(seq, commit) of each event in (after, upto], in order, the commit None for other
    events and for unreadable ones (logged and skipped: nothing can roll them forward).
    With `did`: only that repo's commits."""
    needle = did.encode() if did is not None else None
    for seq, data in log_.events(after, upto):
        if needle is not None and needle not in data:
            continue  # cheaper than decoding every event of every repo
        try:
            found = logged_commit(data)
        except ValueError:
            log.error("unreadable event %d skipped", seq)
            found = None
        if did is None or (found is not None and found.did == did):
            yield seq, found


def redo_from_log(repo: Repo, log_: EventLog) -> int:
    """Under the repo lock: roll forward the repo's #commit events that a dead writer
    logged but never applied. They are after the checkpoint, which never passes a commit
    its repo lacks. Returns events rolled forward."""
    done = 0
    for _seq, event in logged_commits(log_, log_.checkpoint(), did=repo.did):
        if event is not None:
            roll_forward_event(repo, event)
            done += 1
    return done
