"""Stage train_cls: DenseNet-121 per fold, out-of-fold and test probabilities, AUC, ROC, Grad-CAM.

Reads ``images.csv``, ``folds.csv``, the PNGs (and ``boxes.csv`` for ``cls.binary_source=fused``,
``annotations.csv`` for ChestX-ray14's weak localisation). For each fold k in ``cls.folds`` it trains on
the other folds and validates on k (the detector's folds, so out-of-fold predictions of both models
come from the same models' blind spots) and keeps the checkpoint with the best validation AUC.

Writes
  * ``cls/<name>/fold<k>/best.pt`` (state dict), ``log.csv``, ``oof.csv``, ``test.csv``, ``result.json``
    (see :func:`fold_files`). ``result.json`` holds two hashes of the config: ``train_hash`` (everything
    the weights depend on) and ``config_hash`` (that plus ``cls.tta_flip``, which changes predictions).
    Neither covers ``cls.folds`` (so jobs that train different folds can be combined) nor
    ``cls.gradcam_n`` / ``cls.cam_threshold`` (reporting only). A rerun reuses a fold whose
    ``config_hash`` matches, re-predicts from ``best.pt`` when only ``train_hash`` matches (e.g. a
    changed ``cls.tta_flip``) and trains it again otherwise.
  * ``predictions/cls_<name>_oof.csv``: ``image_id, fold, p_<label>...`` and
    ``predictions/cls_<name>_test.csv``: ``image_id, p_<label>...`` built from EVERY
    ``cls/<name>/fold*/`` on disk whose ``config_hash`` is the current one, not only ``cls.folds``:
    one job per fold (``cls.folds=[k]``, the README's scale-out recipe) leaves complete files after
    the last job. oof = the folds' ``oof.csv`` concatenated; test = the mean over the folds' ``test.csv``.
  * ``cls/<name>/metrics.json``, ``cls/<name>/roc.png``, ``cls/<name>/gradcam/<id>.png``,
    ``cls/<name>/skipped.csv`` (images left out and why, when any), all over the combined folds.

Labels: ``binary`` -> ``p_abnormal``: abnormal when the image-level label set of ``images.csv`` (the union
of what the radiologists marked) holds a finding (``binary_source=radiologists``), or when ``boxes.csv``
has a fused finding box for it (``fused``). ``multilabel`` -> ``p_<finding name>`` for ids 0..13.

Threshold for accuracy/precision/recall/F1: per label, the one maximising Youden's J on the
out-of-fold predictions (prevalence-independent); test-split figures (ChestX-ray14's official split,
whose test labels are known) use the same out-of-fold threshold.
"""
from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.classes import NORMAL_ID, finding_names
from pipeline.errors import ConfigError, DataError, PipelineError
from pipeline.folds import parse_labels
from pipeline.io import write_bytes_atomic, write_csv_atomic, write_text_atomic, write_with
from pipeline.tables import read_table

TASKS = ("binary", "multilabel")

# cls keys that never change a fold's weights or predictions: one job per fold sets its own cls.folds,
# and Grad-CAM settings only shape the report.
_NOT_FOLD_KEYS = ("folds", "gradcam_n", "cam_threshold")
# cls keys that change a fold's predictions but not its weights: a change re-predicts from best.pt.
_PREDICT_ONLY_KEYS = ("tta_flip",)


def fold_files(paths, name: str, k: int | None = None) -> dict[str, Path]:
    """The classifier's files that :class:`pipeline.paths.RunPaths` has no method for (yet).

    Always ``skipped`` (``cls/<name>/skipped.csv``); with a fold ``k`` also ``result``, ``oof``, ``test``
    and ``log`` in ``cls/<name>/fold<k>/`` (the checkpoint is ``paths.cls_weights(name, k)``).
    """
    files = {"skipped": paths.cls_root(name) / "skipped.csv"}
    if k is not None:
        d = paths.cls_dir(name, k)
        files.update(result=d / "result.json", oof=d / "oof.csv", test=d / "test.csv", log=d / "log.csv")
    return files


