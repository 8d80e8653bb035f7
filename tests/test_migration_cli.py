"""`pds account migrate-in`, end to end: two `pds serve --workers 2` (A: handles `.a.test`;
B: `.b.test`, invites required) on one local official PLC directory, mailing through a real
SMTP server (aiosmtpd). An account on A with posts, image posts, a profile with an avatar,
a follow and preferences moves to B with the command run against B's data dir, the way an
operator runs it: the emailed codes (A's sign-in code, then the PLC confirmation) are
typed into its prompts as they arrive in the mailbox.

- the dry run says what it would do and changes nothing (B's data dir, the PLC document);
- a wrong old password is a plain error, and nothing is made;
- the migration is killed (SIGKILL) in the middle of the blob copy, then run again, and
  ends as one run would: the PLC document names B, `@atproto/repo` verifies the repo on
  B, every record and blob of A is on B, A refuses writes and B takes them; a run that
  finds the account active on B imports nothing over it;
- a PLC operation A signed but B never took (B went down) is submitted by the next run,
  without another emailed code;
- this PDS not running, and an expired access token mid-run (refreshed).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import httpx
import pytest
from harness import (
    clean_env,
    free_port,
    init_data_dir,
    pds_command,
    serving,
    start_server,
    stop_process,
    wait_for,
)
from mail_util import SmtpServer, token_of
from server_util import Api, diff_snapshots, ok, snapshot

from pds.cli.migrate_http import XrpcFailure

pytestmark = pytest.mark.slow  # two servers, a PLC directory, SMTP, node

NODE_DIR = Path(__file__).resolve().parent / "node"
OLD_PASSWORD = "old password 1"
NEW_PASSWORD = "new password 2"
EMAIL = "alice@example.com"
IMAGES = 10  # image posts: enough blobs that the copy can be caught half-way
COMMAND_TIMEOUT = 300


@pytest.fixture(scope="module")
def world(tmp_path_factory, plc_url: str, smtp: SmtpServer) -> Iterator[dict[str, Any]]:
    """A and B serving, and alice's account on A."""
    with contextlib.ExitStack() as stack:
        apis = []
        for name, domains, extra in (("a", ".a.test", {}),
                                     ("b", ".b.test", {"PDS_INVITE_REQUIRED": "true"})):
            data, port = tmp_path_factory.mktemp("pds-" + name) / "data", free_port()
            init_data_dir(data, port, plc_url=plc_url, did_method="plc", handle_domains=domains)
            env = {"PDS_EMAIL_SMTP_URL": smtp.url, **extra}
            server = stack.enter_context(serving(data, port, env=env))
            apis.append(stack.enter_context(Api(server)))
        api_a, api_b = apis
        yield {"a": api_a, "b": api_b, "plc": plc_url, "alice": _seed(api_a)}
        api_b.server.stop()  # a test may have restarted B: this is the one running now


def _png(i: int, size: int) -> bytes:
    return b"\x89PNG\r\n\x1a\n" + os.urandom(size) + i.to_bytes(4, "big")


def _seed(api: Api) -> dict[str, Any]:
    """alice on A: posts, image posts, a profile with an avatar, a follow, preferences."""
    s = ok(api.post("com.atproto.server.createAccount", {
        "handle": "alice.a.test", "email": EMAIL, "password": OLD_PASSWORD}))
    did, tok = s["did"], s["accessJwt"]

    def put(collection: str, record: dict, rkey: str | None = None) -> None:
        body = {"repo": did, "collection": collection, "record": {"$type": collection,
                                                                  **record}}
        ok(api.post("com.atproto.repo." + ("putRecord" if rkey else "createRecord"),
                    {**body, "rkey": rkey} if rkey else body, token=tok))

    def upload(data: bytes) -> dict:
        return ok(api.post("com.atproto.repo.uploadBlob", token=tok, content=data,
                           headers={"Content-Type": "image/png"}))["blob"]

    now = "2026-01-01T00:00:00.000Z"
    for i in range(5):
        put("app.bsky.feed.post", {"text": f"post {i}", "createdAt": now})
    for i in range(IMAGES):
        put("app.bsky.feed.post", {"text": f"image {i}", "createdAt": now, "embed": {
            "$type": "app.bsky.embed.images",
            "images": [{"alt": f"picture {i}", "image": upload(_png(i, 400_000))}]}})
    put("app.bsky.actor.profile", {"displayName": "Alice", "avatar": upload(_png(99, 5000))},
        rkey="self")
    put("app.bsky.graph.follow", {"subject": "did:plc:ewvi7nxzyoun6zhxrhs64oiz",
                                  "createdAt": now})
    ok(api.post("app.bsky.actor.putPreferences", {"preferences": [
        {"$type": "app.bsky.actor.defs#adultContentPref", "enabled": True},
        {"$type": "app.bsky.actor.defs#savedFeedsPrefV2", "items": []}]}, token=tok))
    return {"did": did, "access": tok, "handle": "alice.a.test"}


