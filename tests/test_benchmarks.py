"""The benchmarks still run (their --quick smoke mode) and print their measurements.

Speed goals are checked by reading the benchmarks' output by hand, never by timing in a test.
"""

from __future__ import annotations

import os
import subprocess
import sys
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
