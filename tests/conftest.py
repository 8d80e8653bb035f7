"""Shared fixtures: where the interop vectors live."""

from pathlib import Path

import pytest

INTEROP = Path(__file__).resolve().parents[2] / "shared" / "interop"


@pytest.fixture(scope="session")
def interop() -> Path:
    """The official interop vectors beside the project; skips when absent."""
    if not INTEROP.is_dir():
        pytest.skip(f"interop vectors not found at {INTEROP} (../shared/interop is absent)")
    return INTEROP
