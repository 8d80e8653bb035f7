"""The `KEY=value` file `pds.env` (systemd's `EnvironmentFile=` form).

Read by the settings (pds.config) and by the store itself (a backup's identity marker),
so it lives down here, below both.
"""

from __future__ import annotations

from pathlib import Path

from .layout import ENV_FILE

__all__ = ["ENV_FILE", "parse_env_file"]


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
