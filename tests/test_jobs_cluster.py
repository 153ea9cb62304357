"""The scoring job on a real two-node Ray cluster on loopback (`ray start --head` + `ray start
--address`), submitted with `ray job submit` exactly as on a KubeRay cluster; and a whole job
killed (`ray job stop`) and resubmitted: the rerun completes with output identical to an
uninterrupted run."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import test_jobs_data as data
from conftest import REPO, free_port

pytestmark = pytest.mark.ray

RAY = str(Path(sys.executable).with_name("ray"))


def _pids_mentioning(marker: str) -> list[int]:
    """Processes whose command line names our cluster's private temp dir: the ones we started."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                if marker.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                    pids.append(int(entry))
            except OSError:
                pass
    return pids


class TwoNodeCluster:
    def __init__(self) -> None:
        # A short private temp dir (unix socket paths are limited to ~100 bytes).
        self.temp_dir = tempfile.mkdtemp(prefix="rayjobs", dir="/tmp")
        self.gcs_port = free_port()
        self.dashboard_port = free_port()
        # Both nodes import the project the way a cluster image would have it installed.
        self.env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token"}
        self.env.pop("RAY_ADDRESS", None)

    def _node_ports(self) -> list[str]:
        return ["--node-manager-port", str(free_port()), "--object-manager-port", str(free_port()),
                "--dashboard-agent-listen-port", str(free_port()), "--dashboard-agent-grpc-port", str(free_port()),
                "--runtime-env-agent-port", str(free_port()), "--metrics-export-port", str(free_port()),
                "--min-worker-port", "0", "--max-worker-port", "0"]

    def start(self) -> None:
        common = ["--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--object-store-memory", str(200 * 2**20),
                  "--disable-usage-stats"]
        self._ray_start("--head", "--port", str(self.gcs_port), "--temp-dir", self.temp_dir,
                        "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
                        "--dashboard-port", str(self.dashboard_port), "--ray-client-server-port", str(free_port()),
                        *common, *self._node_ports())
        self._ray_start("--address", f"127.0.0.1:{self.gcs_port}", "--temp-dir", self.temp_dir, *common,
                        *self._node_ports())

    def _ray_start(self, *args: str) -> None:
        done = subprocess.run([RAY, "start", *args], env=self.env, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"ray start {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")

    @property
    def job_address(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def ray_job(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        return subprocess.run([RAY, "job", *args[:1], "--address", self.job_address, *args[1:]], env=self.env,
                              capture_output=True, text=True, timeout=timeout)

    def stop(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in _pids_mentioning(self.temp_dir):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            time.sleep(2)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster():
    c = TwoNodeCluster()
    try:
        c.start()
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return data.train_model(tmp_path_factory.mktemp("cluster-model"))


def score_command(model: Path, glob: str, out: Path, *extra: str) -> list[str]:
    return ["--", sys.executable, "-m", "jobs.score", "--model", str(model), "--source", "refinedweb",
            "--input", glob, "--output", str(out), *extra]


def wait_for_status(cluster: TwoNodeCluster, job_id: str, wanted: set[str], timeout: float = 180) -> str:
    deadline = time.time() + timeout
    status = ""
    while time.time() < deadline:
        done = cluster.ray_job("status", job_id)
        status = re.sub(r"\x1b\[[0-9;]*m", "", done.stdout + done.stderr)
        for w in wanted:  # the CLI prints e.g. "Job 'x' succeeded" / "Job 'x' was stopped" / "Job 'x' failed"
            if w.lower() in status.lower():
                return w
        time.sleep(1)
    raise AssertionError(f"job {job_id} never reached {wanted}: {status}")


def test_job_submitted_to_a_two_node_cluster_killed_and_rerun_gives_identical_output(cluster, model, tmp_path):
    from jobs.layout import ScoredDir
    from jobs.score import ScoreConfig, run

    for i in range(16):
        data.refinedweb_shard(tmp_path / f"in/{i % 2}/shard-{i // 2}.parquet", 2000, 200 + i)
    glob = str(tmp_path / "in/*/*.parquet")
    reference = ScoredDir(tmp_path / "reference")
    run(ScoreConfig(model=str(model), source="refinedweb", input=glob, output=str(reference.root)), runner="local")

    # The whole job killed midway (`ray job stop`), then submitted again.
    killed = ScoredDir(tmp_path / "killed")
    started = cluster.ray_job("submit", "--no-wait", "--submission-id", "score-killed",
                              *score_command(model, glob, killed.root, "--batch-size", "4"))
    assert started.returncode == 0, started.stderr
    deadline = time.time() + 120
    while time.time() < deadline and not killed.completed_keys():
        time.sleep(0.1)
    cluster.ray_job("stop", "score-killed")
    assert wait_for_status(cluster, "score-killed", {"STOPPED", "SUCCEEDED", "FAILED"}) == "STOPPED"
    partial = killed.completed_keys()
    assert 0 < len(partial) < 16, f"{len(partial)} shards completed before the stop"

    rerun = cluster.ray_job("submit", "--submission-id", "score-rerun", *score_command(model, glob, killed.root))
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert wait_for_status(cluster, "score-rerun", {"SUCCEEDED", "FAILED"}) == "SUCCEEDED"
    summary = json.loads(killed.summary_path.read_text())
    assert summary["run"]["shards_skipped"] == len(partial)
    assert summary["run"]["ray_nodes"] == 2 and summary["failed_shards"] == {}
    assert "refinedweb" in rerun.stdout and "skipped (already complete)" in rerun.stdout  # the table reaches the log
    assert killed.completed_keys() == reference.completed_keys()
    assert not any((killed.root / "_parts").glob("*/*"))
    for key in reference.completed_keys():
        assert pq.read_table(killed.shard_path(key)).equals(pq.read_table(reference.shard_path(key)))
