"""Stage localise: ChestX-ray14 localisation, out-of-fold, every method scored by one protocol (issue 13).

For each method of ``localise.methods`` and each fold k of ``folds.csv`` (patient-grouped folds from the
folds stage) the method trains on the other folds and predicts the held-out fold's boxed images: up to
``localise.max_boxes`` boxes per image and boxed class, and image-level probabilities. Methods:

* ``prior``      -- 3 k-means boxes per class from the training boxes (:mod:`pipeline.models.prior`; a floor);
* ``gradcam``    -- plain classifier, Grad-CAM boxes; ``multiscale`` -- multiscale CAM (Sedai et al. 2018),
  learned per-class relevance weights reported; ``cln`` -- classification + centre-heatmap localisation
  (:mod:`pipeline.models`, via :mod:`pipeline.models.runners`);
* ``yolo``       -- the run's own detector: its out-of-fold predictions (stages train_det and predict).

``localise.methods: null`` takes the methods from the classifier keys the issue names: ``prior`` always,
``cls.cam`` (gradcam | multiscale; none: neither), ``cln`` when ``cls.model: cln``, and ``yolo`` when the run has its
detector's out-of-fold predictions for every fold.

Units of work (:mod:`pipeline.work`): one per (method, fold), record ``localise/<method>/fold<k>/train.json``,
outputs ``oof_boxes.csv`` (ORIGINAL pixels), ``oof_probs.csv``, ``model.json`` (and ``model.pt``). Its
fingerprint covers the settings that change the weights (``localise.*`` with ``localise.method_args`` of
that method, ``run.seed``), every training image's id, conversion fingerprint, labels and boxes, and the
held-out images; ``cam_threshold`` / ``max_boxes`` change only the prediction: a unit whose model.json
records the same training inputs reuses its weights. ``localise.folds`` is in none, so fold jobs combine.

Then every method's finished folds are combined (``predictions/loc_<method>_oof_{boxes,probs}.csv``) and
scored with :mod:`pipeline.localisation` (Wang et al.'s protocol: IoU and IoBB > T, T = 0.1 .. 0.7, at most
3 boxes per image and class; AUC) into ``localisation.json``, which the evaluate stage puts into
metrics.json. Honest out-of-fold: fixed epochs, the last weights, fixed CAM threshold; nothing is chosen
on a held-out fold.
"""
from __future__ import annotations

import datetime
import json
import time
from pathlib import Path

import numpy as np

from pipeline.errors import ConfigError, PipelineError
from pipeline.io import write_csv_atomic, write_json_atomic

ALL_METHODS = ("prior", "gradcam", "multiscale", "cln", "yolo")
NETWORKS = ("gradcam", "multiscale", "cln")
# localise keys that are MethodSettings fields (localise.method_args may override them per network)
SETTING_KEYS = ("backbone", "weights", "imgsz", "epochs", "batch", "lr", "weight_decay", "warmup_epochs", "width",
                "cln_box", "augment", "cam_threshold", "max_boxes")
CLN_ONLY = ("cln_box",)  # in CLN's fingerprint only: a change retrains CLN, not the CAM networks
PREDICT_ONLY = ("cam_threshold", "max_boxes")


def det_oof_files(cfg, paths, n_splits: int) -> dict:
    return {k: paths.det_predictions(cfg.det.name, k, "oof") for k in range(n_splits)}


def chosen_methods(cfg, paths, n_splits: int) -> list[str]:
    """``localise.methods``, or (null) the methods the classifier keys select (module doc)."""
    methods = cfg.localise.methods
    if methods is None:
        cam = str(cfg.cls.cam)
        if cam not in ("gradcam", "multiscale", "none"):
            raise ConfigError(f"cls.cam: {cam!r} is not gradcam, multiscale or none")
        if str(cfg.cls.model) not in ("densenet121", "cln"):
            raise ConfigError(f"cls.model: {cfg.cls.model!r} is not densenet121 or cln")
        methods = ["prior"] + ([cam] if cam != "none" else []) + (["cln"] if cfg.cls.model == "cln" else [])
        if all(p.is_file() for p in det_oof_files(cfg, paths, n_splits).values()):
            methods.append("yolo")
        return methods
    bad = [m for m in methods if m not in ALL_METHODS]
    if bad or not methods or len(set(methods)) != len(methods):
        raise ConfigError(f"localise.methods: {list(methods)!r}: give each of {list(ALL_METHODS)} at most once "
                          "(or null: taken from cls.cam and cls.model)")
    return list(methods)


