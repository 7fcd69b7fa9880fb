"""benchmarks/machine_speed.py keeps running (a tiny step here; the real figures come from the script)."""
from __future__ import annotations

import importlib.util
from pathlib import Path


def _module():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "machine_speed.py"
    spec = importlib.util.spec_from_file_location("machine_speed", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_step_time_is_measured_and_grows_with_the_image():
    mod = _module()
    small, large = mod.step_seconds("resnet18", 32, steps=1), mod.step_seconds("resnet18", 128, steps=1)
    assert 0 < small < large
    assert [r[0] for r in mod.REFERENCE] == ["resnet18", "densenet121", "densenet121"]
