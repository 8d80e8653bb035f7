"""Settings: `PDS_*` environment variables over `DIR/pds.env` over defaults.

`pds.env` is written by `pds init` (0600: it holds the JWT secret, the admin password and
the PLC rotation key) in the `KEY=value` form systemd's `EnvironmentFile=` reads.

Every value is checked once, here, when the settings are loaded: a mistake stops the
command that loads them with a `SettingsError` naming the variable, where it came from and
what a good value looks like, instead of surfacing later as a wrong DID document.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from .store.envfile import ENV_FILE, parse_env_file

DEFAULT_DATA_DIR = "./data"
DEFAULT_BIND = "127.0.0.1:2583"
DEFAULT_HOSTNAME = "localhost:2583"
# Blob bytes one account may store: a hundred of the largest uploads, far more than a
# heavy user's pictures and videos, yet one account can't fill a small server's disk.
DEFAULT_BLOB_QUOTA = 10 * 1024**3
DEFAULT_MAX_REPO_IMPORT_SIZE = 256 * 1024**2  # a repo of ~100k posts is well under it
DEFAULT_APP_VIEW_URL = "https://api.bsky.app"
DEFAULT_APP_VIEW_DID = "did:web:api.bsky.app"
DEFAULT_REPORT_SERVICE_URL = "https://mod.bsky.app"
DEFAULT_REPORT_SERVICE_DID = "did:plc:ar7c4by46qjdydhdevvrndac"
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")

# One DNS label: letters, digits and inner hyphens, at most 63 characters.
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")
T = TypeVar("T")


class SettingsError(ValueError):
    """A setting that cannot be used; the message says which and how to fix it."""


def is_domain(name: str) -> bool:
    """A DNS name of at least one label (no scheme, port, path or trailing dot)."""
    if not name or len(name) > 253:
        return False
    return all(_LABEL.fullmatch(label) for label in name.split("."))


def check_hostname(value: str, dev: bool) -> str:
    """The public host name, optionally with a port (development only). Raises
    `SettingsError` with a message a person can act on."""
    example = "a bare host name such as pds.example.com"
    if len(value) > 253 + 6:
        raise SettingsError(f"is too long; use {example}")
    if "://" in value or "/" in value:
        raise SettingsError(f"{value!r} is a URL; use {example} (no scheme, path or slash)")
    host, sep, port = value.partition(":")
    if value != value.lower():
        raise SettingsError(f"{value!r} has capital letters; use {value.lower()!r}")
    if not is_domain(host):
        raise SettingsError(f"{value!r} is not a host name; use {example}")
    if sep:
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise SettingsError(f"{value!r} has a bad port")
        if not dev and host != "localhost":
            raise SettingsError(
                f"{value!r} carries a port, which only development setups can use (set "
                "PDS_DEV=true, or `pds init --dev`); in production nginx serves the PDS "
                "on 443 and the host name has no port")
    return value


def check_bind(value: str) -> str:
    """`HOST:PORT`, `[V6]:PORT` or `unix:PATH`."""
    if value.startswith("unix:"):
        if len(value) > 5 + 100 or not value[5:].startswith("/"):
            raise SettingsError(f"{value!r}: a unix socket needs an absolute path (unix:/...)")
        return value
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise SettingsError(f"{value!r} is not HOST:PORT (such as 127.0.0.1:2583) "
                            "or unix:/path/to.sock")
    return value


def check_url(value: str) -> str:
    """An absolute http(s) URL, without its trailing slash."""
    if len(value) > 2048:
        raise SettingsError("is too long")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise SettingsError(f"{value!r} is not an http(s) URL such as https://plc.directory")
    return value.rstrip("/")


def check_cdn_pattern(value: str) -> str:
    """An image URL pattern with three `%s` (preset, DID, CID), as the reference's."""
    if value.count("%s") != 3 or "%" in value.replace("%s", ""):
        raise SettingsError(f"{value!r} needs exactly three %s (preset, DID, blob CID), "
                            "such as https://cdn.bsky.app/img/%s/plain/%s/%s@jpeg")
    check_url(value.replace("%s", "x"))
    return value


