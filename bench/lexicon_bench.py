"""What lexicon validation adds to a createRecord: server CPU per record, p50.

The record is a typical post: text with a mention, a link and a tag (three facets), one
language, and an image embed (a blob with its aspect ratio), in value form as the write
path holds it (`pds.repo.codec.json_to_value` of the JSON). Timed:

- `ours`: `pds.lexicon.validate.check_record` against the official lexicons (what
  createRecord runs, in its worker thread, before the commit);
- `lexrpc`: the validator of the `lexrpc` package (3.0) on the JSON form, which the
  compiled checkers replaced (skipped with `--no-lexrpc`; its import reads all ~600
  lexicon documents).

Each is measured in rounds of `--n` calls, alternating (ours, lexrpc, ours, ...) so load
from other work falls on both; p50/p90 over all calls, and each round's p50 (the lowest
estimates the floor on a busy machine). Also: the first call (reading and compiling the
lexicons a post needs) and the memory that took (tracemalloc, measured separately).

    python bench/lexicon_bench.py            # 5 rounds of 2000
    python bench/lexicon_bench.py --json     # machine-readable
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's pds

from pds.repo.codec import json_to_value  # noqa: E402

TARGET_US = 50.0
TID = "3jzfcijpj2z2a"
POST = {
    "$type": "app.bsky.feed.post",
    "text": "hello @alice.test see https://example.com #tag",
    "createdAt": "2026-01-01T00:00:00.000Z", "langs": ["en"],
    "facets": [
        {"index": {"byteStart": 6, "byteEnd": 17}, "features": [
            {"$type": "app.bsky.richtext.facet#mention",
             "did": "did:plc:abcdefghijklmnopqrstuvwx"}]},
        {"index": {"byteStart": 22, "byteEnd": 41}, "features": [
            {"$type": "app.bsky.richtext.facet#link", "uri": "https://example.com"}]},
        {"index": {"byteStart": 42, "byteEnd": 46}, "features": [
            {"$type": "app.bsky.richtext.facet#tag", "tag": "tag"}]},
    ],
    "embed": {"$type": "app.bsky.embed.images", "images": [{
        "alt": "a cat", "aspectRatio": {"width": 640, "height": 480},
        "image": {"$type": "blob", "mimeType": "image/jpeg", "size": 123456, "ref": {
            "$link": "bafkreibme22gw2h7y2h7tg2fhqotaqjucnbc24deqo72b6mkl2egezxhvy"}}}]},
}


def ours() -> tuple[Callable[[], Any], float, float]:
    """The call, its first-call seconds and the MB the first call allocated."""
    from pds.lexicon import official
    from pds.lexicon.validate import check_record
    value = json_to_value(POST)
    tracemalloc.start()
    t0 = time.perf_counter()
    check_record(official(), POST["$type"], TID, value, None)
    first = time.perf_counter() - t0
    mb = tracemalloc.get_traced_memory()[0] / 1e6
    tracemalloc.stop()
    return (lambda: check_record(official(), POST["$type"], TID, value, None)), first, mb


def lexrpc() -> tuple[Callable[[], Any], float, float]:
    tracemalloc.start()
    t0 = time.perf_counter()
    from lexrpc.base import Base
    base = Base()
    base.validate(POST["$type"], "record", POST)
    first = time.perf_counter() - t0
    mb = tracemalloc.get_traced_memory()[0] / 1e6
    tracemalloc.stop()
    return (lambda: base.validate(POST["$type"], "record", POST)), first, mb


def _round(fn: Callable[[], Any], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e6)
    return out


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * q))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="calls per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--no-lexrpc", action="store_true", help="ours only")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    subjects = {"ours": ours()}
    if not args.no_lexrpc:
        subjects["lexrpc"] = lexrpc()
    times: dict[str, list[float]] = {k: [] for k in subjects}
    round_p50: dict[str, list[float]] = {k: [] for k in subjects}
    for _ in range(args.rounds):
        for name, (fn, _first, _mb) in subjects.items():
            xs = _round(fn, args.n)
            times[name] += xs
            round_p50[name].append(statistics.median(xs))
    out = {name: {"p50_us": statistics.median(times[name]), "p90_us": _pct(times[name], 0.9),
                  "best_round_p50_us": min(round_p50[name]),
                  "first_call_ms": subjects[name][1] * 1000, "first_call_mb": subjects[name][2]}
           for name in subjects}
    out["load"] = dict(zip(("1m", "5m", "15m"), os.getloadavg(), strict=True))
    if args.json:
        print(json.dumps(out, indent=1))
        return
    print(f"typical post (3 facets, an image embed), {args.rounds} rounds of {args.n}; "
          f"load {os.getloadavg()[0]:.2f}")
    print(f"{'':8} {'p50 µs':>8} {'p90 µs':>8} {'best round':>11} {'first call':>11} "
          f"{'its memory':>11}")
    for name in subjects:
        r = out[name]
        print(f"{name:8} {r['p50_us']:8.1f} {r['p90_us']:8.1f} {r['best_round_p50_us']:11.1f} "
              f"{r['first_call_ms']:9.0f}ms {r['first_call_mb']:9.1f}MB")
    verdict = "PASS" if out["ours"]["p50_us"] <= TARGET_US else "FAIL"
    print(f"target: ours p50 <= {TARGET_US:.0f} µs per record: {verdict}")


if __name__ == "__main__":
    main()
