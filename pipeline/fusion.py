"""Ensembling of detections and the 2-class filter. Pure functions over DataFrames, no config.

Coordinates: every table here is a **detections** table (docs/DESIGN.md)
``image_id, class_id, score, x_min, y_min, x_max, y_max`` in pixels of the ORIGINAL image (corners,
x to the right, y down). Boxes are divided by the image's original width/height only inside
:func:`fuse_detections`, because ensemble-boxes wants [0, 1], and multiplied back before returning.

The normal class (14) is a box ``0 0 1 1`` (pixels) whose score is p(normal): the VinBigData metric
scores it like any class, so its AP ranks images by how sure we are that they are normal.
"""
from __future__ import annotations

import warnings
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd

from pipeline.classes import NORMAL_ID
from pipeline.config import resolve_workers
from pipeline.errors import DataError

DET_COLUMNS = ["image_id", "class_id", "score", "x_min", "y_min", "x_max", "y_max"]
BOX_COLUMNS = ["x_min", "y_min", "x_max", "y_max"]
METHODS = ("wbf", "nms", "soft_nms")
CONF_TYPES = ("avg", "max", "box_and_model_avg", "absent_model_aware_avg")
NORMAL_BOX = (0.0, 0.0, 1.0, 1.0)  # the box of a class-14 prediction, in pixels, as Kaggle expects


# --------------------------------------------------------------------------------------------------
# table helpers
# --------------------------------------------------------------------------------------------------
def empty_detections() -> pd.DataFrame:
    """A detections table with no rows and the contract dtypes."""
    return pd.DataFrame({
        "image_id": pd.Series([], dtype="str"),
        "class_id": pd.Series([], dtype="int64"),
        **{c: pd.Series([], dtype="float64") for c in ["score", *BOX_COLUMNS]},
    })


def check_detections(df: pd.DataFrame, where: str) -> pd.DataFrame:
    """``df`` in contract form (columns, dtypes); DataError naming ``where`` when columns are missing or
    values are not numbers. Extra columns (``tta``, ``fold``) are dropped."""
    missing = [c for c in DET_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{where}: missing column(s) {missing}; a detections table has {DET_COLUMNS} "
                        "(original pixels). Re-run the stage that wrote it.")
    out = pd.DataFrame({"image_id": df["image_id"].astype("str")})
    for c in ["class_id", "score", *BOX_COLUMNS]:
        num = pd.to_numeric(df[c], errors="coerce")
        bad = num.isna()
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataError(f"{where} data row {i + 1}: {c} is {df[c].iloc[i]!r}, not a number "
                            f"({int(bad.sum())} such rows). Every detection needs a class, a score and a box.")
        out[c] = num.astype("int64" if c == "class_id" else "float64").to_numpy()
    return out.reset_index(drop=True)


def normal_rows(image_ids: Iterable[str], scores) -> pd.DataFrame:
    """One class-14 detection per image (box 0 0 1 1 in pixels) with the given score(s)."""
    ids = pd.Series(list(image_ids), dtype="str")
    n = len(ids)
    box = {c: np.full(n, v) for c, v in zip(BOX_COLUMNS, NORMAL_BOX)}
    return pd.DataFrame({"image_id": ids, "class_id": np.full(n, NORMAL_ID, dtype="int64"),
                         "score": np.broadcast_to(np.asarray(scores, dtype="float64"), (n,)).copy(), **box})