def method_settings(cfg, method: str):
    """The :class:`pipeline.models.runners.MethodSettings` of a network: ``localise.*`` with
    ``localise.method_args[method]`` over them."""
    from pipeline.classifier import torch_device
    from pipeline.models.runners import MethodSettings

    loc = cfg.localise
    args = dict(loc.method_args or {})
    bad = [m for m in args if m not in NETWORKS]
    if bad:
        raise ConfigError(f"localise.method_args: {bad} are not networks with settings; use {list(NETWORKS)}")
    over = dict(args.get(method) or {})
    unknown = [k for k in over if k not in SETTING_KEYS]
    if unknown:
        raise ConfigError(f"localise.method_args.{method}: unknown key(s) {unknown}; allowed: {list(SETTING_KEYS)}")
    values = {k: over.get(k, getattr(loc, k)) for k in SETTING_KEYS}
    if values["weights"] and not Path(values["weights"]).is_file():
        raise ConfigError(f"localise.weights: trunk state dict not found: {values['weights']}; give a local file "
                          "or null (from scratch; nothing is downloaded).")
    from pipeline.models.cln import BOX_MODES

    if values["cln_box"] not in BOX_MODES:
        raise ConfigError(f"localise.cln_box: {values['cln_box']!r}; use one of {list(BOX_MODES)}")
    if int(loc.labels) not in (8, 14):
        raise ConfigError(f"localise.labels: {loc.labels!r}; use 8 (the boxed classes) or 14 (all findings)")
    device, _ = torch_device(cfg.run.device)
    return MethodSettings(**values, seed=int(cfg.run.seed), device=str(device), n_box_classes=8)


