"""Fuse stage: one detections table per split from every model, fold and flip, then the 2-class filter.

Reads ``predictions/det_<name>_fold<k>_{oof,test}.csv`` (original pixels, ``tta`` = orig|hflip),
``meta.csv`` (original sizes; ``images.csv`` fills gaps) and, for the filter,
``predictions/cls_<name>_{oof,test}.csv``. Writes ``predictions/fused_{oof,test}.csv`` and
``predictions/final_{oof,test}.csv``.

* test: every (model, fold, flip) is one WBF source; model weights from ``fuse.weights``.
* out-of-fold: each train image is in exactly one fold's oof file per model, so a model's folds are
  concatenated and the sources are (model, flip); otherwise the four absent folds would each count as
  a source that "saw nothing" and divide every score by five.
* final: with ``filter.enabled`` and a binary classifier's ``p_abnormal``, the 2-class filter
  (:func:`pipeline.fusion.apply_two_class_filter`). Images without a classifier probability (or every
  image, when the filter is off or has no classifier) get a class-14 box scored 1 - (highest finding
  score) (:func:`pipeline.fusion.add_normal_from_detections`): the detector's own best guess at
  p(normal), so the normal class is ranked instead of scored 0.
"""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from pipeline.classes import NORMAL_ID
from pipeline.errors import ConfigError, DataError, PipelineError
from pipeline.fusion import (DET_COLUMNS, add_normal_from_detections, apply_two_class_filter, check_detections,
                             empty_detections, fuse_detections, sort_detections, tune_filter_thresholds)
from pipeline.io import write_csv_atomic
from pipeline.paths import RunPaths
from pipeline.tables import read_folds, read_table

SPLITS = ("oof", "test")


# --------------------------------------------------------------------------------------------------
# inputs (shared with evaluate and submit)
# --------------------------------------------------------------------------------------------------
def read_detections(path: Path, what: str = "detections") -> pd.DataFrame:
    """A detections CSV (contract form; a ``tta`` column, if any, is kept)."""
    df = read_table(path, what, DET_COLUMNS)
    out = check_detections(df, where=str(path))
    if "tta" in df.columns:
        out["tta"] = df["tta"].astype("str").fillna("orig").to_numpy()
    return out


def load_sizes(paths: RunPaths) -> pd.DataFrame:
    """``image_id, width, height, split`` in ORIGINAL pixels: meta.csv first, images.csv for the rest."""
    parts = []
    if paths.meta_csv.is_file():
        parts.append(read_table(paths.meta_csv, "image meta table", ["image_id", "width", "height"]))
    if paths.images_csv.is_file():
        parts.append(read_table(paths.images_csv, "images table", ["image_id", "width", "height"]))
    if not parts:
        raise DataError(f"{paths.meta_csv}: no image sizes (neither meta.csv nor images.csv exists). "
                        "Run the prepare stage first.")
    cols = ["image_id", "width", "height", "split"]
    df = pd.concat([p.reindex(columns=cols) for p in parts], ignore_index=True)
    df["width"] = pd.to_numeric(df["width"], errors="coerce")
    df["height"] = pd.to_numeric(df["height"], errors="coerce")
    df = df.dropna(subset=["width", "height"]).drop_duplicates("image_id")
    return df.reset_index(drop=True)


def split_ids(paths: RunPaths, split: str) -> list[str]:
    """Image ids of a split ('train' or 'test') in file order: images.csv, else meta.csv."""
    for path in (paths.images_csv, paths.meta_csv):
        if path.is_file():
            df = read_table(path, "image table", ["image_id", "split"])
            return df.loc[df["split"].astype("str") == split, "image_id"].astype("str").tolist()
    raise DataError(f"{paths.images_csv}: the images table is missing. Run the prepare stage first.")


_DET_FILE = re.compile(r"^det_(?P<name>.+)_fold(?P<fold>\d+)_(?P<split>oof|test)\.csv$")


def find_det_files(paths: RunPaths, models: list[str] | None = None) -> dict[str, dict[str, dict[int, Path]]]:
    """``{model: {"oof": {fold: path}, "test": {fold: path}}}`` for the prediction files on disk.

    ``models`` None = every ``det_<name>_*`` file; a named model without any file is a ConfigError.
    """
    found: dict[str, dict[str, dict[int, Path]]] = {}
    if paths.predictions_dir.is_dir():
        for f in sorted(paths.predictions_dir.iterdir()):
            m = _DET_FILE.match(f.name)
            if not m:
                continue
            name, fold, split = m["name"], int(m["fold"]), m["split"]
            if paths.det_predictions(name, fold, split) != f:  # the one spelling of the path must agree
                continue
            found.setdefault(name, {"oof": {}, "test": {}})[split][fold] = f
    if models is not None:
        missing = [m for m in models if m not in found]
        if missing:
            raise ConfigError(f"fuse.models: no prediction files for {missing} in {paths.predictions_dir} "
                              f"(found: {sorted(found) or 'none'}). Run predict for them or fix the names.")
        found = {m: found[m] for m in models}
    return found


