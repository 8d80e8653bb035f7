"""`pds backup`, `pds restore` and `pds verify` on the command line.

    pds backup DEST [--data-dir SRC]
    pds restore BACKUP [--data-dir DEST]
    pds verify [--data-dir DIR]

`--data-dir` defaults to $PDS_DATA_DIR, else ./data. Whatever is refused (see
test_backup_restore.py for the rules) is one line `error: ...` on stderr and exit code 1,
never a traceback; a refused command changes nothing.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from harness import init_data_dir, run_pds

from pds.store.format import CURRENT

pytestmark = pytest.mark.slow  # `pds backup`, `restore` and `verify` run as commands


@pytest.fixture(scope="module")
def src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("cli") / "data"
    init_data_dir(data, "localhost:2583")
    return data


def assert_refused(*args: str, words: tuple[str, ...]) -> str:
    """`pds ARGS` exits 1 with one `error: ...` line on stderr containing one of `words`
    (the command line may refuse before the store does, in words of its own)."""
    res = run_pds(*args, check=False)
    out = res.stdout + res.stderr
    assert "Traceback" not in out, out
    assert res.returncode == 1, f"pds {' '.join(args)} exited {res.returncode}:\n{out}"
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert any(w in lines[0] for w in words), (words, lines[0])
    return lines[0]


def test_backup_restore_verify_round_trip(src: Path, tmp_path: Path) -> None:
    dest = tmp_path / "backup"
    run_pds("backup", str(dest), "--data-dir", str(src))
    fresh = tmp_path / "fresh"
    run_pds("restore", str(dest), "--data-dir", str(fresh))
    assert (fresh / "pds.env").read_bytes() == (src / "pds.env").read_bytes()
    assert (fresh / "FORMAT").read_bytes() == (src / "FORMAT").read_bytes()
    res = run_pds("verify", "--data-dir", str(fresh))
    assert res.returncode == 0
    # Again into the same backup: incremental.
    run_pds("backup", str(dest), "--data-dir", str(fresh))


def test_data_dir_defaults_to_the_environment_then_dot_data(src: Path, tmp_path: Path) -> None:
    dest = tmp_path / "backup"
    run_pds("backup", str(dest), env={"PDS_DATA_DIR": str(src)})
    work = tmp_path / "work"
    work.mkdir()
    run_pds("restore", str(dest), cwd=work)
    assert (work / "data" / "pds.env").exists()
    run_pds("verify", cwd=work)
    run_pds("verify", env={"PDS_DATA_DIR": str(work / "data")})


def test_refusals_are_one_error_line(src: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    init_data_dir(other, "localhost:2583")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep").write_text("x")
    newer = tmp_path / "newer"
    shutil.copytree(src, newer)
    (newer / "FORMAT").write_text(f"{CURRENT + 1}\n")
    bk = tmp_path / "bk"
    run_pds("backup", str(bk), "--data-dir", str(src))
    newer_bk = tmp_path / "newer-bk"
    shutil.copytree(bk, newer_bk)
    (newer_bk / "FORMAT").write_text(f"{CURRENT + 1}\n")
    before = {p: sorted(os.listdir(p)) for p in (src, other, busy)}

    no_dir = ("not a PDS data dir", "no PDS data dir")
    assert_refused("backup", str(src), "--data-dir", str(src), words=("itself",))
    assert_refused("backup", str(src / "inside"), "--data-dir", str(src), words=("inside",))
    assert_refused("backup", str(src.parent), "--data-dir", str(src), words=("contains",))
    assert_refused("backup", str(other), "--data-dir", str(src), words=("data dir",))
    assert_refused("backup", str(busy), "--data-dir", str(src), words=("not empty",))
    assert_refused("backup", str(tmp_path / "b"), "--data-dir", str(tmp_path / "nowhere"),
                   words=no_dir)
    assert_refused("backup", str(tmp_path / "b"), "--data-dir", str(newer), words=("newer",))
    assert_refused("restore", str(bk), "--data-dir", str(busy), words=("not empty",))
    assert_refused("restore", str(bk), "--data-dir", str(other),
                   words=("not empty", "holds a PDS"))
    assert_refused("restore", str(busy), "--data-dir", str(tmp_path / "r"),
                   words=("not a backup", *no_dir))
    assert_refused("restore", str(newer_bk), "--data-dir", str(tmp_path / "r"),
                   words=("newer",))
    assert_refused("verify", "--data-dir", str(tmp_path / "nowhere"), words=no_dir)
    assert_refused("verify", "--data-dir", str(newer), words=("newer",))

    assert {p: sorted(os.listdir(p)) for p in (src, other, busy)} == before
    assert not (tmp_path / "b").exists() and not (tmp_path / "r").exists()
    assert not [n for n in os.listdir(tmp_path) if ".restore-" in n]
