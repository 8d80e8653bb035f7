"""TID encoding and the monotonic TidClock."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from pds.repo import tid
from pds.repo.syntax import InvalidSyntax, is_valid_tid
from pds.repo.tid import (
    TidClock,
    next_tid,
    tid_clock_id,
    tid_from_int,
    tid_from_parts,
    tid_timestamp_micros,
    tid_to_int,
)


def test_known_values() -> None:
    assert tid_from_int(0) == "2222222222222"
    assert tid_to_int("2222222222222") == 0
    assert tid_from_int(1) == "2222222222223"
    assert tid_from_int(32) == "2222222222232"
    assert tid_from_int(2**63 - 1) == "bzzzzzzzzzzzz"


@pytest.mark.parametrize("n", [0, 1, 31, 32, 1023, 1024, 2**53, 2**62 + 12345, 2**63 - 1])
def test_int_round_trip(n: int) -> None:
    s = tid_from_int(n)
    assert len(s) == 13
    assert is_valid_tid(s)
    assert tid_to_int(s) == n


def test_string_order_is_numeric_order() -> None:
    values = [0, 5, 31, 32, 1000, 2**40, 2**40 + 1, 2**62, 2**63 - 1]
    assert sorted(tid_from_int(n) for n in values) == [tid_from_int(n) for n in values]


def test_parts_round_trip() -> None:
    micros = 1_700_000_000_123_456
    s = tid_from_parts(micros, 513)
    assert tid_timestamp_micros(s) == micros
    assert tid_clock_id(s) == 513
    assert tid_to_int(s) == (micros << 10) | 513


@pytest.mark.parametrize(("micros", "clock_id"), [(-1, 0), (2**53, 0), (0, -1), (0, 1024)])
def test_parts_out_of_range(micros: int, clock_id: int) -> None:
    with pytest.raises(ValueError):
        tid_from_parts(micros, clock_id)


@pytest.mark.parametrize("n", [-1, 2**63])
def test_int_out_of_range(n: int) -> None:
    with pytest.raises(ValueError):
        tid_from_int(n)


@pytest.mark.parametrize(
    "bad", ["", "222222222222", "3JZFCIJPJ2Z2A", "kjzfcijpj2z2a", "0000000000000"]
)
def test_to_int_rejects_bad_syntax(bad: str) -> None:
    with pytest.raises(InvalidSyntax):
        tid_to_int(bad)


def test_clock_output_is_valid_and_current() -> None:
    clock = TidClock()
    s = clock.next()
    assert is_valid_tid(s)
    assert tid_clock_id(s) == clock.clock_id
    now = time.time_ns() // 1000
    assert abs(tid_timestamp_micros(s) - now) < 10_000_000


def test_strictly_monotonic_100k() -> None:
    clock = TidClock()
    prev = clock.next()
    for _ in range(100_000):
        cur = clock.next()
        assert cur > prev
        prev = cur


def test_default_clock_monotonic() -> None:
    seen = [next_tid() for _ in range(1000)]
    assert all(a < b for a, b in zip(seen, seen[1:], strict=False))
    assert all(is_valid_tid(s) for s in seen)


def test_wall_clock_stepping_back() -> None:
    # Forward, a big step back, a repeat, then forward again.
    readings: Iterator[int] = iter(
        [1_000_000, 1_000_005, 400_000, 400_000, 1_000_005, 1_000_003, 2_000_000]
    )
    clock = TidClock(now_micros=lambda: next(readings), clock_id=7)
    out = [clock.next() for _ in range(7)]
    assert all(a < b for a, b in zip(out, out[1:], strict=False))
    stamps = [tid_timestamp_micros(s) for s in out]
    assert stamps == [1_000_000, 1_000_005, 1_000_006, 1_000_007, 1_000_008, 1_000_009, 2_000_000]
    assert all(tid_clock_id(s) == 7 for s in out)


def test_frozen_clock_still_increases() -> None:
    clock = TidClock(now_micros=lambda: 42)
    out = [clock.next() for _ in range(1000)]
    assert len(set(out)) == 1000
    assert out == sorted(out)


def test_prev_far_in_future() -> None:
    clock = TidClock()
    future = tid_from_parts(2**52, 1023)  # ~140 years ahead, max clock id
    got = clock.next(future)
    assert got > future
    assert tid_timestamp_micros(got) == 2**52 + 1
    # and the clock stays ahead of prev afterwards, even without passing it
    assert clock.next() > got


def test_prev_in_past_is_ignored() -> None:
    clock = TidClock(now_micros=lambda: 5_000_000)
    got = clock.next(tid_from_parts(10, 0))
    assert tid_timestamp_micros(got) == 5_000_000


def test_prev_same_timestamp_higher_clock_id() -> None:
    clock = TidClock(now_micros=lambda: 5_000_000, clock_id=0)
    prev = tid_from_parts(5_000_000, 1023)
    assert clock.next(prev) > prev


def test_next_tid_with_prev() -> None:
    prev = tid_from_parts(2**52, 0)
    assert next_tid(prev) > prev


def test_prev_is_validated() -> None:
    with pytest.raises(InvalidSyntax):
        TidClock().next("not-a-tid")


def test_timestamp_exhaustion() -> None:
    clock = TidClock(now_micros=lambda: 0)
    with pytest.raises(OverflowError):
        clock.next(tid_from_parts(2**53 - 1, 0))


def test_thread_safety() -> None:
    clock = TidClock(now_micros=lambda: 1)  # frozen: every call contends on the counter
    results: list[list[str]] = [[] for _ in range(8)]

    def work(bucket: list[str]) -> None:
        for _ in range(2000):
            bucket.append(clock.next())

    threads = [threading.Thread(target=work, args=(b,)) for b in results]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    everything = [s for bucket in results for s in bucket]
    assert len(set(everything)) == len(everything)
    for bucket in results:
        assert bucket == sorted(bucket)


def test_module_exports() -> None:
    assert tid.TID_LENGTH == 13
