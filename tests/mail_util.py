"""A real SMTP server for the tests (aiosmtpd), and reading tokens out of its mail."""

from __future__ import annotations

import email
import re
import threading
import time
from email.message import Message
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from harness import free_port

TOKEN_LINE = re.compile(r"^([A-Z2-7]{5}-[A-Z2-7]{5})$", re.MULTILINE)


class Inbox:
    """aiosmtpd handler: keeps every message it accepts."""

    def __init__(self, save_dir: Path | None = None) -> None:
        self.save_dir = save_dir  # each message also written there, as <n>.eml
        self.messages: list[Message] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        self.lock = threading.Lock()

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any,  # noqa: N802
                          address: str, rcpt_options: list[str]) -> str:
        if address.startswith("refused"):  # a mailbox the server refuses for good
            return "550 5.1.1 no such mailbox"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        msg = email.message_from_bytes(envelope.original_content or envelope.content)
        with self.lock:
            self.messages.append(msg)
            self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
            if self.save_dir is not None:
                (self.save_dir / f"{len(self.messages):06d}.eml").write_bytes(
                    envelope.original_content or envelope.content)
        return "250 OK"

    def to(self, address: str) -> list[Message]:
        with self.lock:
            return [m for m in self.messages if m["To"] == address]

    def wait(self, address: str, count: int = 1, timeout: float = 30) -> list[Message]:
        """The first `count` messages to `address`, waiting for them to arrive."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.to(address)
            if len(found) >= count:
                return found
            time.sleep(0.05)
        raise AssertionError(f"no {count} mail(s) to {address}: {len(self.to(address))}")


class SmtpServer:
    """An aiosmtpd server on a loopback port that can be stopped and started again."""

    def __init__(self, port: int | None = None, save_dir: Path | None = None,
                 **controller: Any) -> None:
        self.port = port or free_port()
        self.inbox = Inbox(save_dir)
        self.extra = controller
        self.controller: Controller | None = None

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def start(self) -> SmtpServer:
        self.controller = Controller(self.inbox, hostname="127.0.0.1", port=self.port,
                                     **self.extra)
        self.controller.start()
        return self

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None


def body(msg: Message) -> str:
    part = msg.get_payload(decode=True)
    assert isinstance(part, bytes)
    return part.decode(msg.get_content_charset() or "utf-8")


def token_of(msg: Message) -> str:
    """The token a mail carries (on its own line)."""
    found = TOKEN_LINE.findall(body(msg).replace("\r\n", "\n"))
    assert len(found) == 1, body(msg)
    return str(found[0])


def spooled_token(data_dir: Path, address: str) -> str:
    """The token of the newest spooled mail to `address` (a PDS without SMTP keeps it)."""
    from pds.store.layout import DataDir
    from pds.store.mailspool import MailSpool
    found = [m for m in MailSpool(DataDir(data_dir)).messages() if m["to"] == address]
    assert found, f"no spooled mail to {address}"
    tokens = TOKEN_LINE.findall(found[-1]["text"])
    assert len(tokens) == 1, found[-1]["text"]
    return str(tokens[0])
