"""`pds verify`, `pds backup` and `pds restore`: the data dir as a whole."""

from __future__ import annotations

from pathlib import Path

import click

from ..store.layout import ENV_FILE
from .common import CliError, Progress, data_dir_option, plural, require_data_dir


@click.command()
@data_dir_option
def verify(data_dir: Path) -> None:
    """Check a data dir offline (a stopped PDS, or a backup).

    Every HEAD names a commit that is there and whose signature verifies, every block
    hashes to its name, every MST is complete, every referenced blob is there and matches
    its CID, and the event log is in order and agrees with the repos. Prints one
    `PROBLEM ...` line per finding; exits 1 if there is any, else 0.
    """
    from ..store.verify import verify_data_dir
    root = require_data_dir(data_dir)
    with Progress() as progress:
        report = verify_data_dir(root, progress=progress)
    for p in report.problems:
        click.echo(f"PROBLEM {p}")
    counts = ", ".join(plural(n, w) for n, w in (
        (report.accounts, "account"), (report.blocks, "block"), (report.records, "record"),
        (report.blobs, "blob"), (report.events, "event"),
        (report.mail, "spooled message")))
    click.echo(f"{counts}: {'OK' if report.ok else plural(len(report.problems), 'problem')}")
    if not report.ok:
        raise click.exceptions.Exit(1)


@click.command()
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
@data_dir_option
def backup(dest: Path, data_dir: Path) -> None:
    """Make a consistent copy of a data dir, live or stopped.

    The copy, in DEST, is itself a data dir. DEST must be new, empty, or an earlier
    backup of the same PDS (then only what changed is copied)."""
    from ..store.backup import backup as run
    root = require_data_dir(data_dir)
    with Progress() as progress:
        out = run(root, dest, progress=progress)
    click.echo(f"backed up {plural(out['accounts'], 'account')} to {dest} "
               f"({plural(out['replayed'], 'recent commit')} replayed into the copy)")


@click.command()
@click.argument("backup_dir", metavar="BACKUP",
                type=click.Path(exists=True, file_okay=False, path_type=Path))
@data_dir_option
def restore(backup_dir: Path, data_dir: Path) -> None:
    """Restore a backup into a new data dir.

    BACKUP is a directory made by `pds backup`; the data dir must be new or empty. Stop
    the PDS first; start it once the restore is done."""
    from ..store.restore import restore as run
    require_data_dir(backup_dir)
    if (data_dir / ENV_FILE).exists():
        raise CliError(f"{data_dir.resolve()} holds a PDS: move it away first "
                       "(restore never overwrites a data dir)")
    with Progress() as progress:
        out = run(backup_dir, data_dir, progress=progress)
    click.echo(f"restored {plural(out['accounts'], 'account')} from {backup_dir} "
               f"into {data_dir.resolve()}")
    click.echo(f"restored: seq floor {out['floor']}, #sync for "
               f"{plural(out['synced'], 'account')}")
