"""Weighted-box fusion across sources and the 2-class filter, against hand-computed values."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.errors import DataError
from pipeline.fusion import (add_normal_from_detections, apply_two_class_filter, fuse_detections,
                             tune_filter_thresholds)

# A non-square image: 2000 wide, 1000 high, so a wrong x/y normalisation shows.
SIZES = pd.DataFrame({"image_id": ["a", "b"], "width": [2000, 1000], "height": [1000, 3000]})


def det(rows):
    """rows: (image_id, class_id, score, x_min, y_min, x_max, y_max), original pixels."""
    return pd.DataFrame(rows, columns=["image_id", "class_id", "score", "x_min", "y_min", "x_max", "y_max"])


def box(df):
    return df[["x_min", "y_min", "x_max", "y_max"]].to_numpy(float)


def test_identical_boxes_fuse_to_that_box_with_averaged_score():
    a = det([("a", 3, 0.8, 200, 100, 600, 500)])
    b = det([("a", 3, 0.6, 200, 100, 600, 500)])
    out = fuse_detections([a, b], SIZES)
    assert len(out) == 1
    assert out["class_id"].iloc[0] == 3
    assert out["score"].iloc[0] == pytest.approx(0.7)  # (0.8 + 0.6) / 2
    np.testing.assert_allclose(box(out)[0], [200, 100, 600, 500], atol=1e-3)


def test_shifted_boxes_are_score_weighted_in_original_pixels_of_a_non_square_image():
    # IoU = 18000 / 22000 = 0.82 > 0.4: one cluster; x_min = (0.9*100 + 0.3*120) / 1.2 = 105
    a = det([("a", 0, 0.9, 100, 100, 300, 200)])
    b = det([("a", 0, 0.3, 120, 100, 320, 200)])
    out = fuse_detections([a, b], SIZES, iou_thr=0.4)
    assert len(out) == 1
    np.testing.assert_allclose(box(out)[0], [105, 100, 305, 200], atol=1e-3)
    assert out["score"].iloc[0] == pytest.approx(0.6)
    # the same boxes on a tall image (b: 1000 x 3000) come back in that image's pixels
    a2, b2 = a.assign(image_id="b"), b.assign(image_id="b")
    out2 = fuse_detections([a2, b2], SIZES)
    np.testing.assert_allclose(box(out2)[0], [105, 100, 305, 200], atol=1e-3)


def test_disjoint_boxes_and_other_classes_stay_apart_and_absent_sources_count():
    a = det([("a", 0, 0.9, 0, 0, 100, 100), ("a", 1, 0.5, 0, 0, 100, 100)])
    b = det([("a", 0, 0.5, 1500, 500, 1700, 700)])
    out = fuse_detections([a, b], SIZES).sort_values(["class_id", "score"], ascending=[True, False])
    assert len(out) == 3
    # each box was found by one of two sources: WBF 'avg' keeps half its score
    np.testing.assert_allclose(out["score"].to_numpy(), [0.45, 0.25, 0.25])
    np.testing.assert_allclose(box(out), [[0, 0, 100, 100], [1500, 500, 1700, 700], [0, 0, 100, 100]], atol=1e-3)


def test_source_nms_stops_a_sources_weak_neighbour_from_diluting_the_fused_score():
    # source a: a strong box and a weak one beside it (IoU 0.45: above WBF's 0.4, below a detector's NMS 0.5),
    # plus the same weak box in another class; source b: the object once
    a = det([("a", 0, 0.8, 0, 0, 100, 100), ("a", 0, 0.1, 0, 0, 100, 45), ("a", 1, 0.1, 0, 0, 100, 45)])
    b = det([("a", 0, 0.6, 0, 0, 100, 100)])
    plain = fuse_detections([a, b], SIZES, iou_thr=0.4)
    c0 = plain[plain["class_id"] == 0]
    assert len(c0) == 1 and c0["score"].iloc[0] == pytest.approx((0.8 + 0.6 + 0.1) / 3)  # diluted
    out = fuse_detections([a, b], SIZES, iou_thr=0.4, source_nms=True)
    c0, c1 = out[out["class_id"] == 0], out[out["class_id"] == 1]
    assert len(c0) == 1 and c0["score"].iloc[0] == pytest.approx(0.7)  # (0.8 + 0.6) / 2: b's box was not suppressed
    np.testing.assert_allclose(box(c0)[0], [0, 0, 100, 100], atol=1e-3)
    assert len(c1) == 1 and c1["score"].iloc[0] == pytest.approx(0.05)  # another class: kept, one source of two


def test_source_nms_keeps_boxes_that_overlap_less_than_the_fusion_iou():
    a = det([("a", 0, 0.8, 0, 0, 100, 100), ("a", 0, 0.3, 0, 0, 100, 35)])  # IoU 0.35 < 0.4
    out = fuse_detections([a], SIZES, iou_thr=0.4, source_nms=True)
    np.testing.assert_allclose(sorted(out["score"]), [0.3, 0.8])


def test_across_classes_keeps_the_stronger_class_of_one_object_and_other_objects():
    # one object called class 0 (0.8) and class 1 (0.3) at IoU 0.82; a class-1 box elsewhere; image b alike
    a = det([("a", 0, 0.8, 100, 100, 300, 200), ("a", 1, 0.3, 120, 100, 320, 200), ("a", 1, 0.2, 1500, 500, 1700, 700),
             ("b", 1, 0.9, 0, 0, 100, 100), ("b", 0, 0.4, 0, 0, 100, 100)])
    plain = fuse_detections([a], SIZES, iou_thr=0.5)
    assert len(plain) == 5  # per-class fusion never merges classes
    out = fuse_detections([a], SIZES, iou_thr=0.5, across_classes=True)
    got = sorted(map(tuple, out[["image_id", "class_id", "score"]].itertuples(index=False)))
    assert got == [("a", 0, 0.8), ("a", 1, 0.2), ("b", 1, 0.9)]
    # at iou_thr 0.9 the 0.82-overlap pair of image a both stay; b's identical boxes still do not
    low = fuse_detections([a], SIZES, iou_thr=0.9, across_classes=True)
    assert sorted(low.loc[low["image_id"] == "a", "score"]) == [0.2, 0.3, 0.8]
    assert low.loc[low["image_id"] == "b", "class_id"].tolist() == [1]


def test_fuse_options_read_the_config_section():
    from pipeline.config import load_config
    from pipeline.fusion import fuse_options

    cfg = load_config("configs/demo.yaml", ["fuse.across_classes=true", "fuse.iou_thr=0.55"])
    opts = fuse_options(cfg.fuse)
    assert opts["across_classes"] is True and opts["iou_thr"] == 0.55 and opts["method"] == cfg.fuse.method


@pytest.mark.parametrize("iou_thr", [0.3, 0.5])
def test_lock_step_source_nms_keeps_what_torchvision_batched_nms_keeps(iou_thr):
    import torch
    from torchvision.ops import batched_nms

    from pipeline.source_nms import source_nms_keep

    rng = np.random.default_rng(3)
    n = 3000  # above torchvision's 4,000-number threshold: its per-group loop is the reference
    centre = rng.uniform(0.2, 0.8, (n, 2)).round(1)  # few sites: many overlapping boxes per group
    half = rng.uniform(0.02, 0.15, (n, 2))
    boxes = np.hstack([centre - half, centre + half])
    boxes[:5, 2] = boxes[:5, 0]  # zero width: never kept
    scores = rng.permutation(n) / n  # distinct: no tie order to disagree on
    image, source, label = rng.integers(0, 20, n), rng.integers(0, 4, n), rng.integers(0, 3, n).astype(float)
    ours = source_nms_keep(boxes, scores, image, source, label, iou_thr)
    ok = np.flatnonzero(~np.isin(np.arange(n), range(5)))
    group = torch.as_tensor((image * 4 + source) * 3 + label.astype(int))[ok]
    ref = np.zeros(n, bool)
    ref[ok[batched_nms(torch.as_tensor(boxes[ok]), torch.as_tensor(scores[ok]), group, iou_thr).numpy()]] = True
    assert 0 < ours.sum() < n - 5 and np.array_equal(ours, ref)


def test_weights_change_the_fused_score_and_box_as_ensemble_boxes_computes():
    a = det([("a", 0, 0.8, 100, 100, 300, 200)])
    b = det([("a", 0, 0.4, 120, 100, 320, 200)])
    out = fuse_detections([a, b], SIZES, weights=[3, 1])
    # scores enter as score*weight: (2.4 + 0.4) / 2 boxes * min(2 sources, 2 boxes) / (3 + 1) = 0.7
    assert out["score"].iloc[0] == pytest.approx(0.7)
    # box average weighted by score*weight: (2.4*100 + 0.4*120) / 2.8
    np.testing.assert_allclose(box(out)[0], [(240 + 48) / 2.8, 100, (720 + 128) / 2.8, 200], atol=1e-3)
    plain = fuse_detections([a, b], SIZES)
    assert plain["score"].iloc[0] == pytest.approx(0.6)


def test_boxes_are_clipped_to_the_image():
    a = det([("a", 2, 0.9, 1900, 900, 2100, 1100)])
    b = det([("a", 2, 0.5, 1900, 900, 2000, 1000), ("a", 2, 0.5, 2100, 0, 2200, 100)])  # 2nd: outside, dropped
    out = fuse_detections([a, b], SIZES)
    assert len(out) == 1
    assert out["score"].iloc[0] == pytest.approx(0.7)
    np.testing.assert_allclose(box(out)[0], [1900, 900, 2000, 1000], atol=1e-3)


@pytest.mark.slow  # ensemble-boxes' NMS is numba-compiled on first use (about 7 s)
def test_nms_keeps_the_best_box_and_weights_scale_scores():
    a = det([("a", 2, 0.9, 1900, 900, 2000, 1000)])
    b = det([("a", 2, 0.5, 1900, 900, 2000, 1000)])
    out = fuse_detections([a, b], SIZES, method="nms")
    assert len(out) == 1
    assert out["score"].iloc[0] == pytest.approx(0.9)
    np.testing.assert_allclose(box(out)[0], [1900, 900, 2000, 1000], atol=1e-3)
    weighted = fuse_detections([a, b], SIZES, method="nms", weights=[1, 3])
    assert weighted["score"].iloc[0] == pytest.approx(0.375)  # 0.5 * 3 / 4 beats 0.9 * 1 / 4
    soft = fuse_detections([a, b], SIZES, method="soft_nms")
    assert soft["score"].max() == pytest.approx(0.9)


def test_process_pool_gives_the_same_result():
    rng = np.random.default_rng(0)
    frames = []
    for _ in range(3):
        rows = []
        for img in ["a", "b"]:
            for _ in range(5):
                x, y = rng.uniform(0, 500, 2)
                rows.append((img, int(rng.integers(0, 3)), float(rng.uniform(0.1, 1)), x, y, x + 300, y + 200))
        frames.append(det(rows))
    one = fuse_detections(frames, SIZES, workers=1)
    two = fuse_detections(frames, SIZES, workers=2, chunk_size=1)
    pd.testing.assert_frame_equal(one, two)


@pytest.mark.parametrize("conf_type", ["avg", "max", "box_and_model_avg", "absent_model_aware_avg"])
def test_batched_engine_gives_the_table_of_ensemble_boxes(conf_type):
    # clustered detector-like output: 6 sources, boxes touching the image edge, one source empty
    # on two images, uneven weights; the whole table (order included) must be the same
    from benchmarks.fuse import clustered_detections

    frames, sizes = clustered_detections(8, n_sources=6, boxes_per_source=40, seed=11)
    frames[2] = frames[2][~frames[2]["image_id"].isin(["img00001", "img00004"])]
    weights = [1.0, 2.0, 0.5, 1.5, 1.0, 0.7]
    kw = dict(iou_thr=0.4, skip_box_thr=0.0, conf_type=conf_type, weights=weights)
    ref = fuse_detections(frames, sizes, engine="ensemble_boxes", **kw)
    new = fuse_detections(frames, sizes, **kw)
    assert len(ref) < sum(len(f) for f in frames) / 2  # boxes were merged
    pd.testing.assert_frame_equal(new, ref)
    pd.testing.assert_frame_equal(fuse_detections(frames, sizes, workers=2, chunk_size=3, **kw), ref)


def test_unknown_engine_is_an_error():
    with pytest.raises(ValueError, match="engine 'fast'"):
        fuse_detections([det([("a", 0, 0.5, 0, 0, 10, 10)])], SIZES, engine="fast")


def test_missing_size_is_a_clear_error():
    with pytest.raises(DataError, match="no original size.*'zz'"):
        fuse_detections([det([("zz", 0, 0.5, 0, 0, 10, 10)])], SIZES)


# --------------------------------------------------------------------------------------------------
# the 2-class filter
# --------------------------------------------------------------------------------------------------
DETS = det([("lo", 0, 0.6, 10, 10, 50, 50), ("mid", 3, 0.8, 10, 10, 50, 50), ("mid", 5, 0.4, 0, 0, 9, 9),
            ("hi", 0, 0.5, 10, 10, 50, 50), ("nop", 1, 0.3, 1, 1, 5, 5)])
P = pd.Series({"lo": 0.05, "mid": 0.6, "hi": 0.97, "empty": 0.5})


def rows_of(df, image_id):
    return sorted(map(tuple, df.loc[df["image_id"] == image_id, ["class_id", "score", "x_min", "y_min", "x_max", "y_max"]]
                      .to_numpy().round(6).tolist()))


def test_filter_three_regimes():
    out = apply_two_class_filter(DETS, P, low=0.08, high=0.95)
    assert rows_of(out, "lo") == [(14, 1.0, 0, 0, 1, 1)]                      # p < low: normal only
    assert rows_of(out, "mid") == [(3, 0.8, 10, 10, 50, 50), (5, 0.4, 0, 0, 9, 9), (14, 0.4, 0, 0, 1, 1)]  # + 1-p
    assert rows_of(out, "hi") == [(0, 0.5, 10, 10, 50, 50)]                   # p >= high: as is
    assert rows_of(out, "nop") == [(1, 0.3, 1, 1, 5, 5)]                      # no p: untouched
    assert rows_of(out, "empty") == [(14, 0.5, 0, 0, 1, 1)]                   # p, no boxes: still a normal box


def test_filter_multiply_scales_finding_scores_by_p():
    out = apply_two_class_filter(DETS, P, low=0.08, high=0.95, multiply=True)
    assert rows_of(out, "mid") == [(3, 0.48, 10, 10, 50, 50), (5, 0.24, 0, 0, 9, 9), (14, 0.4, 0, 0, 1, 1)]
    assert rows_of(out, "hi") == [(0, 0.485, 10, 10, 50, 50)]
    assert rows_of(out, "nop") == [(1, 0.3, 1, 1, 5, 5)]


def test_filter_threshold_edges():
    p = pd.Series({"lo": 0.08, "hi": 0.95})
    out = apply_two_class_filter(DETS, p, low=0.08, high=0.95)
    assert (14, 0.92, 0, 0, 1, 1) in rows_of(out, "lo")  # p == low is the middle regime
    assert rows_of(out, "hi") == [(0, 0.5, 10, 10, 50, 50)]  # p == high keeps as is
    with pytest.raises(ValueError, match="low <= high"):
        apply_two_class_filter(DETS, p, low=0.9, high=0.1)


def test_normal_from_detections_is_one_minus_top_finding_score():
    out = add_normal_from_detections(DETS, ["lo", "mid", "new"])
    assert rows_of(out, "mid")[-1] == (14, 0.2, 0, 0, 1, 1)
    assert rows_of(out, "new") == [(14, 1.0, 0, 0, 1, 1)]
    assert (14, 0.7, 0, 0, 1, 1) in rows_of(out, "nop")


def test_tune_filter_thresholds_finds_the_low_that_removes_a_false_positive():
    truth = pd.DataFrame({"image_id": ["A", "B"], "class_id": [14, 0],
                          "x_min": [np.nan, 10.0], "y_min": [np.nan, 10.0], "x_max": [np.nan, 50.0], "y_max": [np.nan, 50.0]})
    dets = det([("A", 0, 0.6, 10, 10, 50, 50), ("B", 0, 0.5, 10, 10, 50, 50)])
    p = pd.Series({"A": 0.01, "B": 0.9})
    low, high, best, grid = tune_filter_thresholds(dets, p, truth, lows=(0.0, 0.02, 0.5), highs=(0.5, 0.95))
    # low=0 leaves A's false positive ranked first: class-0 AP 0.5; any low above 0.01 removes it
    assert (low, high, best) == (0.02, 0.5, 1.0)
    assert grid.loc[grid["low"] == 0.0, "map"].max() < 1.0
