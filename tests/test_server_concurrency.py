"""Concurrency against a two-worker `pds serve`: one repo's writers are serialised into
one linear chain of commits, writes to different repos all land, and sign-ups racing for
one handle (one did:web) end with exactly one intact account."""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from server_util import api_fixture, app_context, check_response, ok

from pds.repo.car import read_car_blocks
from pds.repo.commit import parse_commit
from pds.repo.signing_keys import load_private_key

N = 32


api = api_fixture()


async def _post_all(url: str, jobs: list[tuple[str, dict]]) -> list[httpx.Response]:
    """POST every (token, body) to createRecord with all of them in flight at once."""
    limits = httpx.Limits(max_connections=len(jobs), max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        start = asyncio.Event()

        async def one(token: str, body: dict) -> httpx.Response:
            await start.wait()
            return await client.post("/xrpc/com.atproto.repo.createRecord", json=body,
                                     headers={"Authorization": f"Bearer {token}"})

        tasks = [asyncio.create_task(one(t, b)) for t, b in jobs]
        await asyncio.sleep(0)  # every task is parked on the event
        start.set()
        responses = await asyncio.gather(*tasks)
    for r in responses:
        check_response(r)
    return list(responses)


def _record(i: int) -> dict:
    return {"$type": "com.example.note", "text": f"note {i}", "n": i}


def test_concurrent_creates_on_one_account_form_one_chain(api):
    acct = api.create_account()
    revs_path = api.server.data_dir / "accounts" / acct.did / "revs"
    initial = revs_path.read_text().splitlines()
    assert len(initial) == 1  # the empty repo's first commit

    jobs = [(acct.access, {"repo": acct.did, "collection": "com.example.note",
                           "record": _record(i)}) for i in range(N)]
    responses = asyncio.run(_post_all(api.server.url, jobs))
    bodies = [ok(r) for r in responses]

    # All 32 landed, each as its own record.
    records = api.list_records(acct.did)
    assert len(records) == N
    assert sorted(r["value"]["n"] for r in records) == list(range(N))
    assert {r["uri"] for r in records} == {b["uri"] for b in bodies}

    # The rev log: the initial commit plus exactly 32 more, strictly increasing.
    lines = revs_path.read_text().splitlines()
    assert lines[0] == initial[0]
    chain = [line.split() for line in lines]
    assert all(len(parts) == 2 for parts in chain)
    assert len(chain) == N + 1
    revs = [rev for rev, _ in chain]
    assert revs == sorted(revs) and len(set(revs)) == len(revs)
    # Every acknowledged commit is in the chain, with the CID it was answered with.
    logged = dict(chain)
    for b in bodies:
        assert logged[b["commit"]["rev"]] == b["commit"]["cid"]
    assert len({b["commit"]["rev"] for b in bodies}) == N
    # The head is the last link of the chain.
    latest = ok(api.get("com.atproto.sync.getLatestCommit", did=acct.did))
    assert [latest["rev"], latest["cid"]] == chain[-1]
    head = (api.server.data_dir / "accounts" / acct.did / "HEAD").read_text().split()
    assert head == [chain[-1][1], chain[-1][0]]


def test_concurrent_creates_on_many_accounts_all_land(api):
    with ThreadPoolExecutor(8) as pool:
        accounts = list(pool.map(lambda i: api.create_account(f"many{i:02d}"), range(N)))
    jobs = [(a.access, {"repo": a.did, "collection": "com.example.note", "rkey": "only",
                        "record": _record(i)}) for i, a in enumerate(accounts)]
    responses = asyncio.run(_post_all(api.server.url, jobs))
    for acct, resp in zip(accounts, responses, strict=True):
        body = ok(resp)
        assert body["uri"] == f"at://{acct.did}/com.example.note/only"
    for i, acct in enumerate(accounts):
        records = api.list_records(acct.did)
        assert [r["value"]["n"] for r in records] == [i]
        lines = (api.server.data_dir / "accounts" / acct.did / "revs").read_text().splitlines()
        assert len(lines) == 2


async def _sign_ups(url: str, bodies: list[dict]) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=len(bodies), max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        responses = await asyncio.gather(*[
            client.post("/xrpc/com.atproto.server.createAccount", json=b) for b in bodies])
    for r in responses:
        check_response(r)
    return list(responses)


def test_racing_sign_ups_for_one_handle(api):
    """Racers for one handle all want the same did:web: exactly one account results, and
    the losers leave nothing of theirs behind (no overwritten key, no stray claims)."""
    n = 8
    bodies = [{"handle": "contested.test", "email": f"racer{i}@example.com",
               "password": f"pw-{i}"} for i in range(n)]
    responses = asyncio.run(_sign_ups(api.server.url, bodies))
    winners = [i for i, r in enumerate(responses) if r.status_code == 200]
    assert len(winners) == 1, [r.text for r in responses]
    for i, r in enumerate(responses):
        if i not in winners:
            assert r.status_code == 400 and r.json()["error"] == "HandleNotAvailable", r.text
    w = winners[0]
    did = responses[w].json()["did"]
    root = api.server.data_dir
    assert (root / "handles" / "contested.test").read_text().strip() == did
    assert sorted(os.listdir(root / "emails")).count(f"racer{w}@example.com") == 1
    assert not [e for e in os.listdir(root / "emails")
                if e.startswith("racer") and e != f"racer{w}@example.com"]
    # The account works with the winner's password, and its key is the one its DID
    # document names and its first commit was signed with.
    s = ok(api.post("com.atproto.server.createSession",
                    {"identifier": "contested.test", "password": f"pw-{w}"}))
    token = s["accessJwt"]
    ok(api.post("com.atproto.repo.createRecord",
                {"repo": did, "collection": "com.example.note",
                 "record": {"$type": "com.example.note", "n": 1}}, token=token))
    key = load_private_key((root / "accounts" / did / "signing.key").read_bytes())
    doc = api.http.get("/.well-known/did.json", headers={"Host": "contested.test"}).json()
    assert doc["verificationMethod"][0]["publicKeyMultibase"] == key.public_key().multibase()
    root_cid, blocks = read_car_blocks(api.get("com.atproto.sync.getRepo", did=did).content)
    assert parse_commit(blocks[root_cid]).verify(key.public_key())
    first_cid = (root / "accounts" / did / "revs").read_text().split()[1]
    first = (root / "accounts" / did / "blocks" / first_cid[-2:] / first_cid).read_bytes()
    assert parse_commit(first).verify(key.public_key())


def test_sign_up_race_for_one_did_web_loses_cleanly(tmp_path):
    """The losing half of a sign-up race, in process: its pre-checks ran before the
    winner claimed the handle (the window is too narrow to hit reliably over HTTP), so it
    reaches the claim for the same did:web. It must fail there, not take the winner's
    account over: same key, same document, same email index."""
    from pds.errors import PdsError
    from pds.services import accounts as svc

    ctx = app_context(tmp_path)
    body = {"handle": "raced.test", "email": "first@example.com", "password": "pw-1"}
    first = asyncio.run(svc.create_account(ctx, body, None))
    did = first["did"]
    key = (tmp_path / "accounts" / did / "signing.key").read_bytes()
    doc = (tmp_path / "well-known" / "raced.test" / "did.json").read_bytes()

    # The loser saw no claim and no account when it checked.
    ctx.accounts.did_for_handle = lambda handle: None
    real_get = ctx.accounts.get
    ctx.accounts.get = lambda d: None if d == did else real_get(d)
    second = {"handle": "raced.test", "email": "second@example.com", "password": "pw-2"}
    with pytest.raises(PdsError) as info:
        asyncio.run(svc.create_account(ctx, second, None))
    assert info.value.error == "HandleNotAvailable"
    assert (tmp_path / "accounts" / did / "signing.key").read_bytes() == key
    assert (tmp_path / "well-known" / "raced.test" / "did.json").read_bytes() == doc
    assert (tmp_path / "handles" / "raced.test").read_text().strip() == did
    assert not (tmp_path / "emails" / "second@example.com").exists()
