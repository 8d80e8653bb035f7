"""The official TypeScript clients against a real `pds serve` with did:plc accounts.

`tests/node/api_flow.mjs` drives the server with `@atproto/api` (sign-up on the local PLC
directory, logins, posts, blobs, records of every kind written with `validate: true` and
checked against the official lexicons, pagination, swaps, app passwords, session rotation,
refusals); `tests/node/repo_verify.mjs` checks every hosted repository with
`@atproto/repo` (getRepo CAR, commit signatures against the PLC's keys, MST against
listRecords, getRecord proofs). Each script exits non-zero with a message on the first
failed check; a failure here shows its stderr and the server log.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path

import httpx
import pytest
from harness import Server, running_server

pytestmark = pytest.mark.slow  # the official TypeScript clients against a live server

NODE_DIR = Path(__file__).resolve().parent / "node"
SCRIPT_TIMEOUT = 300  # seconds; each script takes a few seconds here


@pytest.fixture(scope="module")
def pds(tmp_path_factory, plc_url: str, node: str):
    """A did:plc PDS registered with the local PLC directory (two gunicorn workers)."""
    with running_server(tmp_path_factory.mktemp("interop-api"), did_method="plc",
                        plc_url=plc_url) as server:
        yield server


def public_url(server: Server) -> str:
    """The #atproto_pds endpoint the server writes (PDS_HOSTNAME is localhost:<port>)."""
    return f"http://localhost:{server.port}"


def run_script(node: str, server: Server, script: str, *args: str) -> str:
    """Run a node script from tests/node; fail with its output and the server log."""
    cmd = [node, str(NODE_DIR / script), *args]
    try:
        res = subprocess.run(cmd, cwd=NODE_DIR, capture_output=True, text=True,
                             timeout=SCRIPT_TIMEOUT, env={**os.environ, "LOG_ENABLED": "false"})
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{script} timed out after {SCRIPT_TIMEOUT}s\n--- stderr ---\n"
                    f"{_text(e.stderr)[-6000:]}\n--- server log ---\n{server.log()[-6000:]}")
    if res.returncode != 0:
        pytest.fail(f"{script} exited {res.returncode}\n--- stderr ---\n{res.stderr[-8000:]}\n"
                    f"--- stdout ---\n{res.stdout[-2000:]}\n"
                    f"--- server log ---\n{server.log()[-6000:]}")
    return res.stdout


def _text(v: bytes | str | None) -> str:
    if v is None:
        return ""
    return v.decode(errors="replace") if isinstance(v, bytes) else v


def last_json_line(stdout: str) -> dict:
    lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
    assert lines, f"no JSON result line on stdout:\n{stdout[-2000:]}"
    return json.loads(lines[-1])


# --- a seeded account for the repo checks -------------------------------------------------

PNG_1x1 = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")


def _call(http: httpx.Client, nsid: str, token: str | None = None, **kw) -> dict:
    headers = kw.pop("headers", {})
    if token:
        headers["authorization"] = f"Bearer {token}"
    resp = http.post(f"/xrpc/{nsid}", headers=headers, **kw)
    assert resp.status_code == 200, f"{nsid}: {resp.status_code} {resp.text}"
    return resp.json() if resp.content else {}


