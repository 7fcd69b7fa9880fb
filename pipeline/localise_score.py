"""The localise stage's last step: combine each method's finished folds and score them (``localisation.json``).

``localisation.json`` holds the three blocks the evaluate stage copies into ``metrics.json`` (contract in
:mod:`pipeline.localisation` and docs/notes/localisation.md)::

    {"localisation": {<method>: {"iou": ..., "iobb": ..., "auc": ...}},
     "localisation_reference": {"wang2017_table7": ..., "cln2025": ...},
     "localisation_run": {"n_boxes", "n_images", "n_splits", "max_boxes", "folds", "methods": {<method>: {folds,
                          folds_missing, seconds, settings, relevance_per_fold, relevance_mean ...}}, "date", ...}}

A method is scored on the boxed images of the folds it finished (all of them once every fold ran);
``folds_missing`` names the others. Truth: every BBox_List box of those images (ORIGINAL pixels).
"""
from __future__ import annotations

import datetime

import numpy as np
import pandas as pd

from pipeline.io import write_csv_atomic


def _relevance(summaries: list[dict], names) -> dict:
    per_fold = [{n: s["relevance"][n] for n in names if n in s.get("relevance", {})} for s in summaries
                if s.get("relevance")]
    if not per_fold:
        return {}
    strides = list(next(iter(per_fold[0].values())))
    mean = {n: {st: float(np.mean([f[n][st] for f in per_fold if n in f])) for st in strides} for n in names}
    return {"relevance_per_fold": per_fold, "relevance_mean": mean}


def score_methods(plan, methods: list[str]) -> dict:
    """Combine, write the combined predictions, score; the ``localisation.json`` content."""
    from pipeline import localisation as L

    paths, data, cfg = plan.paths, plan.data, plan.cfg
    n_splits = data.n_splits
    row = {iid: i for i, iid in enumerate(data.images["image_id"])}
    blocks, run_info, unscored = {}, {}, []
    for method in methods:
        done, missing, summaries = [], [], []
        for k in range(n_splits):
            if not (plan.boxed & (plan.fold == k)).any():
                continue
            work = plan.unit(method, k)
            if work.state() == "done":
                done.append(k)
                summaries.append(work.summary())
            else:
                missing.append(k)
        if not done:
            unscored.append(method)
            continue
        boxes = pd.concat([pd.read_csv(paths.localise_fold_boxes(method, k), dtype={"image_id": str}) for k in done],
                          ignore_index=True)
        probs = pd.concat([pd.read_csv(paths.localise_fold_probs(method, k), dtype={"image_id": str}) for k in done],
                          ignore_index=True)
        write_csv_atomic(boxes, paths.localise_predictions(method, "boxes"))
        write_csv_atomic(probs, paths.localise_predictions(method, "probs"))
        ids = probs["image_id"].tolist()
        y = data.y[[row[i] for i in ids]][:, : len(L.BOX_CLASSES)]
        scores = probs[[f"p_{n}" for n in L.BOX_CLASSES]].to_numpy(float)
        truth = data.truth[data.truth["image_id"].isin(set(ids))]
        blocks[method] = L.method_block(boxes, truth, y, scores, max_boxes=int(cfg.localise.max_boxes))
        run_info[method] = {"folds": done, "folds_missing": missing, "n_images": len(ids), "n_boxes": int(len(truth)),
                            "seconds": round(sum(s.get("seconds", 0) for s in summaries), 1),
                            "per_fold_seconds": [s.get("seconds") for s in summaries],
                            "train_seconds": round(sum(s.get("train_seconds") or 0 for s in summaries), 1),
                            "cpu_seconds": round(sum(s.get("cpu_seconds", 0) for s in summaries), 1),
                            "settings": summaries[0].get("settings"), "dates": sorted({s.get("date") for s in summaries}),
                            **_relevance(summaries, L.BOX_CLASSES)}
        if missing:
            print(f"[localise] warning: {method} lacks fold(s) {missing}: scored on folds {done} only")
    if not blocks:
        from pipeline.errors import PipelineError

        raise PipelineError(f"{paths.localise_root}: no method has a finished fold with the current inputs "
                            f"({unscored}); run the localise stage for the folds in localise.folds.")
    L.check_block(blocks)
    boxed = data.images[data.images["boxed"]]
    named = data.images[data.images["patient_id"].astype(str) != ""]
    per_patient = named.groupby("patient_id")["fold"].nunique()
    shared = sorted(per_patient[per_patient > 1].index.astype(str))
    if shared:
        print(f"[localise] warning: {len(shared)} patient(s) have images in several folds (folds.csv not grouped "
              f"by patient?), e.g. {shared[:3]}: their figures are not patient-held-out")
    return {"localisation": blocks, "localisation_reference": L.references(),
            "localisation_run": {"n_boxes": int(len(data.truth)), "n_images": int(len(boxed)), "n_splits": n_splits,
                                 "max_boxes": int(cfg.localise.max_boxes), "images": str(cfg.localise.images),
                                 "n_classification_only": int((~data.images["boxed"]).sum()),
                                 "patients_in_several_folds": len(shared), "methods": run_info,
                                 "unscored": unscored, "date": datetime.date.today().isoformat(),
                                 "total_seconds": round(sum(r["seconds"] for r in run_info.values()), 1),
                                 "protocol": "share of truth boxes with IoU (IoBB) > T for one of the 3 best boxes of "
                                             "the same image and class, out-of-fold; AUC from image-level scores"}}


__all__ = ["score_methods"]