def normal_for_unscored(dets: pd.DataFrame, image_ids: list[str], scored: set[str]) -> pd.DataFrame:
    """Detector-derived class-14 boxes (1 - top finding score) for the images NOT in ``scored``."""
    rest_ids = [i for i in image_ids if i not in scored]
    is_rest = ~dets["image_id"].isin(scored)
    rest = add_normal_from_detections(dets[is_rest], rest_ids) if (is_rest.any() or rest_ids) else empty_detections()
    return sort_detections(pd.concat([dets[~is_rest][DET_COLUMNS], rest], ignore_index=True))


def classifier_probability(paths: RunPaths, name: str, split: str) -> tuple[pd.Series | None, str]:
    """p(abnormal) per image_id from ``cls_<name>_<split>.csv``, or (None, why not)."""
    path = paths.cls_predictions(name, split)
    if not path.is_file():
        return None, f"{path.name} not found"
    df = read_table(path, "classifier predictions", ["image_id"])
    if "p_abnormal" not in df.columns:
        return None, f"{path.name} has no p_abnormal column (a multilabel classifier; the filter needs cls.task=binary)"
    p = pd.to_numeric(df["p_abnormal"], errors="coerce")
    bad = p.isna() | (p < 0) | (p > 1)
    if bad.any():
        i = int(bad.to_numpy().nonzero()[0][0])
        raise DataError(f"{path} data row {i + 1}: p_abnormal is {df['p_abnormal'].iloc[i]!r}; it must be a "
                        f"probability in [0, 1] ({int(bad.sum())} bad rows). Re-run train_cls.")
    s = pd.Series(p.to_numpy(float), index=df["image_id"].astype("str"))
    return s[~s.index.duplicated(keep="last")], f"{path.name}"


# --------------------------------------------------------------------------------------------------
# the stage
# --------------------------------------------------------------------------------------------------
def _sources(files: dict[str, dict[str, dict[int, Path]]], split: str, weights_cfg: dict
             ) -> tuple[list[pd.DataFrame], list[float], list[str]]:
    frames, weights, names = [], [], []
    for name, by_split in files.items():
        fold_files = by_split[split]
        if not fold_files:
            continue
        w = float(weights_cfg.get(name, 1.0))
        tables = {k: read_detections(p, f"{name} fold {k} {split} predictions") for k, p in sorted(fold_files.items())}
        if split == "oof":
            seen: dict[str, int] = {}
            for k, t in tables.items():
                for image_id in t["image_id"].unique():
                    if image_id in seen:
                        raise DataError(f"{fold_files[k]}: image {image_id!r} is also in the out-of-fold file of "
                                        f"fold {seen[image_id]}; an image belongs to one fold. Re-run folds and predict.")
                    seen[image_id] = k
            groups = {"all folds": pd.concat(list(tables.values()), ignore_index=True)}
        else:
            groups = {f"fold{k}": t for k, t in tables.items()}
        for label, t in groups.items():
            tta = t["tta"] if "tta" in t.columns else pd.Series("orig", index=t.index)
            for flip in sorted(tta.unique()):
                frames.append(t.loc[tta == flip, DET_COLUMNS].reset_index(drop=True))
                weights.append(w)
                names.append(f"{name} {label} {flip}")
    return frames, weights, names


def _current_folds_only(files: dict, name: str, folds: list[int]) -> dict:
    """Files of the configured detector from folds outside ``det.folds`` (left by an earlier config with
    more folds) are not fused; say so. Other detectors' files are used as they are on disk."""
    if name not in files:
        return files
    for split, by_fold in files[name].items():
        extra = sorted(k for k in by_fold if k not in folds)
        if extra:
            print(f"[fuse] {name}: ignoring {split} predictions of fold(s) {extra}, not in det.folds={folds}")
            files[name][split] = {k: p for k, p in by_fold.items() if k in folds}
    return files


def _progress(total: int, desc: str):
    try:
        from tqdm import tqdm
    except ImportError:  # progress is a nicety
        return None, None
    bar = tqdm(total=total, desc=desc, unit="img", leave=False)
    return bar, bar.update


