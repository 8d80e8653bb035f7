"""HTTP benchmark of a PDS, side by side with the reference PDS (@atproto/pds 0.4.217).

It starts our server (`pds init` + `pds serve --workers N` in a temp dir, did:web accounts
under `.test`) and the reference PDS (`node bench/node/ref_pds.js`, with a local official
PLC directory from `node tests/node/plc.js`), and runs the same workloads against both,
alternating per workload (ours, ref, ours, ref, ...) so that drift in the machine's load
hits both alike:

- `_health` p50, one client (the floor: HTTP stack and client, no work);
- createSession p50;
- sequential createRecord of a typical post, one client: p50, p90, p99;
- createRecord from 16 clients on 16 accounts, and from 16 clients on 1 account: writes/s;
- unauthenticated getRecord of existing records, p50;
- listRecords (limit 100) p50;
- getRepo of a 10k-record repository (built with applyWrites batches of 200): MB/s;
- getBlob of a 1 MiB blob, 4 concurrent clients: MB/s and p50;
- peak RSS summed over each server's process tree (gunicorn master + workers; node),
  sampled from /proc during the whole run.

With `--millipds VENV` it also starts millipds (DavidBuchanan314/millipds, a Python PDS on
aiohttp and SQLite, installed in that venv; bench/millipds_server.py) as a third server in
the same alternating rounds; its accounts come from its CLI (it has no createAccount).

It prints a table with ours/ref ratios and the issue's targets (PASS/FAIL), the client's
and the servers' CPU per workload, and the load average.

The client is a minimal HTTP/1.1 client on raw keep-alive sockets, one per thread, with
requests encoded before the clock starts: a request costs it a few tens of microseconds
of CPU, which the CPU table shows next to the floor.

    python bench/http_bench.py --quick                 # small counts (a few minutes)
    python bench/http_bench.py                         # the full run
    python bench/http_bench.py --no-ref                # ours only
    python bench/http_bench.py --millipds /work/venvs/millipds   # millipds as well
    python bench/http_bench.py --target http://127.0.0.1:2583   # a running PDS only
    python bench/http_bench.py --json > out.json
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import math
import os
import platform
import random
import resource
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

ROOT = Path(__file__).resolve().parents[1]
BENCH_NODE = ROOT / "bench" / "node"
PLC_JS = ROOT / "tests" / "node" / "plc.js"
REF_VERSION = "0.4.217"
NPM_TIMEOUT = 1200  # seconds; better-sqlite3 compiles from source in ~2 minutes here
START_TIMEOUT = 60

POST = "app.bsky.feed.post"
FILE_COLLECTION = "com.example.bench.file"  # an unknown lexicon: no schema to satisfy
PASSWORD = "bench-password-7x"
BLOB_BYTES = 1024 * 1024
BATCH = 200  # applyWrites batch when building the big repository
MB = 1e6

# Targets from the issue (ratios are ours/ref).
TARGETS = {
    "create_p50": ("<=", 0.16),
    "conc16_tput": (">=", 7.0),
    "get_record_p50": ("<=", 0.12),
    "list_records_p50": ("<=", 0.15),
    "get_repo_mbps": (">=", 6.0),
    "peak_rss": ("<=", 0.3),
}
TARGET_GET_REPO_MBPS = 50.0

_WORDS = (
    "the a of to and in is it that for on with as was at by this be from or have an they "
    "which one you were all we when your can said there use each she do how their if will "
    "up other about out many then them these so some her would make like him into time has "
    "look two more write go see number no way could people my than first water been call "
    "who oil its now find long down day did get come made may part today posting photo "
    "morning coffee thread repo network protocol federation garden sunset train weekend"
).split()


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- a minimal HTTP/1.1 client --------------------------------------------------------


class HttpError(Exception):
    pass


def build_request(host: str, method: str, target: str, headers: dict[str, str] | None = None,
                  body: bytes | None = None) -> bytes:
    """One HTTP/1.1 request, encoded once and sent as is (keep-alive is the default)."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    for k, v in (headers or {}).items():
        lines.append(f"{k}: {v}")
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


