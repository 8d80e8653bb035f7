"""`pds verify DIR`: check a data dir offline, reading only files.

For every account: HEAD names a commit that parses and whose signature verifies with the
account's key; the MST is well-formed and complete; every block hashes to its name; every
blob a record references is present, and every blob file matches its CID. For the event
log: seqs strictly increase, every event parses, every #commit event's slice is complete
and its commit's blocks are in the repo, and each account's last #commit is its HEAD.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cbrrr import CID

from ..repo import events as ev
from ..repo.car import read_car_blocks
from ..repo.codec import InvalidData, decode, find_blob_refs
from ..repo.commit import Commit, parse_commit
from ..repo.mst import MST
from ..repo.mst_node import NodeLoader
from ..repo.signing_keys import load_private_key
from ..repo.syntax import is_valid_did
from .blobs import EXPECTED, BlobStore
from .files import read_file
from .layout import ACCOUNT_JSON, BLOBS, REVS, SIGNING_KEY, SNAPSHOT, DataDir
from .oauth import verify as verify_oauth
from .progress import Progress, Ticker
from .repo import Repo
from .seqlog import EventLog
from .snapshot import Snapshot


@dataclass
class Report:
    """What a verification found."""

    problems: list[str] = field(default_factory=list)
    accounts: int = 0
    blocks: int = 0
    records: int = 0
    blobs: int = 0
    events: int = 0
    mail: int = 0  # messages in the mail spool

    def add(self, problem: str) -> None:
        self.problems.append(problem)

    @property
    def ok(self) -> bool:
        return not self.problems


def _hash_ok(cid_text: str, data: bytes) -> bool:
    try:
        cid = CID.decode(cid_text)
    except ValueError:
        return False
    b = cid.cid_bytes
    return len(b) == 36 and b[2:4] == b"\x12\x20" and hashlib.sha256(data).digest() == b[4:]


def verify_account(data: DataDir, did: str, report: Report,
                   ticker: Ticker | None = None) -> str | None:
    """Check one account; returns its HEAD commit CID (text) when readable."""
    root = data.account(did)
    repo = Repo(root, data.tmp, did)
    _check_blocks(repo, report, ticker)
    found = _head_commit(repo, report)
    if found is None:
        return None
    head_cid, commit = found
    blobs = BlobStore(root / BLOBS, data.tmp)
    _check_tree(repo, commit.data, blobs, report)
    _check_blobs(did, blobs, report)
    _check_snapshot(repo, report)
    return head_cid


def _check_blocks(repo: Repo, report: Report, ticker: Ticker | None) -> None:
    """Every stored block must hash to its name."""
    for name in repo.blocks.iter_cids():
        report.blocks += 1
        if ticker is not None:
            ticker.tick("blocks")
        try:
            content = (repo.blocks.root / name[-2:] / name).read_bytes()
        except OSError:
            content = b""
        if not _hash_ok(name, content):
            report.add(f"{repo.did}: block {name} does not match its hash")


def _head_commit(repo: Repo, report: Report) -> tuple[str, Commit] | None:
    """HEAD's commit CID (text) and commit, checked (its DID, rev and signature)."""
    did, root = repo.did, repo.root
    try:
        head = repo.head()
    except Exception as e:  # noqa: BLE001 - every failure is a finding
        report.add(f"{did}: HEAD unreadable: {e}")
        return None
    if head is None:
        acct_status = _status(root)
        if acct_status != "deactivated":
            report.add(f"{did}: no HEAD")
        return None
    try:
        commit = parse_commit(repo.blocks.get(head.cid))
    except KeyError:
        report.add(f"{did}: HEAD points at missing commit {head.cid.encode()}")
        return None
    except InvalidData as e:
        report.add(f"{did}: HEAD commit invalid: {e}")
        return None
    if commit.did != did:
        report.add(f"{did}: HEAD commit is for {commit.did}")
    if commit.rev is not None and commit.rev != head.rev:
        report.add(f"{did}: HEAD rev {head.rev} differs from its commit's {commit.rev}")
    key_data = read_file(root / SIGNING_KEY)
    if key_data is not None and commit.version == 3:
        if not commit.verify(load_private_key(key_data).public_key()):
            report.add(f"{did}: HEAD commit signature does not verify")
    return head.cid.encode(), commit


def _check_tree(repo: Repo, data_cid: CID, blobs: BlobStore, report: Report) -> None:
    """The MST is well-formed and complete, and every blob a record references is here."""
    did = repo.did
    tree = MST(NodeLoader(repo.blocks.get), data_cid)
    try:
        tree.validate()
        for _path, cid in tree.items():
            report.records += 1
            try:
                value = decode(repo.blocks.get(cid))
            except KeyError:
                report.add(f"{did}: record block {cid.encode()} missing")
                continue
            for ref in find_blob_refs(value):
                if not blobs.has(ref.cid):
                    report.add(f"{did}: blob {ref.cid.encode()} referenced by {_path} missing")
    except KeyError as e:
        report.add(f"{did}: MST node missing: {e}")
    except InvalidData as e:
        report.add(f"{did}: MST invalid: {e}")


def _check_blobs(did: str, blobs: BlobStore, report: Report) -> None:
    """Every blob with metadata has its file, and the file matches its CID."""
    for cid_text, meta in blobs.iter_meta():
        if meta.get(EXPECTED):
            continue  # referred to by an imported repo, not uploaded yet: no file
        report.blobs += 1
        path = blobs.path(cid_text)
        try:
            content = path.read_bytes()
        except OSError:
            report.add(f"{did}: blob {cid_text} has metadata but no file")
            continue
        if not _hash_ok(cid_text, content):
            report.add(f"{did}: blob {cid_text} does not match its hash")


