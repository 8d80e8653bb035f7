"""`pds mail`: the mail spool, for an operator (a PDS without SMTP keeps its mail there;
one with SMTP keeps only what the server has not accepted yet)."""

from __future__ import annotations

import time
from pathlib import Path

import click

from .common import CliError, data_dir_option, load_context


@click.group()
def mail() -> None:
    """Read (and send) the mail the PDS has not delivered."""


@mail.command("list")
@data_dir_option
def mail_list(data_dir: Path) -> None:
    """List spooled mail, oldest first.

    One line per message: id, made (UTC), recipient, attempts, state (waiting, retrying,
    failed, or held when no SMTP server is set), subject (tab-separated)."""
    ctx = load_context(data_dir)
    for doc in ctx.mailer.spool_dir.messages():
        made = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(doc["createdAt"]))
        if doc.get("failed"):
            state = "failed"
        elif not ctx.mailer.configured:
            state = "held"
        else:
            state = "retrying" if doc.get("attempts") else "waiting"
        click.echo(f"{doc['id']}\t{made}\t{doc['to']}\t{doc.get('attempts', 0)}\t{state}\t"
                   f"{doc['subject']}")


@mail.command("show")
@click.argument("message_id")
@data_dir_option
def mail_show(message_id: str, data_dir: Path) -> None:
    """Print one spooled message (headers, then its text)."""
    from ..store.mailspool import is_message_id
    if not is_message_id(message_id):
        raise CliError(f"not a message id: {message_id[:40]!r} (see `pds mail list`)")
    doc = load_context(data_dir).mailer.spool_dir.get(message_id)
    if doc is None:
        raise CliError(f"no message {message_id} in the spool (sent, or never there)")
    click.echo(f"To: {doc['to']}\nSubject: {doc['subject']}")
    if doc.get("lastError"):
        click.echo(f"Last-Error: {doc['lastError']}")
    click.echo("\n" + doc["text"], nl=False)


@mail.command("send")
@data_dir_option
def mail_send(data_dir: Path) -> None:
    """Try to deliver every spooled message now (failed ones too), over
    PDS_EMAIL_SMTP_URL; prints how many the server accepted."""
    ctx = load_context(data_dir)
    if not ctx.mailer.configured:
        raise CliError("no SMTP server is set (PDS_EMAIL_SMTP_URL)")
    click.echo(f"sent {ctx.mailer.deliver(retry_all=True)}")
