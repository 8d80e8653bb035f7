"""The firehose (com.atproto.sync.subscribeRepos) against a real `pds serve`.

- Replay: a subscriber with `cursor=k` gets exactly the logged events with seq > k, in
  order, then the live ones, with no gap and no duplicate at the switch, while writers
  keep committing through it; FutureCursor and OutdatedCursor (events deleted from
  `seq/`, and events pruned by the retention of the checkpoint loop).
- Crash: kill -9 of a worker, then of the master and every worker, during a write storm;
  after a restart every acknowledged commit has its `#commit` event, each account's
  events chain (`since`, `prevData`) up to its HEAD, and every event's commit is stored.
- Slow consumer: a subscriber that stops reading is cut off with ConsumerTooSlow while
  another one receives every event.
- SIGTERM: subscribers see a close and the server exits within the graceful timeout.

Every wait is a wait-for-condition with a generous limit; nothing asserts a timing except
the SIGTERM exit bound (a shutdown that hangs is the failure it looks for).
"""

from __future__ import annotations

import os
import random
import signal
import socket
import struct
import threading
import time
from pathlib import Path

import httpx
import pytest
from cbrrr import CID
from harness import Background, Server, children, gone, wait_for
from server_util import (
    SUBSCRIBE,
    Account,
    Api,
    Subscriber,
    decode_frame,
    ok,
    subscribe_url,
    ws_connect,
)
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK

from pds.config import Settings
from pds.repo.car import read_car_blocks
from pds.repo.commit import parse_commit
from pds.services import records as records_service
from pds.services.context import AppContext
from pds.store.repo import Repo, Write
from pds.store.seqlog import EventLog

pytestmark = pytest.mark.slow  # write storms, worker kills, a slow consumer, SIGTERM

GRACEFUL_TIMEOUT = 10  # pds.server's gunicorn graceful_timeout
QUEUE_LIMIT = 500      # pds.services.firehose.QUEUE_LIMIT


# --- helpers ---------------------------------------------------------------------------------


def event_log(data_dir: Path) -> EventLog:
    return EventLog(data_dir / "seq", data_dir / "tmp")


def log_seqs(data_dir: Path) -> list[int]:
    """The seqs present in the log, by listing `seq/` (the files are the truth)."""
    return list(event_log(data_dir).seqs())


class Sub(Subscriber):
    """A firehose subscriber of `server`, reading on its own thread."""

    def __init__(self, server: Server, cursor: int | None = None) -> None:
        super().__init__(subscribe_url(server.url, cursor))