@pytest.fixture(scope="module")
def seeded(pds: Server) -> str:
    """An account with a few dozen records in several collections, some updated and
    deleted, values covering the data model ($bytes, $link, blobs, unicode, nesting)."""
    with httpx.Client(base_url=pds.url, timeout=60) as http:
        acct = _call(http, "com.atproto.server.createAccount",
                     json={"handle": "seeded.test", "email": "seeded@example.com",
                           "password": "seeded password"})
        did, tok = acct["did"], acct["accessJwt"]
        blob = _call(http, "com.atproto.repo.uploadBlob", tok, content=PNG_1x1,
                     headers={"content-type": "image/png"})["blob"]

        def create(collection: str, value: dict, rkey: str | None = None) -> dict:
            w = {"$type": "com.atproto.repo.applyWrites#create", "collection": collection,
                 "value": {"$type": collection, **value}}
            if rkey:
                w["rkey"] = rkey
            return w

        ts = "2026-01-01T00:00:00.000Z"
        writes = [create("app.bsky.feed.post", {"text": f"post {i} ✨ ünïcödé", "createdAt": ts,
                                                "langs": ["en", "de"]}) for i in range(30)]
        writes.append(create("app.bsky.actor.profile", {"displayName": "Seeded",
                                                         "avatar": blob}, rkey="self"))
        res = _call(http, "com.atproto.repo.applyWrites", tok,
                    json={"repo": did, "writes": writes})
        posts = [r for r in res["results"] if "/app.bsky.feed.post/" in r["uri"]]
        more = [create("app.bsky.feed.like", {"subject": {"uri": p["uri"], "cid": p["cid"]},
                                              "createdAt": ts}) for p in posts[:10]]
        more += [create("app.bsky.graph.follow", {"subject": f"did:plc:{'a' * 23}{c}",
                                                  "createdAt": ts}) for c in "bcdefg"]
        more += [create("com.example.datamodel", {
            "n": i, "neg": -i * 1000003, "big": 2**53 - 1 - i, "flag": i % 2 == 0,
            "nothing": None, "bytes": {"$bytes": base64.b64encode(bytes(range(i, i + 9)))
                                       .decode().rstrip("=")},
            "link": {"$link": posts[i]["cid"]}, "nested": {"a": [[], {}, [1, [2, [3]]]],
                                                           "": "empty key", "😀": "emoji key"},
            "text": "line\nbreak \"quoted\" \\ back \u0000 nul"}, rkey=f"k{i:02d}")
            for i in range(8)]
        _call(http, "com.atproto.repo.applyWrites", tok, json={"repo": did, "writes": more})
        # Some history: updates and deletes, one commit each.
        for i in range(3):
            _call(http, "com.atproto.repo.putRecord", tok, json={
                "repo": did, "collection": "com.example.datamodel", "rkey": f"k{i:02d}",
                "record": {"$type": "com.example.datamodel", "n": 100 + i}})
        for p in posts[-4:]:
            _call(http, "com.atproto.repo.deleteRecord", tok, json={
                "repo": did, "collection": "app.bsky.feed.post",
                "rkey": p["uri"].rsplit("/", 1)[1]})
    return did


# --- the tests ------------------------------------------------------------------------------


def test_api_flow(node: str, pds: Server, plc_url: str) -> None:
    out = last_json_line(run_script(node, pds, "api_flow.mjs", "--pds", pds.url,
                                    "--plc", plc_url, "--public-url", public_url(pds)))
    assert len(out["accounts"]) == 2


def test_repo_verify(node: str, pds: Server, plc_url: str, seeded: str) -> None:
    # Every repository on the server: the seeded one, and the api flow's when it ran first.
    repos = httpx.get(pds.url + "/xrpc/com.atproto.sync.listRepos", timeout=30).json()["repos"]
    dids = [r["did"] for r in repos]
    assert seeded in dids
    out = last_json_line(run_script(node, pds, "repo_verify.mjs", "--pds", pds.url,
                                    "--plc", plc_url, "--did", ",".join(dids)))
    assert out["verified"] == dids


def test_describe_repo_checks_the_handle_both_ways(pds: Server) -> None:
    """handleIsCorrect: the handle resolves to the DID and the DID's document (the PLC
    directory's) claims the handle. A DID whose PLC document names another handle is
    not correct, though its handle here still resolves to it."""
    import asyncio

    from pds.config import Settings
    from pds.services.context import AppContext

    with httpx.Client(base_url=pds.url, timeout=60) as http:
        dids = [_call(http, "com.atproto.server.createAccount", json={
            "handle": f"{name}.test", "email": f"{name}@example.com",
            "password": "a password"})["did"] for name in ("truthful", "disowned")]
        # Only the directory changes: the PDS still holds disowned.test for the DID.
        ctx = AppContext(Settings.load(pds.data_dir))

        async def move() -> None:
            try:
                await ctx.identity.update_plc(dids[1], handle="elsewhere.test")
            finally:
                await ctx.http.aclose()
        asyncio.run(move())
        for did, correct in zip(dids, (True, False), strict=True):
            got = http.get("/xrpc/com.atproto.repo.describeRepo", params={"repo": did})
            assert got.status_code == 200, got.text
            assert got.json()["handleIsCorrect"] is correct, (did, got.json())
