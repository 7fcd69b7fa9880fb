"""COCO metrics (pipeline.coco_metrics): hand-made cases with values computed by hand, and random cases
checked against faster-coco-eval's own API (built here from the tables, independently of the module)."""
from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pandas as pd
import pytest

from pipeline.coco_metrics import (HEADLINE_METRICS, check_headline_metric, coco_scores, coco_structures,
                                   headline_value, run_cocoeval)
from pipeline.errors import ConfigError, DataError
from pipeline.metrics import vinbigdata_map

NAMES = ["cls0", "cls1", "cls2"]
NORMAL = 3
TCOLS = ["image_id", "class_id", "x_min", "y_min", "x_max", "y_max"]
PCOLS = ["image_id", "class_id", "score", "x_min", "y_min", "x_max", "y_max"]


def T(*rows):
    return pd.DataFrame(list(rows), columns=TCOLS)


def P(*rows):
    return pd.DataFrame(list(rows), columns=PCOLS)


NORMAL_ROW = ("n1", NORMAL, np.nan, np.nan, np.nan, np.nan)  # a normal image's truth row


# --------------------------------------------------------------------------------------------------
# hand-made cases
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["pycocotools", "faster_coco_eval"])
def test_perfect_predictions_score_one(backend):
    truth = T(("a", 0, 10, 10, 200, 300), ("a", 1, 50, 60, 90, 80), ("b", 0, 0, 0, 64, 64), NORMAL_ROW)
    preds = P(*[(i, c, 0.9 - 0.1 * k, x0, y0, x1, y1) for k, (i, c, x0, y0, x1, y1) in enumerate(truth.iloc[:3].itertuples(index=False))])
    res = coco_scores(truth, preds, NAMES, NORMAL, ["a", "b", "n1"], backend=backend)
    for key in ("ap", "ap50", "ap75", "ar"):
        assert res[key] == pytest.approx(1.0)
        assert res["agnostic"][key] == pytest.approx(1.0)
    assert res["per_class"]["cls0"] == {"ap": pytest.approx(1.0), "ap50": pytest.approx(1.0), "n_truth": 2, "n_pred": 2}
    assert res["per_class"]["cls2"] == {"ap": None, "ap50": None, "n_truth": 0, "n_pred": 0}
    assert (res["n_images"], res["n_truth"], res["n_predictions"]) == (3, 3, 3)


@pytest.mark.parametrize("fp_first, expected", [(False, 1.0), (True, 0.5)])
def test_one_tp_one_fp_each_order(fp_first, expected):
    """One truth box; a hit on it and a false positive on a NORMAL image.
    TP first: precision 1 at every recall -> all 101 points 1.0 -> AP 1.
    FP first: (r 0, p 0), (r 1, p 1/2); the envelope is 1/2 at every recall threshold -> AP 0.5."""
    truth = T(("a", 0, 0, 0, 100, 100), NORMAL_ROW)
    tp, fp = (0.5, 0.9) if fp_first else (0.9, 0.5)
    preds = P(("a", 0, tp, 0, 0, 100, 100), ("n1", 0, fp, 20, 20, 80, 80),
              ("a", NORMAL, 1.0, 0, 0, 1, 1))  # a normal-class row: not a box, ignored
    res = coco_scores(truth, preds, NAMES, NORMAL, ["a", "n1"])
    assert res["ap50"] == pytest.approx(expected)
    assert res["ap"] == pytest.approx(expected)  # exact box: every IoU threshold behaves alike
    assert res["agnostic"]["ap50"] == pytest.approx(expected)
    assert res["n_normal_predictions_ignored"] == 1 and res["n_predictions"] == 2
    # without the normal image the false positive has nowhere to go: it must be passed, not dropped
    with pytest.raises(DataError, match="not in image_ids"):
        coco_scores(truth, preds, NAMES, NORMAL, ["a"])