def _migrate(world: dict, *args: str, password: str = OLD_PASSWORD, out: IO[str],
             stdin: int | None = None, who: str = "alice.a.test",
             direct: bool = True) -> subprocess.Popen:
    """`pds account migrate-in --from WHO ...` against B, in the background. `direct`:
    B's PDS_BIND names where it listens, so the command talks to it there (else at its
    public URL, which is also B, at localhost)."""
    env = clean_env({"PDS_MIGRATE_OLD_PASSWORD": password,
                     "PDS_MIGRATE_NEW_PASSWORD": NEW_PASSWORD,
                     **({"PDS_BIND": f"127.0.0.1:{world['b'].server.port}"} if direct
                        else {})})
    return subprocess.Popen(
        [*pds_command(), "account", "migrate-in", "--from", who, "--old-pds",
         world["a"].server.url, "--data-dir", str(world["b"].server.data_dir), *args],
        stdin=stdin if stdin is not None else subprocess.DEVNULL, stdout=out,
        stderr=subprocess.STDOUT, text=True, env=env)


def _finish(proc: subprocess.Popen, out: IO[str]) -> str:
    proc.wait(COMMAND_TIMEOUT)
    out.seek(0)
    return out.read()


class CodeTyper:
    """Types each code the SMTP server receives for `address` (from now on) into the
    command's prompts, as an operator reading the mailbox would."""

    def __init__(self, smtp: SmtpServer, address: str, proc: subprocess.Popen) -> None:
        self.smtp, self.address, self.proc = smtp, address, proc
        self.seen = len(smtp.inbox.to(address))
        self.typed: list[str] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while self.proc.poll() is None:
            mails = self.smtp.inbox.to(self.address)
            for msg in mails[self.seen:]:
                self.typed.append(str(msg["Subject"]))
                assert self.proc.stdin is not None
                with contextlib.suppress(OSError):
                    self.proc.stdin.write(token_of(msg) + "\n")
                    self.proc.stdin.flush()
            self.seen = len(mails)
            time.sleep(0.05)


def _plc_data(world: dict, did: str | None = None) -> dict:
    """The PLC directory's data of `did` (alice's by default)."""
    return httpx.get(f"{world['plc']}/{did or world['alice']['did']}/data", timeout=30).json()


def _blob_files(data: Path, did: str) -> list[str]:
    root = data / "accounts" / did / "blobs"
    if not root.is_dir():
        return []
    return [p.name for p in root.glob("*/*") if not p.name.endswith(".json")]


def test_dry_run_says_what_it_would_do_and_changes_nothing(world, tmp_path) -> None:
    b = world["b"].server.data_dir
    before, plc_before = snapshot(b), _plc_data(world)
    with open(tmp_path / "out", "w+") as out:
        did = world["alice"]["did"]
        text = _finish(_migrate(world, "--dry-run", out=out, who=did, direct=False), out)
    assert "error" not in text and "Traceback" not in text, text
    assert f"to:              http://localhost:{world['b'].server.port} (this PDS" in text
    for expected in (did, f"http://localhost:{world['a'].server.port}", "alice.b.test", EMAIL,
                     f"{5 + IMAGES + 2} records", f"blobs:           {IMAGES + 1}",
                     "with an invite made here", f"-> http://localhost:{world['b'].server.port}",
                     "-> at://alice.b.test", "nothing was changed"):
        assert expected in text, (expected, text)
    assert diff_snapshots(before, snapshot(b)) == []
    assert not (b / "migrations").exists()
    assert _plc_data(world) == plc_before


