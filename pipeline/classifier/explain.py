"""Grad-CAM for a trained classifier run: overlays for the report and, where the data has boxes
(ChestX-ray14), the weak-localisation table. The heatmaps themselves are :mod:`pipeline.gradcam`.

Which model explains an image: for a train image the model of its fold (which never saw the image);
for a test image the first trained fold's model. Boxes are mapped back to ORIGINAL pixels.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.classifier.targets import prob_columns
from pipeline.io import write_bytes_atomic, write_csv_atomic


def run_gradcam(cfg, paths, train: pd.DataFrame, test: pd.DataFrame, oof: pd.DataFrame, names, s,
                folds: list[int] | None = None, classes=None) -> dict:
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
    from pipeline.classes import format_classes

    classes = classes or format_classes(cfg.data.format)

    name = cfg.cls.name
    device, _ = C.torch_device(s.device)
    from pipeline.frames import frame_table
    from pipeline.tables import read_meta

    # the part of each original image its PNG shows (the lung crop, or the whole image)
    frame = {i: tuple(r) for i, r in frame_table(read_meta(paths.meta_csv))[["x0", "y0", "x1", "y1"]].iterrows()}
    fold_of = dict(zip(train["image_id"], train["fold"]))
    split_of = {**{i: "train" for i in train["image_id"]}, **{i: "test" for i in test["image_id"]}}
    trained = list(cfg.cls.folds if folds is None else folds)

    truth = pd.DataFrame()
    if cfg.data.format == "chestxray14" and paths.annotations_csv.is_file():
        ann = pd.read_csv(paths.annotations_csv, dtype={"image_id": str})
        ann = ann.dropna(subset=["x_min", "y_min", "x_max", "y_max"])
        truth = ann[ann["image_id"].isin(split_of.keys()) & (ann["class_id"] != classes.normal_id)].reset_index(drop=True)
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
    all_names = list(classes.names)
    for iid, out_idx in sorted(jobs, key=lambda j: (split_of[j[0]] == "test", fold_of.get(j[0], -1))):
        img = C.read_gray(paths.image(split_of[iid], iid))
        lb_img, lb = C.letterbox(img, s.imgsz)
        heat = G.grad_cam(model_for(iid), torch.from_numpy(lb_img)[None, None], out_idx)[0]
        box = G.heatmap_to_box(heat, cfg.cls.cam_threshold)
        fx0, fy0, fx1, fy1 = frame[iid]
        w, h = fx1 - fx0, fy1 - fy0
        box_orig = None if box is None else lb.to_source([box], w, h)[0] + np.array([fx0, fy0, fx0, fy0])
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
                tboxes = (tb - np.array([fx0, fy0, fx0, fy0])) * np.array([lb.new_w / w, lb.new_h / h] * 2)
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
