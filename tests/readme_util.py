"""README.md read as a specification: its data-dir layout and its settings table.

The layout is the code block of "## The data directory". Each line is a path relative to
the data dir, then its description; a path ending in `/` is a directory, and lines indented
by four more spaces under a directory are inside it. A line indented further than that
continues the description above. `<name>` stands for one path component (or part of one),
and must be one of PLACEHOLDERS: a layout that names a new kind of file must say what its
names look like.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

# What each placeholder of the layout matches (within one path component).
PLACEHOLDERS = {
    "did": r"did:(?:plc:[a-z2-7]{24}|web:[a-zA-Z0-9.%-]+)",
    "handle": r"[a-z0-9][a-z0-9.-]*",
    "email": r"[^/@]+@[^/@]+",
    "host": r"[a-z0-9][a-z0-9.-]*(?::\d+)?",
    "xx": r"[a-z2-7]{2}",  # the last two characters of a base32 CID
    "cid": r"b[a-z2-7]{58}",  # a CIDv1 in base32: blocks (dag-cbor) and blobs (raw)
    "jti": r"[A-Za-z0-9_-]+",
    "code": r"[A-Za-z0-9.-]+",
    "hash": r"[0-9a-f]{32}",
    "sha256": r"[0-9a-f]{64}",
    "id": r"(?:req|ses|dev)-[0-9a-f]{32}",  # OAuth state: request, session, device
    "shard": r"\d{8,}",
    "seq": r"\d{16}",
    "pid": r"\d+",
    "random": r"[0-9a-f]+",
    "purpose": r"confirm_email|update_email|reset_password|delete_account|plc_operation|2fa",
    "mailid": r"\d{20}-[0-9a-f]{8}",  # a spooled mail: "<unix ns>-<random>"
}


def section(title: str, text: str | None = None) -> str:
    """The body of the README section headed `title` (up to the next heading of the
    same or a higher level)."""
    text = README.read_text() if text is None else text
    level = len(title) - len(title.lstrip("#"))
    m = re.search(rf"^{re.escape(title)}\s*$", text, re.M)
    assert m, f"no {title!r} section in {README}"
    rest = text[m.end():]
    end = re.search(rf"^#{{1,{level}}} ", rest, re.M)
    return rest[:end.start()] if end else rest


@dataclass(frozen=True)
class Entry:
    path: str  # with placeholders, relative to the data dir, no trailing slash
    is_dir: bool
    regex: re.Pattern


def _compile(path: str) -> re.Pattern:
    out = []
    for literal, name in re.findall(r"([^<]*)(?:<([^>]*)>)?", path):
        out.append(re.escape(literal))
        if name:
            assert name in PLACEHOLDERS, (
                f"README layout uses <{name}>: add it to PLACEHOLDERS in {__file__}")
            out.append(f"(?:{PLACEHOLDERS[name]})")
    return re.compile("".join(out))


def layout_entries(text: str | None = None) -> list[Entry]:
    """The entries of the README's data-dir layout, as written (not the implied parent
    directories)."""
    body = section("## The data directory", text)
    m = re.search(r"^```[^\n]*\n(.*?)^```", body, re.M | re.S)
    assert m, "no code block in README's '## The data directory'"
    entries: list[Entry] = []
    stack: list[str] = []  # the directories the next lines may be inside
    for line in m.group(1).splitlines():
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip(" "))
        depth, partial = divmod(indent, 4)
        if partial or depth > len(stack):
            continue  # a description's continuation line
        token = line.split()[0]
        stack = stack[:depth]
        is_dir = token.endswith("/")
        path = "/".join([*stack, token.rstrip("/")])
        entries.append(Entry(path, is_dir, _compile(path)))
        if is_dir:
            stack.append(path)
    assert entries, "README's data-dir layout is empty"
    return entries


def all_patterns(entries: list[Entry]) -> list[Entry]:
    """The entries and every directory they imply (`a/<b>/c` implies `a` and `a/<b>`)."""
    out = {(e.path, e.is_dir): e for e in entries}
    for e in entries:
        parts = e.path.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            out.setdefault((parent, True), Entry(parent, True, _compile(parent)))
    return list(out.values())


def walk(root: Path) -> list[tuple[str, bool]]:
    """Every path under `root` (relative, `/`-separated) and whether it is a directory."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for name in dirnames:
            out.append((name if rel == "." else f"{rel}/{name}", True))
        for name in filenames:
            out.append((name if rel == "." else f"{rel}/{name}", False))
    return out


def unlisted(paths: list[tuple[str, bool]], entries: list[Entry]) -> list[str]:
    """The paths the layout has no entry (or implied directory) for."""
    patterns = all_patterns(entries)
    return sorted(p + ("/" if is_dir else "") for p, is_dir in paths
                  if not any(e.is_dir == is_dir and e.regex.fullmatch(p) for e in patterns))


def unseen(paths: list[tuple[str, bool]], entries: list[Entry]) -> list[str]:
    """The layout's entries no path matches."""
    return [e.path + ("/" if e.is_dir else "") for e in entries
            if not any(is_dir == e.is_dir and e.regex.fullmatch(p) for p, is_dir in paths)]


def data_dirs(base: Path) -> list[Path]:
    """The data dirs under `base`: directories holding a `pds.env`."""
    out = []
    for dirpath, dirnames, filenames in os.walk(base):
        if "pds.env" in filenames:
            out.append(Path(dirpath))
            dirnames[:] = []  # nothing inside a data dir is another one
    return sorted(out)


def settings_rows(text: str | None = None) -> list[str]:
    """The variables named in the first column of the README's settings table."""
    body = section("## Settings", text)
    return re.findall(r"^\|\s*`(PDS_[A-Z0-9_]+)`\s*\|", body, re.M)
