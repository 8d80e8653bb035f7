"""The data directory's layout: every name in it is spelled here, once (see DESIGN.md and
the README's "The data directory").

    pds.env                 settings and secrets (0600)
    FORMAT                  the data format's version (format.py)
    BACKUP                  only in a backup: what it is a backup of (backup.py)
    accounts/<did>/         everything of one account (names below)
    handles/<handle>        -> DID, claimed with O_EXCL
    emails/<email>          -> DID, likewise
    invites/<code>.json     invite codes (and LOCK, spending them)
    seq/                    the firehose event log (seqlog.py names its files)
    well-known/<host>/      atproto-did and did.json, static files
    tombstones/<did>        a deleted account's DID: never handed out again
    ratelimit/              rate-limit counters (logins, sign-ups, admin logins, uploads)
    mail/<id>.json          the mail spool: messages not yet accepted by the SMTP server
    migrations/<did>.json   an unfinished `pds account migrate-in` (0600), its repo CAR
    tmp/                    staging for atomic renames (same filesystem as the rest)

Every path a request can name goes through here after its syntax check (`account`
refuses anything but a DID), so nothing outside the data dir is reachable; and every
name taken from a request is held to `file_name` first (at most NAME_MAX bytes of UTF-8,
no separator or NUL), so none reaches the filesystem to fail there (ENAMETOOLONG): it is
refused with `InvalidName`, which lookups read as "no such thing".
"""

from __future__ import annotations

import functools
from pathlib import Path

from ..errors import InvalidName
from ..repo.syntax import is_valid_did, quote_input
from .clock import ChangeClock

# --- top level ----------------------------------------------------------------------------

ENV_FILE = "pds.env"
FORMAT_FILE = "FORMAT"
BACKUP_MARKER = "BACKUP"
ACCOUNTS = "accounts"
HANDLES = "handles"
EMAILS = "emails"
INVITES = "invites"
SEQ = "seq"
WELL_KNOWN = "well-known"
TOMBSTONES = "tombstones"  # tombstones/<did>: made on the first deletion
RATELIMIT = "ratelimit"
MAIL = "mail"  # mail/<id>.json: the spool of outgoing mail (0600: it carries tokens)
TMP = "tmp"
# migrations/<did>.json (and <did>.car while its repo is copied): an operator's unfinished
# `pds account migrate-in`, so a second run resumes it; the directory's flock: one at a time
MIGRATIONS = "migrations"
OAUTH = "oauth"  # OAuth state (oauth/<kind>/<id>, 0600 files), below
# The directories `pds init` makes (and the format-0 migration adds).
INIT_DIRS = (ACCOUNTS, HANDLES, EMAILS, INVITES, SEQ, TMP, WELL_KNOWN)
# Locks of the jobs one worker at a time runs, in tmp/.
BLOB_GC_LOCK = "BLOBGC.LOCK"
SNAPSHOT_LOCK = "SNAPSHOT.LOCK"
PRUNE_LOCK = "PRUNE.LOCK"
# The change clock every process maps (clock.py), in tmp/: not data, not backed up.
CHANGES = "CHANGES"
MAIL_LOCK = "MAIL.LOCK"  # one worker delivers the mail spool at a time
# The DPoP jti "seen once" table every worker maps (replay.py), in tmp/: not backed up.
DPOP_JTI = "DPOP-JTI"
# The longest name of one directory entry, in bytes (ext4, xfs, btrfs, tmpfs: 255).
NAME_MAX = 255

# --- seq/ (the event log; see seqlog.py) ------------------------------------------------------

SEQ_LOCK = "LOCK"                # flock: seq allocation
SEQ_HEAD = "HEAD"                # the highest seq written
SEQ_HEAD_SPARE = "HEAD.next"     # exchanged with HEAD
CHECKPOINT = "CHECKPOINT"        # events up to here have their repo files on disk
CHECKPOINT_LOCK = "CHECKPOINT.LOCK"  # flock: one worker checkpoints at a time
SEQ_FLOOR = "FLOOR"              # "<floor> <head then>" per restore: no seq below the floor
SEQ_INODE = "INODE"              # "<st_dev> <st_ino>" of seq/ at the last start (restored.py)
LAST_WRITE = "LAST_WRITE"        # when the last write was (relays are re-announced after quiet)

# --- oauth/ (the authorization server's state; pds/services/oauth*.py) ---------------------

OAUTH_REQUESTS = "requests"      # requests/<id>: a pushed authorization request, then its code
OAUTH_CODES = "codes"            # codes/<hash>: an authorization code -> its request
OAUTH_SESSIONS = "sessions"      # sessions/<id>: a grant (its refresh token's hash, scope...)
OAUTH_DEVICES = "devices"        # devices/<id>: a remembered browser ("remember this device")
OAUTH_JTI = "dpop-jti"           # dpop-jti/<hash>: a jti the full table overflowed (O_EXCL)
OAUTH_LOCK = "LOCK"              # flock: one refresh-token rotation or code exchange at a time

# --- accounts/<did>/ --------------------------------------------------------------------------

ACCOUNT_JSON = "account.json"    # handle, email, password hash, status
ACCOUNT_LOCK = "ACCOUNT.LOCK"    # flock: account.json read-modify-write
SIGNING_KEY = "signing.key"      # repo signing key (0600)
HEAD = "HEAD"                    # "<commit cid> <rev>", replaced atomically
HEAD_SPARE = "HEAD.next"         # exchanged with HEAD (holds the previous one)
LOCK = "LOCK"                    # flock: one writer per repo; the pending-commit marker
BLOCKS = "blocks"                # blocks/<xx>/<cid>
BLOBS = "blobs"                  # blobs/<xx>/<cid> and <cid>.json
SESSIONS = "sessions"            # sessions/<id>: refresh sessions
SESSIONS_LOCK = "SESSIONS.LOCK"  # flock: one refresh-token rotation (or pruning) at a time
BLOBS_LOCK = "BLOBS.LOCK"        # flock: one upload counted against the blob quota at a time
JOURNAL = "journal.log"          # commits not yet checkpointed (accounts off the firehose)
JOURNAL_LEGACY = "journal"       # journal/<rev>.car: the journal of earlier versions
REVS = "revs"                    # "<rev> <commit cid>" per commit
SNAPSHOT = "export.car"          # the export snapshot: derived, safe to delete
TOKENS = "tokens"                # tokens/<purpose>: an emailed token's hash (0600)


