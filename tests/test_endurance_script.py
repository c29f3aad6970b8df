"""Smoke test of scripts/endurance.py: a short run on each backend prints its table and passes.

The full 2,000-step run is a script, not a test (see its docstring); no timing is asserted here.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "endurance.py"
# One BLAS thread: on a busy machine OpenBLAS's threads spin against each other (300 steps took 25 s
# with two threads on a loaded 2-core box, 0.6 s with one). Memory is what is measured here.
ENV = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

RUNS = {
    "numpy": ["--steps", "300", "--warmup", "100", "--every", "100"],
    "python": ["--steps", "12", "--warmup", "4", "--every", "4", "--batch-size", "8", "--hidden", "16"],
}


@pytest.mark.parametrize("backend_name", ["numpy", "python"])
def test_endurance_script_runs_and_reports_growth(backend_name: str) -> None:
    args = [sys.executable, str(SCRIPT), "--backend", backend_name, *RUNS[backend_name]]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600, env=ENV)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    steps = [int(m.group(1)) for m in re.finditer(r"^\s+(\d+)\s+\d+\.\d\s+[+-]\d+\.\d\d", out, re.M)]
    every, warmup, total = (int(RUNS[backend_name][i]) for i in (5, 3, 1))
    assert steps == list(range(warmup, total + 1, every)), out
    assert re.search(r"RSS growth from step \d+ to step \d+: [+-]\d+\.\d\d MB", out), out
    assert "PASS: memory is flat" in out


def test_endurance_script_rejects_bad_options() -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--steps", "100", "--warmup", "100"],
        capture_output=True,
        text=True,
        timeout=120,
        env=ENV,
    )
    assert proc.returncode == 2 and "--warmup" in proc.stderr
