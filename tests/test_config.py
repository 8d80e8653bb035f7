"""Settings are checked once, when loaded: good values load, and each bad one is refused
with the variable and its source named."""

from __future__ import annotations

from pathlib import Path

import pytest

from pds.config import Settings, SettingsError, check_hostname, parse_bool


@pytest.mark.parametrize("value, dev", [
    ("pds.example.com", False), ("localhost", False), ("localhost:2583", False),
    ("localhost:2583", True), ("my-pds.example.co.uk", False), ("pds.example.com:8443", True),
])
def test_good_hostnames(value: str, dev: bool) -> None:
    assert check_hostname(value, dev) == value


@pytest.mark.parametrize("value", [
    "https://pds.example.com", "pds.example.com/", "pds.example.com:443", "-pds.example.com",
    "pds_example.com", "", "a" * 300, "pds.example.com.", "Pds.Example.Com", "pds.ex ample.com",
])
def test_bad_hostnames(value: str) -> None:
    with pytest.raises(SettingsError):
        check_hostname(value, dev=False)


def test_bools_are_strict() -> None:
    assert parse_bool("TRUE") and parse_bool("on") and not parse_bool("0")
    assert not parse_bool("")
    with pytest.raises(SettingsError):
        parse_bool("ture")


def test_load_names_the_variable_and_its_source(tmp_path: Path) -> None:
    (tmp_path / "pds.env").write_text("PDS_HOSTNAME=pds.example.com\nPDS_WORKERS=0\n")
    with pytest.raises(SettingsError, match=r"PDS_WORKERS in .*pds\.env: '0' is out of range"):
        Settings.load(tmp_path, env={})
    s = Settings.load(tmp_path, env={"PDS_WORKERS": "3"})
    assert s.workers == 3 and s.handle_domains == [".pds.example.com"]
    with pytest.raises(SettingsError, match="PDS_WORKERS in the environment"):
        Settings.load(tmp_path, env={"PDS_WORKERS": "x"})


def test_load_normalises_what_it_may(tmp_path: Path) -> None:
    s = Settings.load(tmp_path, env={
        "PDS_HOSTNAME": "localhost:2583", "PDS_DEV": "yes",
        "PDS_HANDLE_DOMAINS": "test, .Example.org",
        "PDS_PLC_URL": "http://127.0.0.1:9/", "PDS_CRAWLERS": "https://bsky.network/",
        "PDS_LOG_LEVEL": "WARNING", "PDS_ACCESS_LOG": "0"})
    assert s.handle_domains == [".test", ".example.org"]
    assert s.plc_url == "http://127.0.0.1:9" and s.crawlers == ["https://bsky.network"]
    assert s.log_level == "warning" and s.access_log is False
    assert s.public_url == "http://localhost:2583"


def test_blob_quota_and_upload_rate(tmp_path: Path) -> None:
    s = Settings.load(tmp_path, env={})
    assert s.blob_quota == 10 * 1024**3 and s.blob_upload_rate == 1000
    s = Settings.load(tmp_path, env={"PDS_BLOB_QUOTA": "0", "PDS_BLOB_UPLOAD_RATE": "0"})
    assert s.blob_quota == 0 and s.blob_upload_rate == 0  # 0: none
    for name, value in (("PDS_BLOB_QUOTA", "-1"), ("PDS_BLOB_QUOTA", "10GB"),
                        ("PDS_BLOB_UPLOAD_RATE", "1.5"), ("PDS_BLOB_UPLOAD_RATE", "-3")):
        with pytest.raises(SettingsError, match=name):
            Settings.load(tmp_path, env={name: value})


def test_max_repo_import_size(tmp_path: Path) -> None:
    assert Settings.load(tmp_path, env={}).max_repo_import_size == 256 * 1024**2
    s = Settings.load(tmp_path, env={"PDS_MAX_REPO_IMPORT_SIZE": "0"})
    assert s.max_repo_import_size == 0  # 0: no limit
    for value in ("-1", "1MB"):
        with pytest.raises(SettingsError, match="PDS_MAX_REPO_IMPORT_SIZE"):
            Settings.load(tmp_path, env={"PDS_MAX_REPO_IMPORT_SIZE": value})


def test_forwarding_services_default_to_bluesky_and_need_a_did(tmp_path: Path) -> None:
    s = Settings.load(tmp_path, env={})
    assert (s.bsky_app_view_url, s.bsky_app_view_did) == ("https://api.bsky.app",
                                                          "did:web:api.bsky.app")
    assert (s.report_service_url, s.report_service_did) == (
        "https://mod.bsky.app", "did:plc:ar7c4by46qjdydhdevvrndac")
    s = Settings.load(tmp_path, env={"PDS_BSKY_APP_VIEW_URL": "https://av.example.com/",
                                     "PDS_BSKY_APP_VIEW_DID": "did:web:av.example.com",
                                     "PDS_REPORT_SERVICE_URL": ""})
    assert s.bsky_app_view_url == "https://av.example.com" and s.report_service_url == ""
    with pytest.raises(SettingsError, match="PDS_BSKY_APP_VIEW_DID"):
        Settings.load(tmp_path, env={"PDS_BSKY_APP_VIEW_DID": ""})
    with pytest.raises(SettingsError, match="PDS_REPORT_SERVICE_DID in the environment"):
        Settings.load(tmp_path, env={"PDS_REPORT_SERVICE_DID": "mod.bsky.app"})
    with pytest.raises(SettingsError, match="PDS_BSKY_APP_VIEW_URL"):
        Settings.load(tmp_path, env={"PDS_BSKY_APP_VIEW_URL": "ftp://x"})
    assert s.bsky_app_view_cdn_url_pattern == ""  # unset: this PDS's getBlob
    pattern = "https://cdn.bsky.app/img/%s/plain/%s/%s@jpeg"
    s = Settings.load(tmp_path, env={"PDS_BSKY_APP_VIEW_CDN_URL_PATTERN": pattern})
    assert s.bsky_app_view_cdn_url_pattern == pattern
    for bad in ("https://cdn.example.com/%s/%s", "https://cdn.example.com/%s/%s/%s/%d",
                "ftp://cdn/%s/%s/%s"):
        with pytest.raises(SettingsError, match="PDS_BSKY_APP_VIEW_CDN_URL_PATTERN"):
            Settings.load(tmp_path, env={"PDS_BSKY_APP_VIEW_CDN_URL_PATTERN": bad})


def test_init_writes_the_forwarding_services(tmp_path: Path) -> None:
    from pds.cli.setup_cmds import _init_values
    values = _init_values("pds.example.com", "", "https://plc.directory", "plc", False)
    assert values["PDS_BSKY_APP_VIEW_URL"] == "https://api.bsky.app"
    assert values["PDS_BSKY_APP_VIEW_DID"] == "did:web:api.bsky.app"
    assert values["PDS_REPORT_SERVICE_URL"] == "https://mod.bsky.app"
    assert values["PDS_REPORT_SERVICE_DID"] == "did:plc:ar7c4by46qjdydhdevvrndac"