class Plan:
    """The units of one stage run: which images each (method, fold) trains on and predicts."""

    def __init__(self, cfg, paths, data):
        from pipeline.localise_data import FINDINGS

        self.cfg, self.paths, self.data = cfg, paths, data
        self.n_labels = int(cfg.localise.labels)
        self.names = list(FINDINGS[: self.n_labels])
        self.fold = data.images["fold"].to_numpy()
        self.boxed = data.images["boxed"].to_numpy()

    def masks(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(train, predict): the other folds' images; fold k's boxed images."""
        return self.fold != k, (self.fold == k) & self.boxed

    def train_inputs(self, method: str, k: int) -> dict:
        from pipeline.fingerprint import file_digest
        from pipeline.localise_data import rows_digest

        tr, _ = self.masks(k)
        rows = self.data.rows(tr)
        boxes = [self.data.boxes_png[i] for i in np.flatnonzero(tr)]
        if method == "yolo":
            return {"det_oof": file_digest(self.paths.det_predictions(self.cfg.det.name, k, "oof"))}
        if method == "prior":
            return {"rows": rows_digest(rows, None, boxes), "seed": int(self.cfg.run.seed)}
        s = method_settings(self.cfg, method).as_dict()
        skip = (*PREDICT_ONLY, "device", "workers", *(CLN_ONLY if method != "cln" else ()))
        keys = {k2: v for k2, v in s.items() if k2 not in skip}
        if keys.get("weights"):
            keys["weights"] = {"file": file_digest(keys["weights"])}
        return {"settings": keys, "labels": self.n_labels, "rows": rows_digest(rows, self.data.y[tr], boxes)}

    def unit(self, method: str, k: int):
        from pipeline.localise_data import rows_digest
        from pipeline.work import Work

        p = self.paths
        _, va = self.masks(k)
        predict = {"rows": rows_digest(self.data.rows(va))}
        if method in NETWORKS:
            s = method_settings(self.cfg, method)
            predict.update({key: getattr(s, key) for key in PREDICT_ONLY})
        outputs = [p.localise_fold_boxes(method, k), p.localise_fold_probs(method, k), p.localise_model_info(method, k)]
        if method in NETWORKS:
            outputs.append(p.localise_weights(method, k))
        return Work(f"localise {method} fold {k}", p.localise_record(method, k),
                    {"method": method, "train": self.train_inputs(method, k), "predict": predict}, outputs=outputs)


def run(cfg, paths) -> dict:
    from pipeline import localise_data as D
    from pipeline.device import use_threads
    from pipeline.localise_score import score_methods

    if cfg.data.format != "chestxray14":
        raise ConfigError(f"the localise stage scores ChestX-ray14 boxes (the 8 BBox_List classes); data.format is "
                          f"{cfg.data.format!r}. Use data.format: chestxray14.")
    use_threads(cfg.run.threads)
    data = D.load(paths, str(cfg.localise.images))
    if data.skipped:
        print(f"[localise] {len(data.skipped)} image(s) left out, e.g. {data.skipped[0]}")
    plan = Plan(cfg, paths, data)
    n = data.n_splits
    methods = chosen_methods(cfg, paths, n)
    folds = list(range(n)) if cfg.localise.folds is None else [int(k) for k in cfg.localise.folds]
    bad = [k for k in folds if k not in set(plan.fold[plan.boxed])]
    if bad:
        raise ConfigError(f"localise.folds: fold(s) {bad} have no boxed image in {paths.folds_csv} "
                          f"(folds with boxed images: {sorted(set(plan.fold[plan.boxed]))}).")
    print(f"[localise] methods {methods}, folds {folds} of {n}; {int(plan.boxed.sum())} boxed images, "
          f"{len(data.truth)} boxes, {int((~plan.boxed).sum())} classification-only")
    statuses = []
    for method in methods:
        if method == "yolo":
            missing = [str(p) for k, p in det_oof_files(cfg, paths, n).items() if k in folds and not p.is_file()]
            if missing:
                raise PipelineError(f"localise.methods has yolo but the detector's out-of-fold predictions are missing: "
                                    f"{missing[:2]}; run the train_det and predict stages for every fold first.")
        for k in folds:
            work = plan.unit(method, k)
            if work.state(bool(cfg.run.force)) == "done":
                print(f"[localise] {method} fold {k}: done earlier with the same inputs: skipped")
                statuses.append("skipped")
                continue
            tr, va = plan.masks(k)
            print(f"[localise] {method} fold {k}: train on {int(tr.sum())} images, predict {int(va.sum())} "
                  f"({work.why_not_done()})", flush=True)
            work.start()
            summary = run_unit(plan, method, k, work)
            work.finish(summary)
            print(f"[localise] {method} fold {k}: {summary['seconds']:.0f} s", flush=True)
            statuses.append("ran")
    result = score_methods(plan, methods)
    write_json_atomic(paths.localisation_json, result)
    for m, b in result["localisation"].items():
        print(f"[localise] {m}: mean share of boxes found at IoU > 0.1 {_f(b['iou']['0.1']['mean'])}, > 0.5 "
              f"{_f(b['iou']['0.5']['mean'])}; mean AUC {_f(b['auc']['mean'])} (the table: evaluate stage)")
    out = {"localisation": str(paths.localisation_json), "loc_methods": list(result["localisation"]),
           "skipped": all(st == "skipped" for st in statuses)}
    for m, block in result["localisation"].items():
        out[f"loc_{m}_iou_0.1"] = block["iou"]["0.1"]["mean"]
    return out


def _f(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def run_unit(plan: Plan, method: str, k: int, work) -> dict:
    """Train (or reuse) and predict one (method, fold); writes its outputs; returns the record's summary."""
    from pipeline.localise_data import probs_table

    p, data = plan.paths, plan.data
    tr, va = plan.masks(k)
    held = data.rows(va)
    start, cpu = time.perf_counter(), time.process_time()
    if method == "prior":
        boxes, probs, names, info = _prior(plan, tr, held)
    elif method == "yolo":
        boxes, probs, names, info = _yolo(plan, k, held)
    else:
        boxes, probs, names, info = _network(plan, method, k, tr, va, work)
    write_csv_atomic(boxes, p.localise_fold_boxes(method, k))
    write_csv_atomic(probs_table(held["image_id"], k, probs, names), p.localise_fold_probs(method, k))
    if method not in NETWORKS:  # a network's model.json is written as soon as its weights are
        write_json_atomic(p.localise_model_info(method, k), {"method": method, "labels": names, **info})
    return {**{key: v for key, v in info.items() if key != "prior"}, "seconds": round(time.perf_counter() - start, 1),
            "cpu_seconds": round(time.process_time() - cpu, 1), "n_train": int(tr.sum()), "n_predict": int(va.sum()),
            "date": datetime.date.today().isoformat()}


def _prior(plan: Plan, tr, held):
    from pipeline.boxes import BOX_COLUMNS
    from pipeline.localisation import BOX_CLASSES
    from pipeline.models.prior import fit_prior, predict_prior

    data = plan.data
    rows = data.rows(tr).set_index("image_id")
    t = data.truth[data.truth["image_id"].isin(set(rows.index))].copy()
    scale = rows.loc[t["image_id"], ["width", "height", "width", "height"]].to_numpy(float)
    t[BOX_COLUMNS] = t[BOX_COLUMNS].to_numpy(float) / scale
    prior = fit_prior(t, 3, int(plan.cfg.run.seed))
    boxes = predict_prior(prior, held["image_id"], held["width"], held["height"])
    probs = np.full((len(held), len(BOX_CLASSES)), 0.5)  # a constant score: AUC 0.5
    return boxes, probs, list(BOX_CLASSES), {"prior": {str(c): a.tolist() for c, a in prior.items()}}


def _yolo(plan: Plan, k: int, held):
    from pipeline.localisation import BOX_CLASSES
    from pipeline.stages.fuse import read_detections

    path = plan.paths.det_predictions(plan.cfg.det.name, k, "oof")
    det = read_detections(path, f"detector {plan.cfg.det.name} fold {k} out-of-fold predictions")
    if "tta" in det.columns:
        det = det[det["tta"] == "orig"]
    det = det[det["image_id"].isin(set(held["image_id"])) & (det["class_id"] < len(BOX_CLASSES))]
    det = det.drop(columns=[c for c in det.columns if c == "tta"]).reset_index(drop=True)
    best = det.groupby(["image_id", "class_id"])["score"].max().unstack()
    probs = best.reindex(index=held["image_id"], columns=range(len(BOX_CLASSES))).fillna(0.0).to_numpy()
    return det, probs, list(BOX_CLASSES), {"source": str(path), "detector": plan.cfg.det.name}


def _network(plan: Plan, method: str, k: int, tr, va, work):
    from pipeline.fingerprint import digest
    from pipeline.localise_data import to_original
    from pipeline.models import runners as R

    p, data, cfg = plan.paths, plan.data, plan.cfg
    s = method_settings(cfg, method)
    lab = data.y[:, : plan.n_labels]
    train_key = digest(work.inputs["train"])
    info_path, weights = p.localise_model_info(method, k), p.localise_weights(method, k)
    old = {}
    try:
        old = json.loads(info_path.read_text())
    except (OSError, ValueError):
        pass
    if old.get("train_key") == train_key and weights.is_file() and not cfg.run.force:  # run.force retrains
        print(f"[localise] {method} fold {k}: weights trained earlier with the same inputs: reused")
        model, tinfo = R.load(method, plan.n_labels, s, weights, s.device), {**old.get("train", {}), "reused_weights": True}
    else:
        items = R.Items(data.rows(tr)["png"].tolist(), lab[tr], [data.boxes_png[i] for i in np.flatnonzero(tr)])
        model, tinfo = R.train(method, s, items, log=lambda m: print(f"[localise] {method} fold {k}: {m.strip()}",
                                                                        flush=True))
        R.save(model, weights)
        write_json_atomic(info_path, {"method": method, "labels": plan.names, "settings": s.as_dict(),
                                      "train_key": train_key, "train": tinfo})
    held = data.rows(va)
    res = R.predict(method, s, model, R.Items(held["png"].tolist(), lab[va], None), label_names=plan.names)
    info = {"train_seconds": tinfo.get("train_seconds"), "history": tinfo.get("history"),
            "reused_weights": bool(tinfo.get("reused_weights")), **res.info,
            "settings": {key: v for key, v in s.as_dict().items() if key not in ("device", "workers")}}
    return to_original(res, held), res.probs, plan.names, info
