"""Running a real `pds serve` subprocess for integration tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from pds.config import parse_env_file


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    data_dir: Path
    proc: subprocess.Popen
    env: dict
    log_path: Path

    @property
    def admin_password(self) -> str:
        return parse_env_file(self.data_dir / "pds.env")["PDS_ADMIN_PASSWORD"]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def init_data_dir(data_dir: Path, port: int, plc_url: str | None = None,
                  did_method: str = "plc", handle_domains: str = ".test") -> None:
    args = [sys.executable, "-m", "pds.cli", "init", "--data-dir", str(data_dir),
            "--hostname", f"localhost:{port}", "--dev", "--handle-domains", handle_domains,
            "--did-method", did_method]
    if plc_url:
        args += ["--plc-url", plc_url]
    subprocess.run(args, check=True, capture_output=True)


def start_server(data_dir: Path, port: int, workers: int = 2, env: dict | None = None,
                 wait: float = 30.0, command: list[str] | None = None,
                 cwd: Path | None = None) -> Server:
    """Start `pds serve` and wait until /xrpc/_health answers. `command` is the `pds`
    program to run (default: this interpreter's `python -m pds.cli`), `cwd` its working
    directory."""
    full_env = {**os.environ, "PDS_RATE_LIMITS": "false", "PDS_ACCESS_LOG": "0",
                **(env or {})}
    log_path = data_dir.parent / f"server-{port}.log"
    log = open(log_path, "ab")
    proc = subprocess.Popen(
        [*(command or [sys.executable, "-m", "pds.cli"]), "serve", "--data-dir",
         str(data_dir), "--bind", f"127.0.0.1:{port}", "--workers", str(workers)],
        stdout=log, stderr=subprocess.STDOUT, env=full_env, cwd=cwd)
    server = Server(f"http://127.0.0.1:{port}", data_dir, proc, full_env, log_path)
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