def check_smtp_url(value: str) -> str:
    """`smtp://` or `smtps://` with a host, optionally user:password (URL-encoded) and
    port; empty: no mail is sent (it stays in the spool)."""
    if not value:
        return ""
    if len(value) > 2048:
        raise SettingsError("is too long")
    example = "such as smtps://user:password@smtp.example.com"
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        raise SettingsError(f"is not an SMTP URL {example}") from None
    if parts.scheme not in ("smtp", "smtps") or not parts.hostname or port == 0 \
            or parts.path not in ("", "/") or parts.query:
        raise SettingsError(f"is not an SMTP URL {example} (smtp:// or smtps://, a host, "
                            "an optional port; user and password URL-encoded)")
    return value


def check_email_address(value: str) -> str:
    """A bare address (`pds@example.com`) or `Name <address>`; empty: none."""
    if len(value) > 320 or any(c in value for c in "\r\n") or \
            (value and "@" not in value):
        raise SettingsError(f"{value[:80]!r} is not an email address such as "
                            "noreply@pds.example.com")
    return value.strip()
def check_contact_email(value: str) -> str:
    """An email address people can write to (shown by describeServer)."""
    local, at, domain = value.partition("@")
    if len(value) > 254 or not (local and at and "." in domain) or any(c.isspace()
                                                                      for c in value):
        raise SettingsError(f"{value!r} is not an email address such as admin@example.com")
    return value


def _optional(check: Callable[[str], str]) -> Callable[[str], str]:
    """A check that lets an empty value (unset) through."""
    return lambda v: check(v) if v else ""


def check_handle_domain(value: str) -> str:
    """A handle suffix: `.example.com` (the leading dot is added when missing)."""
    domain = value if value.startswith(".") else "." + value
    if not is_domain(domain[1:].lower()):
        raise SettingsError(f"{value!r} is not a domain suffix such as .example.com")
    return domain.lower()


def parse_bool(value: str) -> bool:
    """true/false, yes/no, on/off, 1/0 (any case); anything else is a mistake."""
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise SettingsError(f"{value!r} is not true or false")


def _number(kind: Callable[[str], T], lo: float, hi: float) -> Callable[[str], T]:
    def check(value: str) -> T:
        try:
            n = kind(value.strip())
        except ValueError:
            raise SettingsError(f"{value!r} is not a number") from None
        if not lo <= n <= hi:  # type: ignore[operator]
            raise SettingsError(f"{value!r} is out of range ({lo:g} to {hi:g})")
        return n
    return check


def _choice(*allowed: str) -> Callable[[str], str]:
    def check(value: str) -> str:
        if value.lower() not in allowed:
            raise SettingsError(f"{value!r} is not one of {', '.join(allowed)}")
        return value.lower()
    return check


def _list(v: str) -> list[str]:
    return [x.strip() for x in v.split(",") if x.strip()]