def file_name(name: str, what: str = "name", suffix: str = "",
              error: str | None = None) -> str:
    """`name` if it (with `suffix`) can be one entry of a directory: a non-empty string of
    valid UTF-8 within NAME_MAX bytes, with no `/` or NUL, and not `.` or `..`. Else
    `InvalidName` (saying what the `what` was; `error` names the protocol's error)."""
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name \
            or "\x00" in name:
        raise InvalidName(f"invalid {what}: {quote_input(str(name))}", error)
    try:
        size = len(name.encode()) + len(suffix.encode())
    except UnicodeEncodeError:  # lone surrogates: no file can be named so
        raise InvalidName(f"invalid {what}: not valid Unicode", error) from None
    if size > NAME_MAX:
        raise InvalidName(f"{what} is too long ({size} bytes, at most {NAME_MAX} here)",
                          error)
    return name


# Account directory paths a process keeps (a few hundred bytes each).
_ACCOUNT_PATHS_MAX = 4096


class DataDir:
    """The data directory's layout."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        self._accounts: dict[str, Path] = {}

    @functools.cached_property
    def env_file(self) -> Path:
        return self.root / ENV_FILE

    @functools.cached_property
    def format_file(self) -> Path:
        return self.root / FORMAT_FILE

    @functools.cached_property
    def backup_marker(self) -> Path:
        return self.root / BACKUP_MARKER

    @functools.cached_property
    def tmp(self) -> Path:
        return self.root / TMP

    @functools.cached_property
    def clock(self) -> ChangeClock:
        """This data dir's change clock (mapped on first use, once per process)."""
        return ChangeClock(self.tmp / CHANGES)

    @functools.cached_property
    def accounts(self) -> Path:
        return self.root / ACCOUNTS

    @functools.cached_property
    def handles(self) -> Path:
        return self.root / HANDLES

    @functools.cached_property
    def emails(self) -> Path:
        return self.root / EMAILS

    @functools.cached_property
    def invites(self) -> Path:
        return self.root / INVITES

    @functools.cached_property
    def seq(self) -> Path:
        return self.root / SEQ

    @functools.cached_property
    def ratelimit(self) -> Path:
        return self.root / RATELIMIT

    @functools.cached_property
    def tombstones(self) -> Path:
        return self.root / TOMBSTONES

    @functools.cached_property
    def mail(self) -> Path:
        return self.root / MAIL

    @functools.cached_property
    def migrations(self) -> Path:
        return self.root / MIGRATIONS

    def tombstone(self, did: str) -> Path:
        """The tombstone of a deleted account's DID; refuses anything but a DID."""
        return self.tombstones / self.account(did).name

    def well_known(self, host: str) -> Path:
        """The static files served for host name `host` (its syntax checked by the
        caller; its length here)."""
        return self.root / WELL_KNOWN / file_name(host, "host name")

    def account(self, did: str) -> Path:
        """An account's directory; refuses anything but a syntactically valid DID, and a
        valid DID too long to be a directory name (no account here can have it)."""
        # Memoized: every request names an account, and the check and the join cost
        # more than the lookup (bounded; only valid DIDs are kept).
        path = self._accounts.get(did) if isinstance(did, str) else None
        if path is not None:
            return path
        if not isinstance(did, str) or not is_valid_did(did):
            raise InvalidName(f"not a DID: {quote_input(str(did))}")
        path = self.accounts / file_name(did, "DID")
        if len(self._accounts) >= _ACCOUNT_PATHS_MAX:
            self._accounts.clear()
        self._accounts[did] = path
        return path

    def handle(self, handle: str) -> Path:
        """`handles/<handle>` (lowercase, as claimed)."""
        return self.handles / file_name(handle, "handle")

    def email(self, key: str) -> Path:
        """`emails/<email>` (normalised by the caller)."""
        return self.emails / file_name(key, "email", error="InvalidEmail")

    def invite(self, code: str) -> Path:
        """`invites/<code>.json`."""
        return self.invites / (file_name(code, "invite code", ".json") + ".json")

    def session(self, did: str, jti: str) -> Path:
        """`accounts/<did>/sessions/<jti>`: one refresh session."""
        return self.account(did) / SESSIONS / file_name(jti, "session id")

    def signing_key(self, did: str) -> Path:
        return self.account(did) / SIGNING_KEY

    def blobs(self, did: str) -> Path:
        return self.account(did) / BLOBS

    @functools.cached_property
    def oauth(self) -> Path:
        return self.root / OAUTH

    def oauth_file(self, kind: str, name: str) -> Path:
        """`oauth/<kind>/<name>`: one piece of OAuth state (`name` made by us, checked)."""
        return self.oauth / kind / file_name(name, "OAuth id")

    def init_dirs(self) -> list[Path]:
        """The directories a new data dir starts with."""
        return [self.root / name for name in INIT_DIRS]

    def ensure(self) -> None:
        """Create the top-level directories (tmp/ must share the accounts' filesystem)."""
        for d in (self.root, self.tmp, self.accounts):
            d.mkdir(parents=True, exist_ok=True)
