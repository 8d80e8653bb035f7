"""Server CPU of a DPoP-authenticated createRecord against a session-token one.

Starts `pds serve --workers 1` on a fresh data dir, signs one account in both ways (a
password session; OAuth through PAR, the page's forms and the token endpoint), then
alternates rounds of N sequential createRecord calls with each credential and reads the
server process tree's CPU time (utime + stime from /proc) around each round. Proofs are
made before a round's clock starts (with the current server nonce), so the client's
signing is not counted. Prints per-request server CPU for each and their difference
(the issue's target: DPoP costs at most 0.3 ms more).

    python bench/oauth_bench.py [--requests 500] [--rounds 4]
    python bench/oauth_bench.py --in-process     # the admission point alone

`--in-process` times the one admission point (`Auth`) in this process, CPU only, for a
Bearer session token (`_bearer` + `admit`) and a DPoP one (`_oauth`: token, proof,
replay claim, grant, account): the difference without HTTP noise, which on a machine
shared with other work swamps a fraction of a millisecond in the served numbers.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from harness import children, running_server  # noqa: E402
from oauth_util import OAuthTester  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
RECORD = {"$type": "com.example.note", "text": "bench", "createdAt": "2026-01-01T00:00:00Z"}


def tree_cpu(pid: int) -> float:
    """Seconds of CPU used by `pid` and its descendants (live ones)."""
    total = 0.0
    for p in [pid, *children(pid)]:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += (int(fields[11]) + int(fields[12])) / TICK
    return total


def round_cpu(http: httpx.Client, pid: int, requests: list[dict]) -> float:
    """Server CPU seconds per request over one round of createRecord calls."""
    before = tree_cpu(pid)
    for headers in requests:
        r = http.post("/xrpc/com.atproto.repo.createRecord", headers=headers, json=BODY)
        assert r.status_code == 200, r.text
    return (tree_cpu(pid) - before) / len(requests)


BODY: dict = {}


def in_process(n: int, rounds: int) -> None:
    import asyncio

    from server_util import app_context

    from pds.services import accounts
    from pds.services.auth import AuthKind
    with tempfile.TemporaryDirectory() as tmp:
        ctx = app_context(Path(tmp))
        made = asyncio.run(accounts.create_account(ctx, {
            "handle": "bench.test", "email": "b@example.com", "password": "pw"}, None))
        from pds.services.account import load
        acct = load(ctx, made["did"])
        app = OAuthTester("http://unused", ctx.settings.public_url)
        from pds.services.oauth_dpop import thumbprint
        sid = "ses-" + "0" * 32
        tok = ctx.oauth.tokens._issue(sid, {
            "did": made["did"], "gen": acct.generation if acct else None,
            "clientId": "http://localhost", "scope": "atproto transition:generic",
            "jkt": thumbprint(app.key.jwk), "createdAt": 0, "expiresAt": 2**40,
            "spent": []})["access_token"]
        nsid = "com.atproto.repo.createRecord"
        url = f"{ctx.settings.public_url}/xrpc/{nsid}"
        bearer = "Bearer " + made["accessJwt"]
        out: dict[str, list[float]] = {"session": [], "dpop": []}
        for _ in range(rounds):
            t = time.process_time()
            for _ in range(n):
                ctx.auth.admit(ctx.auth._bearer(bearer, refresh=False, nsid=nsid))
            out["session"].append((time.process_time() - t) / n)
            reqs = [{"method": "POST", "path": f"/xrpc/{nsid}", "content-type":
                     "application/json", "dpop": app.key.proof(
                         "POST", url, nonce=ctx.oauth.dpop.nonce(), token=tok)}
                    for _ in range(n)]
            t = time.process_time()
            for req in reqs:
                ctx.auth._oauth("DPoP " + tok, req, nsid, AuthKind.ACCESS)
            out["dpop"].append((time.process_time() - t) / n)
    s, d = (statistics.median(out[k]) * 1000 for k in ("session", "dpop"))
    print(f"admission CPU per call, in process, median of {rounds} rounds of {n}: "
          f"session {s:.3f} ms, DPoP {d:.3f} ms, difference {d - s:+.3f} ms "
          f"(target <= +0.300 ms)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--in-process", action="store_true")
    args = ap.parse_args()
    if args.in_process:
        in_process(args.requests, args.rounds)
        return
    with tempfile.TemporaryDirectory() as tmp, \
            running_server(Path(tmp), workers=1, env={"PDS_RATE_LIMITS": "false"}) as srv:
        http = httpx.Client(base_url=srv.url, timeout=60)
        acct = http.post("/xrpc/com.atproto.server.createAccount", json={
            "handle": "bench.test", "email": "bench@example.com",
            "password": "bench password"}).json()
        BODY.update(repo=acct["did"], collection="com.example.note", record=RECORD)
        app = OAuthTester(srv.url, f"http://localhost:{srv.port}")
        tok = app.tokens("bench.test", "bench password")["access_token"]
        app.xrpc("GET", "com.atproto.server.getSession", tok)  # learn the nonce
        url = f"http://localhost:{srv.port}/xrpc/com.atproto.repo.createRecord"
        session = [{"Authorization": f"Bearer {acct['accessJwt']}"}] * args.requests
        results: dict[str, list[float]] = {"session": [], "dpop": []}
        for _ in range(args.rounds):
            results["session"].append(round_cpu(http, srv.proc.pid, session))
            app.xrpc("GET", "com.atproto.server.getSession", tok)  # a fresh nonce
            dpop = [{"Authorization": f"DPoP {tok}",
                     "DPoP": app.key.proof("POST", url, nonce=app.nonce, token=tok)}
                    for _ in range(args.requests)]
            results["dpop"].append(round_cpu(http, srv.proc.pid, dpop))
        app.close()
        http.close()
    s, d = (statistics.median(results[k]) * 1000 for k in ("session", "dpop"))
    print(f"server CPU per createRecord, median of {args.rounds} rounds of "
          f"{args.requests}: session {s:.3f} ms, DPoP {d:.3f} ms, "
          f"difference {d - s:+.3f} ms (target <= +0.300 ms)")
    print("rounds (ms):", {k: [round(v * 1000, 3) for v in vs] for k, vs in results.items()})


if __name__ == "__main__":
    main()
