"""Refresh sessions and rate-limit counters don't pile up: the background maintenance (one
worker at a time) removes sessions that can no longer be used and counters whose window
is over, and leaves everything else alone."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from harness import children, free_port, init_data_dir, wait_for
from server_util import Api, ok, running_server

from pds.config import Settings
from pds.services.auth import REFRESH_GRACE
from pds.services.context import AppContext
from pds.store.ratelimit import LONGEST_WINDOW, RateLimiter, key_name

DID = "did:web:pruned.test"
DAY = 86400


def _plant_sessions(sessions: Path, now: float) -> dict[str, bool]:
    """Session files of every kind; name -> whether pruning must keep it."""
    planted = {
        "expired": ({"createdAt": now - 91 * DAY, "expiresAt": now - 10}, False),
        "live": ({"createdAt": now, "expiresAt": now + 90 * DAY}, True),
        "rotatedLongAgo": ({"createdAt": now - DAY, "expiresAt": now + 89 * DAY,
                            "next": "live", "rotatedAt": now - REFRESH_GRACE - 60}, False),
        "rotatedJustNow": ({"createdAt": now - DAY, "expiresAt": now + 89 * DAY,
                            "next": "live", "rotatedAt": now - 60}, True),
    }
    sessions.mkdir(parents=True, exist_ok=True)
    for name, (body, _) in planted.items():
        (sessions / name).write_text(json.dumps({"scope": "com.atproto.access", **body}))
    (sessions / "garbage").write_text("{not json")
    return {**{n: keep for n, (_, keep) in planted.items()}, "garbage": False}


def _plant_counters(root: Path, now: float) -> dict[str, bool]:
    """Rate-limit counter files; name -> whether pruning must keep it."""
    root.mkdir(parents=True, exist_ok=True)
    files = {
        key_name("over"): (f"{int(now) - 400} 3 300", False),
        key_name("running"): (f"{int(now) - 100} 3 300", True),
        key_name("day, running"): (f"{int(now) - 3600} 9 86400", True),
        key_name("earlier format, over"): (f"{int(now) - LONGEST_WINDOW - 5} 3", False),
        key_name("earlier format, recent"): (f"{int(now) - 100} 3", True),
        key_name("torn"): ("12", False),
    }
    for name, (text, _) in files.items():
        (root / name).write_text(text)
    # The earlier format's lock file (this one unused for a day).
    old_lock = root / (key_name("over") + ".lock")
    old_lock.touch()
    os.utime(old_lock, (now - LONGEST_WINDOW - 5,) * 2)
    return {**{n: keep for n, (_, keep) in files.items()}, old_lock.name: False}


def _left(directory: Path) -> set[str]:
    return set(os.listdir(directory))


def test_prune_removes_what_can_no_longer_be_used(tmp_path):
    data = tmp_path / "data"
    init_data_dir(data, free_port(), did_method="web")
    ctx = AppContext(Settings.load(data))
    account = data / "accounts" / DID
    account.mkdir(parents=True)
    (account / "account.json").write_text(json.dumps({"did": DID, "handle": "pruned.test"}))
    now = time.time()
    sessions = _plant_sessions(account / "sessions", now)
    counters = _plant_counters(data / "ratelimit", now)

    removed = ctx.prune()
    assert _left(account / "sessions") == {n for n, keep in sessions.items() if keep}
    assert _left(data / "ratelimit") == {n for n, keep in counters.items() if keep}
    assert removed == sum(not keep for keep in (*sessions.values(), *counters.values()))
    assert ctx.prune() == 0  # nothing more to do
    # A counter pruned is a counter started afresh; one kept counts on.
    limiter = RateLimiter(data / "ratelimit")
    limiter.hit("over", 5, 300)
    limiter.hit("running", 5, 300)
    assert (data / "ratelimit" / key_name("over")).read_text().split()[1:] == ["1", "300"]
    assert (data / "ratelimit" / key_name("running")).read_text().split()[1] == "4"


def test_prune_runs_one_worker_at_a_time(tmp_path):
    data = tmp_path / "data"
    init_data_dir(data, free_port(), did_method="web")
    ctx = AppContext(Settings.load(data))
    _plant_counters(data / "ratelimit", time.time())
    from pds.store.files import try_flock
    with try_flock(data / "tmp" / "PRUNE.LOCK") as held:
        assert held
        assert ctx.prune() == 0  # another worker is at it
    assert ctx.prune() > 0


def test_served_maintenance_prunes(tmp_path):
    """`pds serve` prunes on its own: its workers' maintenance (the first round a few
    seconds after a worker starts) removes planted expired sessions and stale counters,
    and a live session goes on working."""
    with running_server(tmp_path, env={"PDS_RATE_LIMITS": "true"}) as server:
        api = Api(server)
        acct = api.create_account("served")
        data = server.data_dir
        now = time.time()
        sessions = _plant_sessions(data / "accounts" / acct.did / "sessions", now)
        counters = _plant_counters(data / "ratelimit", now)
        # Fresh workers run the maintenance's first round within seconds.
        old = children(server.proc.pid)
        for pid in old:
            os.kill(pid, signal.SIGKILL)
        gone = [data / "accounts" / acct.did / "sessions" / n
                for n, keep in sessions.items() if not keep]
        gone += [data / "ratelimit" / n for n, keep in counters.items() if not keep]
        wait_for(lambda: not any(p.exists() for p in gone), 60, "the planted files' removal")
        for n, keep in sessions.items():
            assert (data / "accounts" / acct.did / "sessions" / n).exists() == keep, n
        for n, keep in counters.items():
            assert (data / "ratelimit" / n).exists() == keep, n
        ok(api.post("com.atproto.server.refreshSession", token=acct.refresh))
        api.close()
