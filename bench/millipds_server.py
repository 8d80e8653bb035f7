"""millipds (github.com/DavidBuchanan314/millipds) as a third server for the benchmarks.

millipds is installed in a venv of its own (so that its dependencies cannot disturb
ours), and driven only through that venv's Python and millipds's own CLI code:

    fetch github:DavidBuchanan314/millipds (a bare git dir), then
    git --git-dir=.../repo archive HEAD | tar -x -C /work/millipds-src
    python3 -m venv /work/venvs/millipds
    SETUPTOOLS_SCM_PRETEND_VERSION=0.0.1 /work/venvs/millipds/bin/pip install /work/millipds-src

How it runs here (see bench/README.md):

- its data lives in `./data` under its working directory (`static_config.DATA_DIR`), so
  each run gets a fresh directory `<work>/millipds` as cwd;
- `millipds init localhost:PORT --dev` (did:web:localhost%3APORT, http:// URLs), then
  `millipds config` points its AppView at `http://appview.invalid` so that nothing it
  proxies (app.bsky.*, a getRecord miss) can leave the machine: no workload asks for
  either;
- `millipds run --listen_host=127.0.0.1 --listen_port=PORT`: one process, one asyncio
  loop (aiohttp), one SQLite connection (apsw, the default rollback journal), every
  request handled on that loop (writes too: nothing runs in threads);
- it has no createAccount endpoint: accounts are made the way its docs say, with
  `millipds account create <did> <handle> --unsafe_password=PW --signing_key=PEM`, all in
  one Python process (the CLI's `main()` called once per account, so 17 accounts don't
  pay 17 interpreter starts and Argon2 set-ups), with a fresh secp256k1 key each
  (`crypto.keygen_k256`, as `millipds util keygen --k256` makes; the CLI's default is
  P-256, but atproto repos, ours and the reference's, sign with k256). The DIDs are
  did:web under `.test`, never resolved by anything in the benchmark; tokens come from
  createSession over HTTP.
- its `__main__` sets logging to DEBUG (an access-log line and a CORS debug line per
  request, to stderr). Ours and the reference run with their logs off, so by default the
  launcher calls `logging.disable(logging.INFO)` before `main()` (warnings and errors
  still reach the log file); `quiet=False` keeps millipds's own logging.

Only the standard library here: http_bench.py wraps this in its own Server.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

APPVIEW_PFX = "http://appview.invalid"
APPVIEW_DID = "did:web:appview.invalid"

# `python -c` gives sys.argv = ["-c", *args]: docopt in millipds's main() reads argv[1:].
_RUN = """
import logging, os, sys
from millipds.__main__ import main
if os.environ.get("MILLIPDS_BENCH_QUIET") == "1":
    logging.disable(logging.INFO)  # DEBUG and INFO (the access log) off; warnings stay
main()
"""

# Reads [{"did", "handle", "password", "key"}] on stdin; the CLI's own code per account.
_ACCOUNTS = """
import json, logging, sys
from millipds import crypto
from millipds.__main__ import main
logging.disable(logging.INFO)
for a in json.load(sys.stdin):
    with open(a["key"], "w") as f:
        f.write(crypto.privkey_to_pem(crypto.keygen_k256()))
    sys.argv = ["millipds", "account", "create", a["did"], a["handle"],
                "--unsafe_password=" + a["password"], "--signing_key=" + a["key"]]
    main()
"""


def venv_python(venv: Path) -> Path:
    py = venv / "bin" / "python"
    if not py.exists():
        raise SystemExit(f"--millipds {venv}: no {py} (expected a venv with millipds "
                         "installed; see bench/README.md)")
    return py


def _env() -> dict[str, str]:
    """Our environment less what could point millipds's Python at our code or config."""
    return {k: v for k, v in os.environ.items()
            if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")
            and not k.startswith("PDS_")}


def version(venv: Path) -> str:
    out = subprocess.run(
        [str(venv_python(venv)), "-c",
         "import importlib.metadata as m, platform; "
         "print(m.version('millipds'), m.version('aiohttp'), platform.python_version())"],
        capture_output=True, text=True, env=_env(), timeout=60)
    if out.returncode != 0:
        raise SystemExit(f"millipds is not importable from {venv}:\n{out.stderr[-2000:]}")
    mp, aiohttp, py = out.stdout.split()
    return f"millipds {mp} (aiohttp {aiohttp}, Python {py})"


def _cli(venv: Path, cwd: Path, *args: str) -> None:
    res = subprocess.run([str(venv_python(venv)), "-c", _RUN, *args], cwd=cwd, env=_env(),
                         capture_output=True, text=True, timeout=120)
    # millipds's CLI prints its errors and returns 0, so check the output too.
    if res.returncode != 0 or "Already initialised" in res.stdout or "uninitialised" in res.stdout:
        raise RuntimeError(f"millipds {' '.join(args)} failed:\n{res.stdout[-2000:]}"
                           f"{res.stderr[-2000:]}")


@dataclass
class Millipds:
    proc: subprocess.Popen
    url: str
    venv: Path
    cwd: Path
    info: str

    def create_accounts(self, handles: list[str], password: str) -> list[tuple[str, str]]:
        """`millipds account create` for each handle (did:web:<handle>); [(handle, did)]."""
        keys = self.cwd / "keys"
        keys.mkdir(exist_ok=True)
        made = [(h, f"did:web:{h}") for h in handles]
        spec = [{"did": d, "handle": h, "password": password, "key": str(keys / f"{h}.pem")}
                for h, d in made]
        res = subprocess.run([str(venv_python(self.venv)), "-c", _ACCOUNTS], cwd=self.cwd,
                             env=_env(), input=json.dumps(spec), capture_output=True,
                             text=True, timeout=600)
        if res.returncode != 0:
            raise RuntimeError(f"millipds account create failed:\n{res.stderr[-3000:]}")
        return made


def start(venv: Path, work: Path, port: int, log_path: Path, quiet: bool = True,
          preexec_fn: Callable[[], None] | None = None) -> Millipds:
    """Init a fresh millipds in `<work>/millipds` and start it on 127.0.0.1:port (it is
    not waited for: the caller polls /xrpc/_health)."""
    info = version(venv)
    cwd = work / "millipds"
    cwd.mkdir(parents=True)
    _cli(venv, cwd, "init", f"localhost:{port}", "--dev")
    _cli(venv, cwd, "config", f"--bsky_appview_pfx={APPVIEW_PFX}",
         f"--bsky_appview_did={APPVIEW_DID}")
    env = _env()
    if quiet:
        env["MILLIPDS_BENCH_QUIET"] = "1"
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            [str(venv_python(venv)), "-c", _RUN, "run", "--listen_host=127.0.0.1",
             f"--listen_port={port}"],
            cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, preexec_fn=preexec_fn)
    note = "1 process, asyncio + apsw" + ("; its logging off below WARNING" if quiet
                                          else "; its DEBUG logging on")
    return Millipds(proc, f"http://127.0.0.1:{port}", venv, cwd, f"{info}, {note}")
