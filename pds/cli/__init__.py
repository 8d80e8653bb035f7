"""`pds`: the operator's command line (click).

Every command takes `--data-dir` (default $PDS_DATA_DIR, else ./data); `pds COMMAND
--help` describes each. A failure prints one `error: ...` line and exits 1: tracebacks
are for bugs, and even those print one line unless PDS_DEBUG=1.
"""

from __future__ import annotations

import logging
import os
import sys

import click

from .. import __version__
from .admin_cmds import account, invite, request_crawl
from .common import CliError
from .data_cmds import backup, restore, verify
from .mail_cmds import mail
from .migrate_cmds import migrate_in
from .setup_cmds import init, serve


@click.group(context_settings={"help_option_names": ["-h", "--help"],
                               "max_content_width": 100})
@click.version_option(__version__, "-V", "--version", prog_name="pds")
def cli() -> None:
    """pds: an atproto Personal Data Server whose data directory is its database.

    Start with `pds init`, then `pds serve`. Settings are PDS_* environment variables
    over the data dir's pds.env.
    """


for command in (init, serve, verify, backup, restore, account, invite, mail, request_crawl):
    cli.add_command(command)
account.add_command(migrate_in)


def _known_errors() -> tuple[type[BaseException], ...]:
    """Failures a person can act on, reported without a traceback."""
    from ..config import SettingsError
    from ..store.format import FormatError
    return (SettingsError, FormatError, ValueError, OSError)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `pds` console script; returns the exit status."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    from ..errors import PdsError
    from ..xrpc.errors import error_name
    try:
        rv = cli.main(args=argv, prog_name="pds", standalone_mode=False)
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 1
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except PdsError as e:
        click.echo(f"error: {error_name(e)}: {e.message}", err=True)
        return 1
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    except Exception as e:  # noqa: BLE001 - the one place every failure is reported
        if os.environ.get("PDS_DEBUG") or not isinstance(e, _known_errors()):
            if os.environ.get("PDS_DEBUG"):
                raise
            click.echo(f"error: unexpected {type(e).__name__}: {e} "
                       "(PDS_DEBUG=1 shows where)", err=True)
            return 1
        click.echo(f"error: {e}", err=True)
        return 1
    return rv if isinstance(rv, int) else 0


__all__ = ["CliError", "cli", "main"]

if __name__ == "__main__":
    sys.exit(main())
