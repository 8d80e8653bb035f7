"""`pds account`, `pds invite` and `pds request-crawl`: administration on the server,
through the data dir (changes reach the running server at once)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from .common import CliError, data_dir_option, load_context, load_settings, new_password

if TYPE_CHECKING:
    from ..services.context import AppContext


def _account(data_dir: Path, who: str) -> tuple[AppContext, str]:
    """The services of the data dir, and the DID of the account named."""
    ctx = load_context(data_dir)
    return ctx, _did_of(ctx, who)


def _did_of(ctx: AppContext, who: str) -> str:
    """The DID of an account named by its DID or handle."""
    from ..repo.syntax import is_valid_did, is_valid_handle
    who = who.strip()
    if who.startswith("did:"):
        did = who if is_valid_did(who) else None
    else:
        did = ctx.accounts.did_for_handle(who.lower()) if is_valid_handle(who) else None
    if did is None or ctx.accounts.get(did) is None:
        raise CliError(f"no such account: {who}")
    return did


@click.group()
def account() -> None:
    """Manage accounts."""


@account.command("list")
@data_dir_option
def account_list(data_dir: Path) -> None:
    """List accounts: DID, handle, email, status (tab-separated)."""
    ctx = load_context(data_dir)
    for did in ctx.accounts.list_dids():
        a = ctx.accounts.get(did)
        if a is not None:
            click.echo(f"{did}\t{a['handle']}\t{a.get('email') or '-'}\t"
                       f"{a.get('status') or 'active'}")


@account.command("create")
@click.option("--handle", required=True, help="The new account's handle.")
@click.option("--email", required=True, help="Its email address.")
@click.option("--password", help="Its password. [default: generated, and printed]")
@data_dir_option
def account_create(handle: str, email: str, password: str | None, data_dir: Path) -> None:
    """Create an account (no invite needed).

    Prints its DID and handle (and a generated password) as JSON."""
    import asyncio  # here: `pds serve`, the gunicorn master, imports this module too

    from ..services.accounts import create_account
    ctx = load_context(data_dir)
    chosen = password or new_password()
    out = asyncio.run(create_account(
        ctx, {"handle": handle, "email": email, "password": chosen}, None, operator=True))
    click.echo(json.dumps({"did": out["did"], "handle": out["handle"],
                           **({} if password else {"password": chosen})}))


@account.command("delete")
@click.argument("who", metavar="DID|HANDLE")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@data_dir_option
def account_delete(who: str, yes: bool, data_dir: Path) -> None:
    """Delete an account: its repo, blobs, handle and sessions. Cannot be undone."""
    import asyncio  # see account_create

    ctx, did = _account(data_dir, who)
    handle = (ctx.accounts.get(did) or {}).get("handle", "?")
    if not yes:
        if not sys.stdin.isatty():
            raise CliError("deleting an account cannot be undone: pass --yes to confirm")
        click.confirm(f"Delete {handle} ({did}) with all its data? This cannot be undone",
                      abort=True)
    asyncio.run(ctx.lifecycle.delete(did))
    click.echo(f"deleted: {did}", err=True)


@account.command("takedown")
@click.argument("who", metavar="DID|HANDLE")
@click.option("--ref", help="Your reference for it (a report number).")
@data_dir_option
def account_takedown(who: str, ref: str | None, data_dir: Path) -> None:
    """Take an account down.

    Its sessions end, its repo and blobs are no longer served, and the network is told."""
    ctx, did = _account(data_dir, who)
    ctx.lifecycle.takedown(did, True, ref)
    click.echo(f"takedown: {did}", err=True)


@account.command("untakedown")
@click.argument("who", metavar="DID|HANDLE")
@data_dir_option
def account_untakedown(who: str, data_dir: Path) -> None:
    """Reverse a takedown."""
    ctx, did = _account(data_dir, who)
    ctx.lifecycle.takedown(did, False)
    click.echo(f"untakedown: {did}", err=True)


@account.command("reset-password")
@click.argument("who", metavar="DID|HANDLE")
@click.option("--password", help="The new password. [default: generated, and printed]")
@data_dir_option
def account_reset_password(who: str, password: str | None, data_dir: Path) -> None:
    """Set a new password; every session of the account ends."""
    ctx, did = _account(data_dir, who)
    chosen = password or new_password()
    ctx.lifecycle.set_password(did, chosen)
    if not password:
        click.echo(chosen)
    click.echo(f"reset-password: {did}", err=True)


@click.group()
def invite() -> None:
    """Manage invite codes.

    Sign-up needs one when PDS_INVITE_REQUIRED=true."""


@invite.command("create")
@click.option("--uses", type=click.IntRange(1, 10_000), default=1, show_default=True,
              help="Sign-ups each code allows.")
@click.option("--count", type=click.IntRange(1, 1000), default=1, show_default=True,
              help="How many codes.")
@data_dir_option
def invite_create(uses: int, count: int, data_dir: Path) -> None:
    """Make invite codes; prints one per line."""
    from ..services.accounts import create_invites
    ctx = load_context(data_dir)
    for group in create_invites(ctx, uses, count):
        for code in group["codes"]:
            click.echo(code)


@invite.command("list")
@click.option("--all", "show_all", is_flag=True, help="Include used-up and disabled codes.")
@data_dir_option
def invite_list(show_all: bool, data_dir: Path) -> None:
    """List invite codes.

    One line per code: code, uses left, times used, enabled or disabled, created
    (tab-separated)."""
    ctx = load_context(data_dir)
    for inv in sorted(ctx.accounts.list_invites(), key=lambda i: i["createdAt"]):
        left = inv["available"] - len(inv["uses"])
        if not show_all and (inv["disabled"] or left <= 0):
            continue
        click.echo(f"{inv['code']}\t{left}\t{len(inv['uses'])}\t"
                   f"{'disabled' if inv['disabled'] else 'enabled'}\t{inv['createdAt']}")


@invite.command("disable")
@click.argument("codes", nargs=-1, required=True)
@data_dir_option
def invite_disable(codes: tuple[str, ...], data_dir: Path) -> None:
    """Disable invite codes (sign-ups with them are refused from now on)."""
    from ..services.accounts import disable_invites
    ctx = load_context(data_dir)
    known = {i["code"] for i in ctx.accounts.list_invites()}
    unknown = [c for c in codes if c not in known]
    if unknown:
        raise CliError(f"no such invite code: {', '.join(unknown)}")
    disable_invites(ctx, codes=list(codes))
    click.echo(f"disabled {len(codes)}", err=True)


@click.command("request-crawl")
@click.argument("relays", nargs=-1, metavar="[RELAY_URL]...")
@data_dir_option
def request_crawl(relays: tuple[str, ...], data_dir: Path) -> None:
    """Ask relays (default: PDS_CRAWLERS) to crawl this PDS."""
    import httpx
    settings = load_settings(data_dir)
    targets = list(relays) or settings.crawlers
    if not targets:
        raise CliError("no relays given and PDS_CRAWLERS is empty")
    failed = 0
    for relay in targets:
        url = relay.rstrip("/") + "/xrpc/com.atproto.sync.requestCrawl"
        try:
            r = httpx.post(url, json={"hostname": settings.host_only}, timeout=15)
            click.echo(f"{relay}: {r.status_code} {r.text[:200]}")
            failed += r.status_code != 200
        except httpx.HTTPError as e:
            click.echo(f"{relay}: {e}")
            failed += 1
    if failed:
        raise click.exceptions.Exit(1)
