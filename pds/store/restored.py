"""A restored data dir: its event log must not go back, and its repos announce themselves.

A data dir restored from a backup has lost whatever it emitted after the backup was taken:
its event log ends earlier than what relays have already seen. Numbering on from there
would hand out seqs relays already have, and a relay silently ignores a host whose seq
goes back (and with it every account on it). So a restore (`announce_restore`):

1. raises the event log's floor (seq/FLOOR, seqlog.py) to the current Unix time in
   microseconds: every seq emitted before is far below it, unless this PDS averaged more
   than a million events a second since its last jump (the floor is also never below the
   log's last seq + 1). The floor is durable before any event is written above it.
   Microseconds stay below 2^53, what JavaScript consumers read exactly, until 2255.
2. gives every active repo a new commit: the same tree, signed with a new rev. Its HEAD
   is now older than what relays saw, and consumers drop a rev at or below the last one
   they have, so the state it announces must come with a rev after all of those (revs are
   clock-based too; sync v1.1's advice after a migration is the same empty commit).
3. sequences, per account, what `activateAccount` does in the reference PDS: `#account`
   (its status), `#identity` (a hint to re-resolve: a handle changed since the backup is
   back to the old one), and for an active account `#sync` of that new commit, which
   tells relays to take the repo as it is now rather than chain it to the commits they
   saw after the backup.
4. records which directory seq/ is (below) and drops a backup's `BACKUP` marker: done.

How a restore is known (`restore_reason`):
- `pds restore` knows it is one, and calls `announce_restore` itself on its staging copy.
- `pds serve` must also catch a data dir restored by hand (`cp -a` or rsync of a backup
  into place, `mv` of one): it holds the backup's `BACKUP` marker, which only `pds restore`
  and this module remove.
- and a copy of a data dir that is no `pds backup` (rsync of a stopped PDS to a new disk,
  a restore from the operator's own file backups): seq/INODE holds the device and inode
  numbers of seq/ as of the last start, and a copy's seq/ is another directory, so the
  numbers differ. Inode numbers are what a copy can't take along, and they need nothing
  outside the data dir. A data dir with events but no INODE (one written by an earlier
  version, or a copy someone removed INODE from to force this) counts as restored too.
A false positive (a move to another filesystem; a filesystem whose device number changes
across mounts, as btrfs subvolumes and NFS can) costs one jump in seq, an empty commit per
repo and a few events: harmless. What can't be caught from inside the data dir is a
rollback of the whole filesystem (an LVM, ZFS or VPS snapshot brings back the same
inodes): after one, delete seq/INODE before starting (README, "Restore").
"""

from __future__ import annotations

import logging
import os
import time

from ..repo import events as ev
from ..repo.signing_keys import InvalidKey, load_private_key
from .accounts import AccountStore
from .backup import read_marker
from .files import read_file, write_file
from .layout import SEQ_INODE, DataDir
from .repo import Repo, RepoError
from .seqlog import EventLog

log = logging.getLogger("pds.restore")


def clock_floor() -> int:
    """The current Unix time in microseconds: the seq floor of a restore."""
    return time.time_ns() // 1000


def _seq_identity(data: DataDir) -> str:
    st = os.stat(data.seq)
    return f"{st.st_dev} {st.st_ino}"


def record_identity(data: DataDir) -> None:
    """Note which directory seq/ is (every start does, and a restore when it is done)."""
    data.seq.mkdir(exist_ok=True)
    ident = _seq_identity(data)
    if (read_file(data.seq / SEQ_INODE) or b"").decode().strip() != ident:
        write_file(data.seq / SEQ_INODE, (ident + "\n").encode(), data.tmp, durable=True)


def restore_reason(data: DataDir) -> str | None:
    """Why the data dir must be taken for a restored one (None: it needn't). A data dir
    holding an unfinished backup's marker raises ValueError: it is no data dir to serve."""
    marker = read_marker(data.root)
    if marker is not None:
        if not marker.get("finished"):
            raise ValueError(f"{data.root} is an unfinished backup (its `pds backup` did not "
                             "finish): it may be inconsistent; run that backup again, or "
                             "restore another one")
        return "it is a copy of a backup (it holds the backup's BACKUP file)"
    recorded = read_file(data.seq / SEQ_INODE)
    if recorded is None:
        events = EventLog(data.seq, data.tmp)
        if events.head() > 0 or events.oldest() is not None:
            return "its event log has no record of where it was (seq/INODE)"
        return None
    if recorded.decode(errors="replace").strip() != _seq_identity(data):
        return "its seq/ directory is not the one it was (a copy: other device or inode)"
    return None


def announce_restore(data: DataDir, floor: int | None = None) -> dict:
    """Steps 1-4 above, on a data dir no server runs on (recovered: every HEAD current).
    Returns {"floor": the seq floor, "synced": accounts announced with #sync, "accounts":
    accounts announced}."""
    events = EventLog(data.seq, data.tmp)
    floor = events.raise_floor(clock_floor() if floor is None else floor)
    store = AccountStore(data)
    synced = announced = 0
    for did in store.list_dids():
        acct = store.get(did)
        if acct is None:
            continue
        status = acct.get("status")
        commit = _new_commit(data, did) if status is None else None
        _announce(events, did, status, acct.get("handle"), commit)
        synced += commit is not None
        announced += 1
    record_identity(data)
    marker = data.backup_marker
    if marker.exists():
        os.unlink(marker)
    return {"floor": floor, "synced": synced, "accounts": announced}


def _announce(events: EventLog, did: str, status: str | None, handle: str | None,
              commit: tuple | None) -> None:
    """One account's events, in the order of the reference's activateAccount."""
    events.append(lambda seq: ev.frame("#account", ev.account_payload(seq, did, status)))
    events.append(lambda seq: ev.frame("#identity", ev.identity_payload(seq, did, handle)))
    if commit is not None:
        cid, block, rev = commit
        events.append(lambda seq: ev.frame("#sync", ev.sync_payload(seq, did, cid, block, rev)))


def _new_commit(data: DataDir, did: str) -> tuple | None:
    """An empty commit (same tree, new rev) made durable in the repo's own journal and
    checkpointed: (cid, commit block, rev). None when the repo has no commit; its current
    commit when it can't be signed (no readable key: then relays get that one)."""
    root = data.account(did)
    repo = Repo(root, data.tmp, did, clock=data.clock)
    try:
        head = repo.head()
        if head is None:
            return None
        try:
            repo.key = load_private_key(read_file(data.signing_key(did)) or b"")
        except InvalidKey as e:
            log.warning("%s: no usable signing key (%s); announcing its current commit", did, e)
            return head.cid, repo.blocks.get(head.cid), head.rev
        result = repo.apply_writes([])
        repo.checkpoint()
        return result.cid, result.blocks[result.cid], result.rev
    except RepoError as e:
        log.warning("%s: repository unreadable (%s); not announced with #sync", did, e)
        return None


def handle_restore(data: DataDir) -> tuple[str, dict] | None:
    """At start-up: announce a restore if the data dir is one, else just note where seq/
    is. Returns (why, what announce_restore did), or None."""
    reason = restore_reason(data)
    if reason is None:
        record_identity(data)
        return None
    return reason, announce_restore(data)

