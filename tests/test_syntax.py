"""Syntax checks against every atproto-interop-tests syntax vector, plus unit tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from pds.repo import string_formats, syntax
from pds.repo.syntax import (
    InvalidSyntax,
    is_disallowed_handle_tld,
    normalize_handle,
    split_record_path,
)

# Vector file prefix -> (is_valid_X, ensure_valid_X).
CHECKS: dict[str, tuple[Callable[[str], bool], Callable[[str], None]]] = {
    "atidentifier": (syntax.is_valid_at_identifier, syntax.ensure_valid_at_identifier),
    "aturi": (syntax.is_valid_at_uri, syntax.ensure_valid_at_uri),
    "cid": (string_formats.is_valid_cid, string_formats.ensure_valid_cid),
    "datetime": (string_formats.is_valid_datetime, string_formats.ensure_valid_datetime),
    "did": (syntax.is_valid_did, syntax.ensure_valid_did),
    "handle": (syntax.is_valid_handle, syntax.ensure_valid_handle),
    "language": (string_formats.is_valid_language, string_formats.ensure_valid_language),
    "nsid": (syntax.is_valid_nsid, syntax.ensure_valid_nsid),
    "recordkey": (syntax.is_valid_record_key, syntax.ensure_valid_record_key),
    "tid": (syntax.is_valid_tid, syntax.ensure_valid_tid),
    "uri": (string_formats.is_valid_uri, string_formats.ensure_valid_uri),
}
PARSE_INVALID = ("datetime", "language")

# (file name, whether its cases should be accepted)
VECTOR_FILES: list[tuple[str, bool]] = (
    [(f"{kind}_syntax_valid.txt", True) for kind in CHECKS]
    + [(f"{kind}_syntax_invalid.txt", False) for kind in CHECKS]
    + [(f"{kind}_parse_invalid.txt", False) for kind in PARSE_INVALID]
)


def read_vectors(path: Path) -> list[tuple[int, str]]:
    """(line number, case) pairs, read exactly like the TS harness.

    Empty lines and lines starting with '#' are skipped; nothing is trimmed,
    because some cases hinge on leading or trailing spaces.
    """
    text = path.read_bytes().decode("utf-8")
    return [
        (lineno, line)
        for lineno, line in enumerate(text.split("\n"), start=1)
        if line and not line.startswith("#")
    ]


@pytest.mark.parametrize(("name", "expect_valid"), VECTOR_FILES, ids=[n for n, _ in VECTOR_FILES])
def test_interop_vectors(interop: Path, name: str, expect_valid: bool) -> None:
    path = interop / "syntax" / name
    cases = read_vectors(path)
    assert cases, f"no cases read from {path}"
    is_valid, ensure_valid = CHECKS[name.split("_", 1)[0]]

    failures = []
    for lineno, case in cases:
        got = is_valid(case)
        try:
            ensure_valid(case)
            raised = False
        except InvalidSyntax:
            raised = True
        if got != expect_valid or raised == expect_valid:
            shown = case if len(case) <= 80 else f"{case[:80]}... ({len(case)} chars)"
            failures.append(f"  line {lineno}: {shown!r} is_valid={got} raised={raised}")
    want = "valid" if expect_valid else "invalid"
    assert not failures, f"{name}: cases not judged {want}:\n" + "\n".join(failures)


def test_every_syntax_file_is_covered(interop: Path) -> None:
    on_disk = {p.name for p in (interop / "syntax").glob("*.txt")}
    assert on_disk == {name for name, _ in VECTOR_FILES}


def test_invalid_syntax_is_value_error() -> None:
    with pytest.raises(ValueError, match="invalid handle"):
        syntax.ensure_valid_handle("not a handle")


@pytest.mark.parametrize("value", [None, 12, b"did:plc:abc"])
def test_non_strings_are_invalid(value: object) -> None:
    for is_valid, ensure_valid in CHECKS.values():
        assert is_valid(value) is False  # type: ignore[arg-type]
        with pytest.raises(InvalidSyntax):
            ensure_valid(value)  # type: ignore[arg-type]


def test_trailing_newline_is_rejected() -> None:
    # `$` in a Python regex matches before a final "\n"; fullmatch must not.
    assert not syntax.is_valid_did("did:plc:abc\n")
    assert not syntax.is_valid_tid("2222222222222\n")
    assert not syntax.is_valid_handle("john.test\n")


def test_split_record_path() -> None:
    assert split_record_path("app.bsky.feed.post/3jzfcijpj2z2a") == (
        "app.bsky.feed.post",
        "3jzfcijpj2z2a",
    )
    assert split_record_path("com.example.thing/lit:self") == ("com.example.thing", "lit:self")


@pytest.mark.parametrize(
    "path",
    [
        "",
        "app.bsky.feed.post",
        "app.bsky.feed.post/",
        "/app.bsky.feed.post/abc",
        "app.bsky.feed.post/abc/def",
        "app.bsky.feed.post/.",
        "app.bsky.feed.post/..",
        "app.bsky.feed.post/a b",
        "not_an_nsid/abc",
        "feed.post/abc",
        "app.bsky.feed.post/" + "o" * 513,
    ],
)
def test_split_record_path_rejects(path: str) -> None:
    with pytest.raises(InvalidSyntax):
        split_record_path(path)


def test_normalize_handle() -> None:
    assert normalize_handle("Alice.Bsky.SOCIAL") == "alice.bsky.social"
    assert normalize_handle("john.test") == "john.test"


def test_disallowed_handle_tlds() -> None:
    for handle in ("laptop.local", "x.onion", "a.b.LOCALHOST", "foo.arpa", "bar.example"):
        assert syntax.is_valid_handle(handle)
        assert is_disallowed_handle_tld(handle), handle
    for handle in ("john.test", "alice.bsky.social", "local.example.com", "onion.com"):
        assert not is_disallowed_handle_tld(handle), handle


def test_datetime_semantics() -> None:
    assert string_formats.is_valid_datetime("2024-02-29T00:00:00Z")
    assert not string_formats.is_valid_datetime("2023-02-29T00:00:00Z")
    assert not string_formats.is_valid_datetime("1900-02-29T00:00:00Z")
    assert string_formats.is_valid_datetime("2000-02-29T00:00:00Z")
    assert not string_formats.is_valid_datetime("1985-04-31T00:00:00Z")
    assert not string_formats.is_valid_datetime("1985-04-12T23:20:60Z")
    assert not string_formats.is_valid_datetime("1985-04-12T23:20:50+24:00")
    assert string_formats.is_valid_datetime("0000-01-01T00:00:00-01:00")
    assert string_formats.is_valid_datetime("0000-01-01T01:00:00+01:00")