@dataclass
class Settings:
    """Everything configurable about one PDS."""

    data_dir: Path
    hostname: str
    bind: str = DEFAULT_BIND
    workers: int = 2
    pin_workers: bool = True  # each worker on one CPU (pds/server.py, `_pick_cpu`)
    cache_mb: int = 16  # each worker's caches (pds/store/caches.py)
    plc_url: str = "https://plc.directory"
    handle_domains: list[str] = field(default_factory=list)
    invite_required: bool = False
    admin_password: str = ""
    crawlers: list[str] = field(default_factory=list)
    blob_limit: int = 100 * 1024 * 1024
    blob_quota: int = DEFAULT_BLOB_QUOTA  # bytes of blobs per account; 0: no quota
    blob_upload_rate: int = 1000  # uploads per hour per account; 0: no limit
    max_repo_import_size: int = DEFAULT_MAX_REPO_IMPORT_SIZE  # importRepo's CAR; 0: none
    dev: bool = False
    jwt_secret: str = ""
    plc_rotation_key: str = ""
    did_method: str = "plc"  # for new accounts: "plc" or "web"
    firehose_retention_hours: float = 72.0
    behind_nginx: bool = False
    # Where methods this PDS does not serve are forwarded (see pds.services.proxy): the
    # defaults are what the reference PDS's installer writes.
    bsky_app_view_url: str = DEFAULT_APP_VIEW_URL
    bsky_app_view_did: str = DEFAULT_APP_VIEW_DID
    # Image URLs of read-after-write views: "%s" for the preset, DID and CID, in order
    # (e.g. https://cdn.bsky.app/img/%s/plain/%s/%s@jpeg); empty: this PDS's getBlob.
    bsky_app_view_cdn_url_pattern: str = ""
    report_service_url: str = DEFAULT_REPORT_SERVICE_URL
    report_service_did: str = DEFAULT_REPORT_SERVICE_DID
    rate_limits: bool = True
    log_level: str = "info"
    access_log: bool = True
    email_smtp_url: str = ""  # empty: mail stays in the spool
    email_from_address: str = ""
    validate_output: bool = False  # check every JSON answer against its lexicon (tests)
    privacy_policy_url: str = ""  # describeServer's links
    terms_of_service_url: str = ""
    contact_email: str = ""  # describeServer's contact

    @property
    def public_url(self) -> str:
        """The `#atproto_pds` endpoint: scheme and host, no trailing slash."""
        return f"{'http' if self.dev else 'https'}://{self.hostname}"

    @property
    def service_did(self) -> str:
        """The PDS's own DID: did:web of its hostname (a port becomes %3A)."""
        return "did:web:" + self.hostname.replace(":", "%3A")

    @property
    def host_only(self) -> str:
        """The hostname without a port."""
        return self.hostname.split(":")[0]

    @property
    def port(self) -> int | None:
        """The port in the hostname, if it has one."""
        _, sep, port = self.hostname.partition(":")
        return int(port) if sep else None

    @classmethod
    def load(cls, data_dir: str | os.PathLike | None = None,
             env: dict[str, str] | None = None) -> Settings:
        """Settings for a data dir: the process environment overrides `pds.env`.
        Raises `SettingsError` naming the first bad value."""
        environ = dict(os.environ if env is None else env)
        root = Path(data_dir or environ.get("PDS_DATA_DIR") or DEFAULT_DATA_DIR).resolve()
        from_file = parse_env_file(root / ENV_FILE)
        values = {**from_file, **{k: v for k, v in environ.items() if k.startswith("PDS_")}}
        return _Loader(values, from_file, root).settings()


def check_service_did(value: str) -> str:
    """A service's DID (no fragment), or empty."""
    from .repo.syntax import is_valid_did
    if value and not is_valid_did(value):
        raise SettingsError(f"{value!r} is not a DID such as did:web:api.bsky.app")
    return value