def fold_hashes(cfg) -> tuple[str, str]:
    """``(config_hash, train_hash)`` of one fold: the train_cls stage hash without ``cls.folds``,
    ``cls.gradcam_n`` and ``cls.cam_threshold``; ``train_hash`` also leaves out ``cls.tta_flip``."""
    from pipeline.runner import config_hash

    def without(keys):
        c = copy.deepcopy(cfg)
        for key in keys:
            c["cls"].pop(key, None)
        return config_hash(c, "train_cls")

    return without(_NOT_FOLD_KEYS), without(_NOT_FOLD_KEYS + _PREDICT_ONLY_KEYS)


def label_names(cfg) -> list[str]:
    """Output names: ``["abnormal"]`` (binary) or the 14 finding names of ``data.format``."""
    if cfg.cls.task == "binary":
        return ["abnormal"]
    return list(finding_names(cfg.data.format))


def prob_columns(names) -> list[str]:
    return [f"p_{n}" for n in names]


def _read_csv(path: Path, what: str, hint: str) -> pd.DataFrame:
    return read_table(path, what, dtype={"labels": str, "patient_id": str, "split": str}, hint=hint)


def build_targets(images: pd.DataFrame, cfg, boxes: pd.DataFrame | None, source: Path) -> tuple[np.ndarray, np.ndarray]:
    """Targets (N, L) for the rows of ``images`` and a mask of rows whose labels are known.

    Raises DataError naming the row of ``source`` (images.csv) whose labels cannot be parsed.
    """
    n_labels = 1 if cfg.cls.task == "binary" else NORMAL_ID
    targets = np.zeros((len(images), n_labels), dtype=np.float32)
    known = np.zeros(len(images), dtype=bool)
    fused_abnormal = None
    if cfg.cls.task == "binary" and cfg.cls.binary_source == "fused":
        cid = pd.to_numeric(boxes["class_id"], errors="coerce")
        fused_abnormal = set(boxes.loc[cid.notna() & (cid != NORMAL_ID), "image_id"].astype(str))
        fused_ids = set(boxes["image_id"].astype(str))
    for i, (image_id, text) in enumerate(zip(images["image_id"], images["labels"])):
        try:
            ids = parse_labels(text)
        except ValueError as exc:
            raise DataError(f"{source}: row {i + 2} (image {image_id}): {exc}; labels must be '|'-joined class "
                            "ids like 0|3, or 14 for normal. Run the prepare stage again.") from None
        bad = [c for c in ids if not 0 <= c <= NORMAL_ID]
        if bad:
            raise DataError(f"{source}: row {i + 2} (image {image_id}): class ids {bad} outside 0..14.")
        if fused_abnormal is not None:
            # the fused table decides for the images it covers (or that have labels: a labelled image
            # without a fused finding box is normal); images it does not know stay unknown (test images)
            known[i] = bool(ids) or str(image_id) in fused_ids
            targets[i, 0] = float(str(image_id) in fused_abnormal)
            continue
        if not ids:
            continue  # unknown label set (e.g. an unlabelled test image)
        known[i] = True
        findings = [c for c in ids if c != NORMAL_ID]
        if cfg.cls.task == "binary":
            targets[i, 0] = float(bool(findings))
        else:
            targets[i, findings] = 1.0
    return targets, known


def _check_cfg(cfg) -> None:
    c = cfg.cls
    if c.task not in TASKS:
        raise ConfigError(f"cls.task: {c.task!r} is not one of {list(TASKS)}")
    if c.binary_source not in ("radiologists", "fused"):
        raise ConfigError(f"cls.binary_source: {c.binary_source!r} is not radiologists or fused")
    if c.balance not in ("pos_weight", "sampler", "none"):
        raise ConfigError(f"cls.balance: {c.balance!r} is not one of pos_weight, sampler, none")
    if c.optimizer not in ("adamw", "radam"):
        raise ConfigError(f"cls.optimizer: {c.optimizer!r} is not one of adamw, radam")
    if c.imgsz < 32:
        raise ConfigError(f"cls.imgsz: {c.imgsz} is too small for DenseNet-121 (5 downsamplings); use >= 32")
    if int(c.epochs) < 1:
        raise ConfigError(f"cls.epochs: {c.epochs} trains nothing; use >= 1")
    if not c.folds:
        raise ConfigError("cls.folds is empty; name at least one fold, e.g. cls.folds=[0]")
    if not 0 < c.cam_threshold <= 1:
        raise ConfigError(f"cls.cam_threshold must be in (0, 1], got {c.cam_threshold}")


