"""A data dir's start-up recovery and event-log checkpoints. Both work on a data dir
alone (no settings, no services), so `pds serve`, backup and restore share them.

- `recover`: what `pds serve` runs before any worker starts (and backup and restore run
  on their copy): staging files of dead writers removed, unpublished events a power cut
  left short removed, every #commit event after the log's checkpoint rolled forward into
  its repo, then every repo's own journal.
- `checkpoint`: what a worker runs every few seconds: flush the filesystem and move
  `seq/CHECKPOINT` up to the last event whose repo files are all written; prune events
  past the retention.
- `LogWriteAhead`: the event log as a repo's write-ahead record (the firehose service
  decides what goes into the log; rolling it forward is done here).

Rolling one commit forward is rollforward.py's, whichever record it comes from.
"""

from __future__ import annotations

import logging
import os
import re
import time

from ..repo.events import split_frame
from .accounts import AccountStore
from .files import try_flock
from .journal import syncfs
from .layout import DataDir
from .repo import Repo, WriteAhead
from .rollforward import logged_commits, redo_from_log, roll_forward_event
from .seqlog import EventLog

log = logging.getLogger("pds.recovery")

# Staging files of `files.write_file` and `create_files` (".<pid>.<random>"), blob uploads
# ("blob-<pid>-<random>") and imports: the writer's pid tells whether it still runs.
_STAGING = re.compile(r"^(?:\.|blob-|import-)(\d+)[.-]")


class LogWriteAhead(WriteAhead):
    """The firehose event log as the write-ahead record of repos: a #commit event holds
    every new block of its commit. Subclassed by the service that sequences events."""

    def __init__(self, seqlog: EventLog) -> None:
        self.seqlog = seqlog

    def redo(self, repo: Repo) -> None:
        redo_from_log(repo, self.seqlog)


def recover(data: DataDir, journals: bool = True) -> int:
    """Replay what a crash left unfinished; returns commits replayed. Without `journals`,
    repos' own journals are left alone (see backup.py: a live source's journal is no
    record that starts before the copy's HEAD)."""
    clean_tmp(data.tmp)
    drop_torn_events(data)
    replayed = replay_events(data)
    if journals:
        replayed += replay_journals(data)
    return replayed


def drop_torn_events(data: DataDir) -> int:
    """Remove the unreadable events past seq/HEAD; returns how many. An event file is in
    place before its fsync (`files.create_files`), so a power cut can leave one short or
    empty on a filesystem that writes names before data. Its seq was never published
    (HEAD moves after the fsync), so it was never acknowledged nor delivered: it goes,
    leaving a gap, rather than reach a subscriber or stop a replay. Events at or below
    HEAD were fsynced before it moved and are left as they are."""
    log_ = EventLog(data.seq, data.tmp)
    dropped = 0
    for seq, frame in list(log_.events(log_.head())):
        try:
            split_frame(frame)
        except ValueError:
            log.error("event %d is unreadable and was never published: removed", seq)
            os.unlink(log_.path(seq))
            dropped += 1
    return dropped


def replay_events(data: DataDir) -> int:
    """Roll #commit events after the checkpoint forward (their blocks rewritten, HEAD
    moved where it lags), then advance the checkpoint past them. Returns commits."""
    log_ = EventLog(data.seq, data.tmp)
    start = last = log_.checkpoint()
    replayed = 0
    for seq, event in logged_commits(log_, start):
        last = seq
        if event is None:
            continue
        repo = Repo(data.account(event.did), data.tmp, event.did, clock=data.clock)
        if not repo.root.is_dir():
            continue  # the account was deleted since
        with repo.lock():
            roll_forward_event(repo, event)
        replayed += 1
    if last > start:
        syncfs(data.root)
        log_.set_checkpoint(last)
    return replayed


def replay_journals(data: DataDir) -> int:
    """Roll forward every account's journal that holds entries; returns entries."""
    replayed = 0
    for did in AccountStore(data).list_dids():
        repo = Repo(data.account(did), data.tmp, did, clock=data.clock)
        if repo.journal.pending():
            replayed += repo.recover()
    return replayed


def checkpoint(data: DataDir, retention_s: float | None = None) -> int | None:
    """Advance CHECKPOINT over events whose repo files are all written, after a syncfs;
    prune events older than the retention. One worker at a time (others skip: None).
    Returns the checkpoint."""
    log_ = EventLog(data.seq, data.tmp)
    with try_flock(log_.checkpoint_lock) as held:
        if not held:
            return None
        cp = log_.checkpoint()
        upto = _applied_upto(data, log_, cp)
        if upto > cp:
            syncfs(data.root)
            log_.set_checkpoint(upto)
        if retention_s is not None:
            log_.prune(time.time() - retention_s, keep_after=upto)
        return upto


def _applied_upto(data: DataDir, log_: EventLog, cp: int) -> int:
    """The last seq after `cp` up to which every #commit event's repo has HEAD at or past
    it (a commit whose writer is still materialising it stops the walk)."""
    upto = cp
    heads: dict[str, str] = {}
    for seq, event in logged_commits(log_, cp, log_.head()):
        if event is not None:
            if event.did not in heads:
                h = Repo(data.account(event.did), data.tmp, event.did, clock=data.clock).head()
                heads[event.did] = h.rev if h else ""
            if heads[event.did] < event.rev:
                break
        upto = seq
    return upto


def clean_tmp(tmp: os.PathLike) -> int:
    """Remove staging files left by killed writers (their process is gone)."""
    removed = 0
    try:
        names = os.listdir(tmp)
    except FileNotFoundError:
        return 0
    for name in names:
        m = _STAGING.match(name)
        if m is None:
            continue
        try:
            os.kill(int(m.group(1)), 0)
            continue  # its writer still runs (e.g. a `pds backup` beside the server)
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        try:
            os.unlink(os.path.join(tmp, name))
            removed += 1
        except OSError:
            pass
    return removed