def test_101_point_interpolation_differs_from_voc_all_point():
    """Two truth boxes, ranked TP, FP, TP: recall .5 .5 1, precision 1 .5 2/3.
    COCO samples the envelope at recall 0, .01, .., 1: 51 points (<= .5) at 1, 50 points at 2/3.
    VOC all-point: .5 * 1 + .5 * 2/3 = 5/6."""
    truth = T(("a", 0, 0, 0, 100, 100), ("b", 0, 0, 0, 100, 100))
    preds = P(("a", 0, 0.9, 0, 0, 100, 100), ("a", 0, 0.8, 300, 300, 400, 400), ("b", 0, 0.7, 0, 0, 100, 100))
    coco = coco_scores(truth, preds, NAMES, NORMAL, ["a", "b"])
    assert coco["ap50"] == pytest.approx((51 * 1.0 + 50 * 2 / 3) / 101, abs=1e-12)
    voc = vinbigdata_map(truth, preds, iou_thr=0.5)["map"]
    assert voc == pytest.approx(5 / 6, abs=1e-12)
    assert coco["ap50"] - voc == pytest.approx(1 / 606, abs=1e-12)


@pytest.mark.parametrize("height, n_thresholds", [(52, 1), (62, 3), (77, 6), (96, 10)])
def test_iou_counts_for_some_thresholds_only(height, n_thresholds):
    """Prediction 0,0,100,h inside truth 0,0,100,100: IoU h/100. It matches the thresholds .50,.55,..
    up to the IoU, so AP = (number matched) / 10 while AP50 = 1."""
    truth = T(("a", 1, 0, 0, 100, 100))
    preds = P(("a", 1, 0.8, 0, 0, 100, height))
    res = coco_scores(truth, preds, NAMES, NORMAL, ["a"])
    assert res["ap50"] == pytest.approx(1.0)
    assert res["ap"] == pytest.approx(n_thresholds / 10)
    assert res["ap75"] == pytest.approx(1.0 if height >= 75 else 0.0)
    assert res["per_class"]["cls1"]["ap"] == pytest.approx(n_thresholds / 10)


def test_class_agnostic_turns_confusion_into_hit():
    truth = T(("a", 0, 10, 10, 110, 110))
    preds = P(("a", 1, 0.7, 10, 10, 110, 110))
    res = coco_scores(truth, preds, NAMES, NORMAL, ["a"])
    assert res["per_class"]["cls0"]["ap50"] == 0.0  # truth, no prediction of its class
    assert res["per_class"]["cls1"]["ap50"] is None and res["per_class"]["cls1"]["n_pred"] == 1  # no truth
    assert res["ap50"] == 0.0 and res["ap"] == 0.0
    assert res["agnostic"]["ap50"] == pytest.approx(1.0) and res["agnostic"]["ap"] == pytest.approx(1.0)


def test_max_dets_drops_lower_ranked_boxes():
    """Three false positives above the hit: AP50 = 1/4 (precision at the only recall), unless the
    per-image cap of 3 drops the hit (AP 0). VOC has no cap."""
    truth = T(("a", 0, 0, 0, 100, 100))
    preds = P(*[("a", 0, s, 500, 500, 600, 600) for s in (0.9, 0.8, 0.7)], ("a", 0, 0.6, 0, 0, 100, 100))
    full = coco_scores(truth, preds, NAMES, NORMAL, ["a"])
    assert full["ap50"] == pytest.approx(0.25) and full["n_predictions_beyond_max_dets"] == 0
    capped = coco_scores(truth, preds, NAMES, NORMAL, ["a"], max_dets=3)
    assert capped["ap50"] == 0.0 and capped["ar"] == 0.0
    assert capped["n_predictions_beyond_max_dets"] == 1 and capped["agnostic"]["n_predictions_beyond_max_dets"] == 1
    assert vinbigdata_map(truth, preds, iou_thr=0.5)["map"] == pytest.approx(0.25)


