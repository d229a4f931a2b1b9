"""Shared test setup: every pytest session talks DDS on its own domain, on this host only.

The real recording (fixture `real_evt3_bag`) lives in the shared data folder next to the
checkout, `../shared`; EFS_SHARED_DIR points elsewhere. Tests that need it skip, naming the
missing path, where it is absent (a checkout without the shared data still runs the rest).

`run_watched` runs a command line to its end the way the tests wait on everything: it fails
when the command stops making progress (no output, no file written for STALL_S), never
because a time budget ran out (see progress.py).
"""
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from progress import STALL_S, StalledError, wait_for_progress

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EFS_SHARED_DIR") or REPO.parent / "shared")
REAL_EVT3_BAG = SHARED / "data" / "real" / "evt3_trigger"

# Parallel sessions (developers, CI) must not hear each other's topics.
os.environ.setdefault("ROS_DOMAIN_ID", str(random.Random(os.getpid()).randint(1, 100)))
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(REPO / "config" / "fastdds_localhost.xml"))


@pytest.fixture(scope="session")
def real_evt3_bag() -> Path:
    if not (REAL_EVT3_BAG / "metadata.yaml").exists():
        pytest.skip(f"the shared real recording is missing: {REAL_EVT3_BAG / 'metadata.yaml'} "
                    "(../shared next to the checkout, or EFS_SHARED_DIR)")
    return REAL_EVT3_BAG


@pytest.fixture(scope="session")
def python_exe() -> str:
    return sys.executable


def _tree(folder: Path) -> tuple:
    """(name, size) of every file under folder: what a running command has written so far."""
    if not folder.is_dir():
        return ()
    return tuple(sorted((str(p.relative_to(folder)), p.stat().st_size)
                        for p in folder.rglob("*") if p.is_file()))


def _run_watched(cmd, what: str, watch=(), cwd=REPO) -> subprocess.CompletedProcess:
    """Run cmd to its end: progress is its stdout and stderr growing or the files under the
    `watch` folders changing; StalledError (the command killed) when none moved for STALL_S."""
    watch = [Path(w) for w in watch]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([str(c) for c in cmd], cwd=cwd, stdout=out, stderr=err)
        try:
            wait_for_progress(
                lambda: (os.fstat(out.fileno()).st_size, os.fstat(err.fileno()).st_size,
                         *map(_tree, watch)),
                lambda: proc.poll() is not None, what, stall_s=STALL_S)
        except StalledError:
            proc.kill()
            proc.wait()
            raise
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(proc.args, proc.returncode,
                                           out.read().decode(errors="replace"),
                                           err.read().decode(errors="replace"))


@pytest.fixture(scope="session")
def run_watched():
    """`run_watched(cmd, what, watch=(folders,), cwd=REPO)` -> CompletedProcess (text output)."""
    return _run_watched