def _concat(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    frames = [f for f in frames if len(f)]
    if not frames:
        return empty_detections()
    return pd.concat(frames, ignore_index=True)[DET_COLUMNS]


def sort_detections(df: pd.DataFrame) -> pd.DataFrame:
    """Rows by image (first-seen order kept stable by a sort on id) and descending score."""
    return df.sort_values(["image_id", "score"], ascending=[True, False], kind="stable").reset_index(drop=True)


# --------------------------------------------------------------------------------------------------
# fusion
# --------------------------------------------------------------------------------------------------
def _fuse_one(per_source: list[tuple[np.ndarray, np.ndarray, np.ndarray]], method: str, iou_thr: float,
              skip_box_thr: float, conf_type: str, weights: list[float] | None, sigma: float,
              soft_thresh: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fuse one image: ``per_source`` = [(boxes_norm (n,4), scores (n,), labels (n,)), ...], one per source."""
    import ensemble_boxes as eb  # heavy-ish (numba); imported where it is needed

    boxes = [b for b, _, _ in per_source]
    scores = [s.copy() for _, s, _ in per_source]  # ensemble_boxes' nms rescales its input lists in place
    labels = [lab for _, _, lab in per_source]
    if sum(len(s) for s in scores) == 0:
        return np.zeros((0, 4)), np.zeros(0), np.zeros(0)
    w = None if weights is None else list(weights)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # inputs are clipped and non-empty already; its warnings are noise
        if method == "wbf":
            b, s, lab = eb.weighted_boxes_fusion(boxes, scores, labels, weights=w, iou_thr=iou_thr,
                                                 skip_box_thr=skip_box_thr, conf_type=conf_type)
        else:
            keep = [sc >= skip_box_thr for sc in scores]
            boxes = [bb[k] for bb, k in zip(boxes, keep)]
            scores = [sc[k] for sc, k in zip(scores, keep)]
            labels = [ll[k] for ll, k in zip(labels, keep)]
            if sum(len(s) for s in scores) == 0:
                return np.zeros((0, 4)), np.zeros(0), np.zeros(0)
            if method == "nms":
                b, s, lab = eb.nms(boxes, scores, labels, iou_thr=iou_thr, weights=w)
            else:
                b, s, lab = eb.soft_nms(boxes, scores, labels, iou_thr=iou_thr, sigma=sigma,
                                        thresh=soft_thresh, weights=w)
    return np.asarray(b, float).reshape(-1, 4), np.asarray(s, float), np.asarray(lab, float)


def _fuse_chunk(args) -> pd.DataFrame:
    """Worker: fuse a chunk of images. ``args`` = (image ids, per-image per-source arrays, sizes, options)."""
    image_ids, groups, wh, opts = args
    out_ids, out_cls, out_sc, out_box = [], [], [], []
    for image_id, per_source, (width, height) in zip(image_ids, groups, wh):
        b, s, lab = _fuse_one(per_source, **opts)
        if not len(s):
            continue
        # ensemble-boxes computes in float32: round away its noise (1/1000 px is far below any use).
        b = np.round(np.clip(b, 0.0, 1.0) * np.array([width, height, width, height], dtype=float), 3)
        out_ids.extend([image_id] * len(s))
        out_cls.append(lab.astype("int64"))
        # ensemble-boxes returns float32 scores: keep their shortest decimal form (0.8, not 0.800000011920929)
        out_sc.append(np.asarray(s, dtype=np.float32).astype(str).astype(np.float64))
        out_box.append(b)
    if not out_ids:
        return empty_detections()
    box = np.concatenate(out_box)
    return pd.DataFrame({"image_id": pd.Series(out_ids, dtype="str"), "class_id": np.concatenate(out_cls),
                         "score": np.concatenate(out_sc),
                         **{c: box[:, i] for i, c in enumerate(BOX_COLUMNS)}})


def fuse_detections(frames: Sequence[pd.DataFrame], sizes: pd.DataFrame, method: str = "wbf",
                    iou_thr: float = 0.4, skip_box_thr: float = 0.0, conf_type: str = "avg",
                    weights: Sequence[float] | None = None, workers: int = 1, sigma: float = 0.5,
                    soft_thresh: float = 0.001, chunk_size: int = 200,
                    progress: Callable[[int], None] | None = None) -> pd.DataFrame:
    """Fuse detections of several sources (one frame per model x fold x flip) image by image.

    Each frame is a detections table (``image_id, class_id, score, x_min, y_min, x_max, y_max`` in
    ORIGINAL pixels). ``sizes`` has ``image_id, width, height`` (original pixels) for every image in any
    frame. Per image, boxes are divided by that image's width/height and clipped to [0, 1] (what
    ensemble-boxes expects; degenerate boxes are dropped), fused per class with ``method`` (``wbf`` =
    ``ensemble_boxes.weighted_boxes_fusion``, ``nms``, ``soft_nms``; note that ensemble-boxes' soft-NMS decides which boxes survive but returns
    their original scores) using ``weights[i]`` for frame ``i``,
    and multiplied back to original pixels. Every frame counts as a source for every image, also where
    it has no box there: with WBF's ``avg`` confidence a box that only one of N equally weighted sources
    found keeps 1/N of its score (so only pass frames that could have predicted the image, e.g. for
    out-of-fold data concatenate a model's folds into one frame).

    ``workers > 1`` fuses chunks of ``chunk_size`` images in a process pool (``0`` = all cores).
    Returns a detections table sorted by image and descending score; images without any box are absent.
    """
    if method not in METHODS:
        raise ValueError(f"fusion method {method!r} is not one of {METHODS}")
    if conf_type not in CONF_TYPES:
        raise ValueError(f"conf_type {conf_type!r} is not one of {CONF_TYPES}")
    n_src = len(frames)
    if n_src == 0:
        return empty_detections()
    if weights is not None:
        weights = [float(w) for w in weights]
        if len(weights) != n_src:
            raise ValueError(f"{len(weights)} weights for {n_src} sources; give one weight per frame")
        if min(weights) <= 0:
            raise ValueError(f"fusion weights must be positive, got {weights}")

    parts = []
    for i, f in enumerate(frames):
        f = check_detections(f, where=f"source {i} of the fusion")
        f["_src"] = i
        parts.append(f)
    det = pd.concat(parts, ignore_index=True)
    if det.empty:
        return empty_detections()

    size = sizes.drop_duplicates("image_id").set_index(sizes["image_id"].drop_duplicates().astype("str"))
    w = det["image_id"].map(size["width"]).astype("float64").to_numpy()
    h = det["image_id"].map(size["height"]).astype("float64").to_numpy()
    no_size = np.isnan(w) | np.isnan(h) | (w <= 0) | (h <= 0)
    if no_size.any():
        ids = det.loc[no_size, "image_id"].unique()
        raise DataError(f"{len(ids)} image(s) with detections have no original size (width, height) in the "
                        f"size table, e.g. {list(ids[:5])}. Sizes come from meta.csv: re-run prepare, or "
                        "check that the predictions belong to this run.")
    norm = det[BOX_COLUMNS].to_numpy(float) / np.stack([w, h, w, h], axis=1)
    norm = np.clip(norm, 0.0, 1.0)
    # Boxes squeezed to nothing by clipping (entirely outside the image) carry no information.
    keep = (norm[:, 2] > norm[:, 0]) & (norm[:, 3] > norm[:, 1])
    det, norm, w, h = det.loc[keep].reset_index(drop=True), norm[keep], w[keep], h[keep]

    order = np.lexsort((det["_src"].to_numpy(), det["image_id"].to_numpy()))
    det, norm, w, h = det.iloc[order].reset_index(drop=True), norm[order], w[order], h[order]
    ids = det["image_id"].to_numpy()
    src = det["_src"].to_numpy()
    scores = det["score"].to_numpy(float)
    labels = det["class_id"].to_numpy(float)
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    ends = np.r_[starts[1:], len(ids)]

    image_ids, groups, wh = [], [], []
    for a, b in zip(starts, ends):
        cuts = np.searchsorted(src[a:b], np.arange(n_src + 1)) + a
        groups.append([(norm[cuts[k]:cuts[k + 1]], scores[cuts[k]:cuts[k + 1]], labels[cuts[k]:cuts[k + 1]])
                       for k in range(n_src)])
        image_ids.append(ids[a])
        wh.append((w[a], h[a]))

    opts = dict(method=method, iou_thr=float(iou_thr), skip_box_thr=float(skip_box_thr), conf_type=conf_type,
                weights=weights, sigma=float(sigma), soft_thresh=float(soft_thresh))
    n_workers = resolve_workers(workers, "run.workers")
    if n_workers > 1:  # several chunks per worker, so one slow chunk does not leave the others idle
        chunk_size = max(1, min(chunk_size, -(-len(image_ids) // (4 * n_workers))))
    chunks = [(image_ids[i:i + chunk_size], groups[i:i + chunk_size], wh[i:i + chunk_size], opts)
              for i in range(0, len(image_ids), chunk_size)]
    n_workers = min(n_workers, len(chunks))
    results = []
    if n_workers > 1:
        import multiprocessing as mp

        # fork (Linux): workers need no re-import of the caller's __main__, so a notebook or a script
        # without a main guard works too; the workers only run numpy and ensemble-boxes.
        method_name = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        with mp.get_context(method_name).Pool(n_workers) as pool:
            for res in pool.imap(_fuse_chunk, chunks):
                results.append(res)
                if progress:
                    progress(len(res))
    else:
        for ch in chunks:
            results.append(_fuse_chunk(ch))
            if progress:
                progress(len(ch[0]))
    return sort_detections(_concat(results))


# --------------------------------------------------------------------------------------------------
# the normal class
# --------------------------------------------------------------------------------------------------
def add_normal_from_detections(dets: pd.DataFrame, image_ids: Iterable[str] | None = None) -> pd.DataFrame:
    """Append a class-14 box to every image that has none, scored 1 - (its highest finding score).

    Used when no binary classifier is available: the detector's own confidence is the best ranking of
    images by normality it has. An image without any finding box gets score 1 ("14 1 0 0 1 1"); an image
    with a 0.9 box gets 0.1, never 0, so the normal class is never scored as absent. ``image_ids`` (e.g.
    every image of the split) adds images the detector left empty.
    """
    dets = dets[DET_COLUMNS] if len(dets) else empty_detections()
    findings = dets[dets["class_id"] != NORMAL_ID]
    has_normal = set(dets.loc[dets["class_id"] == NORMAL_ID, "image_id"])
    all_ids = pd.Index(pd.unique(pd.concat([pd.Series(list(image_ids or []), dtype="str"),
                                            dets["image_id"].astype("str")], ignore_index=True)))
    need = [i for i in all_ids if i not in has_normal]
    top = findings.groupby("image_id")["score"].max()
    score = 1.0 - top.reindex(need).fillna(0.0).clip(0.0, 1.0).to_numpy()
    return sort_detections(_concat([dets, normal_rows(need, score)]))


def apply_two_class_filter(dets: pd.DataFrame, p_abnormal: pd.Series, low: float, high: float,
                           multiply: bool = False) -> pd.DataFrame:
    """The 2-class filter of the VinBigData winners, driven by a classifier's p = p(abnormal).

    Per image with a p (``p_abnormal`` is indexed by image_id):

    * ``p < low``: the detections are replaced by one class-14 box, score 1 (``14 1 0 0 1 1``);
    * ``low <= p < high``: the finding boxes stay and a class-14 box with score ``1 - p`` is appended;
    * ``p >= high``: the finding boxes stay as they are, no class-14 box;
    * ``multiply``: finding scores of the kept boxes are multiplied by p.

    Class-14 rows already in ``dets`` are dropped for images with a p (the classifier decides there).
    Images with a p but no detections get their class-14 box too; images without a p are left as they are.
    Boxes are in original pixels; the class-14 box is 0 0 1 1.
    """
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"2-class filter thresholds need 0 <= low <= high <= 1, got low={low}, high={high}")
    dets = dets[DET_COLUMNS].reset_index(drop=True) if len(dets) else empty_detections()
    p = pd.Series(p_abnormal, dtype="float64")
    p.index = p.index.astype("str")
    p = p[~p.index.duplicated()].dropna()
    row_p = dets["image_id"].map(p)
    has_p = row_p.notna().to_numpy()
    rp = row_p.to_numpy(float)
    drop = has_p & ((dets["class_id"].to_numpy() == NORMAL_ID) | (rp < low))
    out = dets.loc[~drop].copy()
    if multiply:
        m = out["image_id"].map(p)
        finding = m.notna() & (out["class_id"] != NORMAL_ID)
        out.loc[finding, "score"] = out.loc[finding, "score"] * m[finding]
    low_ids = p.index[p < low]
    mid = p[(p >= low) & (p < high)]
    return sort_detections(_concat([out, normal_rows(low_ids, 1.0), normal_rows(mid.index, 1.0 - mid.to_numpy())]))


def tune_filter_thresholds(dets: pd.DataFrame, p_abnormal: pd.Series, truth: pd.DataFrame,
                           lows: Sequence[float] = (0.0, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3),
                           highs: Sequence[float] = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 1.0),
                           multiply: bool = False, iou_thr: float = 0.4,
                           score: Callable[[pd.DataFrame, pd.DataFrame], float] | None = None
                           ) -> tuple[float, float, float, pd.DataFrame]:
    """Grid-search (low, high) of the 2-class filter that maximise the out-of-fold mAP.

    ``dets`` are out-of-fold detections (original pixels), ``p_abnormal`` the out-of-fold p(abnormal)
    per image_id, ``truth`` the scored truth (``train.csv`` form). Only images with a p take part, so
    the thresholds are chosen on data that the filter actually touches. ``score(truth, preds) -> mAP``
    defaults to ``pipeline.metrics.vinbigdata_map`` at ``iou_thr``. Returns (low, high, best mAP, grid
    table of low, high, map); ties keep the first (smallest) pair.
    """
    if score is None:
        from pipeline.metrics import vinbigdata_map

        def score(t, d):
            return float(vinbigdata_map(t, d, iou_thr=iou_thr)["map"])
    p = pd.Series(p_abnormal, dtype="float64").dropna()
    p.index = p.index.astype("str")
    ids = set(p.index)
    truth = truth[truth["image_id"].astype("str").isin(ids)]
    dets = dets[dets["image_id"].astype("str").isin(ids)]
    if truth.empty:
        raise DataError("tuning the 2-class filter: no truth rows for the images that have a classifier "
                        "probability; check that the classifier's oof file covers train images.")
    rows = []
    for lo in lows:
        for hi in highs:
            if hi < lo:
                continue
            filtered = apply_two_class_filter(dets, p, lo, hi, multiply=multiply)
            rows.append({"low": float(lo), "high": float(hi), "map": score(truth, filtered)})
    grid = pd.DataFrame(rows)
    best = grid.loc[grid["map"].idxmax()]
    return float(best["low"]), float(best["high"]), float(best["map"]), grid
