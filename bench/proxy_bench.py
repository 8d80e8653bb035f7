"""Proxy benchmark: what forwarding `app.bsky.actor.getProfile` to an AppView costs, for
us and for the reference PDS (@atproto/pds, as bench/http_bench.py runs it), in one run.

A stand-in AppView (`node bench/node/stub_appview.js`, a fixed ~600-byte profile, no token
check) listens on loopback; both PDSes forward to it (`PDS_BSKY_APP_VIEW_URL`; ours in
dev mode, the reference in its dev mode: loopback allowed). Measured, alternating per
round (direct, ours, ref, direct, ours, ref, ...) so that the machine's drift hits all
alike:

- getProfile straight to the stub, one client: p50/p99 (the floor);
- getProfile through each PDS, one client: p50/p99, and the added latency (through the
  PDS minus straight to the stub, percentile by percentile);
- getProfile through each PDS from 8 clients: requests/s;
- upstream connections each PDS opened per forwarded request (the stub counts them).

    python bench/proxy_bench.py            # full run
    python bench/proxy_bench.py --quick    # small counts
    python bench/proxy_bench.py --no-ref   # ours only
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import http_bench as hb  # noqa: E402 - the bench's own helpers, next to this file

ROOT = hb.ROOT
NSID = "app.bsky.actor.getProfile"
STUB_DID = "did:web:appview.bench.test"
# Targets from the issue.
TARGET_ADDED_P50_MS = 1.0
TARGET_ADDED_P50_RATIO = 0.5  # ours/ref
TARGET_TPUT_RATIO = 2.0  # ours/ref


def start_stub(work: Path) -> tuple[subprocess.Popen, str]:
    port = hb.free_port()
    log_path = work / "stub.log"
    with open(log_path, "ab") as out:
        proc = subprocess.Popen([shutil.which("node") or "node",
                                 str(hb.BENCH_NODE / "stub_appview.js"), str(port)],
                                stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT,
                                preexec_fn=hb._die_with_parent)
    url = hb.wait_line(proc, log_path, "STUB_READY ", hb.START_TIMEOUT).split()[1]
    return proc, url


def stub_connections(stub: hb.Client) -> int:
    """TCP connections the stub accepted so far (this question's own among them)."""
    conn = stub.new_conn()
    try:
        _, body = conn.send(hb.build_request(stub.hostport, "GET", "/_connections"))
    finally:
        conn.close()
    return int(json.loads(body)["count"])


def service_env(stub_url: str) -> dict[str, str]:
    return {"PDS_BSKY_APP_VIEW_URL": stub_url, "PDS_BSKY_APP_VIEW_DID": STUB_DID}


def start_ours(work: Path, workers: int, stub_url: str) -> hb.Server:
    old = {k: os.environ.get(k) for k in service_env(stub_url)}
    os.environ.update(service_env(stub_url))
    try:
        return hb.start_ours(work, workers)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def start_ref(work: Path, stub_url: str) -> hb.Server:
    # start_ref keeps PDS_* of the environment away from the reference: hand them over
    # through ref_pds.js's own defaults instead (it sets only what is unset).
    hb.ensure_node_modules()
    node = shutil.which("node") or "node"
    env = {**os.environ, "LOG_ENABLED": "false",
           "NODE_PATH": str(hb.BENCH_NODE / "node_modules")}
    plc_port, port = hb.free_port(), hb.free_port()
    plc_log = work / "plc.log"
    with open(plc_log, "ab") as out:
        plc = subprocess.Popen([node, str(hb.PLC_JS), str(plc_port)], cwd=hb.BENCH_NODE,
                               stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT,
                               env=env, preexec_fn=hb._die_with_parent)
    procs = [plc]
    try:
        plc_url = hb.wait_line(plc, plc_log, "PLC_READY ", hb.START_TIMEOUT).split()[1]
        ref_log = work / "ref.log"
        ref_env = {k: v for k, v in env.items() if not k.startswith("PDS_")}
        ref_env.update(service_env(stub_url))
        with open(ref_log, "ab") as out:
            ref = subprocess.Popen(
                [node, str(hb.BENCH_NODE / "ref_pds.js"), str(port), str(work / "ref"),
                 plc_url], cwd=hb.BENCH_NODE, stdin=subprocess.PIPE, stdout=out,
                stderr=subprocess.STDOUT, env=ref_env, preexec_fn=hb._die_with_parent)
        procs.append(ref)
        line = hb.wait_line(ref, ref_log, "REF_PDS_READY ", hb.START_TIMEOUT)
        url, version = line.split()[1:3]
        server = hb.Server("ref", hb.Client(url), ref.pid, procs,
                           info=f"@atproto/pds {version} (node {hb.node_version()})")
        hb.wait_health(server.client, ref, ref_log, hb.START_TIMEOUT)
        return server
    except BaseException:
        for p in reversed(procs):
            hb.stop_process(p)
        raise


def sign_up(server: hb.Server, run_id: str) -> hb.Account:
    c = server.client
    desc = c.call("GET", "com.atproto.server.describeServer")
    domain = (desc.get("availableUserDomains") or [".test"])[0]
    handle = f"px-{run_id}{domain if domain.startswith('.') else '.' + domain}"
    out = c.call("POST", "com.atproto.server.createAccount",
                 body={"handle": handle, "email": f"px-{run_id}@example.com",
                       "password": hb.PASSWORD})
    return hb.Account(handle, out["did"], out["accessJwt"])


def plans(server: hb.Server, token: str | None, clients: int, count: int,
          actor: str) -> list[list[bytes]]:
    raw = server.client.req("GET", NSID, {"actor": actor}, token=token)
    return [[raw] * n for n in hb.split(count, clients)]


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="pds-proxy-bench-"))
    run_id = hex(int(time.time()))[2:]
    stub_proc, stub_url = start_stub(work)
    stub = hb.Server("stub", hb.Client(stub_url), stub_proc.pid, [stub_proc])
    servers: list[hb.Server] = []
    try:
        servers.append(start_ours(work, args.workers, stub_url))
        if not args.no_ref:
            servers.append(start_ref(work, stub_url))
        tokens = {s.name: sign_up(s, run_id).token for s in servers}
        actor = "did:plc:ewvi7nxzyoun6zhxrhs64oiz"
        lat = {name: hb.Result() for name in ["direct", *tokens]}
        tput = {name: hb.Result() for name in tokens}
        conns: dict[str, int] = dict.fromkeys(tokens, 0)
        forwarded: dict[str, int] = dict.fromkeys(tokens, 0)
        for s in [stub, *servers]:  # warm-up: connections, caches, JIT
            hb.run_clients(s, None, plans(s, tokens.get(s.name), 1, args.warmup, actor))
        per_round = max(1, args.requests // args.rounds)
        for rnd in range(args.rounds):
            hb.log(f"round {rnd + 1}/{args.rounds}")
            lat["direct"].add(hb.run_clients(stub, None, plans(stub, None, 1, per_round,
                                                               actor)))
            for s in servers:
                before = stub_connections(stub.client)
                r = hb.run_clients(s, None, plans(s, tokens[s.name], 1, per_round, actor))
                lat[s.name].add(r)
                t = hb.run_clients(s, None, plans(s, tokens[s.name], args.clients,
                                                  args.tput_requests // args.rounds, actor))
                tput[s.name].add(t)
                conns[s.name] += stub_connections(stub.client) - before - 1
                forwarded[s.name] += r.ok + t.ok
        return report(lat, tput, conns, forwarded, servers, args)
    finally:
        for s in reversed(servers):
            s.stop()
        stub.stop()
        shutil.rmtree(work, ignore_errors=True)


def report(lat: dict[str, hb.Result], tput: dict[str, hb.Result], conns: dict[str, int],
           forwarded: dict[str, int], servers: list[hb.Server],
           args: argparse.Namespace) -> dict[str, Any]:
    direct = lat["direct"]
    out: dict[str, Any] = {"direct": {"p50_ms": direct.p(50), "p99_ms": direct.p(99)},
                           "servers": {s.name: s.info for s in servers}}
    for name in tput:
        r = lat[name]
        out[name] = {
            "p50_ms": r.p(50), "p99_ms": r.p(99),
            "added_p50_ms": r.p(50) - direct.p(50), "added_p99_ms": r.p(99) - direct.p(99),
            "tput_rps": tput[name].rate, "errors": r.errors + tput[name].errors,
            "first_error": r.first_error or tput[name].first_error,
            "new_connections_per_request": conns[name] / max(1, forwarded[name]),
        }
    if "ref" in out:
        out["ratios"] = {
            "added_p50": out["ours"]["added_p50_ms"] / out["ref"]["added_p50_ms"],
            "tput": out["ours"]["tput_rps"] / out["ref"]["tput_rps"]}
    out["loadavg"] = os.getloadavg()
    return out


def print_table(out: dict[str, Any]) -> None:
    print(f"direct to the stub: p50 {out['direct']['p50_ms']:.3f} ms, "
          f"p99 {out['direct']['p99_ms']:.3f} ms")
    print(f"{'':6} {'p50':>8} {'p99':>8} {'+p50':>8} {'+p99':>8} {'req/s x8':>10} "
          f"{'conn/req':>9} errors")
    for name in ("ours", "ref"):
        if name in out:
            r = out[name]
            print(f"{name:6} {r['p50_ms']:8.3f} {r['p99_ms']:8.3f} {r['added_p50_ms']:8.3f} "
                  f"{r['added_p99_ms']:8.3f} {r['tput_rps']:10.0f} "
                  f"{r['new_connections_per_request']:9.4f} {r['errors']}")
    ours = out["ours"]
    verdict = "PASS" if ours["added_p50_ms"] <= TARGET_ADDED_P50_MS else "FAIL"
    print(f"target added p50 <= {TARGET_ADDED_P50_MS} ms: {ours['added_p50_ms']:.3f} {verdict}")
    if "ratios" in out:
        ra = out["ratios"]
        print(f"target added p50 ours/ref <= {TARGET_ADDED_P50_RATIO}: {ra['added_p50']:.2f} "
              f"{'PASS' if ra['added_p50'] <= TARGET_ADDED_P50_RATIO else 'FAIL'}")
        print(f"target req/s ours/ref >= {TARGET_TPUT_RATIO}: {ra['tput']:.2f} "
              f"{'PASS' if ra['tput'] >= TARGET_TPUT_RATIO else 'FAIL'}")
    print(f"load average: {' '.join(f'{x:.2f}' for x in out['loadavg'])}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small counts")
    p.add_argument("--no-ref", action="store_true", help="ours only")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    args.requests = 600 if args.quick else 3000
    args.tput_requests = 1600 if args.quick else 8000
    args.warmup = 100 if args.quick else 300
    out = run(args)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print_table(out)


if __name__ == "__main__":
    main()