def test_a_wrong_old_password_is_a_plain_error_and_makes_nothing(world, tmp_path) -> None:
    b = world["b"].server.data_dir
    before = snapshot(b)
    with open(tmp_path / "out", "w+") as out:
        proc = _migrate(world, password="not the password", out=out)
        text = _finish(proc, out)
    assert proc.returncode == 1, text
    assert text.startswith("error: ") and "refused the sign-in" in text, text
    assert "Traceback" not in text and len(text.strip().splitlines()) == 1, text
    assert diff_snapshots(before, snapshot(b)) == []
    assert not (b / "migrations").exists()


def test_this_pds_not_running_is_a_plain_error(world, tmp_path) -> None:
    data = tmp_path / "c"
    init_data_dir(data, free_port(), plc_url=world["plc"], did_method="plc",
                  handle_domains=".c.test")
    res = subprocess.run(
        [*pds_command(), "account", "migrate-in", "--from", world["alice"]["did"],
         "--data-dir", str(data)], capture_output=True, text=True, timeout=COMMAND_TIMEOUT,
        env=clean_env({"PDS_MIGRATE_OLD_PASSWORD": OLD_PASSWORD}), stdin=subprocess.DEVNULL)
    assert res.returncode == 1, res
    assert res.stderr.startswith("error: ") and "is `pds serve` running?" in res.stderr, res
    assert len(res.stderr.strip().splitlines()) == 1 and not (data / "migrations").exists()


def test_a_call_with_an_expired_token_is_sent_again_after_a_refresh(world) -> None:
    """A run that copies for hours outlives its access tokens (2 hours): the client
    refreshes the session and goes on. The expired token is minted as the server mints
    them (its JWT secret, the real token's claims), two hours back."""
    import jwt

    from pds.cli.migrate_http import Xrpc
    from pds.config import parse_env_file
    api = world["a"]
    session = ok(api.post("com.atproto.server.createAccount", {
        "handle": "bob.a.test", "email": "bob@example.com", "password": OLD_PASSWORD}))
    secret = parse_env_file(api.server.data_dir / "pds.env")["PDS_JWT_SECRET"]
    claims = jwt.decode(session["accessJwt"], options={"verify_signature": False})
    now = int(time.time())
    expired = jwt.encode({**claims, "iat": now - 7300, "exp": now - 100}, secret,
                         algorithm="HS256", headers={"typ": "at+jwt"})
    client = Xrpc(api.server.url, "A")
    try:
        client.signed_in({**session, "accessJwt": expired})
        assert client.get("com.atproto.server.getSession")["did"] == session["did"]
        assert client.token != expired and client.refresh != session["refreshJwt"]
        client.signed_in({"accessJwt": expired})  # no refresh token: the failure stands
        with pytest.raises(XrpcFailure, match="ExpiredToken"):
            client.get("com.atproto.server.getSession")
    finally:
        client.close()


def _turn_on_sign_in_codes(world: dict, smtp: SmtpServer) -> None:
    """alice asks A for emailed sign-in codes (so the command must type one in)."""
    api, tok = world["a"], world["alice"]["access"]
    n = len(smtp.inbox.to(EMAIL))
    ok(api.post("com.atproto.server.requestEmailConfirmation", token=tok))
    ok(api.post("com.atproto.server.confirmEmail",
                {"email": EMAIL, "token": token_of(smtp.inbox.wait(EMAIL, n + 1)[n])},
                token=tok))
    ok(api.post("com.atproto.server.requestEmailUpdate", token=tok))
    ok(api.post("com.atproto.server.updateEmail", {
        "email": EMAIL, "token": token_of(smtp.inbox.wait(EMAIL, n + 2)[n + 1]),
        "emailAuthFactor": True}, token=tok))