def record(size: int = 0) -> dict:
    rec = {"text": "hello " + os.urandom(4).hex(), "createdAt": "2026-01-01T00:00:00.000Z"}
    if size:
        rec["pad"] = os.urandom(size // 2).hex()
    return rec


class Writers(Background):
    """Threads committing createRecord to random accounts until stopped (or `limit`)."""

    def __init__(self, server: Server, accounts: list[Account], threads: int = 2,
                 size: int = 0, limit: int | None = None) -> None:
        super().__init__()
        self.server, self.accounts, self.size, self.limit = server, accounts, size, limit
        self.count = 0
        self.lock = threading.Lock()
        for _ in range(threads):
            self.spawn(self._run)

    def _run(self) -> None:
        with Api(self.server) as api:
            while not self.stop_event.is_set():
                with self.lock:
                    if self.limit is not None and self.count >= self.limit:
                        return
                    self.count += 1
                ok(api.create_record(random.choice(self.accounts), record(self.size)))


def quiet_and_level(sub: Sub, data_dir: Path, timeout: float = 60) -> None:
    """Until the subscriber has the newest logged event and nothing new comes for 0.5 s."""
    def level() -> bool:
        seqs = log_seqs(data_dir)
        return bool(seqs) and sub.last_seq() == seqs[-1]

    wait_for(level, timeout, "the subscriber to catch up with the log")
    time.sleep(0.5)
    wait_for(level, timeout, "the subscriber to catch up with the log")
    assert sub.closed is None, f"subscriber closed: {sub.closed}"


def assert_exact_stream(sub: Sub, data_dir: Path, after: int) -> None:
    """The subscriber got exactly the logged events with seq > after, in order, each
    byte for byte as stored."""
    frames = sub.snapshot()
    got = [b["seq"] for h, b, _ in frames]
    want = [s for s in log_seqs(data_dir) if s > after]
    assert all(h == {"op": 1, "t": h["t"]} for h, _, _ in frames), frames[:3]
    assert len(got) == len(set(got)), "duplicate events"
    assert got == sorted(got), "events out of order"
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    assert not missing and not extra, (
        f"cursor {after}: {len(missing)} missing (first {missing[:5]}), "
        f"{len(extra)} unexpected (first {extra[:5]})")
    log = event_log(data_dir)
    for seq, (_, _, data) in zip(got, frames, strict=True):
        assert data == log.read(seq), f"event {seq} differs from the stored frame"


# --- 1. replay, cursors ----------------------------------------------------------------------


def test_replay_then_live_with_no_gap_or_duplicate(new_server) -> None:
    server = new_server(workers=2)
    data = server.data_dir
    api = Api(server)
    accounts = [api.create_account() for _ in range(3)]
    w = Writers(server, accounts, threads=3, limit=150)
    w.join(120)
    head = log_seqs(data)[-1]
    assert head >= 150 + 3 * 4

    rng = random.Random()
    ks = {0, 1, head, head - 1, head // 2, rng.randint(2, head - 2), rng.randint(2, head - 2)}
    for k in sorted(ks):
        # Race the switch from replay to live: the writes start just before the subscriber
        # connects and go on until it has seen some of them live.
        writers = Writers(server, accounts, threads=2)
        wait_for(lambda w=writers: w.count >= rng.randint(1, 4), 30, "the writers to start")
        start_head = log_seqs(data)[-1]
        sub = Sub(server, cursor=k)
        try:
            wait_for(lambda s=sub, w=writers, h=start_head: s.last_seq() > h + 10 and w.count > 12,
                     60, f"live events after cursor {k}")
            writers.stop()
            quiet_and_level(sub, data)
            assert_exact_stream(sub, data, k)
        finally:
            writers.stop_event.set()
            sub.close()

    # A cursor ahead of the head: the FutureCursor error, then the server closes.
    head = log_seqs(data)[-1]
    with ws_connect(subscribe_url(server.url, head + 1000)) as ws:
        header, body = decode_frame(ws.recv(timeout=30))
        assert header == {"op": -1}
        assert body["error"] == "FutureCursor"
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=30)

    # Events older than the retention, simulated by deleting the oldest files while the
    # server runs: #info OutdatedCursor, then everything from the oldest kept event.
    log = event_log(data)
    for seq in log_seqs(data)[:25]:
        log.path(seq).unlink()
    oldest = log_seqs(data)[0]
    writers = Writers(server, accounts, threads=1)
    sub = Sub(server, cursor=3)
    try:
        wait_for(lambda: sub.seqs() and writers.count > 5, 60, "events after OutdatedCursor")
        writers.stop()
        wait_for(lambda: sub.last_seq() == log_seqs(data)[-1], 60, "catch-up")
        frames = sub.snapshot()
        header, body, _ = frames[0]
        assert header == {"op": 1, "t": "#info"}, frames[0][:2]
        assert body["name"] == "OutdatedCursor"
        assert "seq" not in body
        rest = frames[1:]
        assert rest[0][1]["seq"] == oldest
        assert [b["seq"] for _, b, _ in rest] == [s for s in log_seqs(data) if s >= oldest]
    finally:
        writers.stop_event.set()
        sub.close()
    api.close()
    assert "Traceback" not in server.log(), server.log()[-4000:]


# --- 2. crashes ------------------------------------------------------------------------------


class Storm(Background):
    """Writers committing as fast as they can, remembering every acknowledged commit.
    Failures (connection refused or reset while processes die) are counted, not raised."""

    def __init__(self, server: Server, accounts: list[Account], threads: int = 4) -> None:
        super().__init__()
        self.url, self.accounts = server.url, accounts
        self.acked: list[tuple[str, str, str]] = []  # (did, rev, commit cid)
        self.failures: dict[str, int] = {}
        self.lock = threading.Lock()
        for _ in range(threads):
            self.spawn(self._run)

    def _request(self, http: httpx.Client, acct: Account) -> httpx.Response:
        auth = {"Authorization": f"Bearer {acct.access}"}
        if random.random() < 0.7:
            body = {"repo": acct.did, "collection": "com.example.note",
                    "record": {"$type": "com.example.note", **record()}}
            return http.post("/xrpc/com.atproto.repo.createRecord", json=body, headers=auth)
        writes = [{"$type": "com.atproto.repo.applyWrites#create",
                   "collection": "com.example.note",
                   "value": {"$type": "com.example.note", **record()}}
                  for _ in range(random.randint(1, 4))]
        return http.post("/xrpc/com.atproto.repo.applyWrites",
                         json={"repo": acct.did, "writes": writes}, headers=auth)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as http:
            while not self.stop_event.is_set():
                acct = random.choice(self.accounts)
                try:
                    resp = self._request(http, acct)
                except httpx.HTTPError as e:
                    self._fail(type(e).__name__)
                    time.sleep(0.02)
                    continue
                if resp.status_code == 200:
                    commit = resp.json()["commit"]
                    with self.lock:
                        self.acked.append((acct.did, commit["rev"], commit["cid"]))
                else:
                    self._fail(f"{resp.status_code} {resp.text[:200]}")

    def _fail(self, what: str) -> None:
        with self.lock:
            self.failures[what] = self.failures.get(what, 0) + 1

    def count(self) -> int:
        with self.lock:
            return len(self.acked)


def check_data_dir(data: Path, acked: list[tuple[str, str, str]], dids: list[str]) -> int:
    """Everything the crash test promises about the data dir; returns #commit events."""
    log = event_log(data)
    seqs = log_seqs(data)
    assert seqs == sorted(set(seqs)), "seq/ listing is not strictly increasing"
    commits: dict[str, list[tuple[int, dict, CID, object]]] = {d: [] for d in dids}
    for seq in seqs:
        header, body = decode_frame(log.read(seq))
        assert body["seq"] == seq, f"event file {seq} holds seq {body['seq']}"
        if header.get("t") != "#commit":
            continue
        root, blocks = read_car_blocks(body["blocks"])
        assert root == body["commit"], f"event {seq}: CAR root is not the commit"
        commit = parse_commit(blocks[root])
        assert (commit.did, commit.rev) == (body["repo"], body["rev"]), f"event {seq}"
        commits[body["repo"]].append((seq, body, root, commit))

    logged = {(b["repo"], b["rev"], c.encode()) for evs in commits.values()
              for _, b, c, _ in evs}
    lost = [a for a in acked if a not in logged]
    assert not lost, f"{len(lost)} acknowledged commits have no #commit event: {lost[:5]}"

    for did, evs in commits.items():
        repo = Repo(data / "accounts" / did, data / "tmp", did)
        assert evs, f"no #commit event for {did}"
        prev = None
        for seq, body, cid, commit in evs:
            if prev is None:
                assert body["since"] is None and "prevData" not in body, f"event {seq}"
            else:
                p_seq, p_body, _, p_commit = prev
                assert body["since"] == p_body["rev"], (
                    f"{did}: event {seq} has since={body['since']}, but the previous "
                    f"#commit (event {p_seq}) has rev {p_body['rev']}")
                assert body["prevData"] == p_commit.data, (
                    f"{did}: event {seq}'s prevData is not event {p_seq}'s data")
                assert body["rev"] > p_body["rev"], f"{did}: event {seq} rev goes back"
            # The event's commit is stored, and so is its tree.
            assert repo.blocks.has(cid), f"{did}: event {seq}'s commit {cid.encode()} missing"
            assert repo.blocks.get(cid) == body_commit_block(body, cid)
            repo.tree(parse_commit(repo.blocks.get(cid))).validate()
            prev = (seq, body, cid, commit)
        head = repo.head()
        assert head is not None
        assert (head.cid, head.rev) == (prev[2], prev[1]["rev"]), (
            f"{did}: HEAD {head.rev} is not the last #commit event's {prev[1]['rev']}")
        tree = repo.tree()
        n = tree.validate()
        for _key, val in tree.items():
            assert repo.blocks.has(val), f"{did}: record block {val.encode()} missing"
        assert n == len(list(tree.items()))
    return sum(len(v) for v in commits.values())


def body_commit_block(body: dict, cid: CID) -> bytes:
    return read_car_blocks(body["blocks"])[1][cid]


def die_after_logging(data: Path, did: str, rkey: str) -> None:
    """A writer (this process, standing in for a worker) that dies right after its
    #commit event is durable, before its block files and HEAD are written. The event is
    on the firehose, so the next writer of the repo must build on it, not on HEAD."""
    class Died(BaseException):
        pass

    def die(*_args, **_kw):
        raise Died

    ctx = AppContext(Settings.load(data))
    repo = ctx.repo(did)
    repo.blocks.put_many = die
    before = log_seqs(data)[-1]
    with pytest.raises(Died):
        records_service.apply_writes(ctx, did, [Write("create", "com.example.note", rkey,
                                                      {"$type": "com.example.note",
                                                       **record()})])
    assert log_seqs(data)[-1] > before, "the dead writer's event was not logged"


def test_crash_kill_worker_then_everything(new_server) -> None:
    server = new_server(workers=2)
    data, port = server.data_dir, server.port
    api = Api(server)
    accounts = [api.create_account() for _ in range(3)]
    api.close()
    dids = [a.did for a in accounts]
    acked: list[tuple[str, str, str]] = []
    failures: dict[str, int] = {}
    rounds = 3
    orphans = []
    for rnd in range(rounds):
        master = server.proc.pid
        storm = Storm(server, accounts)
        try:
            n0 = storm.count()
            wait_for(lambda s=storm, n=n0: s.count() >= n + 10, 60, "the storm to start")
            orphan = (random.choice(dids), f"orphan{rnd}")
            die_after_logging(data, *orphan)
            orphans.append(orphan)
            n0 = storm.count()
            wait_for(lambda s=storm, n=n0: s.count() >= n + 30, 60,
                     "commits before the worker kill")
            workers = wait_for(lambda m=master: len(children(m)) == 2 and children(m), 60,
                               "two workers")
            victim = random.choice(workers)
            os.kill(victim, signal.SIGKILL)
            # The master replaces it and the storm goes on through both workers.
            wait_for(lambda m=master, v=victim: len(set(children(m)) - {v}) == 2, 60,
                     "the master to respawn the worker")
            n1 = storm.count()
            wait_for(lambda s=storm, n=n1: s.count() >= n + 30, 60, "commits after the respawn")
            time.sleep(random.uniform(0, 0.3))
            procs = children(master)
            os.kill(master, signal.SIGKILL)
            for pid in procs:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            server.proc.wait(30)
            for pid in procs:
                wait_for(lambda p=pid: gone(p), 30, f"worker {pid} to die")
        finally:
            storm.stop()
        acked += storm.acked
        for k, v in storm.failures.items():
            failures[k] = failures.get(k, 0) + v
        server = new_server.serve(data, port, workers=2)
        check_data_dir(data, acked, dids)
    server.stop()
    assert server.proc.returncode is not None
    n = check_data_dir(data, acked, dids)
    for did, rkey in orphans:
        tree = Repo(data / "accounts" / did, data / "tmp", did).tree()
        assert tree.get(f"com.example.note/{rkey}") is not None, "a logged commit was lost"
    assert len(acked) >= rounds * 60
    assert n >= len(acked)
    # Requests fail only as connections die, never with an answer.
    answered = {k: v for k, v in failures.items() if k[:1].isdigit()}
    assert not answered, answered
    print(f"crash test: {len(acked)} acknowledged commits, {n} #commit events, "
          f"failures {failures}")


# --- 3. slow consumer ------------------------------------------------------------------------


def socket_buffered_frames(size: int) -> int:
    """At most how many frames of `size` bytes the kernel and the server's transport can
    hold for a client that reads nothing, before the server's queue starts to grow."""
    wmem_max = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    return (wmem_max + 4096 * 2 + 65536) // size + 1


class RawSubscriber:
    """A WebSocket handshake on a socket with a tiny receive buffer, then no reading."""

    def __init__(self, server: Server) -> None:
        host, port = server.url.removeprefix("http://").split(":")
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect
        self.sock.settimeout(30)
        self.sock.connect((host, int(port)))
        key = "dGhlIHNhbXBsZSBub25jZQ=="
        self.sock.sendall(
            f"GET {SUBSCRIBE} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\n\r\n".encode())
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(4096)
            assert chunk, "connection closed during the handshake"
            self.buf += chunk
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head

    def _read_exact(self, n: int) -> bytes | None:
        while len(self.buf) < n:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                return None
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_frame(self) -> tuple[int, bytes] | None:
        """(opcode, payload) of the next server frame, or None at EOF."""
        head = self._read_exact(2)
        if head is None:
            return None
        opcode, length = head[0] & 0x0F, head[1] & 0x7F
        assert head[0] & 0x80, "fragmented frame"
        assert not head[1] & 0x80, "server frames are never masked"
        if length == 126:
            length = struct.unpack("!H", self._read_exact(2))[0]
        elif length == 127:
            length = struct.unpack("!Q", self._read_exact(8))[0]
        payload = self._read_exact(length)
        assert payload is not None, "EOF inside a frame"
        return opcode, payload

    def close(self) -> None:
        self.sock.close()


def test_slow_consumer_is_cut_off_and_others_keep_up(new_server) -> None:
    server = new_server(workers=2)
    data = server.data_dir
    api = Api(server)
    accounts = [api.create_account() for _ in range(3)]
    api.close()
    slow = RawSubscriber(server)
    fast = Sub(server)
    try:
        # Both are live once the first write reaches them.
        w = Writers(server, accounts, threads=1, limit=1)
        w.join(120)
        first = log_seqs(data)[-1]
        wait_for(lambda: fast.last_seq() == first, 60, "the fast subscriber to go live")
        # (it may also get the tail of the account creations, published as it connected)
        seq = 0
        while seq < first:
            opcode, payload = slow.read_frame()
            seq = decode_frame(payload)[1]["seq"]
        assert seq == first
        # Now the slow one reads nothing: ~50 KB records, enough to fill its socket
        # buffers and then its queue of 500 frames on the server.
        n = QUEUE_LIMIT + socket_buffered_frames(50_000) + 20
        w = Writers(server, accounts, threads=3, size=50_000, limit=n)
        w.join(300)
        last = log_seqs(data)[-1]
        wait_for(lambda: fast.last_seq() == last, 120, "the fast subscriber to get everything")
        assert fast.closed is None
        # Every event from where it joined (at `first` or, catching the tail of the
        # account creations, a little before), in order, with no gap or duplicate.
        seen = fast.seqs()
        assert seen and seen[0] <= first
        assert seen == [s for s in log_seqs(data) if s >= seen[0]]

        # The slow one: what was buffered, then ConsumerTooSlow as the last frame, then
        # the connection closes.
        got: list[int] = []
        frames = []
        while True:
            frame = slow.read_frame()
            if frame is None:
                break
            frames.append(frame)
            if frame[0] == 0x8:  # close
                break
        binary = [p for op, p in frames if op == 0x2]
        assert binary, "the slow subscriber got no frame at all"
        header, body = decode_frame(binary[-1])
        assert header == {"op": -1}, (header, body, len(binary))
        assert body["error"] == "ConsumerTooSlow"
        for p in binary[:-1]:
            got.append(decode_frame(p)[1]["seq"])
        assert got == [s for s in log_seqs(data) if s > first][:len(got)]
        assert len(got) < last - first, "the slow subscriber was never cut off"
        # Closed: a close frame (or EOF) and nothing after it.
        assert frames[-1][0] == 0x8 or frame is None
        if frames[-1][0] == 0x8:
            assert struct.unpack("!H", frames[-1][1][:2])[0] == 1008  # policy violation
        slow.sock.settimeout(30)
        rest = slow.sock.recv(1 << 16)
        assert rest == b"", "data after the close"
    finally:
        slow.close()
        fast.close()
    assert "Traceback" not in server.log(), server.log()[-4000:]


# --- 4. SIGTERM, retention -------------------------------------------------------------------


def test_retention_prunes_and_sigterm_closes_subscribers(new_server) -> None:
    # Retention of ~1 s: the checkpoint loop (every ~2 s) prunes older events.
    server = new_server(workers=2, env={"PDS_FIREHOSE_RETENTION": "0.0003"})
    data = server.data_dir
    api = Api(server)
    accounts = [api.create_account() for _ in range(2)]
    api.close()
    trickle = Writers(server, accounts, threads=1)
    subs: list[Sub] = []
    try:
        wait_for(lambda: (s := log_seqs(data)) and s[0] > 8, 60, "old events to be pruned")
        oldest = log_seqs(data)[0]
        sub = Sub(server, cursor=1)
        subs.append(sub)
        wait_for(lambda: len(sub.seqs()) > 3, 60, "events after OutdatedCursor")
        frames = sub.snapshot()
        assert frames[0][0] == {"op": 1, "t": "#info"}
        assert frames[0][1]["name"] == "OutdatedCursor"
        seqs = sub.seqs()
        assert seqs[0] >= oldest
        assert seqs == sorted(set(seqs))

        # Subscribers on both workers (most likely), live and replaying (from a seq the
        # server has published: the newest file in seq/ may not be, yet).
        subs += [Sub(server) for _ in range(3)]
        wait_for(lambda: subs[1].seqs(), 60, "a live event")
        subs.append(Sub(server, cursor=subs[1].last_seq()))
        mark = log_seqs(data)[-1]
        wait_for(lambda: all(s.last_seq() > mark for s in subs), 60,
                 "every subscriber to receive live events")
    finally:
        trickle.stop()
    sent = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    try:
        server.proc.wait(GRACEFUL_TIMEOUT + 20)
    except Exception:
        server.proc.kill()
        raise
    exited = time.monotonic() - sent
    for s in subs:
        s.thread.join(30)
        assert s.closed is not None, "a subscriber still open after the server exited"
    codes = [(type(s.closed).__name__, s.closed.rcvd.code if s.closed.rcvd else None,
              round(s.closed_at - sent, 1)) for s in subs]
    print(f"SIGTERM: exited after {exited:.1f}s, subscribers closed: {codes}")
    assert exited < GRACEFUL_TIMEOUT + 5, f"the server took {exited:.1f}s to exit"
    for s in subs:
        assert isinstance(s.closed, ConnectionClosedOK), codes
        assert s.closed.rcvd is not None and s.closed.rcvd.code == 1001, codes
    for s in subs:
        s.close()
    assert "Traceback" not in server.log(), server.log()[-4000:]
