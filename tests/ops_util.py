"""What the operations tests (`test_ops_*.py`, test_packaging.py) deploy besides the data
dir: the program as a wheel, nginx in front of a real `pds serve` (made from
nginx.conf.example), the systemd unit. Running `pds` itself is in harness.py.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
from harness import free_port, stop_process, wait_for

ROOT = Path(__file__).resolve().parents[1]
NGINX_EXAMPLE = ROOT / "nginx.conf.example"
UNIT_FILE = ROOT / "systemd" / "pds.service"


# --- the program as a wheel -------------------------------------------------------------------

WHEEL_TIMEOUT = 300


def build_wheel(work: Path) -> Path:
    """A wheel of this checkout, as `pip wheel /path/to/pds` makes it: from a copy of the
    checkout's top-level files and its `pds` package (a setuptools build writes build/ and
    pds.egg-info/ where it runs: the copy keeps them out of the checkout and lets two test
    runs build at once), without build isolation and with no index, so no network: this
    interpreter's setuptools and wheel build it."""
    src = work / "src"
    src.mkdir(parents=True)
    for entry in ROOT.iterdir():
        if entry.is_file():
            shutil.copy2(entry, src / entry.name)
    shutil.copytree(ROOT / "pds", src / "pds",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = work / "dist"
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                          "--no-build-isolation", "--no-index", "-w", str(out), str(src)],
                         capture_output=True, text=True, cwd=work, timeout=WHEEL_TIMEOUT)
    assert res.returncode == 0, f"pip wheel failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    wheels = sorted(out.glob("pds-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


# --- nginx ----------------------------------------------------------------------------------


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None)


def _drop_block(lines: list[str], marker: str) -> list[str]:
    """Remove the top-level `server { ... }` block that contains the line `marker` (and
    the comment lines right above it)."""
    out: list[str] = []
    i = 0
    dropped = False
    while i < len(lines):
        if lines[i].strip() == "server {":
            depth, j = 0, i
            while True:
                depth += lines[j].count("{") - lines[j].count("}")
                if depth == 0:
                    break
                j += 1
            block = lines[i:j + 1]
            if any(line.strip() == marker for line in block):
                while out and out[-1].lstrip().startswith("#"):
                    out.pop()
                i, dropped = j + 1, True
                continue
        out.append(lines[i])
        i += 1
    assert dropped, f"no server block with {marker!r} in {NGINX_EXAMPLE}"
    return out


def site_config(example: str, port: int, data_dir: Path, upstream: str,
                access_log: Path, hostname: str = "localhost") -> str:
    """The test's site config, made FROM nginx.conf.example as README ("nginx") says:

    - drop the plain-HTTP server (port 80, the redirect to HTTPS);
    - `listen 443 ssl http2;` -> `listen 127.0.0.1:<port>;`; drop `listen [::]:443 ...`
      and the `ssl_certificate*` lines: TLS becomes plain HTTP on loopback;
    - substitute the data dir, the upstream address, the access log's path and the
      hostname.
    Each substitution must hit, so a changed example fails here instead of being
    silently tested as something else.
    """
    lines = _drop_block(example.splitlines(), "listen 80;")
    out = []
    hits = {"listen443": 0, "listen6": 0, "ssl": 0}
    for line in lines:
        s = line.strip()
        if s == "listen 443 ssl http2;":
            out.append(line.replace(s, f"listen 127.0.0.1:{port};"))
            hits["listen443"] += 1
        elif s.startswith("listen [::]:443"):
            hits["listen6"] += 1
        elif s.startswith("ssl_certificate"):
            hits["ssl"] += 1
        else:
            out.append(line)
    assert hits == {"listen443": 1, "listen6": 1, "ssl": 2}, hits
    text = "\n".join(out) + "\n"
    for old, new in (("/var/lib/pds", str(data_dir)), ("127.0.0.1:2583", upstream),
                     ("/var/log/nginx/pds.access.log", str(access_log)),
                     ("pds.example.com", hostname)):
        assert old in text, f"{old!r} not in {NGINX_EXAMPLE}"
        text = text.replace(old, new)
    leftover = re.findall(r"^\s*(?:ssl\w*|listen\s.*ssl.*);", text, re.M)
    assert not leftover, f"TLS directives left in the test config: {leftover}"
    return text