def _records(api: Api, did: str) -> dict[str, Any]:
    out = {}
    repo = ok(api.get("com.atproto.repo.describeRepo", repo=did))
    for coll in repo["collections"]:
        for rec in ok(api.get("com.atproto.repo.listRecords", repo=did, collection=coll,
                              limit=100))["records"]:
            out[rec["uri"]] = (rec["cid"], rec["value"])
    return out


def test_migrate_in_killed_during_the_blob_copy_and_resumed(world, smtp, tmp_path) -> None:
    a, b, alice = world["a"], world["b"], world["alice"]
    did, b_data = alice["did"], b.server.data_dir
    records_on_a = _records(a, did)
    blobs_on_a = ok(a.get("com.atproto.sync.listBlobs", did=did, limit=1000))["cids"]
    assert len(blobs_on_a) == IMAGES + 1
    bytes_on_a = {cid: a.http.get("/xrpc/com.atproto.sync.getBlob",
                                  params={"did": did, "cid": cid}).content for cid in blobs_on_a}
    _turn_on_sign_in_codes(world, smtp)

    # First run: killed as soon as the first blob has landed on B.
    with open(tmp_path / "first", "w+") as out:
        proc = _migrate(world, out=out, stdin=subprocess.PIPE)
        typer = CodeTyper(smtp, EMAIL, proc)
        try:
            wait_for(lambda: _blob_files(b_data, did) or proc.poll() is not None, 120,
                     "the first blob copied to B")
            proc.send_signal(signal.SIGKILL)
        finally:
            stop_process(proc, signal.SIGKILL)
        first = _finish(proc, out)
    assert proc.returncode == -signal.SIGKILL, first
    copied = _blob_files(b_data, did)
    assert 1 <= len(copied) < IMAGES + 1, (copied, first)
    assert "blobs: copying" in first, first
    state = b_data / "migrations" / f"{did}.json"
    assert state.stat().st_mode & 0o777 == 0o600
    saved_state = state.read_bytes()
    assert typer.typed and "sign-in" in typer.typed[0].lower(), typer.typed
    assert ok(b.get("com.atproto.admin.getAccountInfo", did=did,
                    headers=b.admin_headers()))["handle"] == "alice.b.test"

    # Second run, the same command: it goes on from there to the end.
    with open(tmp_path / "second", "w+") as out:
        proc = _migrate(world, out=out, stdin=subprocess.PIPE)
        typer = CodeTyper(smtp, EMAIL, proc)
        second = _finish(proc, out)
    assert proc.returncode == 0, second
    assert "resuming" in second and "Traceback" not in second, second
    assert f"this PDS at http://127.0.0.1:{b.server.port}" in second, second
    assert len(typer.typed) == 2, typer.typed  # a sign-in code, then the PLC code
    assert not state.exists() and not list((b_data / "migrations").iterdir())

    # The PLC document names B: its endpoint, its signing key and rotation key.
    session = ok(b.post("com.atproto.server.createSession",
                        {"identifier": "alice.b.test", "password": NEW_PASSWORD}))
    wanted = ok(b.get("com.atproto.identity.getRecommendedDidCredentials",
                      token=session["accessJwt"]))
    data = _plc_data(world)
    assert data["services"]["atproto_pds"]["endpoint"] == f"http://localhost:{b.server.port}"
    assert data["verificationMethods"] == wanted["verificationMethods"]
    assert data["rotationKeys"] == wanted["rotationKeys"]
    assert data["alsoKnownAs"] == ["at://alice.b.test"]

    # Every record and blob of A is on B, the repo verifies, the preferences came along.
    assert _records(b, did) == records_on_a
    assert sorted(ok(b.get("com.atproto.sync.listBlobs", did=did, limit=1000))["cids"]) == \
        sorted(blobs_on_a)
    for cid, content in bytes_on_a.items():
        assert b.http.get("/xrpc/com.atproto.sync.getBlob",
                          params={"did": did, "cid": cid}).content == content
    prefs = ok(b.get("app.bsky.actor.getPreferences", token=session["accessJwt"]))
    assert {p["$type"] for p in prefs["preferences"]} >= {
        "app.bsky.actor.defs#adultContentPref", "app.bsky.actor.defs#savedFeedsPrefV2"}
    status = ok(b.get("com.atproto.server.checkAccountStatus", token=session["accessJwt"]))
    assert status["activated"] is True and status["importedBlobs"] == IMAGES + 1
    _repo_verify(b.server.url, world["plc"], did)

    # A refuses writes (deactivated), B takes them.
    post = {"repo": did, "collection": "app.bsky.feed.post",
            "record": {"$type": "app.bsky.feed.post", "text": "hello from B",
                       "createdAt": "2026-01-02T00:00:00.000Z"}}
    r = a.post("com.atproto.repo.createRecord", post, token=alice["access"])
    assert r.status_code in (400, 401, 403), r.text
    ok(b.post("com.atproto.repo.createRecord", post, token=session["accessJwt"]))

    # Once more: there is nothing left to move.
    with open(tmp_path / "third", "w+") as out:
        proc = _migrate(world, out=out, who=did)
        third = _finish(proc, out)
    assert proc.returncode == 1 and "hosted here already" in third, third

    # A run that finds the account active here (its state file back, as when a run is
    # killed between the activation and the old PDS's deactivation) imports nothing over
    # B's newer commits: it only makes sure of the old side, and ends.
    head = ok(b.get("com.atproto.sync.getLatestCommit", did=did))
    state.write_bytes(saved_state)
    state.chmod(0o600)
    with open(tmp_path / "fourth", "w+") as out:
        proc = _migrate(world, out=out, who=did, stdin=subprocess.PIPE)
        CodeTyper(smtp, EMAIL, proc)
        fourth = _finish(proc, out)
    assert proc.returncode == 0, fourth
    assert "active here already" in fourth and "deactivated there already" in fourth, fourth
    assert ok(b.get("com.atproto.sync.getLatestCommit", did=did)) == head
    assert not state.exists()


