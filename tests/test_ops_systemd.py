"""systemd/pds.service: it passes `systemd-analyze verify` cleanly and its sandboxing
scores an overall exposure of at most 2.0 in `systemd-analyze security --offline=true`.

The unit names /opt/pds/venv/bin/pds (README, "Running it for real"); the copy under test
names the `pds` executable installed here instead, so `verify` can check that ExecStart
exists and is executable. Skips when systemd-analyze is not installed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from harness import pds_command
from ops_util import UNIT_FILE

SYSTEMD_ANALYZE = shutil.which("systemd-analyze") or (
    "/usr/bin/systemd-analyze" if Path("/usr/bin/systemd-analyze").exists() else None)
pytestmark = pytest.mark.skipif(SYSTEMD_ANALYZE is None,
                                reason="systemd-analyze is not installed")
INSTALLED_PATH = "/opt/pds/venv/bin/pds"
MAX_EXPOSURE = 2.0


def pds_executable() -> str:
    """The real `pds` console script (not a shell shim), as an absolute path."""
    cmd = pds_command()
    if len(cmd) == 1:
        return cmd[0]
    found = shutil.which("pds")
    if found is None:
        pytest.skip("no `pds` executable installed (pip install -e . makes one)")
    return str(Path(found).resolve())


@pytest.fixture
def unit(tmp_path: Path) -> Path:
    text = UNIT_FILE.read_text()
    assert f"ExecStart={INSTALLED_PATH} serve" in text, "the unit's ExecStart changed"
    copy = tmp_path / "pds.service"
    copy.write_text(text.replace(INSTALLED_PATH, pds_executable()))
    return copy


def analyze(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([SYSTEMD_ANALYZE, *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd)


def test_unit_verifies_cleanly(unit: Path) -> None:
    res = analyze("verify", str(unit), cwd=unit.parent)
    assert res.returncode == 0, res.stderr
    assert res.stderr.strip() == "", res.stderr


def test_unit_verify_catches_a_broken_unit(unit: Path) -> None:
    """The check above can fail: a misspelled directive and a missing program are reported."""
    broken = unit.parent / "broken.service"
    broken.write_text(unit.read_text().replace("NoNewPrivileges=yes", "NoNewPrivilege=yes")
                      .replace(pds_executable(), "/nonexistent/bin/pds"))
    res = analyze("verify", str(broken), cwd=unit.parent)
    assert res.returncode != 0, res.stderr
    assert "NoNewPrivilege" in res.stderr and "/nonexistent/bin/pds" in res.stderr, res.stderr


def test_unit_security_exposure(unit: Path) -> None:
    res = analyze("security", "--offline=true", "--no-pager", str(unit), cwd=unit.parent)
    assert res.returncode == 0, res.stderr
    m = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", res.stdout)
    assert m, res.stdout[-2000:]
    exposure = float(m.group(1))
    assert exposure <= MAX_EXPOSURE, f"exposure {exposure} > {MAX_EXPOSURE}:\n{res.stdout}"


def test_unit_essentials() -> None:
    """What README promises about the unit: notify type (gunicorn tells systemd it is
    ready), the pds user, the env file, group-readable files for nginx (UMask=0027)."""
    lines = {ln.split("=", 1)[0]: ln.split("=", 1)[1]
             for ln in UNIT_FILE.read_text().splitlines() if "=" in ln and ln[0] != "#"}
    assert lines["Type"] == "notify"
    assert lines["User"] == "pds" and lines["Group"] == "pds"
    assert lines["EnvironmentFile"] == "-/etc/pds/pds.env"
    assert lines["UMask"] == "0027"
    assert lines["ReadWritePaths"] == "/var/lib/pds"
    assert lines["ExecStart"] == f"{INSTALLED_PATH} serve --data-dir /var/lib/pds"


def _size(value: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(value[:-1]) * units[value[-1]] if value[-1] in units else int(value)


def test_unit_resource_limits(unit: Path) -> None:
    """Memory, task and open-file limits, set (not infinity) and sane: memory reclaimed
    above MemoryHigh before MemoryMax is reached, room for every firehose subscriber's
    socket. systemd parses them as resource-control settings (`verify` above passes)."""
    lines = {ln.split("=", 1)[0]: ln.split("=", 1)[1]
             for ln in UNIT_FILE.read_text().splitlines() if "=" in ln and ln[0] != "#"}
    high, top = _size(lines["MemoryHigh"]), _size(lines["MemoryMax"])
    assert 256 << 20 <= high < top <= 8 << 30, (high, top)
    assert 64 <= int(lines["TasksMax"]) <= 4096
    assert int(lines["LimitNOFILE"]) >= 16384
    res = analyze("verify", str(unit), cwd=unit.parent)
    assert res.returncode == 0 and res.stderr.strip() == "", res.stderr
    # A typo in one of them is reported, so the check above means something.
    broken = unit.parent / "typo.service"
    broken.write_text(unit.read_text().replace("MemoryMax=", "MemoryMaximum="))
    res = analyze("verify", str(broken), cwd=unit.parent)
    assert "MemoryMaximum" in res.stderr, res.stderr
