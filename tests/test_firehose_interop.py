"""The firehose against the official consumer (@atproto/sync `Firehose`) and raw WebSockets.

`pds serve --workers 2` with did:plc accounts on the local official PLC directory.
`node/firehose_verify.mjs` runs several `Firehose` consumers (live and from cursor 0) with
signature, MST-proof and handle verification on, writes through @atproto/api (creates,
putRecord updates, deletes, mixed applyWrites batches, blob refs, deactivate/activate),
inverts every commit (sync v1.1) and checks each consumer saw every acknowledged commit
exactly once, in order, with no verification error. Alongside, this test reads the same
stream over raw WebSockets (live from before the first write, and replayed from cursor 0
afterwards), decodes each frame with cbrrr and checks it field by field: the exact keys,
the CAR slices (hashes, roots), the `since`/`prevData` chain per repo, and the per-account
event order (#identity, #account, #commit, #sync on sign-up; #account, #identity, #sync on
activation). It also looks in /proc at which worker holds each subscriber's socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import warnings
from pathlib import Path

import cbrrr
import pytest
from harness import children, running_server
from server_util import decode_frame, subscribe_url

pytestmark = pytest.mark.slow  # the official consumer in node against a live server

NODE_DIR = Path(__file__).resolve().parent / "node"
SCRIPT = NODE_DIR / "firehose_verify.mjs"
NODE_TIMEOUT = 900     # seconds for the whole node run (it is ~20 s on an idle machine)
READY_TIMEOUT = 300    # seconds until its consumers are connected and receiving
WAIT_TIMEOUT = 300     # seconds for a raw consumer to reach a seq
MAX_RAW_LIVE = 12      # raw live subscribers opened at most, looking for both workers
TIME_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")

COMMIT_KEYS = {"seq", "rebase", "tooBig", "repo", "commit", "rev", "since", "blocks", "ops",
               "blobs", "time"}
SYNC_KEYS = {"seq", "did", "rev", "blocks", "time"}
IDENTITY_KEYS = {"seq", "did", "time"}
ACCOUNT_KEYS = {"seq", "did", "time", "active"}


# --- raw WebSocket consumers ------------------------------------------------------------


class RawConsumer:
    """One subscribeRepos connection on its own thread, keeping every frame's bytes."""

    def __init__(self, base_url: str, cursor: int | None,
                 hold: threading.Event | None = None) -> None:
        self.url = subscribe_url(base_url, cursor)
        host, port = base_url.split("//")[1].split(":")
        self.server = (host, int(port))
        # `hold`: a reader that reads nothing until the event is set, through a tiny
        # receive buffer: the server's sends block (flow control) part way through the
        # replay while new events keep arriving, so it catches up in several rounds.
        self.hold = hold
        self.frames: list[bytes] = []
        self.port: int | None = None
        self.error: BaseException | None = None
        self.closed_early = False
        self.connected = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self.thread.start()

    async def _run(self) -> None:
        from websockets.asyncio.client import connect
        try:
            kw: dict = {}
            if self.hold is not None:
                sock = socket.socket()
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
                sock.settimeout(120)
                sock.connect(self.server)
                sock.setblocking(False)
                kw = {"sock": sock, "max_queue": 1}
            async with connect(self.url, max_size=None, ping_interval=None,
                               open_timeout=120, close_timeout=5, **kw) as ws:
                self.port = ws.transport.get_extra_info("sockname")[1]
                self.connected.set()
                while self.hold is not None and not (self.hold.is_set() or self.stop.is_set()):
                    await asyncio.sleep(0.1)
                while not self.stop.is_set():
                    try:
                        data = await asyncio.wait_for(ws.recv(), 0.5)
                    except TimeoutError:
                        continue
                    self.frames.append(data)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            if not self.stop.is_set():
                self.error = e
                self.closed_early = True
        finally:
            self.connected.set()

    def last_seq(self) -> int:
        if not self.frames:
            return 0
        return decode_frame(self.frames[-1])[1].get("seq", 0)

    def wait_for_seq(self, seq: int, timeout: float = WAIT_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while self.last_seq() < seq:
            assert self.error is None, f"{self.url}: {self.error!r}"
            assert time.monotonic() < deadline, \
                f"{self.url}: at seq {self.last_seq()} after {timeout}s, waiting for {seq}"
            time.sleep(0.1)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)


# --- CAR, independent of pds.repo -------------------------------------------------------


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7


