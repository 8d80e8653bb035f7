"""Mail delivery: the spool (`store.mailspool`) drained over SMTP in the background.

`PDS_EMAIL_SMTP_URL` says where, as the reference configures it: `smtp://` (STARTTLS
when the server offers it; port 587 unless given) or `smtps://` (TLS from the start; port
465), the user and password URL-encoded in it. One worker at a time delivers (an flock in
tmp/); a message leaves the spool only once the server accepted it. A failure is tried
again with a doubling delay (5 s up to an hour); a refusal for good (a 5xx) leaves it in
the spool marked `failed`, for the operator to see with `pds mail list`.

smtplib blocks: delivery runs in a worker thread, never on the event loop. It is imported
there, when there is mail to send: every worker runs the sender, most never send.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from ..store.files import try_flock
from ..store.layout import MAIL_LOCK
from ..store.mailspool import MailSpool
from .threads import blocking

if TYPE_CHECKING:
    import smtplib
    from email.message import EmailMessage

log = logging.getLogger("pds")
POLL = 2.0  # seconds between looks at the spool (a new message wakes its own worker)
FIRST_RETRY, LAST_RETRY = 5.0, 3600.0
SMTP_TIMEOUT = 30.0


@dataclass(frozen=True)
class SmtpTarget:
    """Where and how to deliver."""

    host: str
    port: int
    tls: bool  # smtps: TLS from the first byte
    user: str
    password: str

    @classmethod
    def parse(cls, url: str) -> SmtpTarget:
        """From `smtp[s]://[user[:password]@]host[:port]` (validated by config)."""
        parts = urlsplit(url)
        tls = parts.scheme == "smtps"
        return cls(host=parts.hostname or "", port=parts.port or (465 if tls else 587),
                   tls=tls, user=unquote(parts.username or ""),
                   password=unquote(parts.password or ""))


class Permanent(Exception):
    """The server refused the message for good."""


def _connect(target: SmtpTarget) -> smtplib.SMTP:
    import smtplib
    import ssl
    context = ssl.create_default_context()
    if target.tls:
        smtp: smtplib.SMTP = smtplib.SMTP_SSL(target.host, target.port, timeout=SMTP_TIMEOUT,
                                              context=context)
    else:
        smtp = smtplib.SMTP(target.host, target.port, timeout=SMTP_TIMEOUT)
    try:
        smtp.ehlo()
        if not target.tls and smtp.has_extn("starttls"):
            smtp.starttls(context=context)
            smtp.ehlo()
        if target.user:
            smtp.login(target.user, target.password)
    except BaseException:
        smtp.close()
        raise
    return smtp


def _message(doc: dict[str, Any], sender: str) -> EmailMessage:
    from email.message import EmailMessage
    from email.utils import format_datetime, make_msgid, parseaddr
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = doc["to"]
    msg["Subject"] = doc["subject"]
    msg["Date"] = format_datetime(
        datetime.datetime.fromtimestamp(doc["createdAt"], datetime.UTC))
    msg["Message-ID"] = make_msgid(idstring=doc["id"],
                                   domain=parseaddr(sender)[1].rpartition("@")[2])
    msg.set_content(doc["text"])
    return msg


def _send_one(smtp: smtplib.SMTP, doc: dict[str, Any], sender: str) -> None:
    import smtplib
    from email.utils import parseaddr
    try:
        smtp.send_message(_message(doc, sender), from_addr=parseaddr(sender)[1],
                          to_addrs=[doc["to"]])
    except smtplib.SMTPRecipientsRefused as e:
        codes = [code for code, _ in e.recipients.values()]
        if all(code >= 500 for code in codes):
            raise Permanent(str(e.recipients)) from None
        raise
    except (smtplib.SMTPSenderRefused, smtplib.SMTPDataError) as e:
        if e.smtp_code >= 500:
            raise Permanent(f"{e.smtp_code} {e.smtp_error!r}") from None
        raise


class Mailer:
    """The spool of one data dir and its delivery."""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        self.spool_dir = MailSpool(ctx.data)
        self._wake: asyncio.Event | None = None

    @property
    def configured(self) -> bool:
        return bool(self.ctx.settings.email_smtp_url)

    def spool(self, to: str, subject: str, text: str) -> str:
        """Put a message in the spool (durable on return) and wake the sender; its id.
        Blocking; safe from any thread."""
        mid = self.spool_dir.add(to, subject, text)
        loop, wake = self.ctx.loop, self._wake
        if loop is not None and wake is not None:
            loop.call_soon_threadsafe(wake.set)
        return mid

    async def run(self) -> None:
        """The worker's sender: deliver what is due, then wait for a new message or POLL."""
        self._wake = asyncio.Event()
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), POLL)
            except TimeoutError:
                pass
            self._wake.clear()
            if not self.configured:
                continue
            try:
                await blocking(self.deliver)
            except Exception:  # noqa: BLE001 - the next round tries again
                log.exception("mail delivery failed")

    def deliver(self, retry_all: bool = False) -> int:
        """Send every message that is due (with `retry_all`: every one, failed or waiting
        for its retry); one process at a time. How many the server accepted."""
        with try_flock(self.ctx.data.tmp / MAIL_LOCK) as held:
            if not held:
                return 0
            now = time.time()
            due = [d for d in self.spool_dir.messages() if retry_all or
                   (not d.get("failed") and d.get("nextAttemptAt", 0) <= now)]
            return self._deliver(due) if due else 0

    def _deliver(self, due: list[dict[str, Any]]) -> int:
        import smtplib  # here, not with the app: see the module's docstring
        target = SmtpTarget.parse(self.ctx.settings.email_smtp_url)
        sender = self.ctx.settings.email_from_address or f"noreply@{self.ctx.settings.host_only}"
        sent = 0
        try:
            smtp = _connect(target)
        except (OSError, smtplib.SMTPException) as e:
            for doc in due:
                self._failed(doc, e)
            return 0
        try:
            for doc in due:
                try:
                    _send_one(smtp, doc, sender)
                except Permanent as e:
                    self._failed(doc, e, permanent=True)
                except (OSError, smtplib.SMTPException) as e:
                    self._failed(doc, e)
                else:
                    self.spool_dir.remove(doc["id"])
                    sent += 1
        finally:
            try:
                smtp.quit()
            except (OSError, smtplib.SMTPException):
                smtp.close()
        return sent

    def _failed(self, doc: dict[str, Any], error: BaseException,
                permanent: bool = False) -> None:
        attempts = int(doc.get("attempts", 0)) + 1
        delay = min(LAST_RETRY, FIRST_RETRY * 2 ** (attempts - 1))
        doc.update(attempts=attempts, nextAttemptAt=int(time.time() + delay),
                   lastError=f"{type(error).__name__}: {error}"[:500])
        if permanent:
            doc["failed"] = True
        log.warning("mail %s to %s not sent (attempt %d): %s", doc["id"], doc["to"],
                    attempts, doc["lastError"])
        if self.spool_dir.get(doc["id"]) is not None:
            self.spool_dir.update(doc)
