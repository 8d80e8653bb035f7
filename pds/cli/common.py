"""What every `pds` command shares: the `--data-dir` option, loading settings and the
app context, the error every command reports the same way, and progress output."""

from __future__ import annotations

import os
import secrets
import string
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

import click

from ..config import DEFAULT_DATA_DIR, ENV_FILE, Settings
from ..store.format import CURRENT, read_format

if TYPE_CHECKING:
    from ..services.context import AppContext

F = TypeVar("F", bound=Callable[..., Any])
# Generated passwords: letters and digits only, so one never starts with "-" (an option
# to every argument parser) or needs quoting in a shell.
_PASSWORD_ALPHABET = string.ascii_letters + string.digits


class CliError(click.ClickException):
    """A failure the operator can act on: printed as `error: ...`, exit status 1."""

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"error: {self.message}", err=True)


def data_dir_option(fn: F) -> F:
    """`--data-dir DIR`, from $PDS_DATA_DIR when not given, else ./data."""
    return click.option(
        "--data-dir", "data_dir", type=click.Path(file_okay=False, path_type=Path),
        envvar="PDS_DATA_DIR", default=DEFAULT_DATA_DIR, show_default=True,
        help="The PDS's data directory (also $PDS_DATA_DIR).")(fn)


def require_data_dir(data_dir: Path) -> Path:
    """The data dir, resolved, refused unless it holds a PDS of a format we understand."""
    root = data_dir.resolve()
    if not (root / ENV_FILE).is_file():
        raise CliError(f"no PDS data dir at {root} ({ENV_FILE} is missing; "
                       f"`pds init --data-dir {data_dir}` makes one)")
    found = read_format(root)
    if found > CURRENT:
        raise CliError(f"{root} is in data format {found}, newer than this pds understands "
                       f"({CURRENT}): install a newer pds (not touching it)")
    return root


def load_settings(data_dir: Path) -> Settings:
    """The settings of an existing data dir (its pds.env under the environment)."""
    return Settings.load(require_data_dir(data_dir))


def load_context(data_dir: Path) -> AppContext:
    """The services of an existing data dir, as a worker of the server has them."""
    from ..services.context import AppContext
    return AppContext(load_settings(data_dir))


def new_password() -> str:
    """A random password of 20 letters and digits (about 119 bits)."""
    return "".join(secrets.choice(_PASSWORD_ALPHABET) for _ in range(20))


def plural(n: int, word: str) -> str:
    """`1 problem`, `2 problems`."""
    return f"{n} {word}{'' if n == 1 else 's'}"


class Progress:
    """A progress line for long jobs, on standard error when it is a terminal, redrawn at
    most every `interval` seconds; silent in scripts and logs. Call it as the store's
    progress callback: `progress(stage, done, total)`."""

    def __init__(self, stream: IO[str] | None = None, interval: float = 0.2) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() and os.environ.get("TERM") != "dumb"
        self.interval = interval
        self._last = 0.0
        self._drawn = False

    def __call__(self, stage: str, done: int, total: int | None) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last < self.interval and done != total:
            return
        self._last = now
        text = f"{stage}: {done}" + (f"/{total} ({100 * done // max(total, 1)}%)"
                                     if total else "")
        self.stream.write("\r\x1b[K" + text)
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        """Erase the line, so what follows starts clean."""
        if self._drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._drawn = False