def read_car(data: bytes) -> tuple[list[cbrrr.CID], dict[cbrrr.CID, bytes]]:
    """Roots and blocks of a CARv1, checking every block's sha256 against its CID."""
    hlen, pos = _varint(data, 0)
    header = cbrrr.decode_dag_cbor(data[pos:pos + hlen])
    assert header.get("version") == 1, header
    pos += hlen
    blocks: dict[cbrrr.CID, bytes] = {}
    while pos < len(data):
        slen, pos = _varint(data, pos)
        end = pos + slen
        version, p = _varint(data, pos)
        codec, p = _varint(data, p)
        mh_code, p = _varint(data, p)
        mh_len, p = _varint(data, p)
        assert (version, mh_code, mh_len) == (1, 0x12, 32), (version, mh_code, mh_len)
        assert codec in (0x71, 0x55), f"codec {codec:#x}"
        cid = cbrrr.CID(data[pos:p + mh_len])
        block = data[p + mh_len:end]
        assert hashlib.sha256(block).digest() == data[p:p + mh_len], f"bad hash for {cid}"
        blocks[cid] = block
        pos = end
    return header["roots"], blocks


# --- checks of a raw stream ---------------------------------------------------------------


def token(t: str, body: dict) -> str:
    if t == "#account":
        if body["active"]:
            return "account:active:" + body["status"] if "status" in body else "account:active"
        return "account:" + str(body.get("status"))
    return t[1:]


def check_raw_stream(name: str, frames: list[bytes], result: dict, whole_log: bool) -> list:
    """Every check on one connection's frames up to the sentinel; returns [(seq, t, key)]."""
    upto = result["sentinelSeq"]
    handles = result["handles"]
    acked = {a["cid"]: a for a in result["acks"]}
    seen_commits: dict[str, int] = {}
    state: dict[str, tuple[str, cbrrr.CID]] = {}  # did -> (rev, data)
    tokens: dict[str, list[str]] = {}
    out = []
    last = 0
    for frame in frames:
        header, body = decode_frame(frame)
        assert header.get("op") == 1 and set(header) == {"op", "t"}, f"{name}: header {header}"
        t = header["t"]
        assert t != "#info", f"{name}: unexpected #info {body}"
        seq = body["seq"]
        if seq > upto:
            break
        at = f"{name} seq {seq} {t}"
        assert isinstance(seq, int) and seq > last, f"{at}: after {last}"
        last = seq
        assert TIME_RE.match(body["time"]), f"{at}: time {body['time']!r}"
        did = body["repo"] if t == "#commit" else body["did"]
        tokens.setdefault(did, []).append(token(t, body))
        if t == "#commit":
            keys = set(body)
            assert COMMIT_KEYS <= keys <= COMMIT_KEYS | {"prevData"}, f"{at}: keys {keys}"
            assert body["tooBig"] is False and body["rebase"] is False, at
            assert body["blobs"] == [], f"{at}: blobs {body['blobs']}"
            roots, blocks = read_car(body["blocks"])
            assert roots == [body["commit"]], f"{at}: roots {roots}"
            commit = cbrrr.decode_dag_cbor(blocks[body["commit"]])
            assert set(commit) == {"did", "version", "data", "rev", "prev", "sig"}, commit.keys()
            assert commit["version"] == 3 and commit["did"] == did and commit["prev"] is None
            assert commit["rev"] == body["rev"], f"{at}: rev {commit['rev']} vs {body['rev']}"
            prev = state.get(did)
            if prev is None:
                assert body["since"] is None, f"{at}: first commit since {body['since']}"
                assert "prevData" not in body, f"{at}: first commit has prevData"
                assert body["ops"] == [], f"{at}: first commit ops"
            else:
                assert body["rev"] > prev[0], f"{at}: rev {body['rev']} not after {prev[0]}"
                assert body["since"] == prev[0], f"{at}: since {body['since']} != {prev[0]}"
                assert body.get("prevData") == prev[1], f"{at}: prevData {body.get('prevData')}"
            for op in body["ops"]:
                o = f"{at} {op.get('action')} {op.get('path')}"
                if op["action"] == "create":
                    assert set(op) == {"action", "path", "cid"} and op["cid"] is not None, o
                elif op["action"] == "update":
                    assert set(op) == {"action", "path", "cid", "prev"}, o
                    assert op["cid"] is not None and op["prev"] is not None, o
                else:
                    assert op["action"] == "delete", o
                    assert set(op) == {"action", "path", "cid", "prev"}, o
                    assert op["cid"] is None and op["prev"] is not None, o
                if op["cid"] is not None:
                    assert op["cid"] in blocks, f"{o}: record block not in blocks"
            state[did] = (body["rev"], commit["data"])
            cid = body["commit"].encode()
            assert cid not in seen_commits, f"{at}: commit {cid} also at {seen_commits[cid]}"
            seen_commits[cid] = seq
            ack = acked.get(cid)
            assert ack is not None, f"{at}: commit {cid} was never acknowledged"
            assert (ack["did"], ack["rev"]) == (did, body["rev"]), f"{at}: ack {ack}"
            key = cid
        elif t == "#sync":
            assert set(body) == SYNC_KEYS, f"{at}: keys {set(body)}"
            roots, blocks = read_car(body["blocks"])
            assert len(roots) == 1 and list(blocks) == roots, f"{at}: blocks {list(blocks)}"
            commit = cbrrr.decode_dag_cbor(blocks[roots[0]])
            assert commit["rev"] == body["rev"] and commit["did"] == did, at
            prev = state.get(did)
            assert prev is None or body["rev"] >= prev[0], f"{at}: #sync rev goes back"
            state[did] = (body["rev"], commit["data"])
            key = roots[0].encode()
        elif t == "#identity":
            assert IDENTITY_KEYS <= set(body) <= IDENTITY_KEYS | {"handle"}, set(body)
            assert body.get("handle") == handles.get(did), f"{at}: handle {body.get('handle')}"
            key = did
        elif t == "#account":
            keys = set(body)
            assert keys in (ACCOUNT_KEYS, ACCOUNT_KEYS | {"status"}), f"{at}: keys {keys}"
            assert body["active"] is ("status" not in body), f"{at}: {body}"
            key = did
        else:
            raise AssertionError(f"{at}: unknown type")
        out.append((seq, t, key))
    assert last == upto, f"{name}: ends at seq {last}, the sentinel is {upto}"
    # Event order per account, and every acknowledged commit.
    for did, want in result["expected"].items():
        if whole_log:
            assert tokens.get(did) == want, f"{name}: events of {handles[did]}: {tokens.get(did)}"
    if whole_log:
        assert set(tokens) == set(result["expected"]), f"{name}: repos {set(tokens)}"
        missing = [a for a in result["acks"] if a["cid"] not in seen_commits]
        assert not missing, f"{name}: acknowledged commits missing: {missing}"
    return out