def settings_from_cfg(cfg):
    from pipeline.classifier import TrainSettings, env_workers

    c = cfg.cls
    return TrainSettings(
        imgsz=c.imgsz, epochs=c.epochs, batch=c.batch, lr=c.lr, optimizer=c.optimizer,
        weight_decay=c.weight_decay, patience=c.patience, balance=c.balance, augment=dict(c.augment or {}),
        warmup_epochs=c.warmup_epochs, workers=env_workers(c.workers, cfg.run.workers), device=cfg.run.device,
        amp=c.amp, seed=cfg.run.seed, weights=c.weights)


def run(cfg, paths) -> dict:
    from pipeline import classifier as C

    _check_cfg(cfg)
    name = cfg.cls.name
    cls_root = paths.cls_root(name)
    names = label_names(cfg)
    cols = prob_columns(names)
    s = settings_from_cfg(cfg)
    C.build_augment(s.augment)  # reject a bad cls.augment before any work
    if s.weights and str(s.weights).lower() != "imagenet" and not Path(s.weights).is_file():
        raise ConfigError(f"cls.weights: weights file not found: {s.weights}. Pass a local DenseNet-121 "
                          "state dict, 'imagenet' (needs internet) or null (from scratch).")

    images = _read_csv(paths.images_csv, "image table", "run the prepare stage first.")
    folds = _read_csv(paths.folds_csv, "fold table", "run the folds stage first.")
    for table, path, cols_needed in ((images, paths.images_csv, ["image_id", "split", "width", "height", "labels"]),
                                     (folds, paths.folds_csv, ["image_id", "fold"])):
        missing = [c for c in cols_needed if c not in table.columns]
        if missing:
            raise DataError(f"{path}: missing column(s) {missing}; run the stage that writes it again.")
    dup = folds["image_id"][folds["image_id"].duplicated()]
    if len(dup):
        raise DataError(f"{paths.folds_csv}: image {dup.iloc[0]!r} has more than one fold "
                        f"({len(dup)} duplicated ids); run the folds stage again with --force.")
    images["labels"] = images["labels"].fillna("")
    boxes = None
    if cfg.cls.task == "binary" and cfg.cls.binary_source == "fused":
        boxes = _read_csv(paths.boxes_csv, "fused boxes",
                          "run the prepare stage (it writes boxes.csv) or set cls.binary_source=radiologists.")
    targets, known = build_targets(images, cfg, boxes, paths.images_csv)
    images["_row"] = np.arange(len(images))

    skipped: list[dict] = []
    exists = np.array([paths.image(sp, i).is_file() for sp, i in zip(images["split"], images["image_id"])])
    for sp, i in images.loc[~exists, ["split", "image_id"]].itertuples(index=False):
        skipped.append({"image_id": i, "split": sp, "reason": f"PNG missing: {paths.image(sp, i)}"})

    train = images[(images["split"] == "train") & exists].merge(folds[["image_id", "fold"]], on="image_id", how="left")
    for i in train.loc[train["fold"].isna(), "image_id"]:
        skipped.append({"image_id": i, "split": "train", "reason": "not in folds.csv (run the folds stage again)"})
    for i in train.loc[~known[train["_row"].to_numpy()], "image_id"]:
        skipped.append({"image_id": i, "split": "train", "reason": "empty labels in images.csv"})
    train = train[train["fold"].notna() & known[train["_row"].to_numpy()]].reset_index(drop=True)
    train["fold"] = train["fold"].astype(int)
    test = images[(images["split"] == "test") & exists].reset_index(drop=True)
    if train.empty:
        raise DataError(f"{paths.images_csv}: no usable train images (with a PNG, a fold and labels); "
                        "run the prepare and folds stages first.")
    missing_folds = [k for k in cfg.cls.folds if k not in set(train["fold"])]
    if missing_folds:
        raise ConfigError(f"cls.folds: fold(s) {missing_folds} have no images in {paths.folds_csv} "
                          f"(folds present: {sorted(set(train['fold']))}).")
    skipped_csv = fold_files(paths, name)["skipped"]
    if skipped:
        write_csv_atomic(pd.DataFrame(skipped), skipped_csv)
        print(f"[train_cls] {len(skipped)} image(s) left out; see {skipped_csv}")
    else:
        skipped_csv.unlink(missing_ok=True)  # a list from an earlier run would no longer be true

    y_train = targets[train["_row"].to_numpy()]
    train_paths = [paths.image("train", i) for i in train["image_id"]]
    test_paths = [paths.image("test", i) for i in test["image_id"]]
    chash, thash = fold_hashes(cfg)
    aug = C.build_augment(s.augment)

    def predict_fold(k: int, model, device) -> None:
        ff = fold_files(paths, name, k)
        va = (train["fold"] == k).to_numpy()
        va_ds = C.XrayDataset([p for p, v in zip(train_paths, va) if v], y_train[va], s.imgsz)
        p_oof = C.predict_probs(model, va_ds, s.batch * 2, s.workers, device, cfg.cls.tta_flip, s.amp)
        oof = pd.DataFrame(p_oof, columns=cols)
        oof.insert(0, "fold", k)
        oof.insert(0, "image_id", train.loc[va, "image_id"].to_numpy())
        write_csv_atomic(oof, ff["oof"])
        te = pd.DataFrame(columns=["image_id", *cols])
        if len(test):
            te_ds = C.XrayDataset(test_paths, None, s.imgsz, n_outputs=len(names))
            p_te = C.predict_probs(model, te_ds, s.batch * 2, s.workers, device, cfg.cls.tta_flip, s.amp)
            te = pd.DataFrame(p_te, columns=cols)
            te.insert(0, "image_id", test["image_id"].to_numpy())
        write_csv_atomic(te, ff["test"])

    for k in cfg.cls.folds:
        ff = fold_files(paths, name, k)
        weights = paths.cls_weights(name, k)
        prev = _read_result(ff["result"]) if not cfg.run.force and weights.is_file() else None
        if prev and prev.get("config_hash") == chash and ff["oof"].is_file() and ff["test"].is_file():
            print(f"[train_cls] fold {k}: finished earlier with the same config: reused")
            continue
        # no result.json = unfinished: a job killed below must not leave new oof/test files under an old hash
        ff["result"].unlink(missing_ok=True)
        device, _ = C.resolve_device(s.device)
        if prev and prev.get("train_hash") == thash:
            print(f"[train_cls] fold {k}: trained earlier with the same settings; predicting again "
                  "(only prediction settings such as cls.tta_flip changed)")
            res = prev.get("train", {})
        else:
            va = (train["fold"] == k).to_numpy()
            print(f"[train_cls] fold {k}: train {int((~va).sum())} images, validate {int(va.sum())}")
            tr_ds = C.XrayDataset([p for p, v in zip(train_paths, va) if not v], y_train[~va], s.imgsz, aug)
            va_ds = C.XrayDataset([p for p, v in zip(train_paths, va) if v], y_train[va], s.imgsz)
            res = C.train_model(tr_ds, va_ds, s, paths.cls_dir(name, k), checkpoint=weights, log_csv=ff["log"])
        predict_fold(k, C.load_checkpoint(weights, len(names), device), device)
        write_text_atomic(ff["result"], json.dumps({"config_hash": chash, "train_hash": thash, "train": res},
                                                   indent=2, default=str))

    # every finished fold with this config, including those other jobs (cls.folds=[k]) trained
    used, fold_results, oof_parts, test_parts = combine_folds(paths, name, chash)
    if not used:
        raise PipelineError(f"{cls_root}: no finished fold with the current config after training; "
                            "run train_cls again with --force.")
    print(f"[train_cls] combined folds {used} (configured this run: {list(cfg.cls.folds)})")
    oof = pd.concat(oof_parts, ignore_index=True)
    by_id = dict(zip(train["image_id"], range(len(train))))
    unknown = ~oof["image_id"].isin(by_id.keys())
    if unknown.any():
        # same config hash, but an image has since lost its PNG or label: it cannot be scored
        print(f"[train_cls] {int(unknown.sum())} out-of-fold row(s) of images no longer usable left out, "
              f"e.g. {oof.loc[unknown, 'image_id'].iloc[0]!r}")
        oof = oof[~unknown].reset_index(drop=True)
    dup = oof["image_id"][oof["image_id"].duplicated()]
    if len(dup):
        raise DataError(f"{cls_root}: image {dup.iloc[0]!r} is in the oof.csv of more than one fold; "
                        "folds.csv changed under the fold folders: run train_cls again with --force.")
    write_csv_atomic(oof, paths.cls_predictions(name, "oof"))
    test_mean = pd.DataFrame(columns=["image_id", *cols])
    if len(test):
        test_mean = (pd.concat(test_parts, ignore_index=True).groupby("image_id", sort=False)[cols].mean()
                     .reindex(test["image_id"]).reset_index())
    write_csv_atomic(test_mean, paths.cls_predictions(name, "test"))

    # ---- metrics -------------------------------------------------------------------------------
    y_oof = y_train[[by_id[i] for i in oof["image_id"]]]
    p_oof = oof[cols].to_numpy(float)
    metrics = {"task": cfg.cls.task, "labels": names, "folds": used,
               "n_oof": len(oof), "n_test": len(test_mean), "threshold_method": "youden",
               "oof": _score(y_oof, p_oof, names), "train": {str(k): _brief(v) for k, v in fold_results.items()},
               "skipped": len(skipped)}
    thresholds = {n: metrics["oof"]["at_threshold"][n]["threshold"] for n in names}
    test_known = known[test["_row"].to_numpy()] if len(test) else np.zeros(0, bool)
    if len(test) and test_known.any():
        y_te = targets[test["_row"].to_numpy()][test_known]
        p_te = test_mean[cols].to_numpy(float)[test_known]
        metrics["test"] = _score(y_te, p_te, names, thresholds)
    _roc_plot(paths.cls_roc(name), y_oof, p_oof, names, metrics["oof"]["auc"])

    # ---- Grad-CAM ------------------------------------------------------------------------------
    cam = run_gradcam(cfg, paths, train, test, oof, names, s, folds=used)
    if cam.get("localization"):
        metrics["localization"] = cam["localization"]
    metrics["gradcam"] = {"n_overlays": cam.get("n_overlays", 0),
                          "dir": str(paths.cls_gradcam(name, "x").parent)}
    write_text_atomic(paths.cls_metrics(name), json.dumps(metrics, indent=2, default=_json_default))

    summary = {"cls_oof_auc": metrics["oof"]["auc"]["mean"], "cls_dir": str(cls_root),
               "cls_oof_csv": str(paths.cls_predictions(name, "oof"))}
    if "test" in metrics:
        summary["cls_test_auc"] = metrics["test"]["auc"]["mean"]
    if metrics.get("localization"):
        summary["cls_loc_acc_0.1"] = metrics["localization"]["overall"].get("0.1")
    if skipped:
        summary["cls_skipped"] = len(skipped)
    return summary


