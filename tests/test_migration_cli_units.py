"""The pieces of `pds account migrate-in` that need no server: the handle it picks, when
the PLC data already names this PDS, and its state file (0600, atomic, one run at a time).
The whole command, end to end: test_migration_cli.py."""

from __future__ import annotations

import pytest

from pds.cli.common import CliError
from pds.cli.migrate_flow import default_handle, plc_names
from pds.cli.migrate_state import MigrationState, StateFiles

DID = "did:plc:ewvi7nxzyoun6zhxrhs64oiz"


def test_default_handle() -> None:
    # The old PDS's subdomain becomes ours; a handle already under one of ours stays.
    assert default_handle("alice.old.example", DID, [".pds.example"]) == "alice.pds.example"
    assert default_handle("alice.pds.example", DID, [".x", ".pds.example"]) == \
        "alice.pds.example"
    assert default_handle(None, DID, [".pds.example"]) == "ewvi7nxzyoun6zhxrhs64oiz.pds.example"
    with pytest.raises(CliError):
        default_handle("alice.old.example", DID, [])


def _wanted(endpoint: str = "https://new.example") -> dict:
    return {"rotationKeys": ["did:key:zNew"], "alsoKnownAs": ["at://alice.new.example"],
            "verificationMethods": {"atproto": "did:key:zSign"},
            "services": {"atproto_pds": {"type": "AtprotoPersonalDataServer",
                                         "endpoint": endpoint}}}


def test_plc_names_this_pds_only_when_every_part_is_ours() -> None:
    data = {**_wanted(), "rotationKeys": ["did:key:zMine", "did:key:zNew"]}
    assert plc_names(data, _wanted())
    assert not plc_names(data, _wanted("https://other.example"))
    assert not plc_names({**data, "rotationKeys": ["did:key:zOld"]}, _wanted())
    assert not plc_names({**data, "verificationMethods": {"atproto": "did:key:zOld"}},
                         _wanted())
    assert not plc_names({**data, "alsoKnownAs": ["at://alice.old.example"]}, _wanted())
    assert not plc_names({}, _wanted())


def test_state_file_is_private_atomic_and_forgotten(tmp_path) -> None:
    (tmp_path / "tmp").mkdir()
    files = StateFiles(tmp_path)
    assert files.load(DID) is None
    state = MigrationState(DID, "https://old.example", "alice.new.example", "a@example.com")
    with files.locked():
        files.save(state)
        state.plc_operation = {"type": "plc_operation", "sig": "x"}
        files.save(state)
    path = tmp_path / "migrations" / f"{DID}.json"
    assert path.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "migrations").stat().st_mode & 0o777 == 0o700
    assert files.load(DID) == state
    assert list((tmp_path / "tmp").iterdir()) == []  # staged, then renamed into place
    files.car_path(DID).write_bytes(b"car")
    files.remove(DID)
    assert files.load(DID) is None and list((tmp_path / "migrations").iterdir()) == []


def test_one_run_at_a_time_and_a_damaged_state_is_named(tmp_path) -> None:
    (tmp_path / "tmp").mkdir()
    files = StateFiles(tmp_path)
    with files.locked(), pytest.raises(CliError, match="another"), files.locked():
        pass
    with files.locked():  # released: a later run takes it
        pass
    (tmp_path / "migrations" / f"{DID}.json").write_text("{not json")
    with pytest.raises(CliError, match="damaged"):
        files.load(DID)


def test_only_a_did_plc_or_a_handle_is_taken() -> None:
    from pds.cli.migrate_identity import resolve
    # Refused before anything is asked of the network.
    with pytest.raises(CliError, match="only did:plc"):
        resolve("did:web:alice.example.com", "http://127.0.0.1:9", dev=True)
    for bad in ("not a handle!", "did:plc:", "a" * 300):
        with pytest.raises(CliError, match="not a"):
            resolve(bad, "http://127.0.0.1:9", dev=True)


def test_this_pds_is_reached_directly_at_its_bind_address() -> None:
    from pds.cli.migrate_flow import loopback
    assert loopback("127.0.0.1:2583") == ("http://127.0.0.1:2583", None)
    assert loopback("0.0.0.0:8080") == ("http://127.0.0.1:8080", None)
    assert loopback("[::]:2583") == ("http://[::1]:2583", None)
    assert loopback("[::1]:9") == ("http://[::1]:9", None)
    url, transport = loopback("unix:/run/pds/pds.sock")
    assert url == "http://localhost" and transport is not None
