"""The Wang-style localisation count (IoU / IoBB > T, at most 3 boxes per image and class) on hand-made boxes."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pipeline import localisation as L

COLS = ["image_id", "class_id", "score", "x_min", "y_min", "x_max", "y_max"]
TRUTH_COLS = ["image_id", "class_id", "x_min", "y_min", "x_max", "y_max"]


def _truth(rows):
    return pd.DataFrame(rows, columns=TRUTH_COLS)


def _pred(rows):
    return pd.DataFrame(rows, columns=COLS)


def test_overlaps_iou_and_iobb_hand_computed():
    iou, iobb = L.overlaps([[0, 0, 10, 10]], [[0, 0, 10, 5], [2, 2, 4, 4], [5, 5, 15, 15], [20, 20, 20, 30]])
    np.testing.assert_allclose(iou[0], [0.5, 4 / 100, 25 / 175, 0.0])
    # IoBB divides by the predicted box's area: a small box inside the truth has IoBB 1
    np.testing.assert_allclose(iobb[0], [1.0, 1.0, 0.25, 0.0])  # zero-area box: 0, not a division error


def test_only_the_three_best_boxes_of_an_image_and_class_count():
    truth = _truth([["a", 0, 0, 0, 10, 10]])
    far = [["a", 0, s, 50, 50, 60, 60] for s in (0.9, 0.8, 0.7)]
    hit = ["a", 0, 0.6, 0, 0, 10, 10]  # exact, but the 4th by score
    assert L.best_overlaps(_pred(far + [hit]), truth)["iou"].iloc[0] == 0.0
    # one of the far boxes scored below it: the hit is now among the 3 best
    far[2][2] = 0.1
    assert L.best_overlaps(_pred(far + [hit]), truth)["iou"].iloc[0] == 1.0
    # the limit is a parameter; another image's boxes do not use up this image's three
    assert L.best_overlaps(_pred(far + [hit]), truth, max_boxes=1)["iou"].iloc[0] == 0.0
    other = [["b", 0, 0.99, 50, 50, 60, 60]] * 5
    assert L.best_overlaps(_pred(other + far + [hit]), truth)["iou"].iloc[0] == 1.0


def test_a_box_of_another_class_never_counts():
    truth = _truth([["a", 4, 0, 0, 10, 10]])
    pred = _pred([["a", 5, 1.0, 0, 0, 10, 10], ["b", 4, 1.0, 0, 0, 10, 10]])  # right box, wrong class / image
    best = L.best_overlaps(pred, truth)
    assert best["iou"].iloc[0] == 0.0 and best["iobb"].iloc[0] == 0.0


def test_iou_against_iobb_in_the_table():
    # Atelectasis: a small box inside the truth (IoU 0.04, IoBB 1); Cardiomegaly: half the truth (IoU 0.5,
    # IoBB 1); Effusion: a box four times the truth, centred on it (IoU 0.25, IoBB 0.25)
    truth = _truth([["a", 0, 0, 0, 10, 10], ["a", 1, 0, 0, 10, 10], ["b", 2, 10, 10, 20, 20]])
    pred = _pred([["a", 0, 1, 4, 4, 6, 6], ["a", 1, 1, 0, 0, 10, 5], ["b", 2, 1, 5, 5, 25, 25]])
    block = L.method_block(pred, truth)
    iou, iobb = block["iou"], block["iobb"]
    assert iou["0.1"]["Atelectasis"] == 0.0 and iobb["0.7"]["Atelectasis"] == 1.0
    assert iou["0.4"]["Cardiomegaly"] == 1.0 and iou["0.5"]["Cardiomegaly"] == 0.0  # strictly above T
    assert iobb["0.7"]["Cardiomegaly"] == 1.0
    assert iou["0.2"]["Effusion"] == 1.0 and iou["0.3"]["Effusion"] == 0.0
    assert iobb["0.2"]["Effusion"] == 1.0 and iobb["0.3"]["Effusion"] == 0.0
    # classes without truth boxes are null and the mean is over the classes that have boxes
    assert iou["0.1"]["Nodule"] is None
    assert iou["0.1"]["mean"] == pytest.approx((0 + 1 + 1) / 3)
    assert iobb["0.5"]["mean"] == pytest.approx((1 + 1 + 0) / 3)
    assert block["auc"] == {**{n: None for n in L.BOX_CLASSES}, "mean": None}
    L.check_block({"m": block})


def test_shares_per_class_count_boxes_not_images():
    truth = _truth([["a", 5, 0, 0, 10, 10], ["b", 5, 0, 0, 10, 10], ["c", 5, 0, 0, 10, 10], ["d", 5, 0, 0, 4, 4]])
    pred = _pred([["a", 5, 1, 0, 0, 10, 10], ["b", 5, 1, 0, 0, 10, 10], ["d", 5, 1, 0, 0, 10, 10]])
    row = L.method_block(pred, truth)["iou"]["0.1"]
    assert row["Nodule"] == pytest.approx(3 / 4)  # d: IoU 16/100 > 0.1
    assert L.method_block(pred, truth)["iou"]["0.2"]["Nodule"] == pytest.approx(2 / 4)


def test_auc_in_the_block_and_missing_columns():
    truth = _truth([["a", 0, 0, 0, 10, 10]])
    y = np.zeros((4, 8))
    y[:2, 0] = 1
    s = np.tile(np.array([[0.9], [0.2], [0.5], [0.1]]), (1, 8))
    block = L.method_block(_pred([]), truth, y, s)
    assert block["auc"]["Atelectasis"] == pytest.approx(0.75)  # pairs: (0.9 > 0.5, 0.9 > 0.1, 0.2 < 0.5, 0.2 > 0.1)
    assert block["auc"]["Cardiomegaly"] is None and block["auc"]["mean"] == pytest.approx(0.75)
    with pytest.raises(ValueError, match="score"):
        L.best_overlaps(pd.DataFrame(columns=TRUTH_COLS), truth)


def test_contract_form_is_checked_and_json_serialisable():
    truth = _truth([["a", 0, 0, 0, 10, 10]])
    block = L.method_block(_pred([["a", 0, 1, 0, 0, 10, 10]]), truth, np.eye(8)[:2], np.eye(8)[:2])
    loc = {"cln": block}
    L.check_block(loc)
    assert list(block["iou"]) == ["0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7"]
    assert list(block["iou"]["0.1"]) == [*L.BOX_CLASSES, "mean"]
    assert json.loads(json.dumps(loc)) == loc
    broken = json.loads(json.dumps(loc))
    del broken["cln"]["iobb"]["0.3"]["Mass"]
    with pytest.raises(ValueError, match=r"\['cln'\]\['iobb'\]\['0.3'\]"):
        L.check_block(broken)
    broken = json.loads(json.dumps(loc))
    broken["cln"]["iou"]["0.1"]["Mass"] = 1.5
    with pytest.raises(ValueError, match="Mass"):
        L.check_block(broken)


def test_wang_reference_means_and_tables():
    assert L.WANG2017_TABLE7_IOU["0.1"]["mean"] == pytest.approx(0.568, abs=5e-4)
    assert L.WANG2017_TABLE7_IOU["0.7"]["mean"] == pytest.approx(0.010, abs=5e-4)
    assert L.WANG2017_TABLE7_IOU["0.5"]["Nodule"] == 0.0126
    ref = L.references()
    assert ref["cln2025"]["auc_mean"] == 0.918 and ref["cln2025"]["iou_accuracy_mean"] == 0.855
    truth = _truth([["a", 7, 0, 0, 10, 10]])
    loc = {"prior": L.method_block(_pred([["a", 7, 1, 0, 0, 10, 10]]), truth)}
    text = L.format_table(loc)
    assert "| prior | 0.1 | - | - | - | - | - | - | - | 1.000 | 1.000 |" in text
    assert "| Wang 2017 (Table 7) | 0.1 | 0.689 | 0.938 |" in text and "Pnth" in text
    assert "Wang" not in L.format_table(loc, "iobb")
    assert "0.918" in L.format_auc(loc)


# ---------------------------------------------------------------------------------------------
# the comparison end to end (benchmarks/nih_localise.py) on the synthetic ChestX-ray14 demo
# ---------------------------------------------------------------------------------------------
def _benchmark():
    from tests.benchmark_modules import load_benchmark

    return load_benchmark("nih_localise")


@pytest.mark.usefixtures("one_torch_thread")
def test_comparison_runs_end_to_end_on_the_demo(tmp_path, capsys):
    from pipeline.demo.chestxray14 import write_chestxray14

    data, cache = tmp_path / "cxr", tmp_path / "cache"
    write_chestxray14(data, 1, 40, seed=7, size=64, workers=1)
    bench = _benchmark()
    argv = ["--data", str(data), "--cache", str(cache), "--methods", "prior,gradcam,multiscale,cln", "--n-splits", "2",
            "--imgsz", "64", "--epochs", "1", "--batch", "8", "--width", "16", "--threads", "1", "--report"]
    assert bench.main(argv) == 0
    out = json.loads((cache / "metrics.json").read_text())
    loc = out["localisation"]
    assert list(loc) == ["prior", "gradcam", "multiscale", "cln"]
    L.check_block(loc)
    run = out["localisation_run"]
    assert run["n_boxes"] == len(pd.read_csv(data / "BBox_List_2017.csv"))
    # the prior looks at no pixel: AUC 0.5 on every class with both labels
    assert {v for v in loc["prior"]["auc"].values() if v is not None} == {0.5}
    for fold_weights in run["methods"]["multiscale"]["relevance_per_fold"]:
        for w in fold_weights.values():
            assert sum(w.values()) == pytest.approx(1.0)
    assert out["localisation_reference"]["cln2025"]["iou_accuracy_mean"] == 0.855
    assert "Wang 2017 (Table 7)" in (cache / "report.md").read_text()
    # every truth box is scored once, out-of-fold: the folds' predicted images are disjoint and cover all
    ids = [pd.read_csv(cache / "cln" / f"fold{k}_probs.csv")["image_id"] for k in (0, 1)]
    assert not set(ids[0]) & set(ids[1])
    assert set(ids[0]) | set(ids[1]) == set(pd.read_csv(data / "BBox_List_2017.csv")["Image Index"].str[:-4])
    # a second call with the same settings reuses every fold
    capsys.readouterr()
    assert bench.main(argv[:-1]) == 0
    assert capsys.readouterr().out.count("cached, skipped") == 8
