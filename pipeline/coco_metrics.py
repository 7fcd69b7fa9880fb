"""COCO detection metrics of the pipeline's tables, computed by pycocotools' ``COCOeval`` (bbox).

This is the TBX11K metric (Liu et al., CVPR 2020): COCO AP at IoU 0.5 ("AP50") and averaged over
IoU 0.50:0.05:0.95 ("AP"), per class and class-agnostic ("CA TB": every finding class merged into one).
It sits beside the VinBigData metric (:func:`pipeline.metrics.vinbigdata_map`, VOC all-point AP at one
IoU); docs/notes/coco_metrics.md says how the two differ, with measured examples.

* :func:`coco_structures` -- the truth and detection tables as COCO ground truth (a dataset dict) and
  results (a list of dicts), in memory.
* :func:`coco_scores` -- runs COCOeval on them, per class and class-agnostic; a plain JSON-able dict.
* :data:`HEADLINE_METRICS`, :func:`check_headline_metric`, :func:`headline_value` -- the values of
  ``evaluate.metric`` (what the evaluate stage's headline reports) and how each is read.

Conventions (each is tested in tests/test_coco_metrics.py):

* Boxes are ``x_min, y_min, x_max, y_max`` in ORIGINAL pixels; COCO gets ``[x, y, w, h]`` with
  ``w = x_max - x_min`` (continuous, no "+1"), ``area = w * h`` and ``iscrowd = 0``. The area decides
  COCO's small / medium / large ranges (32^2 and 96^2 pixels^2); ``ap`` itself uses every area.
* Class ids ``0..normal_id-1`` are findings, COCO category ``class_id + 1`` (COCOeval treats an
  annotation id of 0 as "unmatched", so every id starts at 1). Rows of ``normal_id`` (the "No finding"
  truth rows and the ``14 p 0 0 1 1`` prediction rows) are dropped: the normal class is not a box.
  Normal images still count as images, so a finding predicted on one is a false positive.
* ``image_ids`` lists every scored image; an image with no truth and no prediction still counts.
  Truth or prediction rows on images outside ``image_ids`` are an error (filter them first).
* COCOeval keeps the ``max_dets`` highest-scoring detections per image AND class (class-agnostic: per
  image); ``n_predictions_beyond_max_dets`` counts the ones it drops.
* Ranking: COCOeval sorts by score, descending, with a stable sort; tied scores keep their table order
  within an image and the order of ``image_ids`` across images.
* A class without truth boxes has AP ``None`` (COCOeval's -1), not 0, and is left out of the mean;
  a class with truth and no predictions has AP 0. With no truth at all every AP is ``None``.
"""
from __future__ import annotations

import contextlib
import difflib
import io
from typing import Sequence

import numpy as np
import pandas as pd

from pipeline.errors import ConfigError, DataError
from pipeline.metrics import (BOX_COLUMNS, PREDICTION_COLUMNS, TRUTH_COLUMNS, _class_ids,
                              _require_columns)

BACKENDS = ("pycocotools", "faster_coco_eval")

# evaluate.metric -> (what it means, key path in the coco_scores dict; None = the VOC mAP)
HEADLINE_METRICS: dict[str, tuple[str, tuple[str, ...] | None]] = {
    "voc_map": ("VinBigData metric: VOC 2010 all-point AP at evaluate.iou_thr, mean over classes with "
                "truth, the normal class scored as a 0,0,1,1 box", None),
    "coco_ap50": ("COCO AP at IoU 0.5 (101-point interpolation, max_dets per image and class), mean over "
                  "finding classes with truth", ("ap50",)),
    "coco_ap": ("COCO AP averaged over IoU 0.50:0.05:0.95, mean over finding classes with truth", ("ap",)),
    "coco_ap50_agnostic": ("COCO AP at IoU 0.5 with every finding class merged into one (TBX11K 'CA TB')",
                           ("agnostic", "ap50")),
    "coco_ap_agnostic": ("COCO AP over IoU 0.50:0.95 with every finding class merged into one",
                         ("agnostic", "ap")),
}

AGNOSTIC_NAME = "any finding"


