"""Shared test setup: every pytest session talks DDS on its own domain, on this host only."""
import os
import random
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
REAL_EVT3_BAG = SHARED / "data" / "real" / "evt3_trigger"

# Parallel sessions (developers, CI) must not hear each other's topics.
os.environ.setdefault("ROS_DOMAIN_ID", str(random.Random(os.getpid()).randint(1, 100)))
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(REPO / "config" / "fastdds_localhost.xml"))


@pytest.fixture(scope="session")
def real_evt3_bag() -> Path:
    if not (REAL_EVT3_BAG / "metadata.yaml").exists():
        pytest.fail(f"the shared real recording is missing: {REAL_EVT3_BAG}")
    return REAL_EVT3_BAG


@pytest.fixture(scope="session")
def python_exe() -> str:
    return sys.executable
