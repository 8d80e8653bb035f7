"""The `pds` command line as an operator meets it: mistakes are refused with one line that
says what to do (never a traceback), every command explains itself with `--help`, and
the commands that destroy or take long behave as a person expects (asking first, showing
progress on a terminal and nothing in a script)."""

from __future__ import annotations

import os
import pty
import select
import shutil
import subprocess
import time
from pathlib import Path

import click
import pytest
from harness import clean_env, free_port, init_data_dir, pds_command, run_pds, running_server
from server_util import Api

from pds import __version__
from pds.cli import cli
from pds.cli.common import new_password

pytestmark = pytest.mark.slow  # the `pds` command line, process by process


def no_traceback(res: subprocess.CompletedProcess) -> str:
    """The one error line of a failed command (exit 1, nothing but `error: ...`)."""
    assert res.returncode == 1, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr + res.stdout, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    return lines[0]


def run_in_pty(args: list[str], answer: bytes | None = None, timeout: float = 120) -> str:
    """Run `pds ARGS` with a terminal as stdin, stdout and stderr (what an operator at a
    shell has); type `answer` once it prompts; return everything it showed."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen([*pds_command(), *args], stdin=follower, stdout=follower,
                            stderr=follower, env=clean_env(), close_fds=True)
    os.close(follower)
    shown, answered, deadline = b"", answer is None, time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal closed: the command ended
                break
            if not chunk:
                break
            shown += chunk
            if not answered and b"[y/N]" in shown:
                os.write(leader, answer or b"")
                answered = True
        elif proc.poll() is not None:
            break
    proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    os.close(leader)
    return shown.decode(errors="replace")


# --- init: bad settings refused before anything is written ------------------------------


@pytest.mark.parametrize("hostname, words", [
    ("https://pds.example.com/", "is a URL"),
    ("pds.example.com/", "is a URL"),
    ("pds.example.com:8443", "carries a port"),
    ("PDS.example.com", "capital letters"),
    ("pds..example.com", "not a host name"),
    ("pds.example.com:99999", "bad port"),
])
def test_init_refuses_a_bad_hostname_and_writes_nothing(tmp_path: Path, hostname: str,
                                                        words: str) -> None:
    data = tmp_path / "data"
    res = run_pds("init", "--data-dir", str(data), "--hostname", hostname, check=False)
    line = no_traceback(res)
    assert "--hostname" in line and words in line, line
    assert not data.exists()


def test_init_refuses_bad_urls_and_domains(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for args, words in ((["--plc-url", "ftp://plc"], "--plc-url"),
                        (["--plc-url", "plc.example"], "--plc-url"),
                        (["--handle-domains", "not a domain"], "--handle-domains")):
        res = run_pds("init", "--data-dir", str(data), "--hostname", "pds.example.com",
                      *args, check=False)
        assert words in no_traceback(res)
        assert not data.exists()


def test_init_goes_on_over_an_interrupted_init_but_not_over_other_files(
        tmp_path: Path) -> None:
    # An init that died before its last step (pds.env) left directories and FORMAT.
    data = tmp_path / "data"
    (data / "accounts").mkdir(parents=True)
    (data / "seq").mkdir()
    (data / "FORMAT").write_text("1\n")
    run_pds("init", "--data-dir", str(data), "--hostname", "pds.example.com")
    assert (data / "pds.env").stat().st_mode & 0o777 == 0o600
    # ...and a second init is refused, as is a directory holding something else.
    assert "already holds a PDS" in no_traceback(
        run_pds("init", "--data-dir", str(data), check=False))
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert "not empty" in no_traceback(run_pds("init", "--data-dir", str(other), check=False))
    assert sorted(os.listdir(other)) == ["notes.txt"]


def test_init_takes_the_checkouts_own_data_dir(tmp_path: Path) -> None:
    """The quick start runs `pds init` on the default ./data, which in a checkout holds
    the repo's data/README.md: init goes on and leaves that file alone."""
    data = tmp_path / "data"
    shutil.copytree(Path(__file__).resolve().parents[1] / "data", data)
    run_pds("init", "--data-dir", str(data), "--dev")
    assert (data / "pds.env").exists() and (data / "README.md").exists()
    (data / "README.md").unlink()  # the checkout's, not the program's (end-of-run check)


