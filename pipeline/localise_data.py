"""The localise stage's inputs, read from a run directory: images, labels, truth boxes and folds.

Reads ``images.csv`` (train split: id, patient, labels), ``folds.csv``, ``meta.csv`` (each PNG's conversion
fingerprint, its size and its frame: the part of the original image it shows) and ``annotations.csv`` (the
BBox_List boxes of the 8 boxed ChestX-ray14 classes, ORIGINAL pixels). Every table keeps ORIGINAL pixels;
the networks see the converted PNGs, so boxes go into PNG pixels for training (:func:`png_boxes`) and
predicted boxes come back with :func:`to_original`.

Which images (``localise.images``): ``boxed`` (the images with at least one box: NIH's 880) or ``all``
(the others join as classification-only training data; only boxed images are predicted and scored).
An image without a converted PNG, a meta row or a fold is left out and listed (``skipped``), never
dropped silently.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from pipeline.boxes import BOX_COLUMNS
from pipeline.classes import CHESTXRAY14, NORMAL_ID
from pipeline.errors import ConfigError, DataError
from pipeline.localisation import BOX_CLASSES

N_BOX = len(BOX_CLASSES)          # ChestX-ray14 class ids 0..7 carry BBox_List boxes
FINDINGS = tuple(CHESTXRAY14[:NORMAL_ID])
IMAGE_MODES = ("boxed", "all")


@dataclass
class LocData:
    images: pd.DataFrame           # image_id, patient_id, fold, boxed, png, fingerprint, png_w/h, x0..y1, width, height
    y: np.ndarray                  # (N, 14) image-level labels of the findings (a box makes its class present)
    truth: pd.DataFrame            # image_id, class_id (0..7), x_min .. y_max: ORIGINAL pixels, boxed images only
    boxes_png: list                # per image (n, 5): class_id and box in that PNG's pixels
    skipped: list = field(default_factory=list)

    @property
    def n_splits(self) -> int:
        return int(self.images["fold"].max()) + 1

    def rows(self, mask) -> pd.DataFrame:
        return self.images[np.asarray(mask, bool)]


def _labels(text) -> list[int]:
    from pipeline.folds import parse_labels

    return [c for c in parse_labels(text) if c < NORMAL_ID]


def load(paths, mode: str = "boxed") -> LocData:
    """The stage's tables from ``paths`` (a :class:`pipeline.paths.RunPaths`)."""
    from pipeline.frames import frame_table
    from pipeline.tables import image_fingerprints, read_folds, read_images, read_meta, read_table

    if mode not in IMAGE_MODES:
        raise ConfigError(f"localise.images: {mode!r} is not one of {list(IMAGE_MODES)}")
    images = read_images(paths.images_csv)
    folds = read_folds(paths.folds_csv)
    meta = read_meta(paths.meta_csv)
    ann = read_table(paths.annotations_csv, "annotations (BBox_List boxes)", ["image_id", "class_id", *BOX_COLUMNS],
                     dtype={"image_id": str}, hint="run the prepare stage first.")
    ann = ann.dropna(subset=BOX_COLUMNS)
    ann = ann[ann["class_id"].astype(int) < N_BOX]
    train = images[images["split"] == "train"].copy()
    fps = image_fingerprints(meta, "train")
    frames = frame_table(meta[meta["split"] == "train"])
    size = meta[meta["split"] == "train"].set_index(meta.loc[meta["split"] == "train", "image_id"].astype(str))
    fold_of = dict(zip(folds["image_id"].astype(str), folds["fold"].astype(int)))
    boxed_ids = set(ann["image_id"].astype(str))

    skipped, keep = [], []
    for iid in train["image_id"].astype(str):
        png = paths.image("train", iid)
        why = ("no converted PNG: " + str(png) if not png.is_file() else "no meta.csv row (run prepare again)"
               if iid not in fps else "not in folds.csv (run the folds stage again)" if iid not in fold_of else None)
        if why:
            skipped.append({"image_id": iid, "reason": why})
        keep.append(why is None and (mode == "all" or iid in boxed_ids))
    train = train[np.array(keep, bool)].reset_index(drop=True)
    ids = train["image_id"].astype(str)
    if not ids.isin(boxed_ids).any():
        raise DataError(f"{paths.annotations_csv}: no usable train image has a box of the 8 BBox_List classes; the "
                        "localise stage needs ChestX-ray14 boxes (BBox_List_2017.csv, data.official_split=false).")
    fr = frames.loc[ids]
    table = pd.DataFrame({
        "image_id": ids, "patient_id": train["patient_id"].astype(str).to_numpy(),
        "fold": ids.map(fold_of).astype(int).to_numpy(), "boxed": ids.isin(boxed_ids).to_numpy(),
        "png": [str(paths.image("train", i)) for i in ids], "fingerprint": ids.map(fps).to_numpy(),
        "png_w": pd.to_numeric(size.loc[ids, "out_width"]).to_numpy(float),
        "png_h": pd.to_numeric(size.loc[ids, "out_height"]).to_numpy(float),
        "x0": fr["x0"].to_numpy(), "y0": fr["y0"].to_numpy(), "x1": fr["x1"].to_numpy(), "y1": fr["y1"].to_numpy(),
        "width": pd.to_numeric(train["width"]).to_numpy(float), "height": pd.to_numeric(train["height"]).to_numpy(float)})
    truth = ann[ann["image_id"].astype(str).isin(set(ids))].copy()
    truth["image_id"] = truth["image_id"].astype(str)
    truth["class_id"] = truth["class_id"].astype(int)
    truth = truth[["image_id", "class_id", *BOX_COLUMNS]].reset_index(drop=True)
    y = np.zeros((len(table), NORMAL_ID), np.float32)
    for i, text in enumerate(train["labels"]):
        y[i, _labels(text)] = 1.0
    row = {iid: i for i, iid in enumerate(table["image_id"])}
    for iid, cid in zip(truth["image_id"], truth["class_id"]):
        y[row[iid], cid] = 1.0
    return LocData(table, y, truth, png_boxes(table, truth), skipped)


