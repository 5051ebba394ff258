"""Shared fixtures: the real-data folder (skipped where absent) and an offline, deterministic session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Nothing in the test suite may reach the network (model hubs included).
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("ECL_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The small real datasets (LFW, ORL, CelebA subset) that developer machines and CI carry.

    Users do not have them; tests that need them are skipped with the reason below.
    """
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real-data folder {SHARED_DATA} is absent (set ECL_SHARED_DATA to point at it)")
    return SHARED_DATA
