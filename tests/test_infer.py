"""``infer`` on a tiny trained run: every output file, boxes in INPUT pixels (a mirrored copy gives the
mirrored boxes, a copy at twice the size the doubled boxes), unreadable inputs listed with exit 1."""
from __future__ import annotations

import cv2
import numpy as np
import pandas as pd
import pytest

from pipeline.config import save_config
from pipeline.paths import RunPaths
from tests.test_detector import build_run, tiny_cfg


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from pipeline.stages import train_det

    tmp = tmp_path_factory.mktemp("infer")
    build_run(tmp, n_train=12, n_test=2)
    cfg = tiny_cfg(tmp, **{"det.folds": [0, 1], "image.size": 256, "image.clahe": False})
    paths = RunPaths.from_config(cfg)
    train_det.run(cfg, paths)
    save_config(cfg, paths.config)
    return tmp, cfg, paths


def _boxes(out, image_id):
    d = pd.read_csv(out / "detections.csv", dtype={"image_id": str})
    d = d[d["image_id"] == image_id].sort_values("score", ascending=False)
    return d[["score", "x_min", "y_min", "x_max", "y_max"]].to_numpy()


def test_infer_writes_every_file_with_boxes_in_input_pixels(tiny_run, tmp_path):
    from pipeline.__main__ import main

    _, cfg, paths = tiny_run
    src = cv2.imread(str(paths.image("test", "test000")), cv2.IMREAD_GRAYSCALE)
    h, w = src.shape
    inputs = tmp_path / "in"
    inputs.mkdir()
    cv2.imwrite(str(inputs / "a.png"), src)
    cv2.imwrite(str(inputs / "mirror.png"), np.ascontiguousarray(src[:, ::-1]))
    cv2.imwrite(str(inputs / "big.png"), cv2.resize(src, (2 * w, 2 * h), interpolation=cv2.INTER_NEAREST))
    (inputs / "broken.png").write_bytes(b"not a png")
    # a run directory copied elsewhere works (nothing in it points at where it was trained)
    import shutil

    moved = tmp_path / "moved_run"
    shutil.copytree(paths.run_dir, moved)
    out = tmp_path / "out"
    rc = main(["infer", "--run", str(moved), "--out", str(out), "--conf", "0.0001", str(inputs)])
    assert rc == 1  # broken.png could not be read
    fails = pd.read_csv(out / "failures.csv")
    assert fails["image_id"].tolist() == ["broken"] and fails["reason"].iloc[0]
    det = pd.read_csv(out / "detections.csv", dtype={"image_id": str})
    assert list(det.columns) == ["image_id", "class_id", "class_name", "score", "x_min", "y_min", "x_max", "y_max"]
    assert set(det["class_name"]) <= {"rect", "ellipse"} and {"a", "mirror", "big"} <= set(det["image_id"])
    a = det[det.image_id == "a"]
    assert (a.x_min >= 0).all() and (a.x_max <= w).all() and (a.y_max <= h).all()
    assert (det[det.image_id == "big"].x_max > w).any()  # in the big copy's own pixels
    for i in ("a", "mirror", "big"):
        assert (out / "overlays" / f"{i}.png").stat().st_size > 500
    assert "overlays/a.png" in (out / "index.html").read_text()
    assert not (out / "classifier.csv").exists()  # the run has no classifier

    # mirrored input, with flip TTA: the fused boxes are the mirror image of a's (fusion is symmetric)
    ba, bm = _boxes(out, "a"), _boxes(out, "mirror")
    assert len(ba) == len(bm) > 0
    mirrored = np.column_stack([ba[:, 0], w - ba[:, 3], ba[:, 2], w - ba[:, 1], ba[:, 4]])
    key = lambda b: b[np.lexsort((b[:, 1], -np.round(b[:, 0], 4)))]
    np.testing.assert_allclose(key(bm)[:5], key(mirrored)[:5], atol=0.05)
    # the same picture at twice the size: twice the coordinates (to about a PNG pixel), same scores
    bb = _boxes(out, "big")
    np.testing.assert_allclose(bb[:3, 1:], 2 * ba[:3, 1:], atol=2.5)
