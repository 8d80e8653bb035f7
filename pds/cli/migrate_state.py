"""Where an unfinished `pds account migrate-in` keeps what a second run needs to end the
same way: `migrations/<did>.json` in the data dir (0600, replaced atomically), beside the
repo CAR while it is copied (`<did>.car`). Most progress is read back from the two PDSes
themselves (what this PDS has, what the PLC directory says); the file keeps the choices
made on the first run (handle, email, the old PDS) and the signed PLC operation, which its
single-use emailed token can't make twice. No password or session token is written.

One migration at a time per data dir: the run holds an flock of `migrations/`."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..store.files import fsync_dir, write_file
from ..store.layout import DataDir, file_name
from .common import CliError

STATE_MAX = 1024 * 1024


@dataclass
class MigrationState:
    """What a run decided (and must keep deciding): the account, where it comes from, the
    handle and email it gets here, and a signed PLC operation not submitted yet."""

    did: str
    old_pds: str
    handle: str
    email: str
    started: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                time.gmtime()))
    plc_operation: dict[str, Any] | None = None


class StateFiles:
    """The migrations/ directory of one data dir."""

    def __init__(self, data_dir: Path) -> None:
        self.data = DataDir(data_dir)
        self.dir = self.data.migrations

    def path(self, did: str, suffix: str = ".json") -> Path:
        return self.dir / (file_name(did, "did", suffix) + suffix)

    def car_path(self, did: str) -> Path:
        """Where the repo CAR is downloaded to (0600) before it is imported."""
        return self.path(did, ".car")

    def load(self, did: str) -> MigrationState | None:
        """The state of an unfinished migration of `did`, or None."""
        path = self.path(did)
        try:
            with open(path, "rb") as f:
                raw = f.read(STATE_MAX + 1)
        except FileNotFoundError:
            return None
        try:
            doc = json.loads(raw)
            return MigrationState(**{k: doc[k] for k in MigrationState.__dataclass_fields__
                                     if k in doc})
        except (ValueError, TypeError, KeyError):
            raise CliError(f"{path} is damaged: remove it to start the migration "
                           "again") from None

    def save(self, state: MigrationState) -> None:
        """Write `state` atomically and durably (0600)."""
        self._ensure_dir()
        write_file(self.path(state.did), (json.dumps(asdict(state), indent=1) + "\n").encode(),
                   self.data.tmp, mode=0o600)

    def remove(self, did: str) -> None:
        """Forget a finished migration (state and CAR)."""
        for path in (self.path(did), self.car_path(did)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        if self.dir.is_dir():
            fsync_dir(self.dir)

    def _ensure_dir(self) -> None:
        os.makedirs(self.dir, mode=0o700, exist_ok=True)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the flock of migrations/ (made if missing) for a run; refused while another
        run holds it."""
        self._ensure_dir()
        fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise CliError("another `pds account migrate-in` is running on this data "
                               "dir") from None
            yield
        finally:
            os.close(fd)