def run(cfg, paths: RunPaths) -> dict:
    fc, flt = cfg.fuse, cfg.filter
    files = find_det_files(paths, list(fc.models) if fc.models is not None else None)
    files = _current_folds_only(files, cfg.det.name, list(cfg.det.folds))
    if not files:
        raise PipelineError(f"{paths.predictions_dir}: no detector predictions (det_<name>_fold<k>_oof/test.csv). "
                            "Run the predict stage first.")
    unknown = [k for k in (fc.weights or {}) if k not in files]
    if unknown:
        raise ConfigError(f"fuse.weights names {unknown}, which have no predictions being fused "
                          f"(models: {sorted(files)}). Fix the names or drop them.")
    for name, w in (fc.weights or {}).items():
        if not isinstance(w, (int, float)) or isinstance(w, bool) or w <= 0:
            raise ConfigError(f"fuse.weights.{name} must be a positive number, got {w!r}.")
    sizes = load_sizes(paths)
    summary: dict = {"models": sorted(files)}
    fused: dict[str, pd.DataFrame] = {}
    for split in SPLITS:
        frames, weights, names = _sources(files, split, dict(fc.weights or {}))
        if not frames:
            print(f"[fuse] no {split} predictions: {split} skipped")
            continue
        n_images = len(set().union(*(set(f["image_id"]) for f in frames)))
        bar, update = _progress(n_images, f"fuse {split}")
        try:
            out = fuse_detections(frames, sizes, method=fc.method, iou_thr=fc.iou_thr, skip_box_thr=fc.skip_box_thr,
                                  conf_type=fc.conf_type, weights=weights, workers=cfg.run.workers, progress=update)
        finally:
            if bar is not None:
                bar.close()
        write_csv_atomic(out, paths.fused_predictions(split))
        fused[split] = out
        summary[f"{split}_sources"] = len(frames)
        summary[f"{split}_boxes"] = len(out)
        print(f"[fuse] {split}: {len(frames)} sources ({', '.join(names[:4])}{' ...' if len(names) > 4 else ''}), "
              f"{n_images} images -> {len(out)} boxes")

    # --- the 2-class filter ------------------------------------------------------------------
    cls_name = flt.classifier or cfg.cls.name
    low, high = float(flt.low), float(flt.high)
    probs = {s: classifier_probability(paths, cls_name, s) for s in fused}
    use_filter = bool(flt.enabled) and any(p is not None for p, _ in probs.values())
    if flt.enabled and not use_filter:
        why = "; ".join(w for _, w in probs.values()) or "no fused predictions"
        print(f"[fuse] 2-class filter enabled but no binary classifier output ({why}): "
              "final = fused + a class-14 box scored 1 - top finding score")
    if use_filter and flt.tune and "oof" in fused and probs["oof"][0] is not None:
        if not paths.boxes_csv.is_file():
            raise DataError(f"{paths.boxes_csv}: the truth boxes are needed to tune the 2-class filter "
                            "(filter.tune=true). Run prepare first, or set filter.tune=false.")
        truth = read_table(paths.boxes_csv, "truth boxes", ["image_id", "class_id", "x_min", "y_min", "x_max", "y_max"])
        low, high, best, _ = tune_filter_thresholds(fused["oof"], probs["oof"][0], truth,
                                                    multiply=flt.multiply, iou_thr=cfg.evaluate.iou_thr)
        summary["filter_tuned_map"] = round(best, 5)
        print(f"[fuse] 2-class filter tuned on out-of-fold data: low={low}, high={high} (oof mAP {best:.4f})")
    summary.update(filter_applied=use_filter, filter_classifier=cls_name if use_filter else None,
                   filter_low=low, filter_high=high, filter_multiply=bool(flt.multiply))

    for split, dets in fused.items():
        oof_folds = {k for by_split in files.values() for k in by_split["oof"]}
        ids = _split_image_ids(paths, split, dets, oof_folds)
        p = probs[split][0] if use_filter else None
        if p is not None:
            p = p[p.index.isin(set(ids))] if ids else p
            final = apply_two_class_filter(dets, p, low, high, multiply=flt.multiply)
            final = normal_for_unscored(final, ids, set(p.index))
            summary[f"{split}_filtered_images"] = int(len(p))
        else:
            final = add_normal_from_detections(dets, ids)
        write_csv_atomic(final, paths.filtered_predictions(split))
        summary[f"{split}_final_images"] = int(final["image_id"].nunique())
        n14 = int((final["class_id"] == NORMAL_ID).sum())
        print(f"[fuse] {split}: final {len(final)} rows on {final['image_id'].nunique()} images ({n14} class-14 boxes)")
    summary["fused"] = {s: str(paths.fused_predictions(s)) for s in fused}
    summary["final"] = {s: str(paths.filtered_predictions(s)) for s in fused}
    return summary


def _split_image_ids(paths: RunPaths, split: str, dets: pd.DataFrame, oof_folds: set[int]) -> list[str]:
    """Every image the final table must cover: test = the test split; oof = the train images of the folds
    that have out-of-fold predictions (an image the detector left empty still needs its class-14 box)."""
    have = list(pd.unique(dets["image_id"]))
    if split == "test":
        ids = split_ids(paths, "test")  # no images table is an error: prepare has not run
    else:
        ids = []
        if paths.folds_csv.is_file():
            folds = read_folds(paths.folds_csv)
            ids = folds.loc[folds["fold"].isin(oof_folds), "image_id"].tolist()
    seen = set(ids)
    return ids + [i for i in have if i not in seen]