def _check_snapshot(repo: Repo, report: Report) -> None:
    """An export snapshot is served as the repository: each of its blocks must hash to
    its CID. (One that is unreadable or of another commit is never served as it is.)"""
    snap = Snapshot.open(repo.root / SNAPSHOT)
    if snap is None:
        return
    try:
        read_car_blocks(b"".join(snap.chunks()))
    except (InvalidData, OSError) as e:
        report.add(f"{repo.did}: export snapshot {SNAPSHOT} is damaged ({e}); delete it, "
                   "the next export rebuilds it")


def _status(root: Path) -> str | None:
    import json
    try:
        return json.loads((root / ACCOUNT_JSON).read_bytes()).get("status")
    except (OSError, ValueError):
        return None


def verify_events(data: DataDir, heads: dict[str, str], report: Report,
                  ticker: Ticker | None = None) -> None:
    log = EventLog(data.seq, data.tmp)
    last_seq = 0
    last_commit: dict[str, str] = {}
    jumps = [(head, floor) for floor, head in log.floors()]
    for seq in log.seqs():
        report.events += 1
        if ticker is not None:
            ticker.tick("events")
        if seq <= last_seq:
            report.add(f"event log: seq {seq} after {last_seq}")
        last_seq = seq
        for head, floor in jumps:
            if head < seq < floor:
                report.add(f"event {seq}: inside the jump in seq of a restore ({head} to "
                           f"{floor}), where no event may be")
        raw = log.read(seq)
        try:
            header, payload = ev.split_frame(raw or b"")
            if payload.get("seq") != seq:
                report.add(f"event {seq}: payload seq {payload.get('seq')} differs")
        except (ValueError, InvalidData) as e:
            report.add(f"event {seq}: unreadable ({e})")
            continue
        if header.get("t") != "#commit":
            continue
        did = payload.get("repo")
        try:
            root, blocks = read_car_blocks(payload["blocks"])
            if root is None or not isinstance(did, str) or not is_valid_did(did):
                raise ValueError("no commit root or no valid repo DID")
            commit = parse_commit(blocks[root])
        except (KeyError, ValueError, InvalidData) as e:
            report.add(f"event {seq}: bad #commit blocks ({e})")
            continue
        if root != payload.get("commit") or commit.rev != payload.get("rev"):
            report.add(f"event {seq}: #commit fields disagree with its commit block")
        last_commit[did] = root.encode()
        acct = data.account(did)
        if acct.is_dir():
            repo_blocks = Repo(acct, data.tmp, did).blocks
            if not repo_blocks.has(root):
                report.add(f"event {seq}: commit {root.encode()} of {did} missing from the repo")
    for did, cid in last_commit.items():
        if did in heads and heads[did] != cid:
            # A later commit may legitimately have happened without an event (an import
            # of an inactive account); only flag a HEAD that no event or journal explains.
            repo = Repo(data.account(did), data.tmp, did)
            revs = (read_file(repo.root / REVS) or b"").decode()
            if heads[did] not in revs:
                report.add(f"{did}: HEAD {heads[did]} is not the last #commit ({cid})")


def verify_data_dir(root: str | os.PathLike, progress: Progress | None = None) -> Report:
    """Check a whole data dir; the report lists every problem found. `progress` is told
    of each account ("accounts", done, total) and of every thousand blocks and events."""
    data = DataDir(Path(root))
    report = Report()
    heads: dict[str, str] = {}
    if not data.accounts.is_dir():
        report.add(f"{data.root}: not a data dir (no accounts/)")
        return report
    ticker = Ticker(progress)
    dids = sorted(_dids(data))
    for i, did in enumerate(dids):
        report.accounts += 1
        head = verify_account(data, did, report, ticker)
        if head is not None:
            heads[did] = head
        ticker.step("accounts", i + 1, len(dids))
    ticker.end("blocks")
    verify_events(data, heads, report, ticker)
    ticker.end("events")
    verify_mail(data, report)
    for problem in verify_oauth(data):
        report.add(problem)
    return report


def verify_mail(data: DataDir, report: Report) -> None:
    """The mail spool: each file a message named by its id, readable by its owner only
    (it carries a token)."""
    import json
    import stat

    from .mailspool import SUFFIX, is_message_id
    if not data.mail.is_dir():
        return
    for name in sorted(os.listdir(data.mail)):
        path = data.mail / name
        mid = name.removesuffix(SUFFIX)
        if not name.endswith(SUFFIX) or not is_message_id(mid):
            report.add(f"mail/{name}: not a spooled message")
            continue
        report.mail += 1
        try:
            doc = json.loads(read_file(path) or b"")
            good = doc["id"] == mid and all(isinstance(doc[k], str)
                                            for k in ("to", "subject", "text"))
        except (ValueError, KeyError, TypeError):
            good = False
        if not good:
            report.add(f"mail/{name}: unreadable message")
        if stat.S_IMODE(path.stat().st_mode) & 0o077:
            report.add(f"mail/{name}: readable by others (should be 0600)")


def _dids(data: DataDir) -> Iterator[str]:
    for name in os.listdir(data.accounts):
        if (data.accounts / name / ACCOUNT_JSON).exists():
            yield name