@pytest.mark.parametrize("backend", ["pycocotools", "faster_coco_eval"])
def test_empty_predictions_and_no_truth(backend):
    truth = T(("a", 2, 0, 0, 50, 50), NORMAL_ROW)
    res = coco_scores(truth, P(), NAMES, NORMAL, ["a", "n1", "x"], backend=backend)
    assert res["ap"] == 0.0 and res["ap50"] == 0.0 and res["agnostic"]["ap50"] == 0.0
    assert res["per_class"]["cls2"]["ap50"] == 0.0 and res["per_class"]["cls0"]["ap50"] is None
    assert res["n_images"] == 3 and res["n_predictions"] == 0
    # no finding truth at all (only normal images): every AP undefined, no crash, with or without predictions
    for preds in (P(), P(("n1", 0, 0.5, 0, 0, 10, 10))):
        res = coco_scores(T(NORMAL_ROW), preds, NAMES + ["No finding"], NORMAL, ["n1"], backend=backend)
        assert res["ap"] is None and res["ap50"] is None and res["agnostic"]["ap"] is None
        assert all(v["ap"] is None for v in res["per_class"].values())
        json.dumps(res, allow_nan=False)


@pytest.mark.parametrize("backend", ["pycocotools", "faster_coco_eval"])
def test_equal_scores_rank_by_image_ids_order(backend):
    """Tied scores across images: COCOeval ranks by COCO image id, i.e. the order of image_ids."""
    truth = T(("a", 0, 0, 0, 100, 100), NORMAL_ROW)
    preds = P(("n1", 0, 0.5, 0, 0, 100, 100), ("a", 0, 0.5, 0, 0, 100, 100))
    assert coco_scores(truth, preds, NAMES, NORMAL, ["a", "n1"], backend=backend)["ap50"] == pytest.approx(1.0)
    assert coco_scores(truth, preds, NAMES, NORMAL, ["n1", "a"], backend=backend)["ap50"] == pytest.approx(0.5)


def test_pycocotools_prints_nothing(capsys):
    coco_scores(T(("a", 0, 0, 0, 10, 10)), P(("a", 0, 0.5, 0, 0, 10, 10)), NAMES, NORMAL, ["a"])
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("truth, preds, ids, match", [
    (T(("a", 0, np.nan, 0, 10, 10)), P(), ["a"], "without a valid box"),
    (T(("a", 0, 10, 0, 5, 10)), P(), ["a"], "x_max >= x_min"),
    (T(("a", 7, 0, 0, 10, 10)), P(), ["a"], "class_id 7"),
    (T(("a", 0, 0, 0, 10, 10)), P(("b", 0, 0.5, 0, 0, 1, 1)), ["a"], "not in image_ids"),
    (T(("a", 0, 0, 0, 10, 10)), P(("a", 0, np.nan, 0, 0, 1, 1)), ["a"], "score must be a finite number"),
    (T(("a", 0, 0, 0, 10, 10)), P(), [], "image_ids is empty"),
])
def test_bad_input_is_a_clear_error(truth, preds, ids, match):
    with pytest.raises(DataError, match=match):
        coco_scores(truth, preds, NAMES, NORMAL, ids)


def test_headline_metric_names():
    assert set(HEADLINE_METRICS) == {"voc_map", "coco_ap50", "coco_ap", "coco_ap50_agnostic", "coco_ap_agnostic"}
    with pytest.raises(ConfigError, match="evaluate.metric.*coco_ap50"):
        check_headline_metric("coco_ap5")
    truth = T(("a", 0, 0, 0, 100, 100))
    res = coco_scores(truth, P(("a", 1, 0.9, 0, 0, 100, 100), ("a", 0, 0.5, 0, 0, 100, 62)), NAMES, NORMAL, ["a"])
    assert headline_value("coco_ap50", res, 0.1) == res["ap50"] == pytest.approx(1.0)
    assert headline_value("coco_ap", res, 0.1) == pytest.approx(0.3)
    # merged: the class-1 box (IoU 1) ranks first and takes the truth; the class-0 box is a duplicate after it
    assert headline_value("coco_ap50_agnostic", res, 0.1) == pytest.approx(1.0)
    assert headline_value("coco_ap_agnostic", res, 0.1) == res["agnostic"]["ap"] == pytest.approx(1.0)
    assert headline_value("voc_map", None, 0.1) == 0.1


