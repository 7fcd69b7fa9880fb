"""The segment stage on the demo's lung set: outputs in original pixels, the skip rule, resumable records.

Slow (about 25 s and 70 s on the 2-core machine: three tiny trainings, then 25 shifts scored at the demo
DICOMs' full sizes): ./run.sh test -m slow tests/test_lungs_stage.py"""
from __future__ import annotations

import json

import cv2
import pandas as pd
import pytest

from pipeline.config import load_config
from pipeline.demo import make_demo
from pipeline.paths import RunPaths

TINY = ["segment.imgsz=32", "segment.cache_size=48", "segment.epochs=1", "segment.batch=4",
        "segment.encoder_depth=3", "segment.decoder_channels=[16,8,8]", "segment.overlays_n=2", "run.threads=2"]


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    return make_demo(tmp_path_factory.mktemp("lungdemo") / "demo", "vinbigdata", n_train=10, n_test=3, seed=2,
                     other_per_kind=0)


def _cfg(tmp_path, demo_root, *extra):
    return load_config(None, [f"run.root={tmp_path}", "run.name=seg", f"data.root={demo_root}",
                              "run.stages=[segment]", *TINY, *extra])


@pytest.mark.slow
def test_segment_stage_outputs_and_skip_rule(tmp_path, demo_root):
    from pipeline.runner import run_stage

    cfg = _cfg(tmp_path, demo_root, "segment.robustness=false")
    paths = RunPaths.from_config(cfg)
    first = run_stage("segment", cfg)
    assert first["skipped"] is False and 0.0 <= first["lung_iou"] <= 1.0
    m = json.loads(paths.segment_file("metrics.json").read_text())
    assert m["split"] == "test" and m["n"] == 3 and m["dataset"]["counts"]["test"] == 3
    assert m["train"]["trained_on"] == 10 and m["inflocnet_reference"]["iou"] == 0.9359
    per = pd.read_csv(paths.segment_file("per_image.csv"))
    meta = pd.read_csv(demo_root / "test_meta.csv").set_index("image_id")
    for r in per.itertuples():
        mask = cv2.imread(str(paths.segment_mask(r.image_id)), cv2.IMREAD_GRAYSCALE)
        assert mask.shape == (meta.loc[r.image_id, "dim0"], meta.loc[r.image_id, "dim1"]), "original pixels"
        assert (r.width, r.height) == (meta.loc[r.image_id, "dim1"], meta.loc[r.image_id, "dim0"])
    assert len(list(paths.segment_overlay("x").parent.glob("*.png"))) == 2
    assert pd.read_csv(paths.segment_file("log.csv")).epoch.tolist() == [1]
    stamp = paths.segment_model.stat().st_mtime_ns
    fingerprint = json.loads(paths.segment_file("train.json").read_text())["fingerprint"]

    again = run_stage("segment", cfg)                       # same inputs: nothing redone
    assert again["skipped"] is True and paths.segment_model.stat().st_mtime_ns == stamp
    rescored = run_stage("segment", _cfg(tmp_path, demo_root, "segment.robustness=false", "segment.threshold=0.4"))
    assert rescored["skipped"] is False and paths.segment_model.stat().st_mtime_ns == stamp   # scoring only
    retrained = run_stage("segment", _cfg(tmp_path, demo_root, "segment.robustness=false", "segment.lr=0.001"))
    assert retrained["skipped"] is False and paths.segment_model.stat().st_mtime_ns != stamp
    rec = json.loads(paths.segment_file("train.json").read_text())
    assert rec["status"] == "done" and rec["fingerprint"] != fingerprint


@pytest.mark.slow
def test_segment_stage_robustness_rows(tmp_path, demo_root):
    from pipeline.lungs.robustness import SHIFTS
    from pipeline.runner import run_stage

    cfg = _cfg(tmp_path, demo_root, "segment.write_masks=false")
    run_stage("segment", cfg)
    paths = RunPaths.from_config(cfg)
    rob = pd.read_csv(paths.segment_file("robustness.csv"))
    assert set(rob["shift"]) == set(SHIFTS) and len(rob) == 3 * len(SHIFTS)
    assert rob[["dice", "iou"]].apply(lambda c: c.between(0, 1)).all().all()
    m = json.loads(paths.segment_file("metrics.json").read_text())
    assert abs(m["robustness"]["none"]["iou"] - m["iou"]["mean"]) < 1e-6   # the unshifted row is the plain score
    assert m["robustness"]["_worst"]["shift"] in SHIFTS
