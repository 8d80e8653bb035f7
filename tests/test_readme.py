"""README.md against the code: the settings table lists every `PDS_*` variable the code
reads (and no other), and the data-dir layout is what a real data dir holds.

The layout is checked in two ways:

- here, one `pds serve --workers 2` is driven through every feature that writes files
  (accounts, sessions and their rotation, posts, blobs and an upload in progress, invites,
  rate limits, app passwords, preferences, a deletion request, a takedown, a deletion, a
  whole-repo export, the firehose and relay announcements, the background maintenance) and then
  `pds backup` copies it: every path of both dirs must be in the layout, and every entry
  of the layout must be among them;
- at the end of every test run (`conftest.py`), every data dir any test made must hold
  only paths the layout has. That direction alone: a run of a few test files makes only
  some kinds of file.
"""

from __future__ import annotations

import re
import socket

import pytest
from harness import free_port, run_pds, running_server, wait_for
from oauth_util import OAuthTester
from readme_util import ROOT, layout_entries, settings_rows, unlisted, unseen, walk
from server_util import Api, blob_ref, err, ok, subscribe_url

# Paths a normal run may not show: a staging file exists only for the instant a write
# takes (no test can hold one still to look at); a jti is claimed as a file only when its
# bucket of tmp/DPOP-JTI is full (tests/test_oauth_units.py makes some); a repository CAR
# being imported lasts only while importRepo runs.
TRANSIENT = {"tmp/.<pid>.<random>", "oauth/dpop-jti/<sha256>", "tmp/import-<pid>-<random>"}
# Made by `pds account migrate-in`, not by the server this test drives (the migration's
# own test, test_migration_cli, shows its state file and the directory).
TRANSIENT |= {"migrations/", "migrations/<did>.json", "migrations/<did>.car"}


# --- settings ----------------------------------------------------------------------------------


def settings_in_code() -> set[str]:
    """Every `PDS_*` variable the code reads: a quoted `PDS_NAME` anywhere in pds/ (an
    environment lookup, a line written to pds.env, a message naming one), and each
    `get("NAME", ...)` of pds/config.py, which adds the `PDS_` prefix."""
    names: set[str] = set()
    constants: set[str] = set()  # Python names that merely look like settings
    for path in sorted((ROOT / "pds").rglob("*.py")):
        text = path.read_text()
        names.update(re.findall(r"""["'](PDS_[A-Z][A-Z0-9_]*[A-Z0-9])""", text))
        constants.update(re.findall(r"^\s*(PDS_[A-Z0-9_]+)\s*[:=]", text, re.M))
    names -= constants
    config = (ROOT / "pds" / "config.py").read_text()
    for name in re.findall(r"""\bget\(\s*["']([A-Z][A-Z0-9_]*)["']""", config):
        if not name.startswith("PDS_"):
            names.add("PDS_" + name)
    return names


def test_settings_table_lists_every_variable_the_code_reads() -> None:
    code = settings_in_code()
    # The search still finds what it must (a rewrite of config.py that hid the names
    # from it would otherwise pass with nothing to check).
    assert {"PDS_DATA_DIR", "PDS_HOSTNAME", "PDS_BIND", "PDS_BLOB_LIMIT",
            "PDS_FIREHOSE_RETENTION", "PDS_LOG_LEVEL", "PDS_ACCESS_LOG"} <= code, code
    rows = settings_rows()
    assert len(rows) == len(set(rows)), f"a variable has two rows: {rows}"
    missing = sorted(code - set(rows))
    assert not missing, f"README '## Settings' has no row for {missing}"
    stale = sorted(set(rows) - code)
    assert not stale, f"README '## Settings' lists variables the code never reads: {stale}"


def test_settings_check_sees_a_missing_row() -> None:
    text = (ROOT / "README.md").read_text()
    rows = settings_rows(text)
    assert "PDS_FIREHOSE_RETENTION" in rows
    cut = re.sub(r"^\| `PDS_FIREHOSE_RETENTION` \|.*\n", "", text, flags=re.M)
    assert "PDS_FIREHOSE_RETENTION" not in settings_rows(cut)