def png_boxes(images: pd.DataFrame, truth: pd.DataFrame) -> list[np.ndarray]:
    """Per image (n, 5): ``class_id, x_min, y_min, x_max, y_max`` in its PNG's pixels (truth boxes moved
    into the PNG's frame and scaled by PNG size / frame size)."""
    from pipeline.frames import original_to_frame

    by = {k: g for k, g in truth.groupby("image_id")}
    out = []
    for r in images.itertuples(index=False):
        g = by.get(r.image_id)
        if g is None:
            out.append(np.zeros((0, 5)))
            continue
        xyxy, inside, _ = original_to_frame(g[BOX_COLUMNS].to_numpy(float), (r.x0, r.y0, r.x1, r.y1))
        scale = np.array([r.png_w / (r.x1 - r.x0), r.png_h / (r.y1 - r.y0)] * 2)
        out.append(np.column_stack([g["class_id"].to_numpy(float), xyxy * scale])[inside])
    return out


def to_original(res, images: pd.DataFrame) -> pd.DataFrame:
    """A :class:`pipeline.models.runners.FoldResult` of ``images`` (in order) -> its boxes table in
    ORIGINAL pixels: ``image_id, class_id, score, x_min .. y_max`` (the letterbox undone onto each
    image's frame, then shifted by the frame's corner)."""
    from pipeline.models.runners import boxes_table

    table = boxes_table(res, images["image_id"].tolist(), (images["x1"] - images["x0"]).tolist(),
                        (images["y1"] - images["y0"]).tolist())
    corner = images.set_index("image_id")[["x0", "y0"]].loc[table["image_id"]].to_numpy(float)
    table[["x_min", "x_max"]] += corner[:, [0]]
    table[["y_min", "y_max"]] += corner[:, [1]]
    return table


def probs_table(image_ids, fold: int, probs: np.ndarray, names) -> pd.DataFrame:
    """``image_id, fold, p_<name>...`` (the classifier's column convention)."""
    t = pd.DataFrame(np.asarray(probs, float), columns=[f"p_{n}" for n in names])
    t.insert(0, "fold", int(fold))
    t.insert(0, "image_id", [str(i) for i in image_ids])
    return t


def rows_digest(images: pd.DataFrame, y: np.ndarray | None = None, boxes: list | None = None) -> str:
    """Digest of the images a unit reads: id, conversion fingerprint, labels and boxes (when given)."""
    from pipeline.fingerprint import digest

    rows = []
    for i, (iid, fp) in enumerate(zip(images["image_id"], images["fingerprint"])):
        rows.append([iid, fp, None if y is None else y[i].tolist(),
                     None if boxes is None else np.round(boxes[i], 3).tolist()])
    return digest(sorted(rows, key=lambda r: r[0]))


__all__ = ["FINDINGS", "IMAGE_MODES", "LocData", "N_BOX", "load", "png_boxes", "probs_table", "rows_digest",
           "to_original"]
