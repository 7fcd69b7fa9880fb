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
from pipeline.source_nms import across_classes_keep, source_nms_keep
from pipeline.wbf import CONF_TYPES, weighted_boxes_fusion_batched

DET_COLUMNS = ["image_id", "class_id", "score", "x_min", "y_min", "x_max", "y_max"]
BOX_COLUMNS = ["x_min", "y_min", "x_max", "y_max"]
METHODS = ("wbf", "nms", "soft_nms")
ENGINES = ("batched", "ensemble_boxes")  # WBF for a chunk of images at once (pipeline.wbf) | one library call per image
MIN_BATCH = 50  # images: smallest chunk a process pool gets with batched WBF (smaller ones cost more per image)
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


def normal_rows(image_ids: Iterable[str], scores, normal_id: int = NORMAL_ID) -> pd.DataFrame:
    """One class-14 detection per image (box 0 0 1 1 in pixels) with the given score(s)."""
    ids = pd.Series(list(image_ids), dtype="str")
    n = len(ids)
    box = {c: np.full(n, v) for c, v in zip(BOX_COLUMNS, NORMAL_BOX)}
    return pd.DataFrame({"image_id": ids, "class_id": np.full(n, normal_id, dtype="int64"),
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
def fuse_options(fc) -> dict:
    """The keyword arguments of :func:`fuse_detections` from a config's ``fuse`` section (the fuse stage
    and ``infer`` fuse alike)."""
    return dict(method=fc.method, iou_thr=fc.iou_thr, skip_box_thr=fc.skip_box_thr, conf_type=fc.conf_type,
                source_nms=bool(fc.source_nms), across_classes=bool(fc.get("across_classes", False)))


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


def _per_image_lists(src: np.ndarray, norm: np.ndarray, scores: np.ndarray, labels: np.ndarray, n_src: int):
    """One image's rows (sorted by source) as ensemble-boxes' per-source lists."""
    cuts = np.searchsorted(src, np.arange(n_src + 1))
    return [(norm[cuts[k]:cuts[k + 1]], scores[cuts[k]:cuts[k + 1]], labels[cuts[k]:cuts[k + 1]])
            for k in range(n_src)]


def _fuse_rows(img, src, norm, scores, labels, n_src: int, opts: dict):
    """Fuse the rows of some images (sorted by image index ``img``, then source): WBF batched over all
    of them (pipeline.wbf) unless ``engine`` is ``ensemble_boxes``; NMS and soft-NMS call ensemble-boxes
    image by image. Returns (image index, normalised boxes, scores, labels) of the fused boxes."""
    opts = dict(opts)
    engine = opts.pop("engine")
    if opts["method"] == "wbf" and engine == "batched":
        with np.errstate(invalid="ignore", divide="ignore"):  # zero-score clusters give NaN, as in the library
            return weighted_boxes_fusion_batched(img, src, norm, scores, labels, n_src, weights=opts["weights"],
                                                 iou_thr=opts["iou_thr"], skip_box_thr=opts["skip_box_thr"],
                                                 conf_type=opts["conf_type"])
    starts = np.flatnonzero(np.r_[True, img[1:] != img[:-1]]) if len(img) else np.zeros(0, dtype=np.int64)
    parts = [(np.zeros(0, dtype=np.int64), np.zeros((0, 4)), np.zeros(0), np.zeros(0))]
    for a, e in zip(starts, np.r_[starts[1:], len(img)]):
        fused = _fuse_one(_per_image_lists(src[a:e], norm[a:e], scores[a:e], labels[a:e], n_src), **opts)
        parts.append((np.full(len(fused[1]), img[a]), *fused))
    return tuple(np.concatenate(x) for x in zip(*parts))


def _fuse_range(data: tuple, first: int, stop: int):
    """Fuse images ``first .. stop-1`` of ``data`` (see fuse_detections); returns arrays (image index,
    class, score, box in pixels), ready for the table."""
    wh, img, src, norm, scores, labels, row_at, n_src, opts = data
    r = slice(row_at[first], row_at[stop])
    out_img, b, s, lab = _fuse_rows(img[r], src[r], norm[r], scores[r], labels[r], n_src, opts)
    out_img = out_img.astype(np.int64)
    # ensemble-boxes computes in float32: round away its noise (1/1000 px is far below any use).
    b = np.round(np.clip(b, 0.0, 1.0) * wh[out_img][:, [0, 1, 0, 1]], 3)
    # float32 scores: keep their shortest decimal form (0.8, not 0.800000011920929)
    s = np.asarray(s, dtype=np.float32).astype(str).astype(np.float64)
    return out_img, lab.astype("int64"), s, b


_POOL_INPUT: tuple | None = None  # what a pool worker fuses: set once per worker by _pool_init


def _pool_init(data: tuple) -> None:
    # With fork the rows are inherited, not pickled; tasks then carry two integers each.
    global _POOL_INPUT
    _POOL_INPUT = data


def _pool_task(bounds: tuple[int, int]):
    return _fuse_range(_POOL_INPUT, *bounds)


def fuse_detections(frames: Sequence[pd.DataFrame], sizes: pd.DataFrame, method: str = "wbf",
                    iou_thr: float = 0.4, skip_box_thr: float = 0.0, conf_type: str = "avg",
                    weights: Sequence[float] | None = None, workers: int = 1, sigma: float = 0.5,
                    soft_thresh: float = 0.001, chunk_size: int = 200,
                    progress: Callable[[int], None] | None = None, *, engine: str = "batched",
                    source_nms: bool = False, across_classes: bool = False) -> pd.DataFrame:
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

    ``engine``: ``batched`` (default) runs WBF for a whole chunk of images at once
    (:func:`pipeline.wbf.weighted_boxes_fusion_batched`, the same output as ensemble-boxes, many times
    faster); ``ensemble_boxes`` calls the library once per image (the reference). NMS and soft-NMS
    always use the library.
    ``workers > 1`` fuses chunks of ``chunk_size`` images in a process pool (``0`` = all cores).
    ``source_nms`` (WBF only): first NMS inside each source, image and class at ``iou_thr`` (see
    pipeline.source_nms), so that one source gives at most one box per cluster, as WBF assumes.
    ``across_classes``: after fusion, NMS at ``iou_thr`` over every fused box of an image whatever its
    class (the stronger box keeps its class; :func:`pipeline.source_nms.across_classes_keep`).
    Returns a detections table sorted by image and descending score; images without any box are absent.
    """
    if method not in METHODS:
        raise ValueError(f"fusion method {method!r} is not one of {METHODS}")
    if conf_type not in CONF_TYPES:
        raise ValueError(f"conf_type {conf_type!r} is not one of {CONF_TYPES}")
    if engine not in ENGINES:
        raise ValueError(f"fusion engine {engine!r} is not one of {ENGINES}")
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

    # one integer per image, in sorted-id order (the output's order); sizes looked up once per image
    codes, uniques = pd.factorize(det["image_id"], sort=True)
    image_ids = np.asarray(uniques, dtype=object)
    size = sizes.drop_duplicates("image_id").set_index(sizes["image_id"].drop_duplicates().astype("str"))
    wh = np.stack([size[c].reindex(uniques).astype("float64").to_numpy() for c in ("width", "height")], axis=1)
    no_size = np.isnan(wh).any(axis=1) | (wh <= 0).any(axis=1)
    if no_size.any():
        ids = image_ids[no_size]
        raise DataError(f"{len(ids)} image(s) with detections have no original size (width, height) in the "
                        f"size table, e.g. {list(ids[:5])}. Sizes come from meta.csv: re-run prepare, or "
                        "check that the predictions belong to this run.")
    norm = det[BOX_COLUMNS].to_numpy(float) / wh[codes][:, [0, 1, 0, 1]]
    norm = np.clip(norm, 0.0, 1.0)
    # Boxes squeezed to nothing by clipping (entirely outside the image) carry no information.
    keep = (norm[:, 2] > norm[:, 0]) & (norm[:, 3] > norm[:, 1])
    if source_nms and method == "wbf":
        keep &= source_nms_keep(norm, det["score"].to_numpy(float), codes, det["_src"].to_numpy(),
                                det["class_id"].to_numpy(), float(iou_thr))
    src = det["_src"].to_numpy()[keep]
    order = np.lexsort((src, codes[keep]))  # by image, then source; stable: each source's row order kept
    img, src, norm = codes[keep][order], src[order], norm[keep][order]
    scores = det["score"].to_numpy(float)[keep][order]
    labels = det["class_id"].to_numpy(float)[keep][order]
    n_images = len(image_ids)
    row_at = np.searchsorted(img, np.arange(n_images + 1))  # rows of image i: row_at[i] .. row_at[i+1]-1

    opts = dict(method=method, iou_thr=float(iou_thr), skip_box_thr=float(skip_box_thr), conf_type=conf_type,
                weights=weights, sigma=float(sigma), soft_thresh=float(soft_thresh), engine=engine)
    n_workers = resolve_workers(workers, "run.workers")
    if n_workers > 1:  # several chunks per worker, so one slow chunk does not leave the others idle,
        # but not below MIN_BATCH images for batched WBF, whose cost per image grows in small batches
        floor = MIN_BATCH if method == "wbf" and engine == "batched" else 1
        chunk_size = max(1, min(chunk_size, max(-(-n_images // (4 * n_workers)), floor)))
    data = (wh, img, src, norm, scores, labels, row_at, n_src, opts)
    bounds = [(i, min(i + chunk_size, n_images)) for i in range(0, n_images, chunk_size)]
    n_workers = min(n_workers, len(bounds))
    results = []
    if n_workers > 1:
        import multiprocessing as mp

        # fork (Linux): workers inherit the rows (no pickling) and need no re-import of the caller's
        # __main__, so a notebook or a script without a main guard works too.
        method_name = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        with mp.get_context(method_name).Pool(n_workers, initializer=_pool_init, initargs=(data,)) as pool:
            for (i, e), res in zip(bounds, pool.imap(_pool_task, bounds)):
                results.append(res)
                if progress:
                    progress(e - i)
    else:
        for i, e in bounds:
            results.append(_fuse_range(data, i, e))
            if progress:
                progress(e - i)
    out_img, cls, score, box = (np.concatenate(x) for x in zip(*results)) if results else ([],) * 4
    if not len(out_img):
        return empty_detections()
    if across_classes:
        keep = across_classes_keep(box, score, out_img, float(iou_thr))
        out_img, cls, score, box = out_img[keep], cls[keep], score[keep], box[keep]
    return sort_detections(pd.DataFrame({"image_id": pd.Series(image_ids[out_img], dtype="str"), "class_id": cls,
                                         "score": score, **{c: box[:, i] for i, c in enumerate(BOX_COLUMNS)}}))


# --------------------------------------------------------------------------------------------------
# the normal class
# --------------------------------------------------------------------------------------------------
def add_normal_from_detections(dets: pd.DataFrame, image_ids: Iterable[str] | None = None,
                               normal_id: int = NORMAL_ID) -> pd.DataFrame:
    """Append a class-14 box to every image that has none, scored 1 - (its highest finding score).

    Used when no binary classifier is available: the detector's own confidence is the best ranking of
    images by normality it has. An image without any finding box gets score 1 ("14 1 0 0 1 1"); an image
    with a 0.9 box gets 0.1, never 0, so the normal class is never scored as absent. ``image_ids`` (e.g.
    every image of the split) adds images the detector left empty.
    """
    dets = dets[DET_COLUMNS] if len(dets) else empty_detections()
    findings = dets[dets["class_id"] != normal_id]
    has_normal = set(dets.loc[dets["class_id"] == normal_id, "image_id"])
    all_ids = pd.Index(pd.unique(pd.concat([pd.Series(list(image_ids or []), dtype="str"),
                                            dets["image_id"].astype("str")], ignore_index=True)))
    need = [i for i in all_ids if i not in has_normal]
    top = findings.groupby("image_id")["score"].max()
    score = 1.0 - top.reindex(need).fillna(0.0).clip(0.0, 1.0).to_numpy()
    return sort_detections(_concat([dets, normal_rows(need, score, normal_id)]))


def apply_two_class_filter(dets: pd.DataFrame, p_abnormal: pd.Series, low: float, high: float,
                           multiply: bool = False, normal_id: int = NORMAL_ID) -> pd.DataFrame:
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
    drop = has_p & ((dets["class_id"].to_numpy() == normal_id) | (rp < low))
    out = dets.loc[~drop].copy()
    if multiply:
        m = out["image_id"].map(p)
        finding = m.notna() & (out["class_id"] != normal_id)
        out.loc[finding, "score"] = out.loc[finding, "score"] * m[finding]
    low_ids = p.index[p < low]
    mid = p[(p >= low) & (p < high)]
    return sort_detections(_concat([out, normal_rows(low_ids, 1.0, normal_id),
                                    normal_rows(mid.index, 1.0 - mid.to_numpy(), normal_id)]))


def tune_filter_thresholds(dets: pd.DataFrame, p_abnormal: pd.Series, truth: pd.DataFrame,
                           lows: Sequence[float] = (0.0, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3),
                           highs: Sequence[float] = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 1.0),
                           multiply: bool = False, iou_thr: float = 0.4,
                           score: Callable[[pd.DataFrame, pd.DataFrame], float] | None = None,
                           normal_id: int = NORMAL_ID) -> tuple[float, float, float, pd.DataFrame]:
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
            filtered = apply_two_class_filter(dets, p, lo, hi, multiply=multiply, normal_id=normal_id)
            rows.append({"low": float(lo), "high": float(hi), "map": score(truth, filtered)})
    grid = pd.DataFrame(rows)
    best = grid.loc[grid["map"].idxmax()]
    return float(best["low"]), float(best["high"]), float(best["map"]), grid
