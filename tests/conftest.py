"""Shared fixtures: servers made for one test (`new_server`), where the interop vectors
live, a local official PLC directory, and the end-of-run check of every data dir the tests
made against README's layout."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import Server, free_port, running_server, serving, stop_process
from mail_util import SmtpServer

INTEROP = Path(__file__).resolve().parents[2] / "shared" / "interop"
NODE_DIR = Path(__file__).resolve().parent / "node"
NPM_TIMEOUT = 600  # seconds; a cold `npm ci` of the harness takes well under a minute
PLC_START_TIMEOUT = 60


@pytest.fixture(scope="session", autouse=True)
def data_dirs_follow_readme_layout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """After the last test: every path of every data dir any test made (a directory of
    the run's temporary tree holding a `pds.env`: servers' dirs, backups, restored and
    damaged copies) is an entry of README's data-dir layout. A failure is an error at
    the last test's teardown, so the run fails. Only this direction: a run of a few test
    files makes only some kinds of file; test_readme.py checks that every entry is real.
    """
    yield
    from readme_util import data_dirs, layout_entries, unlisted, walk

    entries = layout_entries()
    found = []
    for data in data_dirs(tmp_path_factory.getbasetemp()):
        extra = unlisted(walk(data), entries)
        if extra:
            found.append(f"{data}: {', '.join(extra[:10])}"
                         + (f" (and {len(extra) - 10} more)" if len(extra) > 10 else ""))
    assert not found, ("paths in data dirs of this run that README's '## The data "
                       "directory' lacks (add them there, or stop making them):\n"
                       + "\n".join(found))


class ServerFactory:
    """What `new_server` gives a test: `new_server(**kw)` serves a fresh data dir under the
    test's tmp_path (`harness.running_server`'s arguments; `name` is the data dir's),
    `new_server.serve(data, port, **kw)` an existing one (`harness.serving`'s)."""

    def __init__(self, base: Path, stack: contextlib.ExitStack) -> None:
        self.base, self.stack = base, stack

    # Left running, a server is killed at the test's end, its log not checked: a test that
    # wants a graceful stop or a clean log stops it and looks itself.
    LEFT = {"stop_signal": signal.SIGKILL, "forbid": None}

    def __call__(self, **kw: object) -> Server:
        return self.stack.enter_context(running_server(self.base, **{**self.LEFT, **kw}))

    def serve(self, data: Path, port: int | None = None, **kw: object) -> Server:
        return self.stack.enter_context(serving(data, port, **{**self.LEFT, **kw}))


@pytest.fixture
def new_server(tmp_path: Path) -> Iterator[ServerFactory]:
    """A factory of `pds serve` processes for one test, all stopped at its end."""
    with contextlib.ExitStack() as stack:
        yield ServerFactory(tmp_path, stack)


@pytest.fixture(scope="session")
def node() -> str:
    """The node program, for the official atproto clients (skips without it)."""
    path = shutil.which("node")
    if path is None:
        pytest.skip("node is not on PATH: the official atproto clients need it")
    return path


@pytest.fixture(scope="module")
def smtp() -> Iterator[SmtpServer]:
    """A real SMTP server (aiosmtpd) for the module; its mail lands in its maildir."""
    server = SmtpServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def interop() -> Path:
    """The official interop vectors beside the project; skips when absent."""
    if not INTEROP.is_dir():
        pytest.skip(f"interop vectors not found at {INTEROP} (../shared/interop is absent)")
    return INTEROP


@pytest.fixture(scope="session")
def node_modules() -> Path:
    """tests/node with its npm dependencies installed (once); skips without node/npm."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are needed for the official atproto tools (not on PATH)")
    marker = NODE_DIR / "node_modules" / ".package-lock.json"
    lock = NODE_DIR / "package-lock.json"
    # npm writes node_modules/.package-lock.json on every install: if it is newer than the
    # lock file, the tree matches it and a reinstall would be wasted time.
    if not marker.exists() or (lock.exists() and marker.stat().st_mtime < lock.stat().st_mtime):
        cmd = [npm, "ci" if lock.exists() else "install", "--no-audit", "--no-fund"]
        try:
            res = subprocess.run(cmd, cwd=NODE_DIR, capture_output=True, text=True,
                                 timeout=NPM_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.skip(f"`{' '.join(cmd)}` in {NODE_DIR} timed out")
        if res.returncode != 0:
            pytest.skip(f"`{' '.join(cmd)}` in {NODE_DIR} failed:\n{res.stderr[-2000:]}")
    return NODE_DIR / "node_modules"


@pytest.fixture(scope="session")
def plc_url(node_modules: Path) -> Iterator[str]:
    """URL of an in-memory official PLC directory (@did-plc/server 0.0.1) on loopback."""
    port = free_port()
    # stderr to a file, not a pipe: nobody drains it while tests run, and a full pipe would
    # stall the directory.
    errlog = tempfile.TemporaryFile(mode="w+")
    # stdin stays a pipe: plc.js exits when it closes, so even a killed pytest leaks nothing.
    proc = subprocess.Popen(
        [shutil.which("node") or "node", str(NODE_DIR / "plc.js"), str(port)],
        cwd=NODE_DIR, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errlog,
        text=True, env={**os.environ, "LOG_ENABLED": "false"},
    )
    ready: list[str] = []
    got_line = threading.Event()

    def read_stdout() -> None:
        # Read on a thread: a blocking readline must not hang the wait below past its limit.
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("PLC_READY "):
                ready.append(line.split(None, 1)[1].strip())
                got_line.set()
        got_line.set()  # EOF: the process ended

    threading.Thread(target=read_stdout, daemon=True).start()
    deadline = time.monotonic() + PLC_START_TIMEOUT
    while not got_line.is_set() and time.monotonic() < deadline:
        got_line.wait(0.1)
    if not ready:
        proc.kill()
        proc.wait(timeout=10)
        errlog.seek(0)
        err = errlog.read()
        errlog.close()
        pytest.fail(f"PLC directory did not start (exit {proc.returncode}):\n{err[-2000:]}")
    try:
        yield ready[0]
    finally:
        stop_process(proc, signal.SIGTERM, 10)
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()
        errlog.close()
