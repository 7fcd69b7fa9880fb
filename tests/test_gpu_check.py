"""benchmarks/gpu_check.sh in its CPU mode: the GPU measurement script runs end to end, so it cannot rot
on machines without a GPU (the figures themselves come from a GPU machine: README, "GPU")."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_runs_in_cpu_mode(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable, "OMP_NUM_THREADS": "2"}
    res = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--cpu"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    figures = json.loads((tmp_path / "figures.json").read_text())
    assert figures["device"] == "cpu"
    for part in ("detector", "classifier"):
        assert figures[part]["train_images_per_s"] > 0 and figures[part]["predict_images_per_s_with_flip"] > 0
    assert 0 <= figures["classifier"]["loader_wait_share"] <= 1
    assert "gpu_check: --cpu" in (tmp_path / "summary.txt").read_text()
