"""Running the program for the tests: free ports, waiting for conditions, child processes,
the `pds` command line, and `pds serve` on a data dir.

One way to get a served data dir, in three sizes:

- `start_server(data)`: start `pds serve` on an existing data dir; the caller stops it;
- `serving(data)`: the same for a `with` block, stopped at its end, its log checked;
- `running_server(base)`: a fresh data dir (`pds init`, did:web accounts, `.test`
  handles) under `base`, served for a `with` block. The `new_server` fixture (conftest.py)
  makes these for one test, `server_util.api_fixture` one for a whole module.

Every wait is a wait-for-condition with a generous limit: the machine is small and other
test runs share it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from pds.config import parse_env_file

CLI_TIMEOUT = 180  # seconds for one `pds` command (a backup of a small dir takes ~1 s)


# --- ports, waiting, processes ----------------------------------------------------------------


def free_port() -> int:
    """A TCP port free on loopback right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(cond: Callable[[], object], timeout: float, what: str,
             interval: float = 0.05) -> object:
    """Poll `cond` until it is truthy (and return it); fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM,
                 timeout: float = 15) -> None:
    """Send `sig` to `proc` if it still runs and wait for it; SIGKILL after `timeout` s."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


def _proc_stat(pid: int | str) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state, ppid, ...)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def children(pid: int) -> list[int]:
    """Live (non-zombie) child processes of `pid`, from /proc: a gunicorn master's workers."""
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            fields = _proc_stat(name)
            if fields is not None and int(fields[1]) == pid and fields[0] != "Z":
                out.append(int(name))
    return out


def gone(pid: int) -> bool:
    """`pid` has exited (it is absent, or a zombie)."""
    fields = _proc_stat(pid)
    return fields is None or fields[0] == "Z"


def kill9(server: Server) -> None:
    """SIGKILL a `pds serve`'s gunicorn master and its workers at once: no clean shutdown
    anywhere; returns when all are gone."""
    pids = [server.proc.pid, *children(server.proc.pid)]
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    server.proc.wait(10)
    wait_for(lambda: all(gone(p) for p in pids), 10, "the killed workers to go")


def kill_script_after(script: str, args: list[str], delay: float) -> None:
    """Run the Python source `script` with `args` (the checkout on its path), wait for it
    to print "writing", then SIGKILL it `delay` seconds later and reap it."""
    src = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE,
                            text=True, env=env)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "writing"
        time.sleep(delay)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        if proc.stdout is not None:
            proc.stdout.close()


class Background:
    """Threads running beside a test (writers, storms) until `stop()`; what one raises is
    kept, and `stop()` and `join()` fail with it."""

    def __init__(self) -> None:
        self.stop_event = threading.Event()
        self.errors: list[BaseException] = []
        self.threads: list[threading.Thread] = []

    def spawn(self, target: Callable[..., object], *args: object) -> None:
        def run() -> None:
            try:
                target(*args)
            except BaseException as e:  # noqa: BLE001 - reported by stop() and join()
                self.errors.append(e)

        thread = threading.Thread(target=run, daemon=True)
        self.threads.append(thread)
        thread.start()

    def join(self, timeout: float = 60) -> None:
        """Until every thread has ended; fail if one failed or runs on after `timeout` s."""
        for t in self.threads:
            t.join(timeout)
        assert not any(t.is_alive() for t in self.threads), "a thread hangs"
        assert not self.errors, self.errors

    def stop(self, timeout: float = 60) -> None:
        self.stop_event.set()
        self.join(timeout)


# --- the `pds` command line -------------------------------------------------------------------


def pds_command() -> list[str]:
    """The installed `pds` console script of this interpreter (else `python -m pds.cli`)."""
    script = Path(sys.executable).parent / "pds"
    if script.exists() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "pds.cli"]


def clean_env(extra: dict | None = None) -> dict:
    """The environment for a `pds` subprocess: no stray PDS_* settings of the caller."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PDS_")}
    # Every JSON answer is checked against its lexicon: a shape that drifts fails (500).
    return {**env, "PDS_RATE_LIMITS": "false", "PDS_VALIDATE_OUTPUT": "true", **(extra or {})}


def run_pds(*args: str, env: dict | None = None, check: bool = True,
            timeout: float = CLI_TIMEOUT, command: list[str] | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run `pds ARGS...` to completion; with `check`, fail (showing its output) unless 0.
    `command` is the `pds` program (default: `pds_command()`), `cwd` its working dir."""
    res = subprocess.run([*(command or pds_command()), *args], capture_output=True,
                         text=True, env=clean_env(env), timeout=timeout, cwd=cwd)
    if check:
        assert res.returncode == 0, (
            f"pds {' '.join(args)} exited {res.returncode}\n"
            f"stdout:\n{res.stdout[-3000:]}\nstderr:\n{res.stderr[-3000:]}")
    return res


