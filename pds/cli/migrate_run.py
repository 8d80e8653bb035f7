"""The work of `pds account migrate-in` (`migrate_cmds` is the command: its options;
this module is imported only when it runs, so `pds` starts without httpx and the
signing libraries)."""

from __future__ import annotations

import sys
from contextlib import AbstractContextManager
from typing import Any

import click

from ..config import Settings
from .common import CliError
from .migrate_flow import Bar, Here, Migration, Options, default_handle, sign_in
from .migrate_http import Xrpc, XrpcFailure
from .migrate_identity import OldAccount, resolve
from .migrate_state import MigrationState, StateFiles


class ClickUi:
    """Messages and progress on standard error, questions on the terminal (or stdin)."""

    def say(self, text: str) -> None:
        click.echo(text, err=True)

    def ask(self, text: str, hide: bool = False, confirm: bool = False) -> str:
        return str(click.prompt(text, hide_input=hide, confirmation_prompt=confirm, err=True))

    def bar(self, label: str, length: int) -> AbstractContextManager[Bar]:
        return click.progressbar(length=length, label=label, file=sys.stderr, show_pos=True)


def run(settings: Settings, opts: Options, dry_run: bool) -> None:
    """Run the migration (or its dry run) with click for messages and questions."""
    try:
        _migrate_in(settings, opts, ClickUi(), dry_run)
    except XrpcFailure as e:
        raise CliError(str(e)) from None


def _migrate_in(settings: Settings, opts: Options, ui: ClickUi, dry_run: bool) -> None:
    files = StateFiles(settings.data_dir)
    old = resolve(opts.who, settings.plc_url, settings.dev, opts.old_pds)
    state = files.load(old.did)
    here = Here(settings, opts.pds_url)
    source = state.old_pds if state else old.pds_url
    if state is None and source == settings.public_url:
        raise CliError(f"{old.did} is hosted here already (its DID document names this PDS)")
    src = Xrpc(source, f"old PDS ({source})")
    try:
        password = opts.old_password or ui.ask(
            f"Password of {old.handle or old.did} on {source}", hide=True)
        session = sign_in(src, old.did, password, ui)
        if state is None:
            state = MigrationState(old.did, source, _handle(opts, old, here), _email(
                opts, session, ui))
        elif not here.has_account(old.did):
            # Nothing was made with the first run's choices yet (the handle was taken,
            # say): this run's options win.
            state.handle = _handle(opts, old, here) if opts.handle else state.handle
            state.email = opts.email or state.email
        elif opts.handle and opts.handle.lower() != state.handle:
            ui.say(f"the account is here already, with the handle {state.handle}")
        if dry_run:
            click.echo(plan(settings, old, here, state, src, files.load(old.did) is not None))
            _sign_out(src, session)
            return
        ui.say(("resuming the migration started " + state.started) if files.load(old.did)
               else f"moving {old.did} from {source}")
        ui.say(f"this PDS at {here.url}")
        with files.locked():
            Migration(settings, opts, ui, here, state, files, src).run()
        done = here.status()
        click.echo(f"moved {old.did} ({state.handle}) here: "
                   f"{done.get('indexedRecords')} records, {done.get('importedBlobs')} blobs")
    finally:
        src.close()
        here.close()


def _handle(opts: Options, old: OldAccount, here: Here) -> str:
    if opts.handle:
        return opts.handle.lower().removeprefix("@")
    return default_handle(old.handle, old.did, list(here.server.get("availableUserDomains")
                                                    or []))


def _email(opts: Options, session: dict[str, Any], ui: ClickUi) -> str:
    return opts.email or session.get("email") or ui.ask("Email address of the account here")


def _sign_out(src: Xrpc, session: dict[str, Any]) -> None:
    """End the dry run's session on the old PDS (best effort: it expires anyway)."""
    try:
        src.post("com.atproto.server.deleteSession",
                 headers={"Authorization": f"Bearer {session.get('refreshJwt')}"})
    except XrpcFailure:
        pass


def _rotation_did_key(settings: Settings) -> str:
    from ..repo.signing_keys import K256PrivateKey
    try:
        key = K256PrivateKey.from_bytes(bytes.fromhex(settings.plc_rotation_key.strip()))
    except ValueError:
        return "this PDS's rotation key (PDS_PLC_ROTATION_KEY is not readable)"
    return key.public_key().did_key()


def plan(settings: Settings, old: OldAccount, here: Here, state: MigrationState,
         src: Xrpc, resuming: bool) -> str:
    """What a run would do, in words (the dry run's answer)."""
    status = src.get("com.atproto.server.checkAccountStatus")
    data = old.plc_data or {}
    old_key = (data.get("verificationMethods") or {}).get("atproto", "?")
    exists = here.has_account(old.did)
    lines = [
        f"would move {old.did} ({old.handle or 'no handle'}) into this PDS:",
        f"  from:            {state.old_pds} (the old PDS)",
        f"  to:              {here.url} (this PDS, {here.server.get('did')})",
        f"  handle here:     {state.handle}",
        f"  email:           {state.email}",
        f"  repo:            rev {status.get('repoRev')}, {status.get('indexedRecords')} records",
        f"  blobs:           {status.get('expectedBlobs')}",
        "  account here:    " + ("exists (a previous run made it)" if exists else
                                 "created deactivated" + (", with an invite made here"
                                 if here.server.get("inviteCodeRequired") else "")),
        f"  PLC document of {old.did}, changed:",
        f"    PDS endpoint:  {state.old_pds} -> {settings.public_url}",
        f"    handle:        {', '.join(data.get('alsoKnownAs') or [])} -> at://{state.handle}",
        f"    signing key:   {old_key} -> "
        + ("the key this PDS holds for it" if exists else "a key this PDS makes for it"),
        f"    rotation keys: {', '.join(data.get('rotationKeys') or [])} -> "
        f"{_rotation_did_key(settings)}",
        "  then:            activate it here, deactivate it on the old PDS",
    ]
    if resuming:
        lines.append(f"  (resumes the migration started {state.started})")
    lines.append("nothing was changed (--dry-run)")
    return "\n".join(lines)