# --- the data-dir layout ---------------------------------------------------------------------


def test_layout_parsing() -> None:
    text = """## The data directory

```
top                         a file
dir/<did>/                  a directory
    inner                   in it, with a description that goes
                            on over two lines
    sub/<xx>/<cid>          deeper
other/                      back at the top
```
## Next
"""
    entries = layout_entries(text)
    assert [(e.path, e.is_dir) for e in entries] == [
        ("top", False), ("dir/<did>", True), ("dir/<did>/inner", False),
        ("dir/<did>/sub/<xx>/<cid>", False), ("other", True)]
    cid = "bafyreibcwoiemnvsleiph4pljrvq5vntcvm7ns2odgvv7cj2axpiqcm3jy"
    paths = [("top", False), ("dir", True), ("dir/did:web:a.test", True),
             ("dir/did:web:a.test/inner", False), ("dir/did:web:a.test/sub", True),
             ("dir/did:web:a.test/sub/jy", True), (f"dir/did:web:a.test/sub/jy/{cid}", False),
             ("other", True)]
    assert unlisted(paths, entries) == []
    assert unseen(paths, entries) == []
    assert unlisted([*paths, ("dir/did:web:a.test/stray", False), ("top", True)],
                    entries) == ["dir/did:web:a.test/stray", "top/"]
    assert unseen([p for p in paths if not p[0].endswith("inner")], entries) == \
        ["dir/<did>/inner"]


