"""Fixtures shared by the whole suite: the shared real data, a local Ray
instance, free loopback ports."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EDUFILTER_SHARED", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def shared() -> Path:
    """The shared real data beside the checkout; tests that need it skip when it is absent."""
    if not (SHARED / "corpus").is_dir():
        pytest.skip(f"shared data not found at {SHARED} (set EDUFILTER_SHARED)")
    return SHARED


@pytest.fixture(scope="session")
def seed_dir(shared: Path, tmp_path_factory) -> Path:
    """The LLM-labelled seed set built as parquet (web/code/stackoverflow.parquet) once per session."""
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("seed")
    script = shared / "corpus" / "labelled" / "edufilter_seed" / "build_seed.py"
    subprocess.run([sys.executable, str(script), str(out)], check=True, capture_output=True)
    return out


@pytest.fixture(scope="session")
def ray_local():
    """One real local Ray instance for every `ray`-marked test of the session."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def port() -> int:
    return free_port()