def init_data_dir(data: Path, host: int | str, did_method: str = "web",
                  plc_url: str | None = None, handle_domains: str = ".test",
                  **run: object) -> None:
    """`pds init` a development data dir for hostname `host` (a port: `localhost:<port>`).
    `run`: more arguments of `run_pds` (`command`, `cwd`, `env`)."""
    hostname = f"localhost:{host}" if isinstance(host, int) else host
    args = ["init", "--data-dir", str(data), "--hostname", hostname, "--dev",
            "--handle-domains", handle_domains, "--did-method", did_method]
    if plc_url:
        args += ["--plc-url", plc_url]
    run_pds(*args, **run)


# --- `pds serve` ------------------------------------------------------------------------------


@dataclass
class Server:
    url: str
    data_dir: Path
    proc: subprocess.Popen
    env: dict
    log_path: Path
    err_path: Path | None = None  # stderr, when not in log_path

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    @property
    def admin_password(self) -> str:
        return parse_env_file(self.data_dir / "pds.env")["PDS_ADMIN_PASSWORD"]

    def log(self) -> str:
        """What it wrote (stdout and stderr)."""
        out = self.log_path.read_text(errors="replace")
        return out + (self.err_path.read_text(errors="replace") if self.err_path else "")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        stop_process(self.proc, sig)


def start_server(data_dir: Path, port: int | None = None, workers: int = 2,
                 env: dict | None = None, wait: float = 30.0,
                 command: list[str] | None = None, cwd: Path | None = None,
                 err_path: Path | None = None) -> Server:
    """Start `pds serve` on `data_dir` (on `port`, else a free one) and wait until
    /xrpc/_health answers. `command` is the `pds` program to run (default: `pds_command()`),
    `cwd` its working directory. Its output goes to `server-<port>.log` beside the data
    dir, its stderr there too unless `err_path`."""
    port = free_port() if port is None else port
    full_env = clean_env({"PDS_ACCESS_LOG": "0", **(env or {})})
    log_path = data_dir.parent / f"server-{port}.log"
    with open(log_path, "ab") as log, open(err_path or os.devnull, "ab") as err:
        proc = subprocess.Popen(
            [*(command or pds_command()), "serve", "--data-dir", str(data_dir), "--bind",
             f"127.0.0.1:{port}", "--workers", str(workers)],
            stdout=log, stderr=err if err_path else subprocess.STDOUT, env=full_env, cwd=cwd)
    server = Server(f"http://127.0.0.1:{port}", data_dir, proc, full_env, log_path, err_path)
    deadline = time.time() + wait
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("pds serve exited:\n" + server.log())
        try:
            if httpx.get(server.url + "/xrpc/_health", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    server.stop()
    raise RuntimeError("pds serve did not become ready:\n" + server.log())


@contextlib.contextmanager
def serving(data_dir: Path, port: int | None = None, *, forbid: str | None = "Traceback",
            stop_signal: int = signal.SIGTERM, **start: object) -> Iterator[Server]:
    """`start_server(data_dir, port, **start)` for a `with` block, stopped (`stop_signal`)
    at its end; then, unless the block failed, `forbid` must not be in the server's log:
    by default no traceback, so no request failed inside the app (logged as "unhandled
    error" with its traceback, and answered with a bare 500), even one no test looked
    at."""
    server = start_server(data_dir, port, **start)
    try:
        yield server
    finally:
        server.stop(stop_signal)
    log = server.log()
    assert forbid is None or forbid not in log, log[-4000:]


@contextlib.contextmanager
def running_server(base: Path, env: dict | None = None, workers: int = 2, *,
                   name: str = "data", did_method: str = "web", plc_url: str | None = None,
                   forbid: str | None = "Traceback", **start: object) -> Iterator[Server]:
    """A fresh data dir `base/name` (`.test` handles; did:web accounts, documents served by
    the PDS itself, unless `did_method`) served for a `with` block (`serving`)."""
    port = free_port()
    data = base / name
    init_data_dir(data, port, did_method=did_method, plc_url=plc_url)
    with serving(data, port, workers=workers, env=env, forbid=forbid, **start) as server:
        # _health answers once one worker listens; let the others come up too, so requests
        # really spread over all of them.
        deadline = time.monotonic() + 20
        while server.log().count("ASGI server listening") < workers and \
                time.monotonic() < deadline:
            time.sleep(0.05)
        yield server
