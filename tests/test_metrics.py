"""The VinBigData metric, VOC AP and ROC AUC: hand-computed cases and agreement with map_boxes / sklearn."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from pipeline.errors import DataError
from pipeline.metrics import per_label_auc, roc_auc, vinbigdata_map, voc_ap

NAN = float("nan")
B = ["x_min", "y_min", "x_max", "y_max"]


def truth_df(rows):
    """rows: (image_id, class_id, x_min, y_min, x_max, y_max); NaN box = "No finding"."""
    return pd.DataFrame(rows, columns=["image_id", "class_id", *B])


def pred_df(rows):
    """rows: (image_id, class_id, score, x_min, y_min, x_max, y_max)."""
    return pd.DataFrame(rows, columns=["image_id", "class_id", "score", *B])


# ------------------------------------------------------------------------------------------ voc_ap
def test_voc_ap_hand_computed():
    # TP, FP, TP on 2 truth boxes: envelope precision (1, 2/3, 2/3) -> 0.5*1 + 0.5*2/3
    assert voc_ap([0.5, 0.5, 1.0], [1.0, 0.5, 2 / 3]) == pytest.approx(5 / 6, abs=1e-12)
    # the envelope lifts precision 0.5 at recall 0.25 to the later 1.0: 0.25 + 0.25 + 0.25*0.2
    assert voc_ap([0.25, 0.5, 0.75], [0.5, 1.0, 0.2]) == pytest.approx(0.55, abs=1e-12)
    assert voc_ap([], []) == 0.0
    assert voc_ap([1.0], [1.0]) == 1.0
    with pytest.raises(ValueError):
        voc_ap([0.5], [1.0, 0.5])


# ------------------------------------------------------------------------------- vinbigdata_map
def test_two_truth_three_predictions():
    truth = truth_df([("a", 0, 0, 0, 10, 10), ("a", 0, 20, 20, 30, 30)])
    preds = pred_df([("a", 0, 0.9, 0, 0, 10, 10), ("a", 0, 0.8, 50, 50, 60, 60), ("a", 0, 0.7, 20, 20, 30, 30)])
    r = vinbigdata_map(truth, preds)
    assert r["per_class"] == {0: pytest.approx(5 / 6)}
    assert r["map"] == pytest.approx(0.833333, abs=1e-6)
    assert r["n_truth"] == {0: 2}
    recall, precision = r["curves"][0]
    np.testing.assert_allclose(recall, [0.5, 0.5, 1.0])
    np.testing.assert_allclose(precision, [1.0, 0.5, 2 / 3])


def test_row_order_of_predictions_does_not_matter_without_ties():
    truth = truth_df([("a", 0, 0, 0, 10, 10), ("a", 0, 20, 20, 30, 30)])
    preds = pred_df([("a", 0, 0.7, 20, 20, 30, 30), ("a", 0, 0.9, 0, 0, 10, 10), ("a", 0, 0.8, 50, 50, 60, 60)])
    assert vinbigdata_map(truth, preds)["map"] == pytest.approx(5 / 6)


def test_duplicate_detection_is_false_positive_voc_rule():
    # B overlaps A with IoU 0.8; the second copy of A has A as its best box (taken) -> FP, B stays unmatched
    truth = truth_df([("a", 3, 0, 0, 10, 10), ("a", 3, 0, 0, 10, 8)])
    preds = pred_df([("a", 3, 0.9, 0, 0, 10, 10), ("a", 3, 0.8, 0, 0, 10, 10)])
    r = vinbigdata_map(truth, preds)
    np.testing.assert_allclose(r["curves"][3][1], [1.0, 0.5])
    assert r["map"] == pytest.approx(0.5)


def test_iou_exactly_at_threshold_matches_and_no_plus_one_convention():
    truth = truth_df([("a", 0, 0, 0, 10, 10)])
    # inter 40, union 100: IoU exactly 0.4 (with a +1 pixel convention it would be 55/121 = 0.45)
    assert vinbigdata_map(truth, pred_df([("a", 0, 0.5, 0, 0, 10, 4)]))["map"] == 1.0
    assert vinbigdata_map(truth, pred_df([("a", 0, 0.5, 0, 0, 10, 3.99)]))["map"] == 0.0
    # 0.5 < 0.55 (IoU of 5.5 x 10 box): threshold is a parameter
    assert vinbigdata_map(truth, pred_df([("a", 0, 0.5, 0, 0, 10, 5.5)]), iou_thr=0.55)["map"] == 1.0
    assert vinbigdata_map(truth, pred_df([("a", 0, 0.5, 0, 0, 10, 5.4)]), iou_thr=0.55)["map"] == 0.0


def test_equal_scores_rank_in_file_order():
    truth = truth_df([("a", 0, 0, 0, 10, 10)])
    miss = ("a", 0, 0.5, 50, 50, 60, 60)
    hit = ("a", 0, 0.5, 0, 0, 10, 10)
    # FP first: precision (0, 1/2) at recall (0, 1) -> AP 0.5; TP first -> AP 1
    assert vinbigdata_map(truth, pred_df([miss, hit]))["map"] == pytest.approx(0.5)
    assert vinbigdata_map(truth, pred_df([hit, miss]))["map"] == pytest.approx(1.0)


def test_equal_scores_compete_for_one_box_in_file_order():
    truth = truth_df([("a", 0, 0, 0, 10, 10), ("b", 0, 0, 0, 10, 10)])
    preds = pred_df([("a", 0, 0.9, 0, 0, 10, 9), ("a", 0, 0.9, 0, 0, 10, 10), ("b", 0, 0.1, 0, 0, 10, 10)])
    # first (IoU 0.9) takes box a, the exact copy is a duplicate: TP FP TP -> 5/6
    assert vinbigdata_map(truth, preds)["map"] == pytest.approx(5 / 6)


def test_no_finding_rows_are_the_box_0011():
    truth = truth_df([("n", 14, NAN, NAN, NAN, NAN), ("x", 0, 100, 100, 200, 200)])
    good = pred_df([("n", 14, 0.9, 0, 0, 1, 1), ("x", 14, 0.2, 0, 0, 1, 1), ("x", 0, 0.7, 100, 100, 200, 200)])
    r = vinbigdata_map(truth, good)
    assert r["per_class"] == {0: 1.0, 14: 1.0}
    assert r["map"] == 1.0
    # p(normal) ranked the wrong way round: FP first, then TP -> 0.5
    bad = pred_df([("n", 14, 0.2, 0, 0, 1, 1), ("x", 14, 0.9, 0, 0, 1, 1), ("x", 0, 0.7, 100, 100, 200, 200)])
    r = vinbigdata_map(truth, bad)
    assert r["per_class"][14] == pytest.approx(0.5)
    assert r["map"] == pytest.approx(0.75)


def test_classes_without_truth_are_ignored():
    truth = truth_df([("a", 0, 0, 0, 10, 10)])
    preds = pred_df([("a", 0, 0.9, 0, 0, 10, 10), ("a", 5, 0.95, 0, 0, 10, 10), ("a", 14, 0.5, 0, 0, 1, 1)])
    r = vinbigdata_map(truth, preds)
    assert r["per_class"] == {0: 1.0}
    assert r["map"] == 1.0
    assert r["n_pred"] == {0: 1, 5: 1, 14: 1}


def test_class_with_truth_but_no_prediction_scores_zero():
    truth = truth_df([("a", 0, 0, 0, 10, 10), ("a", 2, 0, 0, 10, 10)])
    r = vinbigdata_map(truth, pred_df([("a", 0, 0.9, 0, 0, 10, 10)]))
    assert r["per_class"] == {0: 1.0, 2: 0.0}
    assert r["map"] == 0.5


def test_images_without_predictions_lower_recall():
    truth = truth_df([("a", 0, 0, 0, 10, 10), ("b", 0, 0, 0, 10, 10)])
    r = vinbigdata_map(truth, pred_df([("a", 0, 0.9, 0, 0, 10, 10)]))
    assert r["map"] == pytest.approx(0.5)
    np.testing.assert_allclose(r["curves"][0][0], [0.5])


def test_predictions_on_images_outside_the_truth_are_ignored():
    truth = truth_df([("a", 0, 0, 0, 10, 10)])
    preds = pred_df([("zzz", 0, 0.99, 0, 0, 10, 10), ("a", 0, 0.5, 0, 0, 10, 10)])
    assert vinbigdata_map(truth, preds)["map"] == 1.0


def test_every_reader_box_is_a_truth_box_and_wrong_class_does_not_match():
    # three radiologists drew the same box: one prediction matches one of them
    truth = truth_df([("a", 0, 0, 0, 10, 10)] * 3)
    preds = pred_df([("a", 0, 0.9, 0, 0, 10, 10), ("a", 1, 0.9, 0, 0, 10, 10)])
    r = vinbigdata_map(truth, preds)
    assert r["n_truth"] == {0: 3}
    # recall 1/3 at precision 1
    assert r["map"] == pytest.approx(1 / 3)


def test_empty_predictions_and_bad_input():
    truth = truth_df([("a", 0, 0, 0, 10, 10)])
    assert vinbigdata_map(truth, pred_df([]))["map"] == 0.0
    with pytest.raises(DataError, match="score"):
        vinbigdata_map(truth, truth)  # no score column
    with pytest.raises(DataError, match="missing or non-numeric box"):
        vinbigdata_map(truth_df([("a", 0, 0, NAN, 10, 10)]), pred_df([]))
    with pytest.raises(DataError, match="finite"):
        vinbigdata_map(truth, pred_df([("a", 0, NAN, 0, 0, 10, 10)]))
    with pytest.raises(DataError, match="no rows"):
        vinbigdata_map(truth_df([]), pred_df([]))


# ------------------------------------------------------------- agreement with the map_boxes package
def _reader_split(real_dir, n_images: int, seed: int):
    """Truth = one radiologist's boxes, predictions = another's, jittered, with distinct scores.

    Coordinates stay integers and scores k/(n+1), so map_boxes' float32 copies are exact / keep order.
    """
    df = pd.read_csv(real_dir / "vinbigdata" / "train.csv", dtype={"image_id": str})
    rng = np.random.default_rng(seed)
    ids = rng.choice(df["image_id"].unique(), n_images, replace=False)
    sub = df[df["image_id"].isin(ids)]
    readers = sub.groupby("image_id")["rad_id"].agg(lambda s: sorted(s.unique()))
    first = sub["image_id"].map(readers.str[0])
    second = sub["image_id"].map(readers.str[1])
    truth = sub[sub["rad_id"] == first].reset_index(drop=True)
    pred = sub[sub["rad_id"] == second].reset_index(drop=True)
    normal = pred["class_id"] == 14
    pred.loc[normal, B] = [0.0, 0.0, 1.0, 1.0]
    jitter = rng.integers(-40, 41, size=(len(pred), 4))
    jitter[normal.to_numpy()] = 0
    pred[B] = pred[B].to_numpy() + jitter
    pred["score"] = (rng.permutation(len(pred)) + 1) / (len(pred) + 1)
    # some pure false positives too, on random classes
    fp = pred.sample(n=len(pred) // 4, random_state=seed).copy()
    fp["class_id"] = rng.integers(0, 14, len(fp))
    fp[B] = fp[B].to_numpy() + 500
    fp["score"] = (rng.permutation(len(fp)) + 0.5) / (len(fp) + 1)  # distinct from the others
    return truth, pd.concat([pred, fp], ignore_index=True)


@pytest.mark.parametrize("seed, iou_thr", [(0, 0.4), (1, 0.5)])
def test_agrees_with_map_boxes_on_real_train_csv(real_dir, seed, iou_thr, capsys):
    from map_boxes import mean_average_precision_for_boxes

    truth, pred = _reader_split(real_dir, 300, seed)
    ours = vinbigdata_map(truth, pred, iou_thr=iou_thr)

    t = truth.copy()
    t[B] = t[B].fillna(pd.Series([0.0, 0.0, 1.0, 1.0], index=B))
    ann = t[["image_id", "class_id", "x_min", "x_max", "y_min", "y_max"]].astype({"class_id": str})
    # map_boxes matches each image's detections in input order: give them ranked by score
    p = pred.sort_values("score", ascending=False)
    det = p[["image_id", "class_id", "score", "x_min", "x_max", "y_min", "y_max"]].astype({"class_id": str})
    ref_map, ref = mean_average_precision_for_boxes(ann.to_numpy(dtype=object), det.to_numpy(dtype=object),
                                                    iou_threshold=iou_thr, verbose=False)
    capsys.readouterr()  # map_boxes prints a note about its slow overlap function

    assert set(ours["per_class"]) == {int(k) for k, (_, n) in ref.items() if n > 0}
    assert len(ours["per_class"]) >= 10
    for cls, ap in ours["per_class"].items():
        ref_ap, ref_n = ref[str(cls)]
        assert ours["n_truth"][cls] == ref_n
        assert ap == pytest.approx(ref_ap, abs=1e-6), f"class {cls}"
    assert ours["map"] == pytest.approx(ref_map, abs=1e-6)
    assert 0.05 < ours["map"] < 0.9  # a real, non-trivial comparison


def test_full_train_csv_scores(real_dir):
    """All 15,000 images as truth, the same rows as predictions (distinct scores)."""
    df = pd.read_csv(real_dir / "vinbigdata" / "train.csv", dtype={"image_id": str})
    pred = df.copy()
    pred[B] = pred[B].fillna(pd.Series([0.0, 0.0, 1.0, 1.0], index=B))
    pred["score"] = np.linspace(1.0, 0.01, len(pred))
    r = vinbigdata_map(df, pred)
    assert sum(r["n_truth"].values()) == len(df) == 67914
    assert set(r["per_class"]) == set(range(15))
    # every finding box is predicted exactly (no two readers drew the very same box of one class)
    assert all(r["per_class"][c] == pytest.approx(1.0) for c in range(14))
    # a normal image has 3 identical 0,0,1,1 truth boxes (one per reader) and all 3 predictions pick the
    # first of them (VOC rule), so class 14's recall stops at exactly 1/3: score fused truth instead
    assert r["curves"][14][0][-1] == pytest.approx(1 / 3)
    assert r["per_class"][14] < 1 / 3


# ------------------------------------------------------------------------------------------ AUC
def test_roc_auc_hand_computed_and_ties():
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert roc_auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)
    assert roc_auc([0, 1, 1], [0.2, 0.2, 0.9]) == pytest.approx(0.75)
    assert roc_auc([True, False], [0.9, 0.1]) == 1.0
    assert math.isnan(roc_auc([1, 1, 1], [0.1, 0.2, 0.3]))
    with pytest.raises(ValueError):
        roc_auc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError):
        roc_auc([0, 1], [0.1, NAN])


def test_roc_auc_matches_pairwise_definition():
    # AUC = P(score of a positive > score of a negative) + 0.5 P(equal), counted over all pairs
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 500)
    s = np.round(rng.random(500) + 0.3 * y, 2)  # rounding makes many ties
    pos, neg = s[y == 1], s[y == 0]
    pairwise = ((pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean())
    assert roc_auc(y, s) == pytest.approx(pairwise, abs=1e-12)


def test_per_label_auc_mean_skips_undefined():
    y = np.array([[0, 1, 1], [1, 1, 0], [0, 1, 1], [1, 1, 0]])
    s = np.array([[0.1, 0.5, 0.1], [0.9, 0.4, 0.9], [0.2, 0.3, 0.2], [0.8, 0.2, 0.3]])
    out = per_label_auc(y, s, ["a", "b", "c"])
    assert out["a"] == 1.0
    assert math.isnan(out["b"])
    assert out["c"] == 0.0
    assert out["mean"] == pytest.approx(0.5)
    with pytest.raises(ValueError):
        per_label_auc(y, s, ["a", "b"])
