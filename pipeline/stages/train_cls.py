"""Stage train_cls: DenseNet-121 per fold, out-of-fold and test probabilities, AUC, ROC, Grad-CAM.

Reads ``images.csv``, ``folds.csv``, ``meta.csv`` (each PNG's conversion fingerprint), the PNGs (and
``boxes.csv`` for ``cls.binary_source=fused``, ``annotations.csv`` for ChestX-ray14's localisation).
For each fold k in ``cls.folds`` it trains on the other folds and predicts fold k (the detector's folds,
so out-of-fold predictions of both models come from the same blind spots) and the test images.

Which epoch a fold keeps (``cls.select``): ``inner`` (default) chooses it, and stops early, on an inner
holdout of the training folds (``cls.inner_holdout``, patient-grouped): nothing reported for fold k is
chosen by looking at fold k. ``last`` keeps the last epoch; ``best_on_fold_optimistic`` chooses on fold k
itself (the old behaviour: optimistic out-of-fold figures).

Units of work (:mod:`pipeline.work`): a fold's training (record ``cls/<name>/fold<k>/train.json``; output
``best.pt``) and its prediction (``predict.json``; outputs ``oof.csv``, ``test.csv``). Fingerprints cover
the settings that change the weights, each image's id, conversion fingerprint and target, and for the
prediction the weights' content and ``cls.tta_flip``; ``cls.folds``, ``cls.gradcam_n`` and
``cls.cam_threshold`` are in none of them, so one job per fold (``cls.folds=[k]``) combines with the others.

``predictions/cls_<name>_oof.csv`` (``image_id, fold, p_<label>...``) and ``..._test.csv`` (mean over folds)
are rebuilt every run from every fold 0..n-1 whose two units are done with the current inputs; folds
without them are named. ``cls/<name>/metrics.json``, ``roc.png``, ``gradcam/`` cover those folds. Fold jobs
running at once rebuild them in turn, under the lock of the combined oof file (:func:`pipeline.io.locked`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.errors import ConfigError, DataError, PipelineError
from pipeline.io import locked, write_csv_atomic, write_json_atomic
from pipeline.tables import read_table

# cls keys that never change a fold's weights: which folds this job runs, reporting, prediction only.
# cls.model and cls.cam choose the localise stage's networks; train_cls always trains its DenseNet-121
_NOT_TRAINING = ("name", "folds", "gradcam_n", "cam_threshold", "tta_flip", "workers", "model", "cam")


def _training_settings(cfg) -> dict:
    from pipeline.fingerprint import file_digest

    keys = {k: v for k, v in cfg.cls.to_dict().items() if k not in _NOT_TRAINING}
    w = cfg.cls.weights
    if w and str(w).lower() != "imagenet":
        keys["weights"] = {"file": file_digest(w)}
    return {"cls": keys, "seed": int(cfg.run.seed)}


def _rows_digest(ids, fps: dict, targets: np.ndarray | None) -> str:
    from pipeline.fingerprint import digest

    t = [None] * len(ids) if targets is None else targets.round(6).tolist()
    return digest(sorted([str(i), fps.get(str(i)), y] for i, y in zip(ids, t)))


def _inner_split(rows: pd.DataFrame, share: float, seed: int) -> np.ndarray:
    """Mask of ``rows`` held out to choose the epoch: one fold of a patient-grouped, label-stratified
    split of the training folds into about 1/share parts."""
    from pipeline.folds import make_folds

    table = rows[["image_id", "labels", "patient_id"]].assign(split="train")
    groups = table["patient_id"].where(table["patient_id"].astype(str) != "", table["image_id"]).nunique()
    if groups < 2:
        raise DataError(f"the training folds have {groups} patient(s): too few to hold some out for choosing the "
                        "epoch (cls.select=inner); use more images, or cls.select=last.")
    n = min(max(2, int(round(1.0 / share))), groups)
    folds = make_folds(table, n, seed, group_by_patient=True, source="the training folds (inner holdout)")
    return (folds.set_index("image_id")["fold"].reindex(rows["image_id"]) == 0).to_numpy()


def _tables(cfg, paths):
    from pipeline.classes import run_classes
    from pipeline.classifier.targets import build_targets
    from pipeline.tables import image_fingerprints, read_folds, read_images, read_meta

    images = read_images(paths.images_csv)
    folds = read_folds(paths.folds_csv)
    meta = read_meta(paths.meta_csv)
    for col in ("width", "height", "labels"):
        if col not in images.columns:
            raise DataError(f"{paths.images_csv}: missing column {col!r}; run the prepare stage again.")
    dup = folds["image_id"][folds["image_id"].duplicated()]
    if len(dup):
        raise DataError(f"{paths.folds_csv}: image {dup.iloc[0]!r} has more than one fold; run the folds stage again.")
    boxes = None
    if cfg.cls.task == "binary" and cfg.cls.binary_source == "fused":
        boxes = read_table(paths.boxes_csv, "fused boxes",
                           hint="run the prepare stage (it writes boxes.csv) or set cls.binary_source=radiologists.")
    targets, known = build_targets(images, cfg, boxes, paths.images_csv, run_classes(paths).normal_id)
    images = images.assign(_row=np.arange(len(images)))
    fps = {**image_fingerprints(meta, "train"), **image_fingerprints(meta, "test")}

    skipped: list[dict] = []
    exists = np.array([paths.image(sp, i).is_file() and i in fps for sp, i in zip(images["split"], images["image_id"])])
    for sp, i in images.loc[~exists, ["split", "image_id"]].itertuples(index=False):
        skipped.append({"image_id": i, "split": sp, "reason": f"no converted PNG: {paths.image(sp, i)}"})
    train = images[(images["split"] == "train") & exists].merge(folds, on="image_id", how="left")
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
    return train, test, targets, known, fps, skipped


class _Folds:
    """The two units of work of each fold and what they need, built from the stage's tables."""

    def __init__(self, cfg, paths, train, test, targets, fps, n_outputs):
        self.cfg, self.paths, self.train, self.test, self.fps, self.n_outputs = cfg, paths, train, test, fps, n_outputs
        self.name = cfg.cls.name
        from pipeline.classes import run_classes

        self.classes = run_classes(paths)
        self.y = targets[train["_row"].to_numpy()]
        self.settings = _training_settings(cfg)
        self._rows: dict[int, tuple] = {}

    def rows(self, k: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """Masks over train: (fit, select-on or None, out-of-fold)."""
        if k not in self._rows:
            self._rows[k] = self._masks(k)
        return self._rows[k]

    def _masks(self, k: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        oof = (self.train["fold"] == k).to_numpy()
        fit = ~oof
        select = str(self.cfg.cls.select)
        if select == "last":
            return fit, None, oof
        if select == "best_on_fold_optimistic":
            return fit, oof, oof
        inner = np.zeros(len(self.train), bool)
        inner[fit] = _inner_split(self.train[fit], float(self.cfg.cls.inner_holdout), int(self.cfg.run.seed) + k)
        return fit & ~inner, inner, oof

    def units(self, k: int):
        from pipeline.fingerprint import file_digest
        from pipeline.work import Work

        fit, sel, oof = self.rows(k)
        ids = self.train["image_id"].to_numpy()
        p = self.paths
        train_in = {**self.settings, "fit": _rows_digest(ids[fit], self.fps, self.y[fit]),
                    "select_on": None if sel is None else _rows_digest(ids[sel], self.fps, self.y[sel])}
        train_work = Work(f"train_cls {self.name} fold {k}", p.cls_train_record(self.name, k), train_in,
                          outputs=[p.cls_weights(self.name, k)])
        predict_in = {"weights": file_digest(p.cls_weights(self.name, k)), "imgsz": int(self.cfg.cls.imgsz),
                      "tta_flip": bool(self.cfg.cls.tta_flip), "outputs": self.n_outputs,
                      "oof": _rows_digest(ids[oof], self.fps, None),
                      "test": _rows_digest(self.test["image_id"].to_numpy(), self.fps, None)}
        predict_work = Work(f"predict_cls {self.name} fold {k}", p.cls_predict_record(self.name, k), predict_in,
                            outputs=[p.cls_fold_predictions(self.name, k, "oof"), p.cls_fold_predictions(self.name, k, "test")])
        return (fit, sel, oof), train_work, predict_work


def run(cfg, paths) -> dict:
    from pipeline import classifier as C
    from pipeline.classes import run_classes
    from pipeline.classifier.targets import check_cls_config, label_names, prob_columns, settings_from_cfg
    from pipeline.device import use_threads

    check_cls_config(cfg)
    use_threads(cfg.run.threads)
    name = cfg.cls.name
    classes = run_classes(paths)
    names = label_names(cfg, classes)
    cols = prob_columns(names)
    s = settings_from_cfg(cfg)
    aug = C.build_augment(s.augment, seed=s.seed)  # a bad cls.augment fails before any work
    if s.weights and str(s.weights).lower() != "imagenet" and not Path(s.weights).is_file():
        raise ConfigError(f"cls.weights: weights file not found: {s.weights}. Pass a local DenseNet-121 "
                          "state dict, 'imagenet' (needs internet) or null (from scratch).")
    train, test, targets, known, fps, skipped = _tables(cfg, paths)
    n_splits = int(train["fold"].max()) + 1
    missing_folds = [k for k in cfg.cls.folds if k not in set(train["fold"])]
    if missing_folds:
        raise ConfigError(f"cls.folds: fold(s) {missing_folds} have no images in {paths.folds_csv} "
                          f"(folds present: {sorted(set(train['fold']))}).")
    if skipped:
        write_csv_atomic(pd.DataFrame(skipped), paths.cls_skipped(name))
        print(f"[train_cls] {len(skipped)} image(s) left out; see {paths.cls_skipped(name)}")
    else:
        paths.cls_skipped(name).unlink(missing_ok=True)  # a list from an earlier run would no longer be true

    folds = _Folds(cfg, paths, train, test, targets, fps, len(names))
    img = {"train": [paths.image("train", i) for i in train["image_id"]],
           "test": [paths.image("test", i) for i in test["image_id"]]}
    force, statuses = bool(cfg.run.force), []
    for k in cfg.cls.folds:
        (fit, sel, oof), train_work, _ = folds.units(k)
        if train_work.state(force) == "done":
            print(f"[train_cls] fold {k}: trained earlier with the same inputs: skipped")
            statuses.append("skipped")
        else:
            what = (f"epoch chosen on an inner holdout of {int(sel.sum())}" if cfg.cls.select == "inner" else
                    {"last": "last epoch kept",
                     "best_on_fold_optimistic": "epoch chosen on the fold itself (optimistic)"}[cfg.cls.select])
            print(f"[train_cls] fold {k}: train {int(fit.sum())} images, {what}; predicts {int(oof.sum())} "
                  f"({train_work.why_not_done()})")
            train_work.start()
            sub = lambda m, t=None: C.XrayDataset([p for p, v in zip(img["train"], m) if v], folds.y[m], s.imgsz, t)
            res = C.train_model(sub(fit, aug), None if sel is None else sub(sel), s, paths.cls_dir(name, k),
                                checkpoint=paths.cls_weights(name, k), log_csv=paths.cls_log(name, k))
            train_work.finish({k2: v for k2, v in res.items() if k2 != "train_losses"})
            statuses.append("trained")
        _, _, predict_work = folds.units(k)  # the weights may be new: their digest is an input
        if predict_work.state(force) == "done":
            continue
        predict_work.start()
        device, _ = C.torch_device(s.device)
        model = C.load_checkpoint(paths.cls_weights(name, k), len(names), device)
        for split, mask_ids in (("oof", train.loc[oof, "image_id"]), ("test", test["image_id"])):
            chosen = [p for p, v in zip(img["train"], oof) if v] if split == "oof" else img["test"]
            probs = np.zeros((0, len(names)))
            if len(chosen):
                ds = C.XrayDataset(chosen, None, s.imgsz, n_outputs=len(names))
                probs = C.predict_probs(model, ds, s.batch * 2, s.workers, device, cfg.cls.tta_flip, s.amp)
            table = pd.DataFrame(probs, columns=cols)
            if split == "oof":
                table.insert(0, "fold", k)
            table.insert(0, "image_id", mask_ids.to_numpy())
            write_csv_atomic(table, paths.cls_fold_predictions(name, k, split))
        predict_work.finish({"oof": int(oof.sum()), "test": len(test)})

    # Every fold job combines; concurrent ones take turns, so the last writes from every finished fold.
    with locked(paths.cls_predictions(name, "oof")):
        return _combine_and_score(cfg, paths, folds, n_splits, names, cols, known, targets, s, skipped, statuses)


def _combine_and_score(cfg, paths, folds, n_splits, names, cols, known, targets, s, skipped, statuses) -> dict:
    from pipeline.classifier.explain import run_gradcam
    from pipeline.classifier.scoring import roc_curves, score_probabilities
    from pipeline.report import plot_roc

    name, train, test = cfg.cls.name, folds.train, folds.test
    used, lacking, oofs, tests, fold_results = [], [], [], [], {}
    for k in range(n_splits):
        _, tw, pw = folds.units(k)
        if tw.state() == "done" and pw.state() == "done":
            used.append(k)
            fold_results[str(k)] = tw.summary()
            oofs.append(pd.read_csv(paths.cls_fold_predictions(name, k, "oof"), dtype={"image_id": str}))
            tests.append(pd.read_csv(paths.cls_fold_predictions(name, k, "test"), dtype={"image_id": str}))
        else:
            lacking.append(k)
    if not used:
        raise PipelineError(f"{paths.cls_root(name)}: no fold is trained and predicted with the current inputs; "
                            "run train_cls for the folds in cls.folds.")
    if lacking:
        print(f"[train_cls] warning: fold(s) {lacking} have no classifier trained and predicted with the current "
              f"inputs: their images get no out-of-fold probability (run train_cls cls.folds={lacking})")
    oof = pd.concat(oofs, ignore_index=True)
    write_csv_atomic(oof, paths.cls_predictions(name, "oof"))
    test_mean = pd.DataFrame(columns=["image_id", *cols])
    if len(test):
        test_mean = (pd.concat(tests, ignore_index=True).groupby("image_id", sort=False)[cols].mean()
                     .reindex(test["image_id"]).reset_index())
    write_csv_atomic(test_mean, paths.cls_predictions(name, "test"))

    by_id = dict(zip(train["image_id"], range(len(train))))
    y_oof = folds.y[[by_id[i] for i in oof["image_id"]]]
    p_oof = oof[cols].to_numpy(float)
    metrics = {"task": cfg.cls.task, "labels": names, "folds": used, "folds_without_predictions": lacking,
               "select": cfg.cls.select, "n_oof": len(oof), "n_test": len(test_mean),
               "oof": score_probabilities(y_oof, p_oof, names, folds=oof["fold"].to_numpy()),
               "train": fold_results, "skipped": len(skipped)}
    test_known = known[test["_row"].to_numpy()] if len(test) else np.zeros(0, bool)
    if len(test) and test_known.any():
        y_te = targets[test["_row"].to_numpy()][test_known]
        p_te = test_mean[cols].to_numpy(float)[test_known]
        metrics["test"] = score_probabilities(y_te, p_te, names, thresholds=metrics["oof"]["thresholds"])
    curves = roc_curves(y_oof, p_oof, names, metrics["oof"]["auc"])
    if curves:
        mean = metrics["oof"]["auc"]["mean"]
        plot_roc(curves, paths.cls_roc(name), title="out-of-fold ROC" + (f", mean AUC {mean:.3f}" if mean else ""))

    cam = run_gradcam(cfg, paths, train, test, oof, names, s, folds=used, classes=folds.classes)
    if cam.get("localization"):
        metrics["localization"] = cam["localization"]
    metrics["gradcam"] = {"n_overlays": cam.get("n_overlays", 0), "dir": str(paths.cls_gradcam_dir(name))}
    write_json_atomic(paths.cls_metrics(name), metrics)

    summary = {"cls_oof_auc": metrics["oof"]["auc"]["mean"], "cls_dir": str(paths.cls_root(name)),
               "cls_oof_csv": str(paths.cls_predictions(name, "oof")), "cls_folds": used,
               "skipped": all(st == "skipped" for st in statuses)}
    if lacking:
        summary["warnings"] = [f"classifier folds {lacking} lack predictions"]
    if "test" in metrics:
        summary["cls_test_auc"] = metrics["test"]["auc"]["mean"]
    if metrics.get("localization"):
        summary["cls_loc_acc_0.1"] = metrics["localization"]["overall"].get("0.1")
    if skipped:
        summary["cls_skipped"] = len(skipped)
    return summary
