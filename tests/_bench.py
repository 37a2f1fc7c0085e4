"""Running a benchmark's --smoke mode from a test: in a child process on the checkout under test, from a temporary
folder, and checking that it wrote nothing into benchmarks/RESULTS.md."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_smoke(script: str, cwd: Path, timeout: int = 900) -> dict:
    """``benchmarks/<script> --smoke --json``; returns the JSON object of its last stdout line."""
    results = ROOT / "benchmarks" / "RESULTS.md"
    before = results.read_bytes() if results.exists() else None
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--smoke", "--json"], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src"),
                               "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (results.read_bytes() if results.exists() else None) == before
    return json.loads(proc.stdout.strip().splitlines()[-1])