# --- which worker holds which socket (Linux /proc) ----------------------------------------


def subscriber_workers(master_pid: int, server_port: int, client_ports: set[int]) -> dict:
    """{worker pid: number of the given client connections it holds}."""
    conns: dict[int, int] = {}  # socket inode -> client port
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                local, remote, state, inode = fields[1], fields[2], fields[3], int(fields[9])
                if state == "01" and int(local.rsplit(":", 1)[1], 16) == server_port:
                    rport = int(remote.rsplit(":", 1)[1], 16)
                    if rport in client_ports:
                        conns[inode] = rport
    found: dict[int, int] = {}
    for pid in children(master_pid):
        n = 0
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    m = re.match(r"socket:\[(\d+)\]", os.readlink(f"/proc/{pid}/fd/{fd}"))
                    if m and int(m.group(1)) in conns:
                        n += 1
        found[pid] = n
    return found


# --- the test -------------------------------------------------------------------------------


class LineReader:
    """Lines of a subprocess's stdout, read on a thread (a wait can time out)."""

    def __init__(self, stream) -> None:
        self.lines: list[str] = []
        self.cond = threading.Condition()
        self.eof = False
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream) -> None:
        for line in stream:
            with self.cond:
                self.lines.append(line.rstrip("\n"))
                self.cond.notify_all()
        with self.cond:
            self.eof = True
            self.cond.notify_all()

    def wait_for(self, prefix: str, timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for line in self.lines:
                    if line.startswith(prefix):
                        return line[len(prefix):]
                left = deadline - time.monotonic()
                if self.eof or left <= 0:
                    return None
                self.cond.wait(min(left, 1.0))


def test_firehose_official_consumer(tmp_path: Path, plc_url: str, node_modules: Path) -> None:
    started = time.monotonic()
    raw: list[RawConsumer] = []
    proc = None
    errlog_path = tmp_path / "firehose_verify.stderr"
    with running_server(tmp_path, did_method="plc", plc_url=plc_url, wait=120) as server:
        port = server.port
        try:
            # Raw live consumers first: they see the whole log from seq 1. At least two, and
            # more (one at a time) until both workers hold one, where /proc tells.
            has_proc = Path(f"/proc/{server.proc.pid}/task").is_dir()
            while True:
                raw.append(RawConsumer(server.url, None))
                r = raw[-1]
                assert r.connected.wait(120) and r.error is None, f"{r.url}: {r.error!r}"
                if len(raw) < 2:
                    continue
                if not has_proc or len(raw) >= MAX_RAW_LIVE:
                    break
                spread = subscriber_workers(server.proc.pid, port, {r.port for r in raw})
                if sum(1 for n in spread.values() if n) >= 2:
                    break
            with open(errlog_path, "w") as errlog:
                proc = subprocess.Popen(
                    [shutil.which("node") or "node", str(SCRIPT), "--pds", server.url,
                     "--plc", plc_url, "--handshake", "--timeout", str(WAIT_TIMEOUT)],
                    cwd=NODE_DIR, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errlog,
                    text=True)
                out = LineReader(proc.stdout)

                def node_failed(what: str) -> str:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(30)
                    return (f"{what} (exit {proc.poll()}):\n{errlog_path.read_text()[-6000:]}\n"
                            f"server log:\n{server.log()[-3000:]}")

                ready = out.wait_for("READY ", READY_TIMEOUT)
                assert ready is not None, node_failed("firehose_verify.mjs never got ready")
                ready = json.loads(ready)
                # Which worker serves each subscriber: node's WebSockets and ours.
                clients = set(ready["wsPorts"]) | {r.port for r in raw}
                if has_proc:
                    spread = subscriber_workers(server.proc.pid, port, clients)
                    print(f"subscribers per worker: {spread} ({len(clients)} connections)")
                    assert sum(spread.values()) == len(clients), (spread, clients)
                    if sum(1 for n in spread.values() if n) < 2:
                        warnings.warn(f"all {len(clients)} subscribers landed on one worker: "
                                      f"{spread}; cross-worker delivery is then only exercised "
                                      "by writes the other worker handled", stacklevel=1)
                assert proc.stdin is not None
                proc.stdin.write("go\n")
                proc.stdin.flush()

                # Late replayers from cursor 0 join while the writes go on, and are slow.
                release = threading.Event()
                if out.wait_for("PART2", NODE_TIMEOUT) is not None:
                    raw += [RawConsumer(server.url, 0, hold=release) for _ in range(2)]
                result = out.wait_for("RESULT ", NODE_TIMEOUT)
                release.set()
                assert result is not None, node_failed("firehose_verify.mjs failed")
                proc.wait(60)
                assert proc.returncode == 0, node_failed("firehose_verify.mjs failed")
            result = json.loads(result)
            upto = result["sentinelSeq"]

            # The same log from cursor 0, after the fact (from disk and memory).
            raw += [RawConsumer(server.url, 0) for _ in range(2)]
            streams = []
            for i, r in enumerate(raw):
                r.wait_for_seq(upto)
                streams.append(check_raw_stream(f"raw{i}", r.frames, result, whole_log=True))
            # Every connection got the same frames (stored bytes, sent verbatim).
            n = len(streams[0])
            for i, r in enumerate(raw[1:], 1):
                assert streams[i] == streams[0], f"raw{i} differs from raw0"
                assert r.frames[:n] == raw[0].frames[:n], f"raw{i}: frame bytes differ from raw0"
            # ...and it is what the official library decoded.
            node_log = [(s, "#" + t, k) for s, t, k in result["log"]]
            assert node_log == streams[0], "the library's messages differ from the raw frames"
            for c in result["consumers"]:
                assert c["errors"] == 0 and c["rejected"] == 0, c
            print(f"{len(result['consumers'])} official consumers + {len(raw)} raw, "
                  f"{n} events, {len(result['acks'])} commits; node {result['seconds']}s, "
                  f"total {time.monotonic() - started:.1f}s")
        finally:
            for r in raw:
                r.close()
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(30)
    for r in raw:
        assert not r.closed_early, f"{r.url}: closed early: {r.error!r}"


@pytest.mark.parametrize("query", ["?cursor=", ""])
def test_subscribe_without_cursor(tmp_path: Path, query: str) -> None:
    """`?cursor=` (what @atproto/sync's Firehose sends when it has no cursor) is no cursor:
    the stream goes live, with no error frame."""
    from websockets.asyncio.client import connect

    async def run(base_url: str) -> list[tuple[dict, dict]]:
        async with connect(subscribe_url(base_url) + query, open_timeout=60) as ws:
            # Subscribed (connected, no error frame within a moment), then make an event.
            with contextlib.suppress(TimeoutError):
                early = await asyncio.wait_for(ws.recv(), 1.0)
                raise AssertionError(f"unexpected frame {decode_frame(early)}")
            import httpx
            async with httpx.AsyncClient(base_url=base_url, timeout=60) as http:
                r = await http.post("/xrpc/com.atproto.server.createAccount",
                                    json={"handle": "nocursor.test", "password": "hunter2hunter2",
                                          "email": "nocursor@example.com"})
                assert r.status_code == 200, r.text
            return [decode_frame(await asyncio.wait_for(ws.recv(), 60)) for _ in range(4)]

    with running_server(tmp_path, workers=1, wait=120) as server:
        frames = asyncio.run(run(server.url))
    assert [h["t"] for h, _ in frames] == ["#identity", "#account", "#commit", "#sync"]
    assert [b["seq"] for _, b in frames] == [1, 2, 3, 4]
