"""`PDS_BIND=unix:PATH`: `pds serve --workers 2` listens on a unix socket that only its
user and group may use (0660, whatever the process's umask), and answers over it."""

from __future__ import annotations

import signal
import stat
import subprocess
from pathlib import Path

import httpx
import pytest
from harness import clean_env, init_data_dir, pds_command, stop_process, wait_for
from server_util import PASSWORD

pytestmark = pytest.mark.slow  # `pds serve` on a unix socket


def test_unix_socket_is_0660_and_answers(tmp_path: Path) -> None:
    data = tmp_path / "data"
    init_data_dir(data, "localhost")
    sock = tmp_path / "run" / "pds.sock"
    sock.parent.mkdir()
    log_path = tmp_path / "server.log"
    with open(log_path, "ab") as log:
        # The most permissive umask a caller could have: the socket's mode must not
        # depend on it.
        proc = subprocess.Popen(
            [*pds_command(), "serve", "--data-dir", str(data), "--workers", "2"],
            stdout=log, stderr=subprocess.STDOUT,
            env=clean_env({"PDS_BIND": f"unix:{sock}"}), umask=0)
    transport = httpx.HTTPTransport(uds=str(sock))
    try:
        with httpx.Client(transport=transport, base_url="http://localhost",
                          timeout=10) as client:
            def healthy() -> bool:
                assert proc.poll() is None, log_path.read_text(errors="replace")
                try:
                    return client.get("/xrpc/_health").status_code == 200
                except httpx.HTTPError:
                    return False

            wait_for(healthy, 60, "pds serve to answer on its unix socket", interval=0.1)
            st = sock.stat()
            assert stat.S_ISSOCK(st.st_mode)
            assert stat.S_IMODE(st.st_mode) == 0o660, oct(st.st_mode)
            # It serves the app (both workers share the one socket).
            for _ in range(6):
                r = client.get("/xrpc/com.atproto.server.describeServer")
                assert r.status_code == 200, r.text
                assert r.json()["did"] == "did:web:localhost"
            # Writes work, and what the workers create keeps the process's umask (027, set
            # by `pds serve`): the socket's applies to the socket alone (a directory must
            # stay traversable by the service and nginx's group).
            r = client.post("/xrpc/com.atproto.server.createAccount",
                            json={"handle": "sock.test", "email": "sock@example.com",
                                  "password": PASSWORD})
            assert r.status_code == 200, r.text
            did = r.json()["did"]
            mode = stat.S_IMODE((data / "accounts" / did).stat().st_mode)
            assert mode & 0o777 == 0o750, oct(mode)
    finally:
        stop_process(proc, signal.SIGTERM, 30)
    assert proc.returncode == 0, log_path.read_text(errors="replace")
    assert "Traceback" not in log_path.read_text(errors="replace")