# --------------------------------------------------------------------------------------------------
# evaluate.metric
# --------------------------------------------------------------------------------------------------
def check_headline_metric(name: str, key: str = "evaluate.metric") -> str:
    """``name`` if it is one of :data:`HEADLINE_METRICS`, else a ConfigError naming ``key``."""
    if name in HEADLINE_METRICS:
        return name
    close = difflib.get_close_matches(str(name), list(HEADLINE_METRICS), n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ConfigError(f"{key}: unknown metric {name!r}; expected one of {list(HEADLINE_METRICS)}.{hint}")


def headline_value(name: str, coco: dict | None, voc_map: float | None) -> float | None:
    """The headline figure ``name`` from a :func:`coco_scores` result or the VOC mAP (None if undefined)."""
    path = HEADLINE_METRICS[check_headline_metric(name)][1]
    if path is None:
        return voc_map
    if coco is None:
        raise ValueError(f"metric {name!r} needs a coco_scores result")
    value = coco
    for k in path:
        value = value[k]
    return value


# --------------------------------------------------------------------------------------------------
# tables -> COCO structures
# --------------------------------------------------------------------------------------------------
def _findings(df: pd.DataFrame, what: str, normal_id: int, id_index: pd.Index) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """The finding rows of ``df``: (rows, class ids, xywh boxes); normal rows dropped, the rest checked."""
    cls = _class_ids(df["class_id"], what)
    bad = (cls < 0) | (cls > normal_id)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(f"{what}: row {row} has class_id {cls[row]}, which is neither a finding "
                        f"(0..{normal_id - 1}) nor the normal class ({normal_id})")
    img = id_index.get_indexer(df["image_id"].astype(str))
    if (img < 0).any():
        outside = pd.unique(df["image_id"].astype(str)[img < 0])
        raise DataError(f"{what}: {int((img < 0).sum())} row(s) on {len(outside)} image(s) that are not in "
                        f"image_ids, e.g. {list(outside[:5])}; pass every scored image in image_ids or drop "
                        "those rows first")
    keep = cls != normal_id
    boxes = df[BOX_COLUMNS].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    bad = keep & (~np.isfinite(boxes).all(axis=1) | (w < 0) | (h < 0))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(f"{what}: {int(bad.sum())} finding row(s) without a valid box, first row {row} "
                        f"(image {df['image_id'].iloc[row]!r}, class {cls[row]}): {df[BOX_COLUMNS].iloc[row].tolist()}; "
                        "a finding box needs four numbers with x_max >= x_min and y_max >= y_min")
    xywh = np.stack([boxes[:, 0], boxes[:, 1], w, h], axis=1)[keep]
    return df[keep], cls[keep], xywh


def _image_index(image_ids) -> pd.Index:
    ids = pd.Index(pd.unique(pd.Series(list(image_ids), dtype=object).astype(str)))
    if len(ids) == 0:
        raise DataError("image_ids is empty: there is no image to score")
    return ids


def coco_structures(truth: pd.DataFrame, predictions: pd.DataFrame, class_names: Sequence[str], normal_id: int,
                    image_ids, agnostic: bool = False) -> tuple[dict, list[dict]]:
    """COCO ground truth (dataset dict: images, categories, annotations) and results (list of dicts).

    Image ``i`` of ``image_ids`` (unique, in order) is COCO image ``i + 1`` with ``file_name`` = its id;
    class ``c`` is category ``c + 1`` (``agnostic``: every finding is category 1, ``AGNOSTIC_NAME``).
    Results carry ``image_id, category_id, bbox, score``; ``loadRes`` adds their id, area and iscrowd.
    """
    _require_columns(truth, TRUTH_COLUMNS, "truth")
    _require_columns(predictions, PREDICTION_COLUMNS, "predictions")
    if int(normal_id) < 1:
        raise ValueError(f"normal_id must be >= 1 (the number of finding classes), got {normal_id}")
    if len(class_names) not in (normal_id, normal_id + 1):
        raise ValueError(f"{len(class_names)} class names for {normal_id} finding classes (normal id {normal_id}); "
                         f"pass the finding names, optionally followed by the normal class")
    ids = _image_index(image_ids)
    t_rows, t_cls, t_box = _findings(truth, "truth", normal_id, ids)
    p_rows, p_cls, p_box = _findings(predictions, "predictions", normal_id, ids)
    score = pd.to_numeric(p_rows["score"], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    if not np.isfinite(score).all():
        row = int(np.flatnonzero(~np.isfinite(score))[0])
        raise DataError(f"predictions: score must be a finite number; finding row {row} "
                        f"(image {p_rows['image_id'].iloc[row]!r}) has {p_rows['score'].iloc[row]!r}")
    if agnostic:
        categories = [{"id": 1, "name": AGNOSTIC_NAME}]
        t_cat, p_cat = np.ones_like(t_cls), np.ones_like(p_cls)
    else:
        categories = [{"id": c + 1, "name": str(class_names[c])} for c in range(normal_id)]
        t_cat, p_cat = t_cls + 1, p_cls + 1
    t_img = ids.get_indexer(t_rows["image_id"].astype(str)) + 1
    p_img = ids.get_indexer(p_rows["image_id"].astype(str)) + 1
    annotations = [{"id": k + 1, "image_id": int(i), "category_id": int(c), "bbox": [float(v) for v in b],
                    "area": float(b[2] * b[3]), "iscrowd": 0}
                   for k, (i, c, b) in enumerate(zip(t_img, t_cat, t_box))]
    results = [{"image_id": int(i), "category_id": int(c), "bbox": [float(v) for v in b], "score": float(s)}
               for i, c, b, s in zip(p_img, p_cat, p_box, score)]
    gt = {"images": [{"id": k + 1, "file_name": name} for k, name in enumerate(ids)],
          "categories": categories, "annotations": annotations}
    return gt, results


# --------------------------------------------------------------------------------------------------
# COCOeval
# --------------------------------------------------------------------------------------------------
def run_cocoeval(gt: dict, results: list[dict], max_dets: int = 100, backend: str = "pycocotools"):
    """COCOeval (bbox) of :func:`coco_structures` output, evaluated and accumulated, its printing silenced.

    ``params.maxDets`` is ``[max_dets]``; read ``.eval["precision"]`` ([T, R, K, A, 1]) and
    ``.eval["recall"]`` ([T, K, A, 1]) with :func:`summary`. ``backend``: ``pycocotools`` (the
    reference) or ``faster_coco_eval`` (its C++ re-implementation; same numbers, faster).
    """
    quiet = lambda *args, **kwargs: None  # noqa: E731
    with contextlib.redirect_stdout(io.StringIO()):
        if backend == "pycocotools":
            from pycocotools.coco import COCO
            from pycocotools.cocoeval import COCOeval

            coco_gt = COCO()
            coco_gt.dataset = gt
            coco_gt.createIndex()
            if results:
                coco_dt = coco_gt.loadRes(results)
            else:  # loadRes cannot take an empty list
                coco_dt = COCO()
                coco_dt.dataset = {"images": list(gt["images"]), "categories": list(gt["categories"]),
                                   "annotations": []}
                coco_dt.createIndex()
            ev = COCOeval(coco_gt, coco_dt, "bbox")
        elif backend == "faster_coco_eval":
            from faster_coco_eval import COCO, COCOeval_faster

            coco_gt = COCO(gt, print_function=quiet)
            coco_dt = coco_gt.loadRes(results)
            ev = COCOeval_faster(coco_gt, coco_dt, "bbox", print_function=quiet)
        else:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        ev.params.maxDets = [int(max_dets)]
        ev.evaluate()
        ev.accumulate()
    return ev


def _mean_defined(values: np.ndarray) -> float | None:
    """COCOeval's averaging: the mean of the entries > -1 (-1 = no truth there); None when there are none."""
    v = np.asarray(values, dtype=np.float64)
    v = v[v > -1]
    return float(v.mean()) if v.size else None


def summary(ev, k: int | None = None) -> dict:
    """AP (0.5:0.95), AP50, AP75, AR@max_dets and AP by area of an evaluated COCOeval; ``k``: one category."""
    p = ev.params
    prec, rec = ev.eval["precision"], ev.eval["recall"]
    cats = slice(None) if k is None else slice(k, k + 1)
    area = {lbl: i for i, lbl in enumerate(p.areaRngLbl)}
    t50 = np.flatnonzero(np.isclose(p.iouThrs, 0.5))
    t75 = np.flatnonzero(np.isclose(p.iouThrs, 0.75))
    a = area["all"]
    out = {"ap": _mean_defined(prec[:, :, cats, a, 0]),
           "ap50": _mean_defined(prec[t50, :, cats, a, 0]),
           "ap75": _mean_defined(prec[t75, :, cats, a, 0]),
           "ar": _mean_defined(rec[:, cats, a, 0])}
    if k is None:
        for lbl in ("small", "medium", "large"):
            out[f"ap_{lbl}"] = _mean_defined(prec[:, :, cats, area[lbl], 0])
    return out


def _beyond_max_dets(img: pd.Series, key: pd.Series, score: pd.Series, max_dets: int) -> int:
    """How many predictions rank below ``max_dets`` within their (image, key) group."""
    if img.empty:
        return 0
    df = pd.DataFrame({"img": img.to_numpy(), "key": key.to_numpy(), "score": score.to_numpy()})
    rank = df.sort_values("score", ascending=False, kind="stable").groupby(["img", "key"]).cumcount()
    return int((rank >= max_dets).sum())


def coco_scores(truth: pd.DataFrame, predictions: pd.DataFrame, class_names: Sequence[str], normal_id: int,
                image_ids, max_dets: int = 100, backend: str = "pycocotools") -> dict:
    """COCO bbox metrics of a detections table against a truth (boxes) table; a plain JSON-able dict.

    ``truth``: ``image_id, class_id, x_min, y_min, x_max, y_max`` (original pixels; normal rows ignored).
    ``predictions``: ``image_id, class_id, score, x_min, y_min, x_max, y_max`` (normal rows ignored).
    ``class_names``: the ``normal_id`` finding names (optionally followed by the normal class's name).
    ``image_ids``: every scored image. See the module docstring for the conventions.

    Returns ``{"ap", "ap50", "ap75", "ar", "ap_small", "ap_medium", "ap_large"}`` (mean over finding
    classes with truth), ``"per_class": {name: {"ap", "ap50", "n_truth", "n_pred"}}`` (every finding
    class; AP None without truth), ``"agnostic": {"ap", "ap50", "ap75", "ar"}``, the counts ``n_images``,
    ``n_truth``, ``n_predictions`` (finding rows), ``n_normal_predictions_ignored``,
    ``n_predictions_beyond_max_dets`` (per image and class; under ``agnostic`` per image), and
    ``max_dets``, ``backend``. Floats are Python floats; undefined values are None.
    """
    if int(max_dets) < 1:
        raise ValueError(f"max_dets must be >= 1, got {max_dets}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    ids = _image_index(image_ids)
    gt, results = coco_structures(truth, predictions, class_names, normal_id, ids)
    ev = run_cocoeval(gt, results, max_dets, backend)
    gt_ag, results_ag = coco_structures(truth, predictions, class_names, normal_id, ids, agnostic=True)
    ev_ag = run_cocoeval(gt_ag, results_ag, max_dets, backend)

    t_cat = np.array([a["category_id"] for a in gt["annotations"]], dtype=np.int64)
    r = pd.DataFrame(results, columns=["image_id", "category_id", "score"])
    cat_index = {c: k for k, c in enumerate(ev.params.catIds)}
    per_class = {}
    for c in range(normal_id):
        s = summary(ev, cat_index[c + 1])
        per_class[str(class_names[c])] = {"ap": s["ap"], "ap50": s["ap50"],
                                          "n_truth": int((t_cat == c + 1).sum()),
                                          "n_pred": int((r["category_id"] == c + 1).sum())}
    n_normal_pred = int((_class_ids(predictions["class_id"], "predictions") == normal_id).sum())
    agnostic = summary(ev_ag, 0)
    agnostic["n_predictions_beyond_max_dets"] = _beyond_max_dets(r["image_id"], pd.Series(np.zeros(len(r))),
                                                                 r["score"], max_dets)
    return {
        **summary(ev),
        "per_class": per_class,
        "agnostic": agnostic,
        "n_images": int(len(ids)),
        "n_truth": int(len(gt["annotations"])),
        "n_predictions": int(len(results)),
        "n_normal_predictions_ignored": n_normal_pred,
        "n_predictions_beyond_max_dets": _beyond_max_dets(r["image_id"], r["category_id"], r["score"], max_dets),
        "max_dets": int(max_dets),
        "backend": backend,
    }
