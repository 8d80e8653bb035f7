"""Settings: `PDS_*` environment variables over `DIR/pds.env` over defaults.

`pds.env` is written by `pds init` (0600: it holds the JWT secret, the admin password and
the PLC rotation key) in the `KEY=value` form systemd's `EnvironmentFile=` reads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_DATA_DIR = "./data"
DEFAULT_BIND = "127.0.0.1:2583"
ENV_FILE = "pds.env"


def parse_env_file(path: Path) -> dict[str, str]:
    """Read `KEY=value` lines (blank lines and `#` comments skipped, quotes stripped)."""
    out: dict[str, str] = {}
    try:
        text = path.read_text()
    except FileNotFoundError:
        return out
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        k, _, v = line.partition("=")
        v = v.strip()
        if len(v) >= 2 and v[0] == v[-1] and v[0] in "\"'":
            v = v[1:-1]
        out[k.strip()] = v
    return out


def _bool(v: str | None) -> bool:
    return (v or "").strip().lower() in ("1", "true", "yes", "on")


def _list(v: str | None) -> list[str]:
    return [x.strip() for x in (v or "").split(",") if x.strip()]


@dataclass
class Settings:
    """Everything configurable about one PDS."""

    data_dir: Path
    hostname: str
    bind: str = DEFAULT_BIND
    workers: int = 2
    plc_url: str = "https://plc.directory"
    handle_domains: list[str] = field(default_factory=list)
    invite_required: bool = False
    admin_password: str = ""
    crawlers: list[str] = field(default_factory=list)
    blob_limit: int = 100 * 1024 * 1024
    dev: bool = False
    jwt_secret: str = ""
    plc_rotation_key: str = ""
    did_method: str = "plc"  # for new accounts: "plc" or "web"
    firehose_retention_hours: float = 72.0
    behind_nginx: bool = False
    appview_url: str = ""
    appview_did: str = ""
    rate_limits: bool = True

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

    @classmethod
    def load(cls, data_dir: str | os.PathLike | None = None,
             env: dict[str, str] | None = None) -> Settings:
        """Settings for a data dir: the process environment overrides `pds.env`."""
        environ = dict(os.environ if env is None else env)
        root = Path(data_dir or environ.get("PDS_DATA_DIR") or DEFAULT_DATA_DIR).resolve()
        values = {**parse_env_file(root / ENV_FILE),
                  **{k: v for k, v in environ.items() if k.startswith("PDS_")}}

        def get(name: str, default: str = "") -> str:
            return values.get("PDS_" + name, default)

        hostname = get("HOSTNAME", "localhost:2583")
        domains = _list(get("HANDLE_DOMAINS")) or ["." + hostname.split(":")[0]]
        return cls(
            data_dir=root,
            hostname=hostname,
            bind=get("BIND", DEFAULT_BIND),
            workers=int(get("WORKERS", "2")),
            plc_url=get("PLC_URL", "https://plc.directory").rstrip("/"),
            handle_domains=[d if d.startswith(".") else "." + d for d in domains],
            invite_required=_bool(get("INVITE_REQUIRED")),
            admin_password=get("ADMIN_PASSWORD"),
            crawlers=_list(get("CRAWLERS")),
            blob_limit=int(get("BLOB_LIMIT", str(100 * 1024 * 1024))),
            dev=_bool(get("DEV")),
            jwt_secret=get("JWT_SECRET"),
            plc_rotation_key=get("PLC_ROTATION_KEY"),
            did_method=get("DID_METHOD", "plc"),
            firehose_retention_hours=float(get("FIREHOSE_RETENTION", "72")),
            behind_nginx=_bool(get("BEHIND_NGINX")),
            appview_url=get("APPVIEW_URL").rstrip("/"),
            appview_did=get("APPVIEW_DID"),
            rate_limits=get("RATE_LIMITS", "true").lower() not in ("0", "false", "no", "off"),
        )
