"""The data dir's format version: `FORMAT` holds an integer.

`pds serve` migrates an older data dir in place and refuses a newer one, so an upgrade
is "install the new version and restart", and a downgrade fails loudly instead of
misreading files.
"""

from __future__ import annotations

from pathlib import Path

from .files import read_file, write_file
from .layout import ENV_FILE, FORMAT_FILE, INIT_DIRS, TMP

CURRENT = 1


class FormatError(ValueError):
    """A data dir this program must not read or change; the message says what to do."""


def read_format(root: Path) -> int:
    data = read_file(root / FORMAT_FILE)
    if data is None:
        return 0  # made before versions were recorded
    try:
        return int(data.decode().strip())
    except ValueError:
        raise FormatError(f"{root / FORMAT_FILE} is not a number") from None


def _migrate_0_to_1(root: Path) -> None:
    # Version 0 had no event-log or well-known directories made up front: make every
    # directory a new data dir starts with.
    for d in INIT_DIRS:
        (root / d).mkdir(exist_ok=True)


MIGRATIONS = {0: _migrate_0_to_1}


def ensure_current(root: Path) -> int:
    """Bring a data dir to the current format; returns the version it had."""
    found = read_format(root)
    if found > CURRENT:
        raise FormatError(
            f"{root} is in data format {found}, newer than this pds understands "
            f"({CURRENT}); install a newer pds (refusing to touch it)")
    version = found
    while version < CURRENT:
        MIGRATIONS[version](root)
        version += 1
        write_file(root / FORMAT_FILE, f"{version}\n".encode(), root / TMP)
    return found


def require_current(root: Path) -> None:
    """Refuse, before reading anything else, a directory that is not a data dir or whose
    format is newer than this program understands. For the tools that read a data dir
    without migrating it (backup, verify, account administration): an older format is
    fine to read, a newer one may mean anything."""
    root = Path(root)
    if not (root / ENV_FILE).is_file():
        what = "does not exist" if not root.exists() else f"has no {ENV_FILE}"
        raise FormatError(f"{root} is not a PDS data dir (it {what}); give the right "
                          "--data-dir (or PDS_DATA_DIR), or create one with `pds init`")
    found = read_format(root)
    if found > CURRENT:
        raise FormatError(
            f"{root} is in data format {found}, newer than this pds understands "
            f"({CURRENT}); use the pds version that wrote it, or a newer one")


def stamp(root: Path) -> None:
    """Record the current format in a new data dir."""
    write_file(root / FORMAT_FILE, f"{CURRENT}\n".encode(), root / TMP)