def test_init_makes_a_data_dir_nobody_else_reads(tmp_path: Path) -> None:
    data = tmp_path / "data"
    run_pds("init", "--data-dir", str(data), "--hostname", "pds.example.com")
    for path in [data, *data.rglob("*")]:
        assert path.stat().st_mode & 0o007 == 0, f"{path} is readable by others"


# --- settings read by every command ---------------------------------------------------


def test_bad_settings_stop_every_command_with_the_variable_named(tmp_path: Path) -> None:
    data = tmp_path / "data"
    init_data_dir(data, "localhost:2583")
    for env, words in (({"PDS_WORKERS": "many"}, "PDS_WORKERS"),
                       ({"PDS_INVITE_REQUIRED": "maybe"}, "PDS_INVITE_REQUIRED"),
                       ({"PDS_BLOB_LIMIT": "-5"}, "PDS_BLOB_LIMIT"),
                       ({"PDS_DID_METHOD": "key"}, "PDS_DID_METHOD")):
        for cmd in (["serve"], ["account", "list"]):
            line = no_traceback(run_pds(*cmd, "--data-dir", str(data), env=env, check=False))
            assert words in line and "in the environment" in line, line
    # A bad value in pds.env itself is blamed on pds.env.
    with open(data / "pds.env", "a") as f:
        f.write("PDS_BIND=nowhere\n")
    line = no_traceback(run_pds("serve", "--data-dir", str(data), check=False))
    assert "PDS_BIND" in line and "pds.env" in line, line


