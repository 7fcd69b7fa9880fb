"""Fuse stage: one detections table per split from the configured models, folds and flips, then the
2-class filter. Cheap, so it always runs.

Sources: exactly ``fuse.models`` (or the current ``det.name``), each with the folds of ``det.folds``;
a missing file, or a prediction of the current detector that is not current (its fold's predict
record differs from what predict would do now), is an error naming it. Nothing else on disk joins.

* test: every (model, fold, flip) is one WBF source (5 folds x flip = 10); model weights from ``fuse.weights``;
* out-of-fold: each train image is in one fold's oof file per model, so a model's folds are
  concatenated and the sources are (model, flip) (2 for one model). WBF's ``avg`` confidence divides
  by the number of sources, so a test box is scored over 10 sources and an out-of-fold box over 2: the
  report says so, and thresholds tuned out of fold are applied to test scores of that other scale;
* final: the 2-class filter where a binary classifier's ``p_abnormal`` exists for an image
  (:func:`pipeline.fusion.apply_two_class_filter`); every other image gets a class-14 box scored
  1 - (highest finding score). ``fuse.json`` records how many images the filter covered, which folds
  lacked classifier probabilities, the sources, and the thresholds (nested per fold with ``filter.tune``).
Zero detections are a valid result: every image then gets its class-14 box, with a warning.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline.classes import run_classes
from pipeline.errors import ConfigError, DataError
from pipeline.fusion import DET_COLUMNS, check_detections, fuse_detections, fuse_options, tune_filter_thresholds
from pipeline.io import write_csv_atomic, write_json_atomic
from pipeline.paths import RunPaths
from pipeline.tables import read_folds, read_table

PREDICTION_SPLITS = ("oof", "test")
TUNE = ("none", "nested", "on_oof_optimistic")


def read_detections(path: Path, what: str = "detections") -> pd.DataFrame:
    """A detections CSV (contract form; a ``tta`` column, if any, is kept)."""
    df = read_table(path, what, DET_COLUMNS)
    out = check_detections(df, where=str(path))
    if "tta" in df.columns:
        out["tta"] = df["tta"].astype("str").fillna("orig").to_numpy()
    return out


def model_files(cfg, paths: RunPaths) -> dict[str, dict[str, dict[int, Path]]]:
    """``{model: {"oof": {fold: path}, "test": {fold: path}}}`` for ``fuse.models`` (or ``det.name``) and
    ``det.folds``; every file must exist, and the current detector's predictions must be current."""
    models = list(cfg.fuse.models) if cfg.fuse.models is not None else [str(cfg.det.name)]
    folds = [int(k) for k in cfg.det.folds]
    if not models or not folds:
        raise ConfigError("fuse.models and det.folds must name at least one model and one fold.")
    missing, stale, out = [], [], {}
    for m in models:
        out[m] = {s: {k: paths.det_predictions(m, k, s) for k in folds} for s in PREDICTION_SPLITS}
        missing += [str(p) for by in out[m].values() for p in by.values() if not p.is_file()]
    if missing:
        raise DataError(f"{len(missing)} prediction file(s) of fuse.models={models}, det.folds={folds} are missing, "
                        f"e.g. {missing[0]}. Run predict for them (python -m pipeline predict det.folds=[...]) or "
                        "change fuse.models / det.folds.")
    from pipeline.work import Work

    for m in models:
        for k in folds:
            rec = Work("", paths.det_predict_record(m, k), {}).read()
            if not rec or rec.get("status") != "done":
                stale.append(f"{m} fold {k}")
    if stale:
        raise DataError(f"predictions of {stale} were not finished by the predict stage (no done record in "
                        f"det/<model>/fold<k>/predict.json). Run predict again.")
    return out


def _flip_variants(tables: list[pd.DataFrame], default: list[str]) -> list[str]:
    seen = {v for t in tables if "tta" in t.columns for v in t["tta"].unique()}
    order = ["orig", "hflip"]
    return sorted(seen, key=lambda v: (order.index(v) if v in order else 2, v)) or default


def _sources(files: dict, split: str, weights_cfg: dict, default_flips: list[str]):
    frames, weights, names = [], [], []
    for name, by_split in files.items():
        tables = {k: read_detections(p, f"{name} fold {k} {split} predictions") for k, p in sorted(by_split[split].items())}
        if split == "oof":
            seen: dict[str, int] = {}
            for k, t in tables.items():
                for image_id in t["image_id"].unique():
                    if image_id in seen:
                        raise DataError(f"{by_split[split][k]}: image {image_id!r} is also in the out-of-fold file of "
                                        f"fold {seen[image_id]}; an image belongs to one fold. Re-run folds and predict.")
                    seen[image_id] = k
            groups = {"all folds": pd.concat(list(tables.values()), ignore_index=True)}
        else:
            groups = {f"fold{k}": t for k, t in tables.items()}
        for label, t in groups.items():
            tta = t["tta"] if "tta" in t.columns else pd.Series("orig", index=t.index)
            for flip in _flip_variants(list(tables.values()), default_flips):
                frames.append(t.loc[tta == flip, DET_COLUMNS].reset_index(drop=True))
                weights.append(float(weights_cfg.get(name, 1.0)))
                names.append(f"{name} {label} {flip}")
    return frames, weights, names


