"""benchmarks/machine_speed.py keeps running (a tiny step here; the real figures come from the script)."""
from __future__ import annotations

from tests.benchmark_modules import load_benchmark


def test_step_time_is_measured_and_grows_with_the_image():
    mod = load_benchmark("machine_speed")
    small, large = mod.step_seconds("resnet18", 32, steps=1), mod.step_seconds("resnet18", 128, steps=1)
    assert 0 < small < large
    assert [r[0] for r in mod.REFERENCE] == ["resnet18", "densenet121", "densenet121"]


def test_fuse_variants_scores_a_runs_predictions(tmp_path, capsys):
    """benchmarks/fuse_variants.py on a hand-made run: a perfect box found by both flips, with a weak
    neighbour in each source that plain WBF lets into the cluster."""
    import pandas as pd

    run = tmp_path / "run"
    (run / "predictions").mkdir(parents=True)
    pd.DataFrame({"image_id": ["a", "b"], "width": [100, 100], "height": [100, 100]}).to_csv(run / "images.csv")
    pd.DataFrame({"image_id": ["a", "b"], "fold": [0, 1]}).to_csv(run / "folds.csv", index=False)
    pd.DataFrame({"image_id": ["a", "b"], "class_name": ["Cardiomegaly", "No finding"], "class_id": [3, 14],
                  "x_min": [10, None], "y_min": [10, None], "x_max": [60, None], "y_max": [60, None]}).to_csv(
        run / "boxes.csv", index=False)
    rows = []
    for tta in ("orig", "hflip"):
        rows += [("a", 3, 0.9, 10, 10, 60, 60, tta), ("a", 3, 0.05, 10, 10, 60, 32, tta),
                 ("b", 3, 0.3, 10, 10, 60, 60, tta)]
    pd.DataFrame(rows, columns=["image_id", "class_id", "score", "x_min", "y_min", "x_max", "y_max", "tta"]).to_csv(
        run / "predictions" / "det_m_fold0_oof.csv", index=False)
    assert load_benchmark("fuse_variants").main([str(run)]) == 0
    out = capsys.readouterr().out
    assert "2 out-of-fold images, 1 truth boxes" in out
    assert "un-flipped alone           mAP@0.4 1.0000" in out and "source NMS, then WBF avg   mAP@0.4 1.0000" in out