class Conn:
    """One keep-alive connection on a raw socket. Parses just what it needs of a response:
    the status, Content-Length or chunked framing, Connection: close. (http.client parses
    headers through email.parser, which costs more CPU per request than a PDS answering
    _health.) Received bytes wait in `buf` from offset `pos` on, so that taking many small
    chunked pieces off the front never moves the rest."""

    RECV = 1 << 20

    def __init__(self, host: str, port: int, timeout: float = 120.0) -> None:
        self.addr = (host, port)
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self.buf = bytearray()
        self.pos = 0

    def connect(self) -> None:
        self.close()
        s = socket.create_connection(self.addr, timeout=self.timeout)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = s
        self.buf = bytearray()
        self.pos = 0

    def close(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
            self.sock = None

    def send(self, raw: bytes) -> tuple[int, bytes]:
        """Send an encoded request; returns (status, body). Connects first if needed."""
        if self.sock is None:
            self.connect()
        assert self.sock is not None
        self.sock.sendall(raw)
        return self._response(raw.startswith(b"HEAD "))

    def _recv(self) -> None:
        assert self.sock is not None
        if self.pos:
            del self.buf[: self.pos]
            self.pos = 0
        chunk = self.sock.recv(self.RECV)
        if not chunk:
            self.close()
            raise HttpError("connection closed by the server")
        self.buf += chunk

    def _line(self) -> bytes:
        while True:
            i = self.buf.find(b"\r\n", self.pos)
            if i >= 0:
                line = bytes(self.buf[self.pos:i])
                self.pos = i + 2
                return line
            self._recv()

    def _exact(self, n: int) -> bytes | bytearray:
        buf, pos = self.buf, self.pos
        if len(buf) - pos >= n:
            self.pos = pos + n
            return bytes(buf[pos:pos + n])
        have = len(buf) - pos
        out = bytearray(n)
        out[:have] = memoryview(buf)[pos:]
        self.buf, self.pos = bytearray(), 0
        view = memoryview(out)
        assert self.sock is not None
        while have < n:
            k = self.sock.recv_into(view[have:], n - have)
            if k == 0:
                self.close()
                raise HttpError("connection closed mid-body")
            have += k
        return out

    def _chunked(self) -> bytes:
        """A chunked body. Each piece is parsed straight off the buffer: servers that
        stream a CAR write thousands of small chunks."""
        parts = []
        buf, pos = self.buf, self.pos
        while True:
            i = buf.find(b"\r\n", pos)
            if i < 0:
                self.pos = pos
                self._recv()
                buf, pos = self.buf, self.pos
                continue
            size = int(buf[pos:i].split(b";", 1)[0], 16)
            if size == 0:
                self.pos = i + 2
                while self._line():  # trailers, then the empty line
                    pass
                return b"".join(parts)
            end = i + 2 + size
            if end + 2 <= len(buf):
                parts.append(buf[i + 2:end])
                pos = end + 2
                continue
            self.pos = i + 2
            parts.append(self._exact(size))
            self._exact(2)
            buf, pos = self.buf, self.pos

    def _response(self, head_only: bool) -> tuple[int, bytes]:
        while True:
            i = self.buf.find(b"\r\n\r\n", self.pos)
            if i >= 0:
                break
            self._recv()
        head = bytes(self.buf[self.pos:i])
        self.pos = i + 4
        lines = head.split(b"\r\n")
        try:
            status = int(lines[0].split(None, 2)[1])
        except (IndexError, ValueError):
            self.close()
            raise HttpError(f"bad status line {lines[0][:80]!r}") from None
        length, chunked, close = None, False, False
        for line in lines[1:]:
            k, _, v = line.partition(b":")
            k = k.strip().lower()
            if k == b"content-length":
                length = int(v)
            elif k == b"transfer-encoding":
                chunked = b"chunked" in v.lower()
            elif k == b"connection":
                close = b"close" in v.lower()
        body: bytes | bytearray
        if head_only or status in (204, 304) or 100 <= status < 200:
            body = b""
        elif chunked:
            body = self._chunked()
        elif length is not None:
            body = self._exact(length)
        else:  # delimited by the end of the connection
            while self.sock is not None:
                try:
                    self._recv()
                except HttpError:
                    break
            body = bytes(self.buf[self.pos:])
            self.buf, self.pos = bytearray(), 0
            close = True
        if close:
            self.close()
        return status, bytes(body) if isinstance(body, bytearray) else body


class Client:
    """JSON calls to one PDS (for setup; the measured loops send pre-encoded requests)."""

    def __init__(self, url: str) -> None:
        u = urlsplit(url)
        if u.scheme != "http" or not u.hostname:
            raise SystemExit(f"only plain http://HOST:PORT URLs are supported: {url}")
        self.url = url.rstrip("/")
        self.host = u.hostname
        self.port = u.port or 80
        self.hostport = f"{self.host}:{self.port}" if u.port else self.host
        self.conn = Conn(self.host, self.port)

    def new_conn(self) -> Conn:
        return Conn(self.host, self.port)

    def req(self, method: str, nsid: str, params: dict[str, Any] | None = None,
            body: Any = None, token: str | None = None, raw: bytes | None = None,
            content_type: str | None = None) -> bytes:
        """Encode one XRPC request: a JSON `body`, or `raw` bytes of `content_type`."""
        if raw is None and body is not None:
            raw, content_type = json.dumps(body).encode(), "application/json"
        if raw is None and method == "POST":
            raw = b""
        return build_request(self.hostport, method, xrpc_target(nsid, params),
                             _headers(token, content_type), raw)

    def call(self, method: str, nsid: str, params: dict[str, Any] | None = None,
             body: Any = None, token: str | None = None, raw: bytes | None = None,
             content_type: str | None = None, expect_json: bool = True) -> Any:
        data = self.req(method, nsid, params, body, token, raw, content_type)
        for attempt in (0, 1):
            try:
                status, out = self.conn.send(data)
                break
            except (HttpError, OSError):
                # An idle keep-alive connection the server closed: retry once on a new one.
                self.conn.close()
                if attempt:
                    raise
        if status != 200:
            raise HttpError(f"{nsid}: HTTP {status}: {out[:500]!r}")
        return json.loads(out) if expect_json else out


def xrpc_target(nsid: str, params: dict[str, Any] | None = None) -> str:
    return f"/xrpc/{nsid}" + (f"?{urlencode(params)}" if params else "")


def _headers(token: str | None, content_type: str | None) -> dict[str, str]:
    h = {}
    if token:
        h["Authorization"] = f"Bearer {token}"
    if content_type:
        h["Content-Type"] = content_type
    return h


# --- records --------------------------------------------------------------------------


_TID_CHARS = "234567abcdefghijklmnopqrstuvwxyz"
_tid_last = 0


def next_tid() -> str:
    """A record key in TID form (microseconds since the epoch, 10 clock-id bits), strictly
    increasing within this process."""
    global _tid_last
    t = max(time.time_ns() // 1000 << 10, _tid_last + 1)
    _tid_last = t
    return "".join(_TID_CHARS[(t >> (60 - 5 * i)) & 31] for i in range(13))


def make_post(rng: random.Random) -> dict[str, Any]:
    """A plain post: 110 to 210 characters of text, createdAt now, one language; about 200
    to 300 bytes of DAG-CBOR."""
    want = rng.randint(110, 210)
    words: list[str] = []
    length = -1
    while length < want:
        w = rng.choice(_WORDS)
        words.append(w)
        length += len(w) + 1
    text = " ".join(words)[:want].rstrip() + "."
    now = time.time()
    created = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + \
        f".{int(now * 1000) % 1000:03d}Z"
    return {"$type": POST, "text": text[0].upper() + text[1:], "createdAt": created,
            "langs": ["en"]}


# --- processes: memory and CPU from /proc ---------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode(errors="replace")
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ")".
    return data[data.rfind(")") + 2:].split()


def process_tree(root: int) -> list[int]:
    """`root` and all its descendants (from the parent pid of every process in /proc)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = _stat_fields(int(name))
        if fields:
            children.setdefault(int(fields[1]), []).append(int(name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def pss_bytes(pid: int) -> int:
    """Proportional set size: pages shared between processes (a forked worker and its
    master) divided among them, so the sum over a tree counts each page once."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def cpu_times(pids: list[int]) -> tuple[float, float]:
    """User and system CPU time of these processes so far, in seconds."""
    user = system = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields:
            user += int(fields[11])
            system += int(fields[12])
    return user / CLK_TCK, system / CLK_TCK


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes so far."""
    return sum(cpu_times(pids))


class MemSampler(threading.Thread):
    """Samples the RSS summed over each server's process tree every `interval` seconds and
    keeps the peak (the phase it happened in, and each process's share). The trees are
    re-read every ~2 s, so a restarted worker is picked up. The PSS sum (shared pages
    counted once) is sampled every ~1 s, for information."""

    def __init__(self, interval: float) -> None:
        super().__init__(name="mem-sampler", daemon=True)
        self.interval = interval
        self.roots: dict[str, int] = {}
        self.trees: dict[str, list[int]] = {}
        self.peak: dict[str, int] = {}
        self.peak_phase: dict[str, str] = {}
        self.peak_procs: dict[str, list[int]] = {}
        self.peak_pss: dict[str, int] = {}
        self.phase_peak: dict[str, dict[str, int]] = {}
        self.last: dict[str, int] = {}
        self.samples = 0
        self.phase = "setup"
        self._stop_event = threading.Event()
        self._lock = threading.Lock()

    def watch(self, name: str, pid: int) -> None:
        with self._lock:
            self.roots[name] = pid
            self.trees[name] = process_tree(pid)

    def tree(self, name: str) -> list[int]:
        with self._lock:
            self.trees[name] = process_tree(self.roots[name])
            return list(self.trees[name])

    def sample(self, pss: bool = True) -> None:
        with self._lock:
            for name, pids in self.trees.items():
                each = [rss_bytes(p) for p in pids]
                total = sum(each)
                self.last[name] = total
                by_phase = self.phase_peak.setdefault(name, {})
                by_phase[self.phase] = max(by_phase.get(self.phase, 0), total)
                if total > self.peak.get(name, -1):
                    self.peak[name] = total
                    self.peak_phase[name] = self.phase
                    self.peak_procs[name] = [x for x in each if x]
                if pss:
                    self.peak_pss[name] = max(self.peak_pss.get(name, 0),
                                              sum(pss_bytes(p) for p in pids))
            self.samples += 1

    def run(self) -> None:
        n = 0
        step = max(1, int(2.0 / self.interval))
        while not self._stop_event.wait(self.interval):
            n += 1
            if n % step == 0:
                with self._lock:
                    for name, pid in self.roots.items():
                        self.trees[name] = process_tree(pid)
            self.sample(pss=n % max(1, int(1.0 / self.interval)) == 0)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(5)
        self.sample()


# --- servers under test -----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the benchmark dies, even by SIGKILL."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def wait_line(proc: subprocess.Popen, path: Path, prefix: str, timeout: float) -> str:
    """Wait until the log at `path` has a line starting with `prefix`; returns the line."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            for line in path.read_text(errors="replace").splitlines():
                if line.startswith(prefix):
                    return line
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    tail = path.read_text(errors="replace")[-3000:] if path.exists() else ""
    raise RuntimeError(f"{prefix.strip()} not seen (exit code {proc.poll()}):\n{tail}")


def wait_health(client: Client, proc: subprocess.Popen | None, log_path: Path | None,
                timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            break
        with contextlib.suppress(HttpError, OSError):
            client.call("GET", "_health")
            return
        time.sleep(0.1)
    tail = log_path.read_text(errors="replace")[-3000:] if log_path else ""
    raise RuntimeError(f"{client.url} did not answer /xrpc/_health:\n{tail}")


def stop_process(proc: subprocess.Popen, timeout: float = 15) -> None:
    if proc.stdin is not None:
        with contextlib.suppress(OSError):
            proc.stdin.close()
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Account:
    handle: str
    did: str
    token: str


@dataclass
class Server:
    """One server under test, its accounts and the data the workloads read."""

    name: str
    client: Client
    pid: int | None = None
    procs: list[subprocess.Popen] = field(default_factory=list)
    info: str = ""
    accounts: list[Account] = field(default_factory=list)
    big: Account | None = None
    big_records: int = 0
    blob_did: str = ""
    blob_cid: str = ""
    posts: list[str] = field(default_factory=list)  # rkeys of accounts[0]'s posts
    setup: dict[str, float] = field(default_factory=dict)
    # A server without createAccount (millipds) makes its accounts its own way:
    # make_accounts(handles) -> [(handle, did)]; tokens then come from createSession.
    make_accounts: Callable[[list[str]], list[tuple[str, str]]] | None = None
    # lenient: a set-up step that fails marks the workloads needing it n/a (in `cannot`,
    # workload key -> why) instead of stopping the run. For a third-party server only.
    lenient: bool = False
    cannot: dict[str, str] = field(default_factory=dict)
    # The client names the records of an applyWrites batch (TID rkeys): millipds gives
    # every create of one applyWrites the same TID, so a batch without rkeys fails.
    batch_rkeys: bool = False

    def stop(self) -> None:
        for p in reversed(self.procs):
            stop_process(p)


def start_ours(work: Path, workers: int, tree: Path = ROOT, name: str = "ours") -> Server:
    """`pds serve` from the checkout `tree` (this one, or `--baseline`'s), its data dir
    and log named after the server."""
    port = free_port()
    data = work / name
    env = {**os.environ, "PDS_RATE_LIMITS": "false", "PDS_ACCESS_LOG": "0"}
    subprocess.run([sys.executable, "-m", "pds.cli", "init", "--data-dir", str(data),
                    "--hostname", f"localhost:{port}", "--dev", "--did-method", "web",
                    "--handle-domains", ".test"],
                   check=True, capture_output=True, env=env, cwd=tree)
    log_path = work / f"{name}.log"
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pds.cli", "serve", "--data-dir", str(data),
             "--bind", f"127.0.0.1:{port}", "--workers", str(workers)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            cwd=tree, preexec_fn=_die_with_parent)
    server = Server(name, Client(f"http://127.0.0.1:{port}"), proc.pid, [proc],
                    info=f"pds serve --workers {workers}" + (f" (from {tree})" if tree != ROOT
                                                             else ""))
    try:
        wait_health(server.client, proc, log_path, START_TIMEOUT)
    except BaseException:
        server.stop()
        raise
    return server


def ensure_node_modules() -> None:
    """`npm ci` in bench/node once (node_modules is reused while package-lock.json is
    older than npm's record of the installed tree)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        raise SystemExit("node and npm are needed for the reference PDS (or use --no-ref)")
    marker = BENCH_NODE / "node_modules" / ".package-lock.json"
    lock = BENCH_NODE / "package-lock.json"
    if marker.exists() and marker.stat().st_mtime >= lock.stat().st_mtime:
        return
    log("installing the reference PDS: npm ci in bench/node (better-sqlite3 compiles from "
        "source, ~2 min; cached for later runs) ...")
    t0 = time.monotonic()
    res = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=BENCH_NODE,
                         capture_output=True, text=True, timeout=NPM_TIMEOUT)
    if res.returncode != 0:
        raise SystemExit(f"npm ci in {BENCH_NODE} failed:\n{res.stderr[-3000:]}")
    log(f"  installed in {time.monotonic() - t0:.0f} s")


def start_ref(work: Path) -> Server:
    ensure_node_modules()
    node = shutil.which("node") or "node"
    # plc.js lives with the tests; it finds @did-plc/server in tests/node/node_modules if
    # the tests installed it, else in bench/node/node_modules through NODE_PATH.
    env = {**os.environ, "LOG_ENABLED": "false",
           "NODE_PATH": str(BENCH_NODE / "node_modules")}
    plc_port, port = free_port(), free_port()
    plc_log = work / "plc.log"
    with open(plc_log, "ab") as out:
        plc = subprocess.Popen([node, str(PLC_JS), str(plc_port)], cwd=BENCH_NODE,
                               stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT,
                               env=env, preexec_fn=_die_with_parent)
    procs = [plc]
    try:
        plc_url = wait_line(plc, plc_log, "PLC_READY ", START_TIMEOUT).split()[1]
        ref_log = work / "ref.log"
        with open(ref_log, "ab") as out:
            ref = subprocess.Popen(
                [node, str(BENCH_NODE / "ref_pds.js"), str(port), str(work / "ref"), plc_url],
                cwd=BENCH_NODE, stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT,
                env={k: v for k, v in env.items() if not k.startswith("PDS_")},
                preexec_fn=_die_with_parent)
        procs.append(ref)
        line = wait_line(ref, ref_log, "REF_PDS_READY ", START_TIMEOUT)
        url, version = line.split()[1:3]
        server = Server("ref", Client(url), ref.pid, procs,
                        info=f"@atproto/pds {version} (node {node_version()})")
        wait_health(server.client, ref, ref_log, START_TIMEOUT)
        return server
    except BaseException:
        for p in reversed(procs):
            stop_process(p)
        raise


def start_millipds(work: Path, venv: Path, quiet: bool) -> Server:
    import millipds_server  # bench/millipds_server.py (stdlib only)

    port = free_port()
    log_path = work / "millipds.log"
    m = millipds_server.start(venv, work, port, log_path, quiet=quiet,
                              preexec_fn=_die_with_parent)
    server = Server("millipds", Client(m.url), m.proc.pid, [m.proc], info=m.info,
                    make_accounts=lambda handles: m.create_accounts(handles, PASSWORD),
                    lenient=True, batch_rkeys=True)
    try:
        wait_health(server.client, m.proc, log_path, START_TIMEOUT)
    except BaseException:
        server.stop()
        raise
    return server


def node_version() -> str:
    try:
        return subprocess.run(["node", "--version"], capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


# --- setup: accounts, records, the big repository, the blob ---------------------------


def setup_server(server: Server, args: argparse.Namespace, run_id: str,
                 blob: bytes) -> None:
    c = server.client
    desc = c.call("GET", "com.atproto.server.describeServer")
    domains = desc.get("availableUserDomains") or [".test"]
    domain = domains[0] if domains[0].startswith(".") else "." + domains[0]
    if desc.get("inviteCodeRequired"):
        raise SystemExit(f"{c.url} requires invite codes for sign-up; the benchmark needs "
                         "invite-free sign-up")

    def create(label: str) -> Account:
        handle = f"{label}-{run_id}{domain}"
        out = c.call("POST", "com.atproto.server.createAccount",
                     body={"handle": handle, "email": f"{label}-{run_id}@example.com",
                           "password": PASSWORD})
        return Account(handle, out["did"], out["accessJwt"])

    def made(handle: str, did: str) -> Account:
        out = c.call("POST", "com.atproto.server.createSession",
                     body={"identifier": handle, "password": PASSWORD})
        return Account(handle, did, out["accessJwt"])

    t0 = time.perf_counter()
    labels = [f"b{i}" for i in range(args.clients)] + ["big"]
    if server.make_accounts is not None:
        accts = [made(h, d) for h, d in
                 server.make_accounts([f"{label}-{run_id}{domain}" for label in labels])]
    else:
        accts = [create(label) for label in labels]
    server.accounts, server.big = accts[:-1], accts[-1]
    t1 = time.perf_counter()
    server.setup["accounts_s"] = t1 - t0
    how = " (its CLI, then createSession)" if server.make_accounts is not None else ""
    log(f"[{server.name}] {args.clients + 1} accounts{how} in {t1 - t0:.1f} s")

    # The big repository: applyWrites batches of 200 creates.
    rng = random.Random(20260101)
    big = server.big
    t0 = time.perf_counter()
    batches = []
    done = 0
    while done < args.big:
        k = min(BATCH, args.big - done)
        writes = [{"$type": "com.atproto.repo.applyWrites#create", "collection": POST,
                   "value": make_post(rng)} for _ in range(k)]
        if server.batch_rkeys:
            for w in writes:
                w["rkey"] = next_tid()
        b0 = time.perf_counter()
        c.call("POST", "com.atproto.repo.applyWrites",
               body={"repo": big.did, "writes": writes}, token=big.token)
        batches.append(time.perf_counter() - b0)
        done += k
    t1 = time.perf_counter()
    server.big_records = done
    server.setup["big_s"] = t1 - t0
    server.setup["batch_p50_ms"] = percentile(batches, 50) * 1e3
    log(f"[{server.name}] {done}-record repository in {t1 - t0:.1f} s "
        f"(applyWrites of {BATCH}: p50 {server.setup['batch_p50_ms']:.0f} ms)")

    try:
        setup_blob(server, blob, rng)
    except (HttpError, OSError, RuntimeError, KeyError) as e:
        if not server.lenient:
            raise
        server.cannot["get_blob"] = f"blob set-up failed: {e}"[:300]
        log(f"[{server.name}] {server.cannot['get_blob']}; getBlob is n/a")


def setup_blob(server: Server, blob: bytes, rng: random.Random) -> None:
    """The blob, referenced from a record (a PDS serves only blobs that a record uses)."""
    c = server.client
    acct = server.accounts[1 % len(server.accounts)]
    up = c.call("POST", "com.atproto.repo.uploadBlob", raw=blob,
                content_type="application/octet-stream", token=acct.token)
    ref = up["blob"]
    c.call("POST", "com.atproto.repo.createRecord", token=acct.token,
           body={"repo": acct.did, "collection": FILE_COLLECTION,
                 "record": {"$type": FILE_COLLECTION, "file": ref,
                            "createdAt": make_post(rng)["createdAt"]}})
    server.blob_did, server.blob_cid = acct.did, ref["ref"]["$link"]
    got = c.call("GET", "com.atproto.sync.getBlob",
                 params={"did": server.blob_did, "cid": server.blob_cid}, expect_json=False)
    if got != blob:
        raise RuntimeError(f"[{server.name}] getBlob returned {len(got)} bytes, not the blob")


def settle(server: Server, sampler: MemSampler, limit: float = 10.0) -> None:
    """Wait (up to `limit` s) until the server's processes are idle: the setup's writes
    can leave background work (checkpoints, sequencer) that would land on a workload.
    Records the CPU the server still used when the wait ended (cores busy while idle)."""
    if not server.pid:
        return
    t0 = time.monotonic()
    pids = sampler.tree(server.name)
    prev, busy = cpu_seconds(pids), 0.0
    while time.monotonic() - t0 < limit:
        time.sleep(1.0)
        now = cpu_seconds(pids)
        busy, prev = now - prev, now
        if busy < 0.03:  # under 3% of a core
            break
    server.setup["idle_cores"] = busy
    waited = time.monotonic() - t0
    if busy >= 0.03:
        log(f"[{server.name}] still using {busy:.2f} cores {waited:.0f} s after setup with no "
            "requests; going on")


# --- measurement ----------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(values)
    if not s:
        return float("nan")
    return s[max(0, math.ceil(p / 100 * len(s)) - 1)]


@dataclass
class Result:
    """Samples of one workload on one server, summed over its rounds."""

    lat_ms: list[float] = field(default_factory=list)
    ok: int = 0
    errors: int = 0
    first_error: str = ""
    wall_s: float = 0.0
    bytes: int = 0
    client_cpu_s: float = 0.0
    server_cpu_s: float | None = None
    server_sys_s: float = 0.0
    bodies: list[bytes] = field(default_factory=list)
    mbps: list[float] = field(default_factory=list)  # per-request MB/s (downloads)

    def add(self, other: Result) -> None:
        self.lat_ms += other.lat_ms
        self.ok += other.ok
        self.errors += other.errors
        self.first_error = self.first_error or other.first_error
        self.wall_s += other.wall_s
        self.bytes += other.bytes
        self.client_cpu_s += other.client_cpu_s
        if other.server_cpu_s is not None:
            self.server_cpu_s = (self.server_cpu_s or 0.0) + other.server_cpu_s
            self.server_sys_s += other.server_sys_s
        self.bodies += other.bodies
        self.mbps += other.mbps

    def p(self, q: float) -> float:
        return percentile(self.lat_ms, q)

    @property
    def rate(self) -> float:
        return self.ok / self.wall_s if self.wall_s else float("nan")

    def view(self) -> dict[str, Any]:
        n = self.ok + self.errors
        return {
            "requests": n, "ok": self.ok, "errors": self.errors,
            "first_error": self.first_error[:300],
            "p50_ms": self.p(50), "p90_ms": self.p(90), "p99_ms": self.p(99),
            "max_ms": max(self.lat_ms) if self.lat_ms else float("nan"),
            "wall_s": self.wall_s, "per_s": self.rate,
            "mb": self.bytes / MB,
            "mbps_total": self.bytes / MB / self.wall_s if self.wall_s else float("nan"),
            "mbps_p50": percentile(self.mbps, 50),
            "client_cpu_pct": 100 * self.client_cpu_s / self.wall_s if self.wall_s else 0.0,
            "client_cpu_us_per_req": 1e6 * self.client_cpu_s / n if n else float("nan"),
            "server_cpu_ms_per_req": (1e3 * self.server_cpu_s / n
                                      if n and self.server_cpu_s is not None else None),
            "server_cpu_cores": (self.server_cpu_s / self.wall_s
                                 if self.wall_s and self.server_cpu_s is not None else None),
            "server_sys_pct": (100 * self.server_sys_s / self.server_cpu_s
                               if self.server_cpu_s else None),
        }


def process_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def run_clients(server: Server, sampler: MemSampler | None, plans: list[list[bytes]],
                keep_bodies: bool = False) -> Result:
    """One thread per plan, each on its own keep-alive connection (connected before the
    clock starts), sending its pre-encoded requests one after another. The wall time runs
    from the release of all clients to the last answer."""
    n = len(plans)
    lat: list[list[float]] = [[] for _ in range(n)]
    sizes: list[list[int]] = [[] for _ in range(n)]
    errs: list[list[str]] = [[] for _ in range(n)]
    bodies: list[list[bytes]] = [[] for _ in range(n)]
    conns = [server.client.new_conn() for _ in range(n)]
    for cn in conns:
        cn.connect()
    barrier = threading.Barrier(n + 1)

    def worker(i: int) -> None:
        conn, my_lat, my_sizes, my_err = conns[i], lat[i], sizes[i], errs[i]
        clock = time.perf_counter_ns
        barrier.wait()
        for raw in plans[i]:
            t0 = clock()
            try:
                status, body = conn.send(raw)
            except (HttpError, OSError) as e:
                my_err.append(f"{type(e).__name__}: {e}")
                conn.close()
                continue
            t1 = clock()
            if status == 200:
                my_lat.append((t1 - t0) / 1e6)
                my_sizes.append(len(body))
                if keep_bodies:
                    bodies[i].append(body)
            else:
                my_err.append(f"HTTP {status}: {body[:300]!r}")

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    pids = sampler.tree(server.name) if sampler is not None and server.pid else None
    gc.collect()
    gc.disable()
    try:
        s0 = cpu_times(pids) if pids else None
        c0 = process_cpu()
        barrier.wait()
        t0 = time.perf_counter()
        for t in threads:
            t.join()
        t1 = time.perf_counter()
        c1 = process_cpu()
        s1 = cpu_times(pids) if pids else None
    finally:
        gc.enable()
        for cn in conns:
            cn.close()
    res = Result(wall_s=t1 - t0, client_cpu_s=c1 - c0,
                 server_cpu_s=sum(s1) - sum(s0) if s0 is not None and s1 is not None else None,
                 server_sys_s=s1[1] - s0[1] if s0 is not None and s1 is not None else 0.0)
    for i in range(n):
        res.lat_ms += lat[i]
        res.ok += len(lat[i])
        res.errors += len(errs[i])
        res.bytes += sum(sizes[i])
        res.mbps += [sz / MB / (ms / 1e3) for sz, ms in zip(sizes[i], lat[i], strict=True)
                     if ms > 0]
        if errs[i] and not res.first_error:
            res.first_error = errs[i][0]
        res.bodies += bodies[i]
    return res


@dataclass
class Workload:
    """A workload: `plans(server, rng, count, rnd)` builds the pre-encoded requests of one
    round (one list per client); `after` sees each round's result (e.g. to collect rkeys).
    `total` requests per server are split over the rounds; `warmup` requests run once per
    server before the first round and are not counted."""

    key: str
    title: str
    clients: int
    total: int
    warmup: int
    plans: Callable[[Server, random.Random, int], list[list[bytes]]]
    keep_bodies: bool = False
    after: Callable[[Server, Result], None] | None = None


def split(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def per_client(count: int, clients: int, make: Callable[[int, int], bytes]) -> list[list[bytes]]:
    """`count` requests dealt over `clients` plans; make(client, j) encodes one."""
    return [[make(ci, j) for j in range(k)] for ci, k in enumerate(split(count, clients))]


def workloads(args: argparse.Namespace) -> list[Workload]:
    q = args.quick
    nc = args.clients

    def health(s: Server, rng: random.Random, count: int) -> list[list[bytes]]:
        raw = s.client.req("GET", "_health")
        return [[raw] * count]

    def session(s: Server, rng: random.Random, count: int) -> list[list[bytes]]:
        a = s.accounts[2 % len(s.accounts)]
        raw = s.client.req("POST", "com.atproto.server.createSession",
                           body={"identifier": a.handle, "password": PASSWORD})
        return [[raw] * count]

    def create_req(s: Server, a: Account, rng: random.Random) -> bytes:
        return s.client.req("POST", "com.atproto.repo.createRecord", token=a.token,
                            body={"repo": a.did, "collection": POST, "record": make_post(rng)})

    def seq_create(s: Server, rng: random.Random, count: int) -> list[list[bytes]]:
        a = s.accounts[0]
        return [[create_req(s, a, rng) for _ in range(count)]]

    def collect_rkeys(s: Server, res: Result) -> None:
        for body in res.bodies:
            s.posts.append(json.loads(body)["uri"].rsplit("/", 1)[1])
        res.bodies = []

    def conc_many(s: Server, rng: random.Random, count: int) -> list[list[bytes]]:
        return per_client(count, nc, lambda ci, _j: create_req(s, s.accounts[ci], rng))

    def conc_one(s: Server, rng: random.Random, count: int) -> list[list[bytes]]:
        a = s.accounts[3 % len(s.accounts)]
        return per_client(count, nc, lambda _ci, _j: create_req(s, a, rng))

    def get_record(s: Server, rng: random.Random, count: int) -> list[list[bytes]]:
        a = s.accounts[0]
        return [[s.client.req("GET", "com.atproto.repo.getRecord",
                              params={"repo": a.did, "collection": POST,
                                      "rkey": rng.choice(s.posts)})
                 for _ in range(count)]]

    def list_records(s: Server, rng: random.Random, count: int) -> list[list[bytes]]:
        raw = s.client.req("GET", "com.atproto.repo.listRecords",
                           params={"repo": s.accounts[0].did, "collection": POST,
                                   "limit": 100})
        return [[raw] * count]

    def get_repo(s: Server, rng: random.Random, count: int) -> list[list[bytes]]:
        assert s.big is not None
        raw = s.client.req("GET", "com.atproto.sync.getRepo", params={"did": s.big.did})
        return [[raw] * count]

    def get_blob(s: Server, rng: random.Random, count: int) -> list[list[bytes]]:
        raw = s.client.req("GET", "com.atproto.sync.getBlob",
                           params={"did": s.blob_did, "cid": s.blob_cid})
        return per_client(count, 4, lambda _ci, _j: raw)

    big = f"{args.big // 1000}k" if args.big % 1000 == 0 else str(args.big)
    return [
        Workload("health", "_health, 1 client (floor)", 1, 200 if q else 1000, 50, health),
        Workload("session", "createSession, 1 client", 1, 20 if q else 100, 3, session),
        Workload("create", "createRecord (post), 1 client", 1, args.n, 10, seq_create,
                 keep_bodies=True, after=collect_rkeys),
        Workload("conc16", f"createRecord, {nc} clients x {nc} accounts", nc,
                 160 if q else 640, nc, conc_many),
        Workload("conc1", f"createRecord, {nc} clients x 1 account", nc,
                 160 if q else 640, nc, conc_one),
        Workload("get_record", "getRecord (no auth), 1 client", 1, 200 if q else 1000, 30,
                 get_record),
        Workload("list_records", "listRecords limit 100, 1 client", 1, 60 if q else 300, 10,
                 list_records),
        Workload("get_repo", f"getRepo ({big} records), 1 client", 1, 4 if q else 12, 1,
                 get_repo),
        Workload("get_blob", "getBlob 1 MiB, 4 clients", 4, 40 if q else 200, 4, get_blob),
    ]


def run_workloads(servers: list[Server], wls: list[Workload], rounds: int,
                  sampler: MemSampler | None, seed: int) -> dict[str, dict[str, Result]]:
    """Every workload in turn; within one, rounds alternate between the servers."""
    results: dict[str, dict[str, Result]] = {}
    for wl in wls:
        if sampler is not None:
            sampler.phase = wl.key
        results[wl.key] = {s.name: Result() for s in servers}
        counts = [c for c in split(wl.total, rounds) if c]
        log(f"{wl.title}: {wl.total} per server in {len(counts)} round(s)"
            + (f" after {wl.warmup} warm-up" if wl.warmup else "") + " ...")
        for s in servers:
            if wl.key in s.cannot:
                continue
            if wl.warmup:
                warm = run_clients(s, None, wl.plans(s, random.Random(seed - 1),
                                                     max(wl.warmup, wl.clients)),
                                   keep_bodies=wl.keep_bodies)
                if wl.after is not None:
                    wl.after(s, warm)
        for rnd, count in enumerate(counts):
            for s in servers:
                if wl.key in s.cannot:
                    continue
                # The same request pattern for every server (same seed per round).
                plans = wl.plans(s, random.Random(seed * 1000 + rnd), max(count, wl.clients))
                res = run_clients(s, sampler, plans, keep_bodies=wl.keep_bodies)
                if wl.after is not None:
                    wl.after(s, res)
                results[wl.key][s.name].add(res)
        for s in servers:
            if wl.key in s.cannot:
                log(f"  [{s.name}] n/a: {s.cannot[wl.key]}")
                continue
            r = results[wl.key][s.name]
            extra = f"; {r.errors} errors, first: {r.first_error[:200]}" if r.errors else ""
            log(f"  [{s.name}] p50 {r.p(50):.3f} ms, {r.rate:.0f}/s{extra}")
    return results


# --- report ---------------------------------------------------------------------------


def host_speed() -> float:
    """ms for a fixed pure-Python loop (best of 3): this VM's CPU speed drifts by up to
    1.6x within minutes with nothing of ours running, and every number here with it (the
    disk's flush time drifts too, which this does not see). Printed at the start and end
    of a run so that runs can be read against each other."""
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        total = 0
        for i in range(1_000_000):
            total += i
        best = min(best, time.perf_counter() - t)
    return best * 1e3


def machine_info(work: Path) -> dict[str, Any]:
    model = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    fs = "?"
    with contextlib.suppress(OSError), open("/proc/mounts") as f:
        best = ""
        p = str(work.resolve())
        for line in f:
            parts = line.split()
            if len(parts) >= 3:
                mnt = parts[1].replace("\\040", " ")
                if (p == mnt or p.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                    best, fs = mnt, parts[2]
    return {"cpu_count": os.cpu_count(), "cpu_model": model,
            "python": platform.python_version(), "platform": platform.platform(),
            "work_dir": str(work), "work_fs": fs, "loadavg_start": os.getloadavg(),
            "host_ms_start": host_speed()}


# Servers measured beside ours and the reference, each with a ratio column (ours/them):
# millipds, and ours from another checkout (`--baseline`, "base").
BESIDE = {"millipds": "milli", "base": "base"}


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return None
    return a / b


def verdict(key: str, r: float | None) -> tuple[str, bool | None]:
    op, limit = TARGETS[key]
    text = f"{op} {limit:g}x ref"
    if r is None:
        return text, None
    return text, (r <= limit if op == "<=" else r >= limit)


def build_rows(res: dict[str, dict[str, Result]], mem: dict[str, int],
               names: list[str], clients: int = 16) -> list[dict[str, Any]]:
    """The main table: one row per number, with the ratio and target where there is one.
    A server with no answered request in a workload (one it cannot do) gets None: n/a."""
    rows: list[dict[str, Any]] = []

    def add(label: str, unit: str, get: Callable[[Result], float | None],
            key: str | None = None, wl: str = "",
            extra_target: tuple[str, Callable[[float], bool]] | None = None,
            values: dict[str, float] | None = None) -> None:
        vals = values if values is not None else (
            {n: get(res[wl][n]) if res[wl][n].ok else None
             for n in names if wl in res and n in res[wl]})
        r = ratio(vals.get("ours"), vals.get("ref"))
        target, ok = verdict(key, r) if key else ("", None)
        if extra_target is not None and vals.get("ours") is not None:
            text, test = extra_target
            ok2 = test(vals["ours"])
            target = f"{target} and {text}" if target else text
            ok = ok2 if ok is None else (ok and ok2)
        row = {"label": label, "unit": unit, "ours": vals.get("ours"), "ref": vals.get("ref"),
               "ratio": r, "target": target, "ok": ok, "key": key}
        for other in BESIDE:
            if other in names:
                row[other] = vals.get(other)
                row[f"ratio_{other}"] = ratio(vals.get("ours"), vals.get(other))
        rows.append(row)

    def cpu_ms(x: Result) -> float | None:
        return x.view()["server_cpu_ms_per_req"]

    if "health" in res:
        add("_health p50 (floor)", "ms", lambda x: x.p(50), wl="health")
    if "session" in res:
        add("createSession p50", "ms", lambda x: x.p(50), wl="session")
    if "create" in res:
        add("createRecord p50", "ms", lambda x: x.p(50), "create_p50", "create")
        add("createRecord p90", "ms", lambda x: x.p(90), wl="create")
        add("createRecord p99", "ms", lambda x: x.p(99), wl="create")
        add("  server CPU per write", "ms", cpu_ms, wl="create")
    if "conc16" in res:
        add(f"writes, {clients} clients x {clients} accounts", "/s", lambda x: x.rate,
            "conc16_tput", "conc16")
        add("  latency p50", "ms", lambda x: x.p(50), wl="conc16")
        add("  server CPU per write", "ms", cpu_ms, wl="conc16")
    if "conc1" in res:
        add(f"writes, {clients} clients x 1 account", "/s", lambda x: x.rate, wl="conc1")
        add("  latency p50", "ms", lambda x: x.p(50), wl="conc1")
    if "get_record" in res:
        add("getRecord p50", "ms", lambda x: x.p(50), "get_record_p50", "get_record")
        add("  server CPU per request", "ms", cpu_ms, wl="get_record")
    if "list_records" in res:
        add("listRecords (limit 100) p50", "ms", lambda x: x.p(50), "list_records_p50",
            "list_records")
    if "get_repo" in res:
        add("getRepo MB/s (median)", "MB/s", lambda x: percentile(x.mbps, 50), "get_repo_mbps",
            "get_repo", (f">= {TARGET_GET_REPO_MBPS:g} MB/s",
                         lambda v: v >= TARGET_GET_REPO_MBPS))
        add("  CAR size", "MB", lambda x: x.bytes / MB / max(x.ok, 1), wl="get_repo")
    if "get_blob" in res:
        add("getBlob 1 MiB x4 clients", "MB/s", lambda x: x.bytes / MB / x.wall_s
            if x.wall_s else float("nan"), wl="get_blob")
        add("  latency p50", "ms", lambda x: x.p(50), wl="get_blob")
    if mem:
        add("peak RSS, all processes", "MB", lambda x: 0.0, "peak_rss",
            values={n: v / MB for n, v in mem.items()})
    return rows


def fmt(v: float | None, unit: str = "") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if unit == "/s" or abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    if abs(v) >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def print_report(info: dict[str, Any], servers: list[Server], res: dict[str, dict[str, Result]],
                 rows: list[dict[str, Any]], wls: list[Workload], sampler: MemSampler | None,
                 args: argparse.Namespace) -> None:
    names = [s.name for s in servers]
    print("http_bench: PDS over HTTP" + (", ours vs the reference PDS" if "ref" in names
                                          else "")
          + (", with millipds beside them" if "millipds" in names else "")
          + (", and ours from the baseline checkout" if "base" in names else ""))
    print(f"  machine: {info['cpu_count']} CPUs ({info['cpu_model']}), Python {info['python']},"
          f" {info['platform']}")
    print(f"  work dir: {info['work_dir']} ({info['work_fs']}); load average at start "
          + " ".join(f"{x:.2f}" for x in info["loadavg_start"]) + ", at end "
          + " ".join(f"{x:.2f}" for x in info["loadavg_end"]))
    print(f"  host speed: a fixed Python loop in {info['host_ms_start']:.0f} ms at the start, "
          f"{info['host_ms_end']:.0f} at the end (lower is faster; a slow host slows "
          "every number below)")
    for s in servers:
        print(f"  {s.name}: {s.client.url}  {s.info}")
        if s.setup:
            print(f"    setup: {len(s.accounts) + 1} accounts {s.setup['accounts_s']:.1f} s; "
                  f"{s.big_records}-record repo by applyWrites x{BATCH} in "
                  f"{s.setup['big_s']:.1f} s (p50 {s.setup['batch_p50_ms']:.0f} ms per batch)")
        if "idle_cores" in s.setup:
            print(f"    CPU with no requests after setup: {s.setup['idle_cores']:.2f} cores"
                  + ("  <- busy while idle" if s.setup["idle_cores"] >= 0.03 else ""))
    print(f"  {args.rounds} round(s) per workload"
          + (", alternating " + ", ".join(names + names[:1]) + "..." if len(names) > 1 else "")
          + "; latency = request sent to last byte read")
    print("  note: numbers are only meaningful on a quiet machine (2 CPUs are shared by both "
          "servers and the client).")
    print()
    w0 = 36
    beside = [n for n in BESIDE if n in names]

    def cell(row: dict[str, Any], n: str) -> str:
        return fmt(row[n], row["unit"]) if row.get(n) is not None else "n/a"

    def times(r: float | None) -> str:
        return fmt(r) + "x" if r is not None else "-"

    print(f"  {'':<{w0}}{'unit':>6}" + "".join(f"{n:>10}" for n in names)
          + f"{'ours/ref':>10}" + "".join(f"{'ours/' + BESIDE[n]:>11}" for n in beside)
          + "  target")
    for row in rows:
        mark = {True: "PASS", False: "FAIL", None: ""}[row["ok"]]
        target = f"{row['target']}  {mark}" if row["target"] else ""
        if row["ok"] is None and row["target"]:
            target = f"{row['target']}  (n/a)"
        print(f"  {row['label']:<{w0}}{row['unit']:>6}"
              + "".join(f"{cell(row, n):>10}" for n in names)
              + f"{times(row['ratio']):>10}"
              + "".join(f"{times(row['ratio_' + n]):>11}" for n in beside) + f"  {target}")
    if sampler is not None and sampler.peak:
        for s in servers:
            if s.name in sampler.peak:
                each = " + ".join(f"{x / MB:.0f}" for x in sampler.peak_procs[s.name])
                print(f"    peak RSS of {s.name}: {sampler.peak[s.name] / MB:.1f} MB ({each}) "
                      f"during {sampler.peak_phase[s.name]}; at the end "
                      f"{sampler.last.get(s.name, 0) / MB:.1f} MB; peak PSS "
                      f"{sampler.peak_pss.get(s.name, 0) / MB:.1f} MB")
                work_peak = max((v for k, v in sampler.phase_peak.get(s.name, {}).items()
                                 if k != "setup"), default=0)
                if work_peak:
                    print(f"      peak RSS of {s.name} during the workloads only (set-up left "
                          f"out): {work_peak / MB:.1f} MB")
        print(f"    ({sampler.samples} samples, every {sampler.interval:g} s, set-up included;"
              " PSS counts pages shared by forked processes once)")
    print()
    print("  per workload: requests, errors, client CPU (% of one core, us per request), server "
          "CPU (ms per request, cores busy, % of it in the kernel)")
    ws = max(7, *(len(s.name) + 1 for s in servers))
    print(f"  {'':<{w0}}{'server':>{ws}}{'reqs':>7}{'err':>5}{'wall s':>8}{'cli %':>7}"
          f"{'cli us':>8}{'srv ms':>8}{'cores':>7}{'sys %':>6}  p50/p90/p99 ms")
    for wl in wls:
        for s in servers:
            if wl.key in s.cannot:
                print(f"  {wl.title if s is servers[0] else '':<{w0}}{s.name:>{ws}}  n/a: "
                      f"{s.cannot[wl.key]}")
                continue
            r = res[wl.key][s.name].view()
            srv_ms = r["server_cpu_ms_per_req"]
            cores = r["server_cpu_cores"]
            sys_pct = r["server_sys_pct"]
            print(f"  {wl.title if s is servers[0] else '':<{w0}}{s.name:>{ws}}{r['requests']:>7}"
                  f"{r['errors']:>5}{r['wall_s']:>8.2f}{r['client_cpu_pct']:>7.0f}"
                  f"{r['client_cpu_us_per_req']:>8.0f}"
                  f"{fmt(srv_ms):>8}{fmt(cores):>7}"
                  f"{(f'{sys_pct:.0f}' if sys_pct is not None else '-'):>6}  "
                  f"{fmt(r['p50_ms'])}/{fmt(r['p90_ms'])}/{fmt(r['p99_ms'])}")
    errs = [(wl.title, s.name, res[wl.key][s.name]) for wl in wls for s in servers
            if res[wl.key][s.name].errors]
    if errs:
        print()
        print("  errors:")
        for title, name, r in errs:
            print(f"    {title} [{name}]: {r.errors}; first: {r.first_error[:300]}")
    busy = [(wl.title, s.name) for wl in wls for s in servers
            if res[wl.key][s.name].view()["client_cpu_pct"] > 70]
    if busy:
        print()
        print("  warning: the client used > 70% of a core in: "
              + "; ".join(f"{t} [{n}]" for t, n in busy)
              + " (the client may limit these numbers)")
    checked = [r for r in rows if r["ok"] is not None]
    if checked:
        print()
        print(f"  targets: {sum(1 for r in checked if r['ok'])} of {len(checked)} PASS")


# --- main -------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="small counts and a 2k-record repo instead of 10k")
    ap.add_argument("--target", metavar="URL",
                    help="benchmark an already running PDS only (needs invite-free sign-up)")
    ap.add_argument("--target-pid", type=int, metavar="PID",
                    help="with --target: the server's root process, for RSS and CPU")
    ap.add_argument("--no-ref", action="store_true", help="skip the reference PDS")
    ap.add_argument("--millipds", type=Path, metavar="VENV",
                    help="also run millipds, installed in this venv (see bench/README.md)")
    ap.add_argument("--baseline", type=Path, metavar="TREE",
                    help="also run ours from another checkout (a git worktree of the commit "
                         "before a change) as 'base', rounds alternating with ours")
    ap.add_argument("--millipds-log", action="store_true",
                    help="keep millipds's own DEBUG logging on (default: off below WARNING, "
                         "as ours and the reference run without logs)")
    ap.add_argument("--workers", type=int, default=2,
                    help="gunicorn workers of our server (default 2)")
    ap.add_argument("--n", type=int, default=None,
                    help="sequential createRecord requests per server (default 300; quick 60)")
    ap.add_argument("--big", type=int, default=None,
                    help="records in the getRepo repository (default 10000; quick 2000)")
    ap.add_argument("--rounds", type=int, default=None,
                    help="rounds per workload, alternating the servers (default 3; quick 2)")
    ap.add_argument("--clients", type=int, default=16,
                    help="clients (and accounts) of the concurrent-write workloads")
    ap.add_argument("--only", default=None,
                    help="comma-separated workload keys (health,session,create,conc16,conc1,"
                         "get_record,list_records,get_repo,get_blob)")
    ap.add_argument("--sample-interval", type=float, default=0.1,
                    help="seconds between RSS samples (default 0.1)")
    ap.add_argument("--work-dir", type=Path, default=None,
                    help="where the servers keep their data (default: a new temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the work dir afterwards")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--json", action="store_true", help="print JSON instead of the table")
    ap.add_argument("--save", type=Path, metavar="FILE", help="also write the JSON to FILE")
    args = ap.parse_args(argv)
    if args.n is None:
        args.n = 60 if args.quick else 300
    if args.big is None:
        args.big = 2000 if args.quick else 10000
    if args.rounds is None:
        args.rounds = 2 if args.quick else 3
    if args.target:
        args.no_ref = True
    if args.baseline:
        args.baseline = args.baseline.resolve()
        if not (args.baseline / "pds" / "cli").is_dir():
            ap.error(f"--baseline {args.baseline}: not a checkout of pds")
    if args.target_pid and not args.target:
        ap.error("--target-pid needs --target")
    if min(args.n, args.big, args.rounds, args.clients, args.workers) < 1:
        ap.error("counts must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C: the servers are stopped and the work dir removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    wls = workloads(args)
    if args.only:
        keep = {k.strip() for k in args.only.split(",") if k.strip()}
        unknown = keep - {w.key for w in wls}
        if unknown:
            raise SystemExit(f"unknown workload(s): {', '.join(sorted(unknown))}")
        # getRecord reads the posts that the sequential createRecord workload writes.
        if "get_record" in keep:
            keep.add("create")
        wls = [w for w in wls if w.key in keep]
    own_work = args.work_dir is None
    # Absolute: the servers run with their checkout as the working directory.
    work = Path(tempfile.mkdtemp(prefix="pds-http-bench-")) if own_work \
        else args.work_dir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    info = machine_info(work)
    if info["work_fs"] in ("tmpfs", "ramfs"):
        log(f"warning: {work} is on {info['work_fs']}: writes never reach a disk")
    run_id = "".join(random.choice(string.ascii_lowercase + string.digits) for _ in range(6))
    blob = random.Random(args.seed).randbytes(BLOB_BYTES)
    servers: list[Server] = []
    sampler = MemSampler(args.sample_interval)
    try:
        if args.target:
            servers.append(Server("ours", Client(args.target), args.target_pid,
                                  info="--target"))
        else:
            log(f"starting our server (pds serve --workers {args.workers}) in {work} ...")
            servers.append(start_ours(work, args.workers))
        if args.baseline:
            log(f"starting ours from the baseline checkout {args.baseline} ...")
            servers.append(start_ours(work, args.workers, args.baseline, "base"))
        if args.millipds:
            log(f"starting millipds from {args.millipds} ...")
            servers.append(start_millipds(work, args.millipds, quiet=not args.millipds_log))
        if not args.no_ref:
            log("starting the local PLC directory and the reference PDS ...")
            servers.append(start_ref(work))
        for s in servers:
            if s.pid:
                sampler.watch(s.name, s.pid)
        sampler.start()
        for s in servers:
            log(f"[{s.name}] setting up accounts, the {args.big}-record repo and the blob ...")
            setup_server(s, args, run_id, blob)
        for s in servers:
            settle(s, sampler)
        results = run_workloads(servers, wls, args.rounds, sampler, args.seed)
        sampler.stop()
    finally:
        for s in servers:
            s.stop()
        if own_work and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        elif args.keep:
            log(f"work dir kept: {work}")
    info["loadavg_end"] = os.getloadavg()
    info["host_ms_end"] = host_speed()
    names = [s.name for s in servers]
    rows = build_rows(results, dict(sampler.peak), names, args.clients)
    report = {
        "machine": info,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "servers": {s.name: {"url": s.client.url, "info": s.info, "setup": s.setup,
                             "big_records": s.big_records, "cannot": s.cannot}
                    for s in servers},
        "rows": rows,
        "workloads": {wl.key: {"title": wl.title, **{n: results[wl.key][n].view()
                                                    for n in names}} for wl in wls},
        "memory": {n: {"peak_bytes": sampler.peak.get(n), "peak_phase":
                       sampler.peak_phase.get(n), "peak_per_process": sampler.peak_procs.get(n),
                       "end_bytes": sampler.last.get(n), "peak_pss_bytes": sampler.peak_pss.get(n),
                       "peak_by_phase": sampler.phase_peak.get(n)}
                   for n in names if n in sampler.peak},
    }
    if args.save:
        args.save.write_text(json.dumps(report, indent=1, default=str) + "\n")
    if args.json:
        json.dump(report, sys.stdout, indent=1, default=str)
        print()
    else:
        print_report(info, servers, results, rows, wls, sampler, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
