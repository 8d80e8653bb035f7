"""The production path end to end, from a built wheel (README, "Running it for real").

Build a wheel of this checkout, install it into a fresh virtualenv and, with that
virtualenv's `pds` (every command run from a directory outside the checkout, so the
source tree can't be imported by accident), do what the README's Install, Backups and
Restore sections do: init a 0750 data dir, serve it with two workers, create an account
and a post over HTTP, back it up while it serves, stop it, restore the backup into a
fresh data dir, verify that, serve it and read the post back.

How the virtualenv gets the dependencies, offline: it is created with
`--system-site-packages` and the wheel is installed into it with `--no-deps --no-index`.
The dependencies are already installed where this interpreter finds them (`pip install
-e '.[test]'`), and there may be no network; repacking installed distributions into a
wheelhouse would be fragile (compiled extensions, scripts, RECORD files). The venv's own
site-packages holds the wheel's `pds` and nothing else of ours. What that costs: the
shared site-packages may also hold an editable `pds` of some checkout (this machine's
does), whose import hook would quietly serve any module the wheel lacks. So the test
imports every module of the program with the venv's interpreter and checks that each one
comes from the venv's site-packages, and `pip check` checks that the wheel's declared
requirements are met (test_packaging.py checks they are what the code imports).
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from harness import CLI_TIMEOUT, clean_env, free_port, init_data_dir, run_pds, serving
from ops_util import ROOT, build_wheel
from server_util import Api, ok

NOTE = "app.bsky.feed.post"
# Nothing from the test run's environment may point Python at the checkout.
ENV = {"PYTHONPATH": ""}

_CHECK_MODULES = """
import importlib, importlib.util, sys, sysconfig
site = sysconfig.get_paths()["purelib"] + "/"
bad = []
for name in sys.argv[1:]:
    if name.endswith(".__main__"):  # runs the program when imported: only located
        where = importlib.util.find_spec(name).origin
    else:
        where = importlib.import_module(name).__file__
    if not (where or "").startswith(site):
        bad.append(f"{name} from {where}")
print("\\n".join(bad))
sys.exit(1 if bad else 0)
"""


def _modules() -> list[str]:
    """Every module of the program, from the checkout's tree."""
    out = []
    for path in sorted((ROOT / "pds").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return out


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    res = subprocess.run(args, capture_output=True, text=True, cwd=cwd, env=clean_env(ENV),
                         timeout=CLI_TIMEOUT)
    assert res.returncode == 0, f"{args} exited {res.returncode}:\n{res.stdout}\n{res.stderr}"
    return res


def install_fresh(tmp_path: Path, work: Path) -> list[str]:
    """A fresh virtualenv with the wheel of this checkout installed; its `pds` command."""
    wheel = build_wheel(tmp_path / "build")
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)],
         work)
    python = str(venv / "bin" / "python")
    _run([python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
          "--force-reinstall", str(wheel)], work)
    script = venv / "bin" / "pds"
    assert script.is_file() and os.access(script, os.X_OK), "the wheel installed no `pds`"
    # `pds` resolves to the venv's site-packages, module by module.
    res = subprocess.run([python, "-c", _CHECK_MODULES, *_modules()], capture_output=True,
                         text=True, cwd=work, env=clean_env(ENV), timeout=CLI_TIMEOUT)
    assert res.returncode == 0, f"not imported from the installed wheel:\n{res.stdout}" \
                                f"{res.stderr[-3000:]}"
    res = subprocess.run([python, "-m", "pip", "check"], capture_output=True, text=True,
                         cwd=work, env=clean_env(ENV), timeout=CLI_TIMEOUT)
    unmet = [ln for ln in res.stdout.splitlines() if ln.lower().startswith("pds ")]
    assert not unmet, unmet
    return [str(script)]


@pytest.mark.slow
def test_installed_wheel_serves_backs_up_restores_and_serves_again(tmp_path: Path) -> None:
    work = tmp_path / "work"   # the cwd of every command: not the checkout
    work.mkdir()
    pds = install_fresh(tmp_path, work)

    # Install: the data dir exists first (install -d -m 0750), then `pds init` fills it.
    port = free_port()
    data = work / "lib" / "pds"
    data.mkdir(parents=True)
    os.chmod(data, 0o750)
    init_data_dir(data, port, command=pds, cwd=work, env=ENV)
    with serving(data, port, command=pds, cwd=work, env=ENV, wait=60) as server, \
            Api(server) as api:
        acct = api.create_account("alice")
        post = ok(api.create_record(acct, {"text": "hello from the wheel",
                                           "createdAt": "2026-01-01T00:00:00Z"}, NOTE))

        # Backups: while it serves.
        dest = work / "backups" / "today"
        run_pds("backup", str(dest), "--data-dir", str(data), command=pds, cwd=work, env=ENV)
        assert stat.S_IMODE(dest.stat().st_mode) == 0o750
        assert stat.S_IMODE((dest / "pds.env").stat().st_mode) == 0o600

    # Restore into a fresh data dir, verify it, serve it.
    fresh = work / "lib" / "pds-restored"
    run_pds("restore", str(dest), "--data-dir", str(fresh), command=pds, cwd=work, env=ENV)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o750
    res = run_pds("verify", "--data-dir", str(fresh), command=pds, cwd=work, env=ENV)
    assert res.returncode == 0
    with serving(fresh, port, command=pds, cwd=work, env=ENV, wait=60) as restored_server, \
            Api(restored_server) as api:
        rkey = post["uri"].rsplit("/", 1)[1]
        got = ok(api.get("com.atproto.repo.getRecord", repo=acct.did, collection=NOTE,
                         rkey=rkey))
        assert got["cid"] == post["cid"] and got["value"]["text"] == "hello from the wheel"
        ok(api.post("com.atproto.server.createSession",
                    {"identifier": acct.handle, "password": acct.password}))
