"""Time every regular expression of `pds/` (the table in tests/test_patterns.py) against
inputs built to make a backtracking pattern slow, at 1 KB, 10 KB, 100 KB and 1 MB: once
through the function the code calls (which checks lengths first), once on the bare
pattern. A linear pattern grows ~10x per row; a quadratic one ~100x.

    python bench/regex_audit.py            # sizes up to 1 MB
    python bench/regex_audit.py --quick    # up to 100 KB
"""

from __future__ import annotations

import argparse
import re
import time
from collections.abc import Callable

from pds import config
from pds.repo import did, plc, signing_keys, string_formats, syntax
from pds.services import accounts, blobs, wellknown
from pds.store import recovery

# The pattern the email check used before it was rewritten (quadratic on "a@....... ").
OLD_EMAIL_RE = re.compile(r"^[^@\s/.\x00-\x1f\x7f][^@\s/\x00-\x1f\x7f]*"
                          r"@[^@\s/\x00-\x1f\x7f]+\.[^@\s/\x00-\x1f\x7f]+$")


def _email_check(s: str) -> None:
    try:
        accounts.check_email(s)
    except Exception:  # noqa: BLE001 - refused, as it should be
        pass


# name -> (the checking function, the bare pattern's match, adversarial input of size n)
CASES: dict[str, tuple[Callable[[str], object] | None, Callable[[str], object],
                       Callable[[int], str]]] = {
    "old EMAIL_RE (for comparison)": (None, OLD_EMAIL_RE.match, lambda n: "a@" + "." * n + " "),
    "EMAIL_RE": (_email_check, accounts.EMAIL_RE.fullmatch, lambda n: "a@" + "." * n + " "),
    "EMAIL_RE labels": (_email_check, accounts.EMAIL_RE.fullmatch,
                        lambda n: "a@" + "a." * (n // 2) + " "),
    "app password": (None, lambda s: re.fullmatch(r"[a-z2-7]{4}(-[a-z2-7]{4}){3}", s),
                     lambda n: "abcd-" * (n // 5)),
    "wellknown _HOST": (None, wellknown._HOST.fullmatch, lambda n: "a" * n + ":1!"),
    "blobs _RANGE": (None, blobs._RANGE.match, lambda n: "bytes=" + "1" * n + "-1x"),
    "config _LABEL": (config.is_domain, config._LABEL.fullmatch, lambda n: "a" * n + "-"),
    "plc base64url": (plc._b64url_decode_strict,
                      lambda s: re.fullmatch(r"[A-Za-z0-9_-]*", s), lambda n: "A" * n + "="),
    "_CID_RE": (string_formats.is_valid_cid, string_formats._CID_RE.fullmatch,
                lambda n: "b" * n + "!"),
    "_DATETIME_RE": (string_formats.is_valid_datetime, string_formats._DATETIME_RE.fullmatch,
                     lambda n: "2024-01-01T00:00:00." + "1" * n + "X"),
    "_LANGTAG_RE": (string_formats.is_valid_language, string_formats._LANGTAG_RE.fullmatch,
                    lambda n: "en" + "-1abc" * (n // 5) + "-a-bb" * (n // 10) + "!"),
    "_PRIVATEUSE_RE": (None, string_formats._PRIVATEUSE_RE.fullmatch,
                       lambda n: "x" + "-a" * (n // 2) + "!"),
    "_URI_RE": (string_formats.is_valid_uri, string_formats._URI_RE.fullmatch,
                lambda n: "a" * n + "+:" + "/"),
    "_HEX64": (None, signing_keys._HEX64.fullmatch, lambda n: "a" * n),
    "_DID_RE": (syntax.is_valid_did, syntax._DID_RE.fullmatch,
                lambda n: "did:web:" + "a:" * (n // 2) + "%"),
    "_HANDLE_RE": (syntax.is_valid_handle, syntax._HANDLE_RE.fullmatch,
                   lambda n: ("a" * 63 + ".") * (n // 64) + "a-"),
    "_NSID_RE": (syntax.is_valid_nsid, syntax._NSID_RE.fullmatch,
                 lambda n: ("a" * 63 + ".") * (n // 64) + "a-"),
    "_RKEY_RE": (syntax.is_valid_record_key, syntax._RKEY_RE.fullmatch,
                 lambda n: "a" * n + "!"),
    "_TID_RE": (syntax.is_valid_tid, syntax._TID_RE.fullmatch, lambda n: "2" * n),
    "did _HOST_RE": (did.is_valid_host, did._HOST_RE.fullmatch,
                     lambda n: ("a" * 63 + ".") * (n // 64) + "a:123456"),
    "recovery _STAGING": (None, recovery._STAGING.match, lambda n: "." + "1" * n + "x"),
}


def _time(fn: Callable[[str], object], s: str) -> float:
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        fn(s)
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="sizes up to 100 KB")
    args = ap.parse_args()
    sizes = [1_000, 10_000, 100_000] + ([] if args.quick else [1_000_000])
    print(f"{'pattern':32} {'via':7} " + " ".join(f"{n:>10,}" for n in sizes))
    for name, (check, bare, make) in CASES.items():
        rows = [("check", check), ("pattern", bare)] if check else [("pattern", bare)]
        for via, fn in rows:
            times = []
            for n in sizes:
                if name.startswith("old") and n > 30_000:
                    times.append("(minutes)")
                    continue
                times.append(f"{_time(fn, make(n)) * 1000:9.3f}ms")
            print(f"{name:32} {via:7} " + " ".join(f"{t:>10}" for t in times))


if __name__ == "__main__":
    main()