def main_config(site_path: Path, work: Path) -> str:
    """A minimal top-level nginx.conf around the site config: foreground, every path in
    `work`. The access log is the example's own (its `log_format pds_requests`, which
    also records what the upstream, the app, sent)."""
    user = "user root;\n" if os.geteuid() == 0 else ""
    temps = "".join(f"    {name}_temp_path {work / name};\n"
                    for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return (
        "daemon off;\n"
        "master_process on;\n"
        "worker_processes 1;\n"
        f"{user}"
        f"pid {work / 'nginx.pid'};\n"
        f"error_log {work / 'error.log'} info;\n"
        "events { worker_connections 256; }\n"
        "http {\n"
        "    include /etc/nginx/mime.types;\n"
        "    default_type application/octet-stream;\n"
        "    access_log off;\n"  # the site's server has its own
        f"{temps}"
        f"    include {site_path};\n"
        "}\n"
    )


@dataclass
class Nginx:
    proc: subprocess.Popen
    port: int
    work: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def access_log(self) -> list[str]:
        p = self.work / "access.log"
        return p.read_text(errors="replace").splitlines() if p.exists() else []

    def error_log(self) -> str:
        p = self.work / "error.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGQUIT, 20)  # SIGQUIT: graceful


def start_nginx(work: Path, data_dir: Path, upstream: str, wait: float = 30.0,
                port: int | None = None) -> Nginx:
    """nginx (from nginx.conf.example) on a loopback port (`port`, else a free one), in
    front of `upstream`."""
    binary = nginx_binary()
    assert binary is not None
    work.mkdir(parents=True, exist_ok=True)
    port = free_port() if port is None else port
    site = work / "pds-site.conf"
    site.write_text(site_config(NGINX_EXAMPLE.read_text(), port, data_dir, upstream,
                                work / "access.log"))
    conf = work / "nginx.conf"
    conf.write_text(main_config(site, work))
    test = subprocess.run([binary, "-t", "-c", str(conf), "-p", str(work)],
                          capture_output=True, text=True, timeout=60)
    assert test.returncode == 0, f"nginx -t failed:\n{test.stderr}\n{site.read_text()}"
    out = open(work / "stderr.log", "ab")
    proc = subprocess.Popen([binary, "-c", str(conf), "-p", str(work)],
                            stdout=out, stderr=subprocess.STDOUT)
    out.close()
    nginx = Nginx(proc, port, work)

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError("nginx exited:\n" + nginx.error_log()
                                 + (work / "stderr.log").read_text(errors="replace"))
        try:
            return httpx.get(nginx.url + "/xrpc/_health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(ready, wait, "nginx to proxy /xrpc/_health", interval=0.1)
    except BaseException:
        nginx.stop()
        raise
    return nginx


def parse_ops_line(line: str) -> dict:
    """A line of nginx.conf.example's access log (`log_format pds_requests`) as a dict:
    sent = body bytes nginx sent the client, up = body bytes the app sent nginx."""
    m = re.match(r'^(\S+) (\S+) \[[^\]]+\] "(\S+) (\S+) [^"]*" (\d+) sent=(\d+) '
                 r'up=(\S+) upstatus=(\S+) ([\d.]+) "[^"]*"$', line)
    assert m, line
    rid, client, method, uri, status, sent, up, upstatus, seconds = m.groups()
    return {"rid": rid, "client": client, "method": method, "uri": uri,
            "status": int(status), "sent": int(sent), "up": up, "upstatus": upstatus,
            "seconds": float(seconds)}
