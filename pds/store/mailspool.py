"""The mail spool: `mail/<id>.json`, one outgoing message each (0600: they carry tokens).

A message is written (fsynced, file and directory) before the request that makes it
answers, so it survives a crash; the sender (`services.mailer`) removes it once the SMTP
server accepted it, and otherwise records the attempt in it (`attempts`, `nextAttemptAt`,
`lastError`, and `failed` once the server refused it for good). `<id>` sorts by when the
message was made: `<unix ns, 20 digits>-<8 random hex>`.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from pathlib import Path
from typing import Any

from .files import ensure_dir, fsync_dir, read_file, write_file
from .layout import DataDir

SUFFIX = ".json"
_ID = re.compile(r"[0-9]{20}-[0-9a-f]{8}")


def is_message_id(text: str) -> bool:
    """A spool id's syntax (what `pds mail show` accepts)."""
    return len(text) == 29 and _ID.fullmatch(text) is not None


class MailSpool:
    """The spool directory of a data dir."""

    def __init__(self, data: DataDir) -> None:
        self.data = data
        self.root = data.mail

    def _path(self, mid: str) -> Path:
        if not is_message_id(mid):
            raise ValueError(f"not a message id: {mid[:40]!r}")
        return self.root / (mid + SUFFIX)

    def add(self, to: str, subject: str, text: str) -> str:
        """Spool a plain-text message to `to`; durable when this returns. Its id."""
        mid = f"{time.time_ns():020d}-{secrets.token_hex(4)}"
        doc = {"id": mid, "to": to, "subject": subject, "text": text,
               "createdAt": int(time.time()), "attempts": 0, "nextAttemptAt": 0}
        if not self.root.is_dir():  # the first message: make mail/ itself durable too
            ensure_dir(self.root, 0o700)
            fsync_dir(self.data.root)
        write_file(self._path(mid), json.dumps(doc).encode(), self.data.tmp, mode=0o600)
        return mid

    def ids(self) -> list[str]:
        """Ids of the spooled messages, oldest first."""
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return []
        return sorted(n[:-len(SUFFIX)] for n in names
                      if n.endswith(SUFFIX) and is_message_id(n[:-len(SUFFIX)]))

    def get(self, mid: str) -> dict[str, Any] | None:
        """A spooled message, or None when it is gone (sent meanwhile)."""
        data = read_file(self._path(mid))
        return None if data is None else dict(json.loads(data))

    def messages(self) -> list[dict[str, Any]]:
        """Every spooled message, oldest first."""
        out = []
        for mid in self.ids():
            doc = self.get(mid)
            if doc is not None:
                out.append(doc)
        return out

    def update(self, doc: dict[str, Any]) -> None:
        """Record a delivery attempt in the message (not fsynced: losing it in a crash
        only means one more attempt sooner)."""
        write_file(self._path(doc["id"]), json.dumps(doc).encode(), self.data.tmp,
                   durable=False, mode=0o600)

    def remove(self, mid: str) -> None:
        """Drop a message the server accepted."""
        try:
            os.unlink(self._path(mid))
        except FileNotFoundError:
            pass