class _Loader:
    """Reads each value once, checks it, and says where a bad one came from."""

    def __init__(self, values: dict[str, str], from_file: dict[str, str], root: Path) -> None:
        self.values, self.from_file, self.root = values, from_file, root

    def get(self, name: str, default: str, check: Callable[[str], T]) -> T:
        key = "PDS_" + name
        raw = self.values.get(key, default)
        try:
            return check(raw)
        except SettingsError as e:
            where = (f"in {self.root / ENV_FILE}" if self.from_file.get(key) == raw
                     and key in self.from_file else "in the environment")
            raise SettingsError(f"{key} {where}: {e}") from None

    def service(self, name: str, url: str, did: str) -> tuple[str, str]:
        """A service methods are forwarded to: its URL (empty: none) and its DID, which a
        URL needs (the audience of the tokens sent to it)."""
        u = self.get(name + "_URL", url, lambda v: check_url(v) if v else "")
        d = self.get(name + "_DID", did, check_service_did)
        if u and not d:
            raise SettingsError(f"PDS_{name}_URL is set: set PDS_{name}_DID (its service "
                                "DID) too")
        return u, d

    def settings(self) -> Settings:
        dev = self.get("DEV", "false", parse_bool)
        hostname = self.get("HOSTNAME", DEFAULT_HOSTNAME, lambda v: check_hostname(v, dev))
        app_view = self.service("BSKY_APP_VIEW", DEFAULT_APP_VIEW_URL, DEFAULT_APP_VIEW_DID)
        report = self.service("REPORT_SERVICE", DEFAULT_REPORT_SERVICE_URL,
                              DEFAULT_REPORT_SERVICE_DID)
        domains = self.get("HANDLE_DOMAINS", "",
                           lambda v: [check_handle_domain(d) for d in _list(v)])
        return Settings(
            data_dir=self.root,
            hostname=hostname,
            bind=self.get("BIND", DEFAULT_BIND, check_bind),
            workers=self.get("WORKERS", "2", _number(int, 1, 64)),
            pin_workers=self.get("PIN_WORKERS", "true", parse_bool),
            cache_mb=self.get("CACHE_MB", "16", _number(int, 1, 4096)),
            plc_url=self.get("PLC_URL", "https://plc.directory", check_url),
            handle_domains=domains or ["." + hostname.split(":")[0]],
            invite_required=self.get("INVITE_REQUIRED", "false", parse_bool),
            admin_password=self.get("ADMIN_PASSWORD", "", str),
            crawlers=self.get("CRAWLERS", "",
                              lambda v: [check_url(u) for u in _list(v)]),
            blob_limit=self.get("BLOB_LIMIT", str(100 * 1024 * 1024),
                                _number(int, 1, 2**40)),
            blob_quota=self.get("BLOB_QUOTA", str(DEFAULT_BLOB_QUOTA), _number(int, 0, 2**50)),
            blob_upload_rate=self.get("BLOB_UPLOAD_RATE", "1000", _number(int, 0, 10**6)),
            max_repo_import_size=self.get("MAX_REPO_IMPORT_SIZE",
                                          str(DEFAULT_MAX_REPO_IMPORT_SIZE),
                                          _number(int, 0, 2**50)),
            dev=dev,
            jwt_secret=self.get("JWT_SECRET", "", str),
            plc_rotation_key=self.get("PLC_ROTATION_KEY", "", str),
            did_method=self.get("DID_METHOD", "plc", _choice("plc", "web")),
            firehose_retention_hours=self.get("FIREHOSE_RETENTION", "72",
                                              _number(float, 1e-6, 24 * 365 * 10)),
            behind_nginx=self.get("BEHIND_NGINX", "false", parse_bool),
            bsky_app_view_url=app_view[0], bsky_app_view_did=app_view[1],
            bsky_app_view_cdn_url_pattern=self.get(
                "BSKY_APP_VIEW_CDN_URL_PATTERN", "", lambda v: check_cdn_pattern(v) if v else ""),
            report_service_url=report[0], report_service_did=report[1],
            rate_limits=self.get("RATE_LIMITS", "true", parse_bool),
            log_level=self.get("LOG_LEVEL", "info", _choice(*LOG_LEVELS)),
            access_log=self.get("ACCESS_LOG", "true", parse_bool),
            email_smtp_url=self.get("EMAIL_SMTP_URL", "", check_smtp_url),
            email_from_address=self.get("EMAIL_FROM_ADDRESS",
                                        "noreply@" + hostname.split(":")[0],
                                        check_email_address),
            validate_output=self.get("VALIDATE_OUTPUT", "false", parse_bool),
            privacy_policy_url=self.get("PRIVACY_POLICY_URL", "", _optional(check_url)),
            terms_of_service_url=self.get("TERMS_OF_SERVICE_URL", "", _optional(check_url)),
            contact_email=self.get("CONTACT_EMAIL", "", _optional(check_contact_email)),
        )
