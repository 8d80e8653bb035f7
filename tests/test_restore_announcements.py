"""A restored PDS keeps relays following it (DESIGN.md: "A restored backup must never emit a
seq at or below one emitted before the backup was taken, and each restored repo announces
a #sync").

The official consumer (@atproto/sync's `Firehose`, `node/firehose_follow.mjs`, verifying
signatures, MST proofs and handles against the local PLC directory) follows a real
`pds serve --workers 2` from cursor 0 while accounts write; a backup is taken, more is
written, the server stops, the backup is restored (by `pds restore`, or by copying it into
place with `cp -a` for `pds serve` to notice) and served again on the same address, then
restarted once more. The consumer resubscribes from the last seq it has, as a relay does,
and must go on with no error (no FutureCursor), seq always above what it saw before the
restore, a #sync per account (after #account and #identity) with a rev later than any it
saw, and every later commit chained to that #sync: no gap it can't explain.

Without node, the same server-side behaviour for each way a data dir is found restored:
a copy of a stopped data dir (seq/INODE names another directory), a backup moved into
place (its BACKUP marker), an event log with no INODE; a plain restart announces nothing;
an unfinished backup is refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
from harness import Server, free_port, init_data_dir, run_pds, start_server
from server_util import seq_events

from pds.store.seqlog import EventLog

NODE_DIR = Path(__file__).resolve().parent / "node"
SCRIPT = NODE_DIR / "firehose_follow.mjs"
NODE_TIMEOUT = 300  # seconds for the consumer to reach a seq (seconds on an idle machine)
NOTE = "com.example.note"
PASSWORD = "restore-test-password"
FLOOR_LINE = re.compile(r"restored: seq floor (\d+), #sync for (\d+) accounts?")


# --- helpers --------------------------------------------------------------------------------


class Node:
    """firehose_follow.mjs: commands on stdin, answers read from stdout on a thread."""

    def __init__(self, pds: str, plc: str, errlog: Path) -> None:
        self.errlog_path = errlog
        self.errlog = open(errlog, "w")
        self.proc = subprocess.Popen(
            [shutil.which("node") or "node", str(SCRIPT), "--pds", pds, "--plc", plc,
             "--timeout", str(NODE_TIMEOUT)],
            cwd=NODE_DIR, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.errlog,
            text=True)
        self.lines: list[str] = []
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self.cond:
                self.lines.append(line.rstrip("\n"))
                self.cond.notify_all()
        with self.cond:
            self.lines.append("EOF")
            self.cond.notify_all()

    def ask(self, command: str, answer: str, timeout: float = NODE_TIMEOUT + 60) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for i, line in enumerate(self.lines):
                    if line.startswith(answer + " "):
                        del self.lines[:i + 1]
                        return line[len(answer) + 1:]
                    if line == "EOF":
                        raise AssertionError(self.failed(f"the consumer exited on `{command}`"))
                left = deadline - time.monotonic()
                assert left > 0, self.failed(f"no answer to `{command}`")
                self.cond.wait(min(left, 1.0))

    def failed(self, what: str) -> str:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        self.errlog.flush()
        return f"{what} (exit {self.proc.poll()}):\n{self.errlog_path.read_text()[-6000:]}"

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)
        self.errlog.close()


def signup(http: httpx.Client, name: str) -> dict:
    r = http.post("/xrpc/com.atproto.server.createAccount",
                  json={"handle": f"{name}.test", "email": f"{name}@example.com",
                        "password": PASSWORD})
    assert r.status_code == 200, r.text
    return {"did": r.json()["did"], "handle": f"{name}.test", "access": r.json()["accessJwt"]}


def login(http: httpx.Client, acct: dict) -> None:
    r = http.post("/xrpc/com.atproto.server.createSession",
                  json={"identifier": acct["handle"], "password": PASSWORD})
    assert r.status_code == 200, r.text
    acct["access"] = r.json()["accessJwt"]


def post(http: httpx.Client, acct: dict, text: str) -> dict:
    r = http.post("/xrpc/com.atproto.repo.createRecord",
                  json={"repo": acct["did"], "collection": NOTE,
                        "record": {"$type": NOTE, "text": text}},
                  headers={"Authorization": f"Bearer {acct['access']}"})
    assert r.status_code == 200, r.text
    return r.json()["commit"]


def head(data: Path) -> int:
    return EventLog(data / "seq", data / "tmp").head()


def announced(data: Path, floor: int) -> dict[str, list[str]]:
    """Per DID, the types of the events from `floor` on."""
    out: dict[str, list[str]] = {}
    for seq, header, payload in seq_events(data):
        if seq >= floor:
            out.setdefault(payload.get("did") or payload.get("repo"), []).append(header["t"])
    return out


def floor_line(text: str) -> tuple[int, int]:
    m = FLOOR_LINE.search(text)
    assert m, f"no `restored: seq floor N, #sync for K accounts` line in:\n{text[-3000:]}"
    return int(m.group(1)), int(m.group(2))


# --- the official consumer across a restore -------------------------------------------------


@pytest.mark.parametrize("how", ["pds-restore", "cp-a"])
def test_the_official_consumer_follows_across_a_restore(tmp_path: Path, plc_url: str,
                                                        node_modules: Path, how: str) -> None:
    port = free_port()
    data = tmp_path / "data"
    init_data_dir(data, port, plc_url=plc_url, did_method="plc")
    server: Server | None = start_server(data, port, workers=2, wait=120)
    node = None
    try:
        http = httpx.Client(base_url=server.url, timeout=60)
        run = secrets.token_hex(3)
        accts = [signup(http, f"rs{i}-{run}") for i in range(2)]
        for a in accts:
            for i in range(3):
                post(http, a, f"before the backup {i}")
        node = Node(server.url, plc_url, tmp_path / "firehose_follow.stderr")
        node.ask(f"wait {head(data)}", "AT")

        backup = tmp_path / "backup"
        run_pds("backup", str(backup), "--data-dir", str(data))
        lost = [post(http, a, f"after the backup {i}") for a in accts for i in range(3)]
        seen_before = head(data)
        assert int(node.ask(f"wait {seen_before}", "AT")) == seen_before
        http.close()
        server.stop()
        server = None

        # The restore, then the same PDS on the same address.
        if how == "pds-restore":
            restored = tmp_path / "restored"
            out = run_pds("restore", str(backup), "--data-dir", str(restored)).stdout
            floor, synced = floor_line(out)
        else:
            restored = tmp_path / "copied"
            subprocess.run(["cp", "-a", str(backup), str(restored)], check=True)
        server = start_server(restored, port, workers=2, wait=120)
        if how == "cp-a":
            floor, synced = floor_line(server.log())
            assert not (restored / "BACKUP").exists()
        assert synced == len(accts)
        assert floor > seen_before and floor == EventLog(restored / "seq", restored / "tmp").floor()

        http = httpx.Client(base_url=server.url, timeout=60)
        acks = []
        for a in accts:
            login(http, a)
            acks.append((a["did"], post(http, a, "after the restore")))
        # A plain restart after that: nothing announced again, seq counts on.
        mark = head(restored)
        http.close()
        server.stop()
        server = start_server(restored, port, workers=2, wait=120)
        assert len(FLOOR_LINE.findall(server.log())) == (1 if how == "cp-a" else 0)
        http = httpx.Client(base_url=server.url, timeout=60)
        for a in accts:
            acks.append((a["did"], post(http, a, "after a restart")))
        http.close()
        assert min(s for s, _, _ in seq_events(restored) if s > mark) == mark + 1

        # Every commit made since the restore reaches the consumer (a consumer refused
        # with FutureCursor, or resumed past them, never gets them).
        for _did, commit in acks:
            node.ask(f"commit {commit['cid']}", "SEEN")
        result = json.loads(node.ask(f"done {head(restored)}", "RESULT"))
    finally:
        if node is not None:
            node.close()
        if server is not None:
            server.stop()
            assert "Traceback" not in server.log(), server.log()[-4000:]

    msgs = result["messages"]
    seqs = [m[0] for m in msgs]
    assert seqs == sorted(set(seqs))
    after = [m for m in msgs if m[0] > seen_before]
    assert after and after[0][0] == floor, (after[:3], floor)
    assert result["subscriptions"] >= 3  # resubscribed after each stop
    for a in accts:
        did = a["did"]
        # The restore's announcement, then the writes, each chained to what came before.
        kinds = [m[1] for m in after if m[2] == did]
        assert kinds == ["account", "identity", "sync", "commit", "commit"], (did, kinds)
        restored_syncs = [(s, rev) for s, rev in result["syncs"][did] if s >= floor]
        assert len(restored_syncs) == 1
        # ...with a rev after every one the consumer saw (it drops older or equal revs).
        revs_before = [m[3] for m in msgs if m[2] == did and m[0] <= seen_before and m[3]]
        assert restored_syncs[0][1] > max(revs_before), (restored_syncs, revs_before)
    for did, commit in acks:
        assert commit["cid"] in result["commits"][did], (did, commit)
    # The commits lost with the restore were seen before it; none came back.
    seen = {c for cs in result["commits"].values() for c in cs}
    assert {c["cid"] for c in lost} <= seen


# --- how `pds serve` finds a restore (did:web accounts, no node) -----------------------------


def _server_with_posts(tmp_path: Path, name: str = "data") -> tuple[Path, int, list[dict]]:
    """A data dir with two accounts and a few posts; its server stopped."""
    port = free_port()
    data = tmp_path / name
    init_data_dir(data, port, did_method="web")
    server = start_server(data, port, workers=2, wait=60)
    try:
        http = httpx.Client(base_url=server.url, timeout=60)
        accts = []
        for n in ("anna", "bobby"):
            r = http.post("/xrpc/com.atproto.server.createAccount",
                          json={"handle": f"{n}.test", "email": f"{n}@example.com",
                                "password": PASSWORD})
            assert r.status_code == 200, r.text
            accts.append({"did": r.json()["did"], "handle": f"{n}.test",
                          "access": r.json()["accessJwt"]})
        for a in accts:
            post(http, a, "hello")
        http.close()
    finally:
        server.stop()
    return data, port, accts


def _serve_once(data: Path, port: int) -> str:
    server = start_server(data, port, workers=2, wait=60)
    server.stop()
    log = server.log()
    assert "Traceback" not in log, log[-4000:]
    return log


def _check_announced(data: Path, log: str, before: int, accts: list[dict]) -> int:
    floor, synced = floor_line(log)
    assert synced == len(accts) and floor > before
    assert floor > time.time_ns() // 1000 - 600 * 10**6  # the clock, in microseconds
    events = announced(data, floor)
    assert set(events) == {a["did"] for a in accts}
    for a in accts:
        assert events[a["did"]] == ["#account", "#identity", "#sync"], events
    return floor


def test_serve_announces_a_copied_data_dir_once(tmp_path: Path) -> None:
    """A stopped data dir copied elsewhere (not a `pds backup`: no marker): its seq/ is
    another directory, so the copy announces itself when served, and only once."""
    data, port, accts = _server_with_posts(tmp_path)
    before = head(data)
    # The original itself, restarted, announces nothing.
    log = _serve_once(data, port)
    assert not FLOOR_LINE.search(log) and head(data) == before
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-a", str(data), str(copy)], check=True)
    log = _serve_once(copy, port)
    floor = _check_announced(copy, log, before, accts)
    # Again: nothing new, and the next event counts on from the last.
    last = head(copy)
    log = _serve_once(copy, port)
    assert len(FLOOR_LINE.findall(log)) == 1 and head(copy) == last
    server = start_server(copy, port, workers=1, wait=60)
    try:
        r = httpx.post(f"{server.url}/xrpc/com.atproto.server.createSession", timeout=60,
                       json={"identifier": "anna.test", "password": PASSWORD})
        assert r.status_code == 200, r.text
        accts[0]["access"] = r.json()["accessJwt"]
        with httpx.Client(base_url=server.url, timeout=60) as http:
            post(http, accts[0], "after")
    finally:
        server.stop()
    assert head(copy) == last + 1 and last >= floor


def test_serve_announces_a_backup_moved_into_place(tmp_path: Path) -> None:
    """`mv` keeps inode numbers, but a backup holds its BACKUP marker."""
    data, port, accts = _server_with_posts(tmp_path)
    backup = tmp_path / "backup"
    run_pds("backup", str(backup), "--data-dir", str(data))
    before = head(data)
    moved = tmp_path / "moved"
    os.rename(backup, moved)
    log = _serve_once(moved, port)
    _check_announced(moved, log, before, accts)
    assert not (moved / "BACKUP").exists()
    assert "BACKUP" in log  # the log says why


def test_serve_announces_an_event_log_with_no_inode_record(tmp_path: Path) -> None:
    """seq/INODE missing from a data dir with events (written by an earlier version, or
    removed by hand after a filesystem snapshot was rolled back): taken for restored."""
    data, port, accts = _server_with_posts(tmp_path)
    before = head(data)
    (data / "seq" / "INODE").unlink()
    log = _serve_once(data, port)
    _check_announced(data, log, before, accts)
    assert (data / "seq" / "INODE").exists()


def test_serve_refuses_an_unfinished_backup(tmp_path: Path) -> None:
    data, port, _accts = _server_with_posts(tmp_path)
    backup = tmp_path / "backup"
    run_pds("backup", str(backup), "--data-dir", str(data))
    marker = json.loads((backup / "BACKUP").read_text())
    (backup / "BACKUP").write_text(json.dumps({**marker, "finished": None}))
    before = sorted(p.name for p in (backup / "seq").iterdir())
    with pytest.raises(RuntimeError, match="unfinished backup"):
        start_server(backup, port, workers=1, wait=60)
    assert sorted(p.name for p in (backup / "seq").iterdir()) == before