def _repo_verify(pds_url: str, plc_url: str, did: str) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not on PATH")
    res = subprocess.run([node, str(NODE_DIR / "repo_verify.mjs"), "--pds", pds_url,
                          "--plc", plc_url, "--did", did], cwd=NODE_DIR, capture_output=True,
                         text=True, timeout=300, env={**os.environ, "LOG_ENABLED": "false"})
    assert res.returncode == 0, res.stderr[-4000:] + res.stdout[-2000:]




def test_a_signed_plc_operation_outlives_an_interruption(world, smtp, tmp_path) -> None:
    """The emailed PLC code works once: a run stopped after the old PDS signed the
    operation, before this PDS took it (B goes down while the code is typed in), leaves
    the operation in its state, and the next run submits it without another code."""
    a, b = world["a"], world["b"]
    email = "carol@example.com"
    carol = ok(a.post("com.atproto.server.createAccount", {
        "handle": "carol.a.test", "email": email, "password": OLD_PASSWORD}))
    did, b_data = carol["did"], b.server.data_dir
    state = b_data / "migrations" / f"{did}.json"
    with open(tmp_path / "first", "w+") as out:
        proc = _migrate(world, out=out, who=did, stdin=subprocess.PIPE)
        try:
            code = token_of(smtp.inbox.wait(email, 1, timeout=120)[0])
            b.server.stop()
            assert proc.stdin is not None
            proc.stdin.write(code + "\n")
            proc.stdin.flush()
            first = _finish(proc, out)
        finally:
            stop_process(proc, signal.SIGKILL)
            if b.server.proc.poll() is not None:  # B again, on its port and data dir
                b.server = start_server(b_data, b.server.port, env=b.server.env)
    assert proc.returncode == 1 and "error: this PDS" in first, first
    assert json.loads(state.read_text())["plc_operation"]["sig"]
    assert _plc_data(world, did)["services"]["atproto_pds"]["endpoint"] != \
        f"http://localhost:{b.server.port}"

    with open(tmp_path / "second", "w+") as out:
        proc = _migrate(world, out=out, who=did)  # stdin: nothing to type
        second = _finish(proc, out)
    assert proc.returncode == 0, second
    assert "code" not in second.lower() and len(smtp.inbox.to(email)) == 1, second
    assert _plc_data(world, did)["services"]["atproto_pds"]["endpoint"] == \
        f"http://localhost:{b.server.port}"
    assert not state.exists()