def split_image_ids(cfg, paths: RunPaths, split: str) -> list[str]:
    """Every image the final table must cover: test = every test image (a submission needs them all);
    oof = the detector's train images (detection.csv truth/negative) of the folds in det.folds."""
    from pipeline.tables import detector_images, read_images

    if split == "test":
        im = read_images(paths.images_csv)
        return im.loc[im["split"] == "test", "image_id"].astype(str).tolist()
    folds = read_folds(paths.folds_csv)
    usable = set(detector_images(paths.detection_csv, "train"))
    keep = folds["fold"].isin([int(k) for k in cfg.det.folds]) & folds["image_id"].isin(usable)
    return folds.loc[keep, "image_id"].tolist()


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
    return s[~s.index.duplicated(keep="last")], path.name


def run(cfg, paths: RunPaths) -> dict:
    from pipeline.filtering import apply_filter, choose_thresholds, fold_of

    fc, flt = cfg.fuse, cfg.filter
    if str(flt.tune) not in TUNE:
        raise ConfigError(f"filter.tune: {flt.tune!r} is not one of {list(TUNE)}.")
    files = model_files(cfg, paths)
    unknown = [k for k in (fc.weights or {}) if k not in files]
    if unknown:
        raise ConfigError(f"fuse.weights names {unknown}, which are not fused (models: {sorted(files)}).")
    for name, w in (fc.weights or {}).items():
        if not isinstance(w, (int, float)) or isinstance(w, bool) or w <= 0:
            raise ConfigError(f"fuse.weights.{name} must be a positive number, got {w!r}.")
    from pipeline.tables import read_sizes

    sizes = read_sizes(paths)
    flips = ["orig", "hflip"] if cfg.det.tta_flip else ["orig"]
    info: dict = {"models": sorted(files), "folds": [int(k) for k in cfg.det.folds], "sources": {}, "warnings": []}
    fused: dict[str, pd.DataFrame] = {}
    for split in PREDICTION_SPLITS:
        frames, weights, names = _sources(files, split, dict(fc.weights or {}), flips)
        out = fuse_detections(frames, sizes, weights=weights, workers=cfg.run.workers, **fuse_options(fc))
        write_csv_atomic(out, paths.fused_predictions(split))
        fused[split] = out
        info["sources"][split] = names
        n_in = sum(len(f) for f in frames)
        print(f"[fuse] {split}: {len(frames)} sources ({', '.join(names[:4])}{' ...' if len(names) > 4 else ''}), "
              f"{n_in} boxes -> {len(out)} fused boxes")
        # oof images are the train split's; a run without test images has nothing to warn about there
        has_images = (sizes["split"] == ("train" if split == "oof" else "test")).any()
        if n_in == 0 and not has_images:
            print(f"[fuse] {split}: the run has no {'train' if split == 'oof' else 'test'} images")
        elif n_in == 0:
            msg = (f"the detector predicted no box on any {split} image (undertrained, or det.conf too high): every "
                   "image gets only its class-14 box")
            print(f"[fuse] warning: {msg}")
            info["warnings"].append(msg)

    cls_name = flt.classifier or cfg.cls.name
    normal_id = run_classes(paths).normal_id
    folds = fold_of(paths)
    probs = {sp: (classifier_probability(paths, cls_name, sp) if flt.enabled else (None, "filter.enabled is false"))
             for sp in PREDICTION_SPLITS}
    thresholds = choose_thresholds(cfg, paths, fused["oof"], probs["oof"][0], folds, tune_filter_thresholds, normal_id)
    for split, dets in fused.items():
        ids = split_image_ids(cfg, paths, split)
        p, why = probs[split]
        final, cover = apply_filter(split, dets, ids, p, folds, thresholds, bool(flt.multiply), normal_id)
        cover["classifier"] = cls_name if p is not None else None
        cover["why_not"] = None if p is not None else why
        write_csv_atomic(final, paths.filtered_predictions(split))
        info[f"filter_{split}"] = cover
        if cover.get("warning"):
            print(f"[fuse] warning: {cover['warning']}")
            info["warnings"].append(cover["warning"])
        n14 = int((final["class_id"] == normal_id).sum())
        print(f"[fuse] {split}: final {len(final)} rows on {final['image_id'].nunique()} images ({n14} normal-class boxes, class {normal_id}); "
              f"2-class filter on {cover['n_filtered']} of {cover['n_images']} images"
              + ("" if p is not None else f" ({why})"))
    write_json_atomic(paths.fuse_summary, info)
    oof_cover = info.get("filter_oof", {})
    summary = {"models": sorted(files), "fuse_summary": str(paths.fuse_summary),
               "filter_coverage": (f"applied to {oof_cover.get('n_filtered', 0)} of {oof_cover.get('n_images', 0)} "
                                   "out-of-fold images")}
    if info["warnings"]:
        summary["warnings"] = info["warnings"]
    return summary