def test_serve_warns_when_it_listens_on_another_port_than_the_hostname_names(
        tmp_path: Path) -> None:
    data = tmp_path / "data"
    named, other = free_port(), free_port()
    init_data_dir(data, f"localhost:{named}")
    proc = subprocess.Popen([*pds_command(), "serve", "--data-dir", str(data), "--bind",
                             f"127.0.0.1:{other}", "--workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=clean_env(), text=True)
    try:
        first = proc.stderr.readline() if proc.stderr else ""
    finally:
        proc.terminate()
        proc.wait(30)
    assert first.startswith("warning: PDS_HOSTNAME is localhost:") and str(other) in first


def test_serve_refuses_a_bad_bind(tmp_path: Path) -> None:
    data = tmp_path / "data"
    init_data_dir(data, "localhost:2583")
    line = no_traceback(run_pds("serve", "--data-dir", str(data), "--bind", "localhost",
                                check=False))
    assert "--bind" in line


def test_commands_on_a_missing_data_dir_say_so(tmp_path: Path) -> None:
    for cmd in (["serve"], ["verify"], ["account", "list"], ["invite", "create"],
                ["backup", str(tmp_path / "b")]):
        line = no_traceback(run_pds(*cmd, "--data-dir", str(tmp_path / "none"), check=False))
        assert "no PDS data dir" in line, (cmd, line)


def test_commands_refuse_a_data_dir_of_a_newer_format(tmp_path: Path) -> None:
    data = tmp_path / "data"
    init_data_dir(data, "localhost:2583")
    (data / "FORMAT").write_text("999\n")
    for cmd in (["verify"], ["account", "list"], ["backup", str(tmp_path / "b")],
                ["invite", "create"]):
        line = no_traceback(run_pds(*cmd, "--data-dir", str(data), check=False))
        assert "newer than this pds understands" in line, (cmd, line)
    assert not (tmp_path / "b").exists()


# --- help, version -----------------------------------------------------------------------


def _leaf_commands(group: click.Group, prefix: tuple[str, ...] = ()):
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from _leaf_commands(command, (*prefix, name))
        else:
            yield (*prefix, name), command


def test_every_command_and_option_has_help() -> None:
    leaves = list(_leaf_commands(cli))
    assert len(leaves) >= 15
    for path, command in leaves:
        assert command.help, f"pds {' '.join(path)} has no description"
        for param in command.params:
            if isinstance(param, click.Option):
                assert param.help, f"pds {' '.join(path)} {param.opts[0]} has no help"
        res = run_pds(*path, "--help")
        assert res.stdout.startswith(f"Usage: pds {' '.join(path)}"), res.stdout
        for param in command.params:
            if isinstance(param, click.Option):
                assert param.opts[0] in res.stdout, (path, param.opts[0])
        # One convention: every command names its data dir with --data-dir.
        assert any(p.name == "data_dir" for p in command.params), path
        assert "--data-dir" in res.stdout


def test_version() -> None:
    assert run_pds("--version").stdout.strip() == f"pds, version {__version__}"


def test_generated_passwords_never_look_like_options() -> None:
    for _ in range(2000):
        p = new_password()
        assert len(p) == 20 and p.isalnum(), p


# --- accounts and invites ------------------------------------------------------------------


def test_invites_list_and_disable(tmp_path: Path) -> None:
    with running_server(tmp_path, env={"PDS_INVITE_REQUIRED": "true"}) as server:
        dd = ["--data-dir", str(server.data_dir)]
        codes = run_pds("invite", "create", "--count", "2", "--uses", "3", *dd).stdout.split()
        listed = run_pds("invite", "list", *dd).stdout.splitlines()
        assert sorted(ln.split("\t")[0] for ln in listed) == sorted(codes)
        assert all(ln.split("\t")[1:4] == ["3", "0", "enabled"] for ln in listed), listed
        run_pds("invite", "disable", codes[0], *dd)
        assert [ln.split("\t")[0] for ln in run_pds("invite", "list", *dd)
                .stdout.splitlines()] == [codes[1]]
        full = run_pds("invite", "list", "--all", *dd).stdout
        assert f"{codes[0]}\t3\t0\tdisabled" in full
        assert "no such invite code" in no_traceback(
            run_pds("invite", "disable", "nope-123", *dd, check=False))
        api = Api(server)
        try:
            refused = api.post("com.atproto.server.createAccount", {
                "handle": "ivy.test", "email": "ivy@example.com", "password": "a long one 1",
                "inviteCode": codes[0]})
            assert refused.status_code == 400, refused.text
            assert api.create_account("ivan", inviteCode=codes[1]).did
        finally:
            api.close()


def test_account_delete_asks_first(tmp_path: Path) -> None:
    with running_server(tmp_path) as server:
        dd = ["--data-dir", str(server.data_dir)]
        api = Api(server)
        try:
            acct = api.create_account("dora")
        finally:
            api.close()
        # In a script (no terminal), without --yes: refused, nothing deleted.
        line = no_traceback(run_pds("account", "delete", acct.handle, *dd, check=False))
        assert "--yes" in line
        assert (server.data_dir / "accounts" / acct.did).is_dir()
        # At a terminal, answering no: nothing deleted.
        shown = run_in_pty(["account", "delete", acct.handle, *dd], answer=b"n\n")
        assert "This cannot be undone [y/N]" in shown and "aborted" in shown, shown
        assert (server.data_dir / "accounts" / acct.did).is_dir()
        # Answering yes deletes it.
        run_in_pty(["account", "delete", acct.handle, *dd], answer=b"y\n")
        assert not (server.data_dir / "accounts" / acct.did).exists()


def test_passwords_that_start_with_a_dash_are_taken(tmp_path: Path) -> None:
    with running_server(tmp_path) as server:
        api = Api(server)
        try:
            acct = api.create_account("dash")
            run_pds("account", "reset-password", acct.handle, "--password", "-starts-with-dash",
                    "--data-dir", str(server.data_dir))
            ok = api.post("com.atproto.server.createSession",
                          {"identifier": acct.handle, "password": "-starts-with-dash"})
            assert ok.status_code == 200, ok.text
        finally:
            api.close()


# --- verify: progress on a terminal, quiet in a script, grammar ----------------------------


def test_verify_shows_progress_only_on_a_terminal(tmp_path: Path) -> None:
    with running_server(tmp_path) as server:
        api = Api(server)
        try:
            acct = api.create_account("vic")
            for i in range(30):
                record = api.create_record(acct, {"text": f"n{i}"}, "com.example.note")
            record_cid = record.json()["cid"]
        finally:
            api.close()
    data = server.data_dir
    piped = run_pds("verify", "--data-dir", str(data))
    assert "\r" not in piped.stdout + piped.stderr and piped.stderr == ""
    assert piped.stdout.startswith("1 account, ") and piped.stdout.strip().endswith(": OK")
    shown = run_in_pty(["verify", "--data-dir", str(data)])
    assert "\r\x1b[K" in shown, repr(shown[:500])
    # One missing record block: "1 problem", not "1 problems".
    victim = data / "accounts" / acct.did / "blocks" / record_cid[-2:] / record_cid
    victim.unlink()
    res = run_pds("verify", "--data-dir", str(data), check=False)
    assert res.returncode == 1 and res.stdout.strip().endswith(": 1 problem"), res.stdout
