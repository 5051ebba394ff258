"""The benchmarks still run (their --quick smoke mode) and print their measurements; the GPU check's
plumbing works (``benchmarks/gpu_check.sh --dry-run``, on the CPU).

Speed goals are checked by reading the benchmarks' output by hand, never by timing in a test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# bench_data is smoke-run by tests/test_data.py.
BENCHMARKS = {
    "bench_loss.py": "ratio",
    "bench_train.py": "images/s",
    "bench_explain.py": "forward",
}


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(BENCHMARKS))
def test_benchmark_quick_mode_runs_and_reports(script):
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), "--quick"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert BENCHMARKS[script] in proc.stdout.lower(), proc.stdout[-2000:]


# ------------------------------------------------------------------------ benchmarks/gpu_check.sh
GPU_CHECK = REPO / "benchmarks" / "gpu_check.sh"
GPU_CHECK_FILES = {
    "summary.json",
    "gpu_check.log",
    "cuda_tests.xml",
    "bench_loss.json",
    "bench_train.json",
    "reproduce.json",
    "faceparts_full_results.tar.gz",
}


def test_gpu_check_help_and_missing_output_folder():
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    shown = subprocess.run(["bash", str(GPU_CHECK), "--help"], capture_output=True, text=True, env=env)
    assert shown.returncode == 0 and "--dry-run" in shown.stdout and "--budget" in shown.stdout
    refused = subprocess.run(["bash", str(GPU_CHECK), "--dry-run"], capture_output=True, text=True, env=env)
    assert refused.returncode == 2 and "--out" in refused.stderr


@pytest.mark.slow
def test_gpu_check_dry_run_writes_its_records(tmp_path):
    """The whole GPU check on the CPU with tiny sizes (about a minute): every record appears, the CUDA
    parts say they were skipped, and the grid starts with the baseline and ECLoss of seed 0."""
    out = tmp_path / "out"
    proc = subprocess.run(
        ["bash", str(GPU_CHECK), "--dry-run", "--out", str(out), "--budget", "300"]
        + ["--work", str(tmp_path / "work"), "--seeds", "0", "--methods", "baseline", "ecloss"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
        env={
            **os.environ,
            "PYTHON": sys.executable,
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        },
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # Plain files, no folders, fewer than 9: what the device machine returns.
    assert {p.name for p in out.iterdir()} == GPU_CHECK_FILES and all(p.is_file() for p in out.iterdir())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dry_run"] is True and summary["env"]["cuda_available"] is False
    for part in ("cuda_tests", "bench_loss", "bench_train", "reproduce"):
        assert summary["parts"][part]["status"] == "skipped: no CUDA", summary["parts"][part]
    for part in ("cuda_tests", "bench_loss", "bench_train", "reproduce"):  # the plumbing worked
        assert summary["parts"][part]["detail"].endswith(": ok"), summary["parts"][part]
    assert summary["cuda_tests"]["tests"] == summary["cuda_tests"]["skipped"] > 0
    loss = json.loads((out / "bench_loss.json").read_text())
    assert loss["step"]["ratio_median_of_pairs"] > 0 and loss["env"]["torch"]
    train = json.loads((out / "bench_train.json").read_text())
    assert train["gpu"]["eager"]["images_per_s_ecloss"] > 0 and train["gpu"]["bare"]["images_per_s"] > 0
    assert train["gpu"]["compile"] == {"skipped": "--no-compile"}
    grid = json.loads((out / "reproduce.json").read_text())
    assert [(r["method"], r["seed"]) for r in grid["runs"]] == [("baseline", 0), ("ecloss", 0)]
    assert grid["completed"] == grid["planned"] == 2, grid["runs"]
    assert all(r["status"].startswith("ok") for r in grid["runs"])
    assert set(grid["results"]) == {"faceparts-baseline-seed0-full.json", "faceparts-ecloss-seed0-full.json"}
    assert all(record["profile"] == "full" for record in grid["results"].values())
    with tarfile.open(out / "faceparts_full_results.tar.gz") as tar:
        assert sorted(tar.getnames()) == sorted(grid["results"])