def _upload_in_progress(api: Api, token: str, seen: set, data_dir) -> None:
    """Send half an upload, note the data dir while it is being received, then the rest."""
    body = b"\x89PNG" + b"\x00" * (2 * 1024 * 1024)
    port = int(api.server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall((f"POST /xrpc/com.atproto.repo.uploadBlob HTTP/1.1\r\nHost: localhost\r\n"
                      f"Authorization: Bearer {token}\r\nContent-Type: image/png\r\n"
                      f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode())
        sock.sendall(body[:len(body) // 2])
        wait_for(lambda: any(p.name.startswith("blob-") for p in (data_dir / "tmp").iterdir()),
                 30, "the upload's staging file in tmp/")
        seen.update(walk(data_dir))
        sock.sendall(body[len(body) // 2:])
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]


@pytest.mark.slow  # waits for the first minute's background maintenance
def test_readme_layout_is_a_real_data_dir(tmp_path) -> None:
    entries = layout_entries()
    env = {"PDS_RATE_LIMITS": "true", "PDS_INVITE_REQUIRED": "true",
           # Nobody listens there: the announcements fail (and are logged), but the PDS
           # keeps the time of the last write for them.
           "PDS_CRAWLERS": f"http://127.0.0.1:{free_port()}",
           # Nor there: mail stays in the spool, and the sender takes its lock.
           "PDS_EMAIL_SMTP_URL": f"smtp://127.0.0.1:{free_port()}"}
    seen: set[tuple[str, bool]] = set()
    backup = tmp_path / "backup"
    with running_server(tmp_path, env=env) as server:
        api = Api(server)
        data = server.data_dir
        admin = api.admin_headers()
        code = ok(api.post("com.atproto.server.createInviteCode", {"useCount": 2},
                           headers=admin))["code"]
        alice = api.create_account("alice", inviteCode=code)
        bob = api.create_account("bob", inviteCode=code)

        # Posts, a blob one of them shows, and an upload caught half-way.
        for i in range(3):
            ok(api.create_record(alice, {"text": f"post {i}"}))
        blob = ok(api.post("com.atproto.repo.uploadBlob", token=alice.access,
                           content=b"\x89PNG tiny", headers={"Content-Type": "image/png"}))
        ok(api.create_record(alice, {"image": blob_ref(blob["blob"])}, rkey="withblob"))
        _upload_in_progress(api, alice.access, seen, data)

        # Sessions: a login (rate-limit counters), a refresh (its rotation lock).
        login = ok(api.post("com.atproto.server.createSession",
                            {"identifier": "alice.test", "password": alice.password}))
        ok(api.post("com.atproto.server.refreshSession", token=login["refreshJwt"]))
        err(api.post("com.atproto.server.createSession",
                     {"identifier": "alice.test", "password": "wrong"}), 401)

        # Per-account documents.
        ok(api.post("com.atproto.server.createAppPassword", {"name": "phone"},
                    token=alice.access))
        ok(api.post("app.bsky.actor.putPreferences",
                    {"preferences": [{"$type": "app.bsky.actor.defs#adultContentPref",
                                      "enabled": False}]}, token=alice.access))
        ok(api.post("com.atproto.server.requestAccountDelete", token=bob.access))

        # An app signs in with OAuth (a remembered browser, a grant, a spent code, a
        # pending request, DPoP jti claims).
        app = OAuthTester(server.url, f"http://localhost:{server.port}")
        tok = app.tokens("alice.test", alice.password, remember=True)
        assert app.xrpc("GET", "com.atproto.server.getSession",
                        tok["access_token"]).status_code == 200
        assert app.par().status_code == 201
        app.close()

        # An account change (takedown and its reversal) and a whole-repo export.
        for applied in (True, False):
            ok(api.post("com.atproto.admin.updateSubjectStatus",
                        {"subject": {"$type": "com.atproto.admin.defs#repoRef",
                                     "did": bob.did}, "takedown": {"applied": applied}},
                        headers=admin))
        assert api.http.get("/xrpc/com.atproto.sync.getRepo",
                            params={"did": alice.did}).status_code == 200
        # A deleted account leaves its tombstone.
        code = ok(api.post("com.atproto.server.createInviteCode", {"useCount": 1},
                           headers=admin))["code"]
        gone = api.create_account("gone", inviteCode=code)
        ok(api.post("com.atproto.admin.deleteAccount", {"did": gone.did}, headers=admin))

        # The firehose: a subscriber replays the log (it writes nothing, but is part of
        # what a running PDS does).
        from websockets.sync.client import connect
        with connect(subscribe_url(server.url, 0), open_timeout=30) as ws:
            assert ws.recv(timeout=30)

        # Background maintenance: checkpoints, blob collection, export snapshots (every
        # minute, the first after ~30 s).
        for name in ("seq/CHECKPOINT", "seq/CHECKPOINT.LOCK", "seq/LAST_WRITE",
                     "tmp/BLOBGC.LOCK", "tmp/SNAPSHOT.LOCK", "tmp/PRUNE.LOCK"):
            wait_for(lambda n=name: (data / n).exists(), 120, name)

        # A backup of the running server is a data dir too.
        run_pds("backup", str(backup), "--data-dir", str(data))
        seen.update(walk(data))
        api.close()
    seen.update(walk(data))
    copy = set(walk(backup))
    # ...and so is what `pds restore` makes of it (the seq floor, the jump's shard).
    run_pds("restore", str(backup), "--data-dir", str(tmp_path / "restored"))
    copy.update(walk(tmp_path / "restored"))

    missing = unlisted(sorted(seen), entries)
    assert not missing, f"paths of the data dir the README layout lacks: {missing}"
    missing = unlisted(sorted(copy), entries)
    assert not missing, f"paths of the backup the README layout lacks: {missing}"
    never = [e for e in unseen(sorted(seen | copy), entries) if e not in TRANSIENT]
    assert not never, f"README layout entries no data dir showed: {never}"


def test_data_readme_points_at_the_layout() -> None:
    """data/README.md (the default data dir's only file in git) names the top of the
    layout and links to it; it once cited a file that is not in the repository."""
    text = (ROOT / "data" / "README.md").read_text()
    for link in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        assert (ROOT / "data" / link).resolve().is_file(), f"data/README.md links {link}"
    tops = {e.path.split("/")[0] + ("/" if "/" in e.path or e.is_dir else "")
            for e in layout_entries()}
    named = {n.split("<")[0] for n in re.findall(r"`([^`]+)`", text)}
    missing = sorted(t for t in tops if t not in named)
    assert not missing, f"data/README.md doesn't name {missing}"
