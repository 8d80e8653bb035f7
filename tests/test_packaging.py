"""Packaging: the wheel built from the checkout holds the whole program.

`packages = find:` skips a directory without `__init__.py`; the installed program then
fails with `ModuleNotFoundError` the first time it reaches that package, which an editable
install (or a test run from the checkout) never shows. So: every file under `pds/` is in
the wheel, every directory of modules is a regular package there (found by the import
system in the wheel's tree alone), the console script names a module the wheel holds, and
the wheel declares every distribution the code imports, and no other.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import zipfile
from importlib.machinery import PathFinder
from pathlib import Path

import pytest
from ops_util import ROOT, build_wheel

pytestmark = pytest.mark.slow  # builds the wheel

PKG = ROOT / "pds"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="module")
def unpacked(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    site = tmp_path_factory.mktemp("site")
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    return site


def _sources() -> list[Path]:
    return sorted(p for p in PKG.rglob("*") if p.is_file()
                  and "__pycache__" not in p.parts and p.suffix != ".pyc")


def _module_dirs() -> list[Path]:
    """Every directory under pds/ (pds/ included) that holds .py files."""
    return sorted({p.parent for p in _sources() if p.suffix == ".py"})


def _dotted(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("") if path.is_file() else path.relative_to(ROOT)
    return ".".join(rel.parts)


def _metadata(wheel: Path) -> tuple[str, str]:
    """(METADATA, entry_points.txt) of the wheel."""
    with zipfile.ZipFile(wheel) as z:
        info = next(n.split("/")[0] for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        return (z.read(f"{info}/METADATA").decode(),
                z.read(f"{info}/entry_points.txt").decode())


def test_wheel_holds_every_file_under_pds(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    wanted = [p.relative_to(ROOT).as_posix() for p in _sources()]
    assert len(wanted) > 20
    missing = [n for n in wanted if n not in names]
    assert not missing, f"not in {wheel.name}: {missing}"
    for d in _module_dirs():
        init = (d / "__init__.py").relative_to(ROOT).as_posix()
        assert init in names, f"{_dotted(d)} is no package in the wheel (no {init})"


def test_every_package_and_module_is_found_in_the_wheel_alone(unpacked: Path) -> None:
    """The import system, searching only the unpacked wheel (no site-packages, no
    checkout), finds each package as a regular package and each module as a file."""
    checked = 0
    for d in _module_dirs():
        name = _dotted(d)
        parent = unpacked.joinpath(*name.split(".")[:-1])
        spec = PathFinder.find_spec(name, [str(parent)])
        assert spec is not None, f"{name} not found in the wheel"
        assert spec.origin == str(unpacked.joinpath(*name.split("."), "__init__.py")), (
            f"{name} is not a regular package in the wheel (origin {spec.origin})")
        for module in sorted(d.glob("*.py")):
            if module.name == "__init__.py":
                continue
            mod = f"{name}.{module.stem}"
            spec = PathFinder.find_spec(mod, [str(unpacked.joinpath(*name.split(".")))])
            assert spec is not None and spec.origin is not None and \
                Path(spec.origin).is_relative_to(unpacked), f"{mod} not found in the wheel"
            checked += 1
    assert checked > 20


def test_console_script_names_a_module_in_the_wheel(wheel: Path, unpacked: Path) -> None:
    _meta, entry_points = _metadata(wheel)
    m = re.search(r"^pds\s*=\s*([\w.]+):(\w+)\s*$", entry_points, re.M)
    assert m, entry_points
    module = m.group(1).split(".")
    path = unpacked.joinpath(*module)
    assert path.with_suffix(".py").is_file() or (path / "__init__.py").is_file(), m.group(0)


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# Distributions the program needs for their files, not their code (never imported), or
# that gunicorn loads by name from its configuration.
DATA_ONLY = {"lexrpc": "the official lexicon documents pds/lexicon/schemas.py reads",
             "uvloop": "gunicorn's asgi_loop (pds/server.py)"}


def _imported_top_levels() -> dict[str, str]:
    """Third-party top-level names the program imports -> one module importing it."""
    out: dict[str, str] = {}
    for path in _sources():
        if path.suffix != ".py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in ("pds", "__future__"):
                    out.setdefault(top, _dotted(path))
    return out


def test_wheel_declares_exactly_the_distributions_the_code_imports(wheel: Path) -> None:
    """What `pip install` of the wheel brings is what the program needs: a missing
    requirement crashes it in a fresh virtualenv, a stale one installs dead weight."""
    meta, _ = _metadata(wheel)
    declared = {_canon(re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", line[len("Requires-Dist: "):])
                       .group(0))
                for line in meta.splitlines()
                if line.startswith("Requires-Dist: ") and "extra ==" not in line}
    providers = importlib.metadata.packages_distributions()
    used: set[str] = set()
    problems = []
    for top, where in sorted(_imported_top_levels().items()):
        dists = {_canon(d) for d in providers.get(top, [])}
        if not dists:
            problems.append(f"{where} imports {top}, which no installed distribution provides")
        elif not dists & declared:
            problems.append(f"{where} imports {top} ({', '.join(sorted(dists))}), "
                            "not in install_requires")
        used |= dists
    used |= set(DATA_ONLY)
    problems += [f"{d} is in install_requires but nothing imports it"
                 for d in sorted(declared - used)]
    assert not problems, "\n".join(problems)