# --------------------------------------------------------------------------------------------------
# random cases: pycocotools (through the module) == faster-coco-eval (its own API, own conversion)
# --------------------------------------------------------------------------------------------------
def random_case(seed: int, n_images: int = 40):
    rng = np.random.default_rng(seed)
    truth, preds = [], []
    for i in range(n_images):
        img = f"im{i:03d}"
        n_boxes = rng.integers(0, 4)
        if n_boxes == 0:
            truth.append((img, NORMAL, np.nan, np.nan, np.nan, np.nan))
        for _ in range(n_boxes):
            c = int(rng.integers(0, 2))  # class 2 never has truth
            x0, y0 = rng.uniform(0, 800, 2)
            w, h = rng.uniform(8, 300, 2)  # small, medium and large areas
            truth.append((img, c, x0, y0, x0 + w, y0 + h))
            if rng.random() < 0.8:  # a jittered hit, sometimes of the wrong class
                j = rng.normal(0, 0.12, 4) * [w, h, w, h]
                pc = c if rng.random() < 0.8 else int(rng.integers(0, 3))
                preds.append((img, pc, rng.random(), x0 + j[0], y0 + j[1], x0 + w + j[2], y0 + h + j[3]))
        for _ in range(rng.integers(0, 5)):  # false positives, also on normal images
            x0, y0 = rng.uniform(0, 800, 2)
            w, h = rng.uniform(8, 300, 2)
            preds.append((img, int(rng.integers(0, 3)), rng.random(), x0, y0, x0 + w, y0 + h))
        preds.append((img, NORMAL, rng.random(), 0, 0, 1, 1))
    ids = [f"im{i:03d}" for i in range(n_images)] + ["empty"]  # an image with neither truth nor predictions
    return T(*truth), P(*preds), ids


def faster_reference(truth, preds, ids, max_dets, use_cats):
    """faster-coco-eval's COCOeval_faster on COCO dicts built here row by row; ``use_cats=False`` is the
    library's own class-agnostic mode (useCats=0), not the module's category merging."""
    from faster_coco_eval import COCO, COCOeval_faster

    img_id = {name: k + 1 for k, name in enumerate(ids)}
    anns = []
    for r in truth.itertuples(index=False):
        if r.class_id != NORMAL:
            w, h = r.x_max - r.x_min, r.y_max - r.y_min
            anns.append({"id": len(anns) + 1, "image_id": img_id[r.image_id], "category_id": int(r.class_id) + 10,
                         "bbox": [r.x_min, r.y_min, w, h], "area": w * h, "iscrowd": 0})
    dets = [{"image_id": img_id[r.image_id], "category_id": int(r.class_id) + 10, "score": r.score,
             "bbox": [r.x_min, r.y_min, r.x_max - r.x_min, r.y_max - r.y_min]}
            for r in preds.itertuples(index=False) if r.class_id != NORMAL]
    gt = COCO({"images": [{"id": v} for v in img_id.values()], "annotations": anns,
               "categories": [{"id": c + 10, "name": n} for c, n in enumerate(NAMES)]})
    ev = COCOeval_faster(gt, gt.loadRes(dets), "bbox", print_function=lambda *a, **k: None)
    ev.params.maxDets = [1, 10, max_dets] if max_dets > 10 else [1, max_dets, 10]
    ev.params.useCats = int(use_cats)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    m = ev.params.maxDets.index(max_dets)
    t50 = int(np.flatnonzero(np.isclose(ev.params.iouThrs, 0.5))[0])

    def mean(a):
        a = a[a > -1]
        return float(a.mean()) if a.size else None

    per_class = {n: (mean(ev.eval["precision"][:, :, k, 0, m]), mean(ev.eval["precision"][t50, :, k, 0, m]))
                 for k, n in enumerate(NAMES)} if use_cats else None
    return {"ap": mean(ev.eval["precision"][:, :, :, 0, m]), "ap50": mean(ev.eval["precision"][t50, :, :, 0, m]),
            "ar": mean(ev.eval["recall"][:, :, 0, m]), "stats": ev.stats, "per_class": per_class}