def _read_result(path: Path) -> dict | None:
    """A fold's result.json, or None when missing or unreadable (a killed job): the fold is redone."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def combine_folds(paths, name: str, chash: str) -> tuple[list[int], dict, list[pd.DataFrame], list[pd.DataFrame]]:
    """Every ``cls/<name>/fold<k>/`` whose result.json carries ``chash`` and whose checkpoint, oof.csv
    and test.csv exist: ``(folds, {k: training summary}, [oof tables], [test tables])``, by fold.

    Folders with another hash (an older config) are left out and named on stdout.
    """
    used, results, oofs, tests, stale = [], {}, [], [], []
    root = paths.cls_root(name)
    ks = sorted(int(m.group(1)) for d in (root.iterdir() if root.is_dir() else [])
                if d.is_dir() and (m := re.fullmatch(r"fold(\d+)", d.name)))
    for k in ks:
        ff = fold_files(paths, name, k)
        res = _read_result(ff["result"])
        if (not res or res.get("config_hash") != chash or not paths.cls_weights(name, k).is_file()
                or not ff["oof"].is_file() or not ff["test"].is_file()):
            stale.append(k)
            continue
        used.append(k)
        results[k] = res.get("train", {})
        oofs.append(pd.read_csv(ff["oof"], dtype={"image_id": str}))
        tests.append(pd.read_csv(ff["test"], dtype={"image_id": str}))
    if stale:
        print(f"[train_cls] fold folder(s) {stale} under {root} are unfinished or from another config: not combined")
    return used, results, oofs, tests


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    return str(o)


def _nan_to_none(x):
    return None if isinstance(x, float) and math.isnan(x) else x


def _brief(res: dict) -> dict:
    return {k: v for k, v in res.items() if k != "train_losses"}


def _score(y: np.ndarray, p: np.ndarray, names, thresholds: dict | None = None) -> dict:
    """AUC per label and mean; metrics at a per-label threshold (Youden on these data unless given)."""
    from pipeline.classifier import metrics_at_threshold, youden_threshold
    from pipeline.metrics import per_label_auc

    auc = {k: _nan_to_none(v) for k, v in per_label_auc(y, p, names).items()}
    at = {}
    for j, n in enumerate(names):
        t = thresholds[n] if thresholds else youden_threshold(y[:, j], p[:, j])
        at[n] = metrics_at_threshold(y[:, j], p[:, j], t)
        at[n]["n_pos"] = int(y[:, j].sum())
    keys = ("accuracy", "precision", "recall", "f1")
    at_mean = {k: float(np.mean([at[n][k] for n in names])) for k in keys}
    return {"auc": auc, "at_threshold": at, "macro": at_mean, "n": int(len(y))}


def _roc_plot(path: Path, y: np.ndarray, p: np.ndarray, names, aucs: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    fig, ax = plt.subplots(figsize=(6.5, 6))
    for j, n in enumerate(names):
        if y[:, j].min() == y[:, j].max():
            continue  # one class only: no curve
        fpr, tpr, _ = roc_curve(y[:, j], p[:, j])
        ax.plot(fpr, tpr, lw=1.2, label=f"{n} ({aucs[n]:.3f})")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01),
           title=f"out-of-fold ROC, mean AUC {aucs['mean'] if aucs['mean'] is not None else float('nan'):.3f}")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def run_gradcam(cfg, paths, train: pd.DataFrame, test: pd.DataFrame, oof: pd.DataFrame, names, s,
                folds: list[int] | None = None) -> dict:
    """Overlays for ``cls.gradcam_n`` images and, for ChestX-ray14, the weak-localisation table.

    Which model explains an image: for a train image the model of its fold (it did not see the image);
    for a test image the first trained fold's model. ``folds``: the folds with a checkpoint (default
    ``cls.folds``). Localisation boxes: for each ChestX-ray14 image with
    BBox_List boxes (annotations.csv rows with a box), the CAM of each boxed class (multilabel) or of
    ``abnormal`` (binary: one class-agnostic box compared with every truth box).
    """
    import torch

    from pipeline import classifier as C
    from pipeline import gradcam as G
    from pipeline.classes import class_names

    name = cfg.cls.name
    device, _ = C.resolve_device(s.device)
    size = dict(zip(train["image_id"], zip(train["width"], train["height"])))
    size.update(dict(zip(test["image_id"], zip(test["width"], test["height"]))))
    fold_of = dict(zip(train["image_id"], train["fold"]))
    split_of = {**{i: "train" for i in train["image_id"]}, **{i: "test" for i in test["image_id"]}}
    trained = list(cfg.cls.folds if folds is None else folds)

    truth = pd.DataFrame()
    if cfg.data.format == "chestxray14" and paths.annotations_csv.is_file():
        ann = pd.read_csv(paths.annotations_csv, dtype={"image_id": str})
        ann = ann.dropna(subset=["x_min", "y_min", "x_max", "y_max"])
        truth = ann[ann["image_id"].isin(split_of.keys()) & (ann["class_id"] != NORMAL_ID)].reset_index(drop=True)
        # a train image of an untrained fold has no out-of-fold model: leave it out
        keep = np.array([split_of[i] == "test" or fold_of.get(i) in trained for i in truth["image_id"]], dtype=bool)
        truth = truth[keep].reset_index(drop=True)

    # images and the output index to explain
    jobs: list[tuple[str, int]] = []
    if len(truth):
        for (iid, cid), _ in truth.groupby(["image_id", "class_id"], sort=False):
            jobs.append((iid, 0 if cfg.cls.task == "binary" else int(cid)))
        jobs = list(dict.fromkeys(jobs))
    overlay_ids = list(dict.fromkeys(i for i, _ in jobs))[: cfg.cls.gradcam_n]
    if len(overlay_ids) < cfg.cls.gradcam_n and len(oof):
        cols = prob_columns(names)
        top = oof.assign(_p=oof[cols].max(1)).sort_values("_p", ascending=False)["image_id"]
        for i in top:
            if len(overlay_ids) >= cfg.cls.gradcam_n:
                break
            if i not in overlay_ids:
                overlay_ids.append(i)
                j = int(np.argmax(oof.loc[oof["image_id"] == i, cols].to_numpy()[0]))
                jobs.append((i, j))
    if not jobs:
        return {}

    models: dict[int, object] = {}

    def model_for(iid):
        k = fold_of.get(iid, trained[0]) if split_of[iid] == "train" else trained[0]
        if k not in models:
            models[k] = C.load_checkpoint(paths.cls_weights(name, k), len(names), device)
        return models[k]

    pred_rows, done_overlay = [], set()
    truth_by_img = {i: g for i, g in truth.groupby("image_id")} if len(truth) else {}
    all_names = class_names(cfg.data.format)
    for iid, out_idx in sorted(jobs, key=lambda j: (split_of[j[0]] == "test", fold_of.get(j[0], -1))):
        img = C.read_gray(paths.image(split_of[iid], iid))
        lb_img, lb = C.letterbox(img, s.imgsz)
        heat = G.grad_cam(model_for(iid), torch.from_numpy(lb_img)[None, None], out_idx)[0]
        box = G.heatmap_to_box(heat, cfg.cls.cam_threshold)
        w, h = (float(v) for v in size[iid])
        box_orig = None if box is None else lb.to_source([box], w, h)[0]
        if iid in truth_by_img and box_orig is not None:
            cids = ([out_idx] if cfg.cls.task == "multilabel"
                    else sorted(truth_by_img[iid]["class_id"].astype(int).unique()))
            for cid in cids:
                pred_rows.append({"image_id": iid, "class_id": cid, **dict(zip(["x_min", "y_min", "x_max", "y_max"], box_orig))})
        if iid in overlay_ids and iid not in done_overlay:
            done_overlay.add(iid)
            crop = (slice(lb.pad_y, lb.pad_y + lb.new_h), slice(lb.pad_x, lb.pad_x + lb.new_w))
            img_c, heat_c = lb_img[crop], heat[crop]
            tboxes = []
            if iid in truth_by_img:
                g = truth_by_img[iid]
                if cfg.cls.task == "multilabel":
                    g = g[g["class_id"] == out_idx]
                tb = g[["x_min", "y_min", "x_max", "y_max"]].to_numpy(float)
                tboxes = tb * np.array([lb.new_w / w, lb.new_h / h] * 2)
            pbox = None if box is None else (box[0] - lb.pad_x, box[1] - lb.pad_y, box[2] - lb.pad_x, box[3] - lb.pad_y)
            pic = G.overlay(img_c, heat_c, tboxes, pbox)
            write_bytes_atomic(paths.cls_gradcam(name, iid), G.encode_png(pic))

    out = {"n_overlays": len(done_overlay)}
    if len(truth):
        pred = pd.DataFrame(pred_rows, columns=["image_id", "class_id", "x_min", "y_min", "x_max", "y_max"])
        write_csv_atomic(pred, paths.cls_cam_boxes(name))
        loc = G.localization_accuracy(pred, truth, class_names=dict(enumerate(all_names)))
        loc.pop("ious", None)
        loc["reference_wang2017_mean"] = {f"{t:g}": v for t, v in G.WANG2017_MEAN_IOU_ACCURACY.items()}
        loc["cam_threshold"] = cfg.cls.cam_threshold
        out["localization"] = loc
    return out
