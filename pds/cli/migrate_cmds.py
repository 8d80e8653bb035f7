"""`pds account migrate-in --from HANDLE|DID`: move an account from another PDS into this
one (the flow is `migrate_flow`; this is the command: options, prompts, the dry run)."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from .common import data_dir_option, load_settings


@click.command("migrate-in")
@click.option("--from", "who", required=True, metavar="HANDLE|DID",
              help="The account to move here, by its handle or DID (did:plc).")
@click.option("--handle", help="Its handle here. [default: its handle if it is under one of "
              "this PDS's handle domains, else its first label under the first one]")
@click.option("--email", help="Its email address here. [default: its address on the old PDS]")
@click.option("--old-pds", metavar="URL", help="The old PDS's URL, to resolve a handle that "
              "DNS and https can't (one that PDS hosts).")
@click.option("--pds-url", metavar="URL", help="Where this PDS answers (a running `pds serve`). "
              "[default: PDS_BIND, if this PDS answers there, else its public URL]")
@click.option("--old-password", envvar="PDS_MIGRATE_OLD_PASSWORD", metavar="PASSWORD",
              help="The account's password on the old PDS (also "
              "$PDS_MIGRATE_OLD_PASSWORD). [default: asked]")
@click.option("--new-password", envvar="PDS_MIGRATE_NEW_PASSWORD", metavar="PASSWORD",
              help="Its password here, chosen now (also $PDS_MIGRATE_NEW_PASSWORD); a run "
              "that resumes needs the same. [default: asked]")
@click.option("--dry-run", is_flag=True,
              help="Say what would be done (old PDS, counts, the PLC changes); change nothing.")
@data_dir_option
def migrate_in(who: str, handle: str | None, email: str | None, old_pds: str | None,
               pds_url: str | None, old_password: str | None, new_password: str | None,
               dry_run: bool, data_dir: Path) -> None:
    """Move an account from another PDS into this one, with the official migration flow.

    Signs in to the old PDS with the account's password (and the sign-in code it emails,
    if it asks for one), creates the account here with the same DID, copies its repo,
    blobs and preferences, asks the old PDS to sign the DID document's change (it emails
    a code to the account's address: type it in), submits it, activates the account here
    and deactivates it on the old PDS. This PDS must be running: the command talks to it
    over HTTP, as any client would.

    Interrupted, it continues where it was when run again (its state is in the data dir's
    migrations/ until it ends)."""
    # httpx logs each request at INFO: the operator sees the steps instead.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    from .migrate_flow import Options
    from .migrate_run import run
    settings = load_settings(data_dir)
    run(settings, Options(who, old_password, new_password, handle, email, old_pds, pds_url),
        dry_run)