@pytest.mark.parametrize("seed, max_dets", [(0, 100), (1, 100), (2, 3)])
def test_random_cases_agree_with_faster_coco_eval(seed, max_dets):
    truth, preds, ids = random_case(seed)
    ref = faster_reference(truth, preds, ids, max_dets, use_cats=True)
    ref_ag = faster_reference(truth, preds, ids, max_dets, use_cats=False)
    for backend in ("pycocotools", "faster_coco_eval"):
        res = coco_scores(truth, preds, NAMES, NORMAL, ids, max_dets=max_dets, backend=backend)
        assert 0.05 < res["ap50"] < 0.95  # a case that is neither trivial nor hopeless
        for key in ("ap", "ap50", "ar"):
            assert res[key] == pytest.approx(ref[key], abs=1e-6)
            assert res["agnostic"][key] == pytest.approx(ref_ag[key], abs=1e-6)
        for name, (ap, ap50) in ref["per_class"].items():
            got = res["per_class"][name]
            assert (got["ap"] is None) == (ap is None) and (got["ap50"] is None) == (ap50 is None)
            if ap is not None:
                assert got["ap"] == pytest.approx(ap, abs=1e-6) and got["ap50"] == pytest.approx(ap50, abs=1e-6)
        assert res["per_class"]["cls2"]["ap"] is None and res["per_class"]["cls2"]["n_pred"] > 0
        if max_dets == 100:  # the library's own summary lines (maxDets 1, 10, 100)
            assert [res["ap"], res["ap50"], res["ap75"]] == pytest.approx(list(ref["stats"][:3]), abs=1e-6)
            assert res["ar"] == pytest.approx(ref["stats"][8], abs=1e-6)
            for k, lbl in zip((3, 4, 5), ("small", "medium", "large")):
                if ref["stats"][k] == -1:  # no truth box of that size
                    assert res[f"ap_{lbl}"] is None
                else:
                    assert res[f"ap_{lbl}"] == pytest.approx(ref["stats"][k], abs=1e-6)
        else:
            assert res["n_predictions_beyond_max_dets"] > 0
        json.dumps(res, allow_nan=False)


def test_pycocotools_own_summary_matches_module():
    """The module reads COCOeval's arrays itself; pycocotools' summarize() on the same structures agrees."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    truth, preds, ids = random_case(5)
    gt, results = coco_structures(truth, preds, NAMES, NORMAL, ids)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        ev = COCOeval(coco_gt, coco_gt.loadRes(results), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    res = coco_scores(truth, preds, NAMES, NORMAL, ids)
    assert [res["ap"], res["ap50"], res["ap75"], res["ar"]] == pytest.approx(
        [ev.stats[0], ev.stats[1], ev.stats[2], ev.stats[8]], abs=1e-12)
    assert run_cocoeval(gt, results).params.maxDets == [100]


def test_per_fold_scores_each_folds_images_alone():
    from pipeline.stages.evaluate import coco_per_fold

    truth = T(("a", 0, 10, 10, 200, 300), ("b", 1, 0, 0, 64, 64), ("c", 0, 5, 5, 50, 50))
    # fold 0 (a, b): found, b under the wrong class (a hit only class-agnostic); fold 1 (c): missed
    preds = P(("a", 0, 0.9, 10, 10, 200, 300), ("b", 0, 0.8, 0, 0, 64, 64), ("c", 0, 0.7, 100, 100, 140, 140))
    folds = pd.Series([0, 0, 1], index=["a", "b", "c"])
    res = coco_per_fold(truth, preds, NAMES, NORMAL, ["a", "b", "c"], folds, "pycocotools")
    assert set(res) == {"0", "1"}
    assert res["0"]["n_images"] == 2 and res["1"]["n_images"] == 1
    assert res["0"]["ap50_agnostic"] == pytest.approx(1.0)
    assert res["0"]["ap50"] == pytest.approx(0.5)  # cls0 found, cls1 missed
    assert res["1"]["ap50"] == pytest.approx(0.0) and res["1"]["ap50_agnostic"] == pytest.approx(0.0)
    pooled = coco_scores(truth, preds, NAMES, NORMAL, ["a", "b", "c"])
    assert pooled["agnostic"]["ap50"] != pytest.approx(res["0"]["ap50_agnostic"])  # not one fold's figure
