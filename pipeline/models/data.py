"""Images with image-level labels and boxes, for the CAM and CLN models of :mod:`pipeline.models`.

Conventions (as :mod:`pipeline.classifier`): each PNG is read as grayscale in [0, 1] and letterboxed to
``imgsz x imgsz``. Boxes come in the PNG's own pixels (``xyxy``, pixel-edge) and are moved into input
(letterbox) pixels with :func:`source_to_input`; predictions go back with
``Letterbox.to_source(boxes, width, height)``.

Augmentation (:func:`build_box_augment`): shift (+-6%) and scale (0.9..1.1) without rotation (a
rotated box is a larger box) and brightness/contrast, boxes moved with the image. No horizontal flip:
side is part of what is localised (the heart is on the left; a flipped training set teaches the heatmap
that Cardiomegaly sits on either side).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from pipeline.classifier import Letterbox, letterbox, read_gray


def source_to_input(lb: Letterbox, boxes_xyxy) -> np.ndarray:
    """Boxes in the source image's pixels -> input (letterbox) pixels (the inverse of ``to_source``)."""
    b = np.asarray(boxes_xyxy, np.float64).reshape(-1, 4).copy()
    b[:, [0, 2]] = b[:, [0, 2]] * (lb.new_w / lb.src_w) + lb.pad_x
    b[:, [1, 3]] = b[:, [1, 3]] * (lb.new_h / lb.src_h) + lb.pad_y
    return b


def build_box_augment(p: float = 0.8, seed: int = 0):
    """albumentations pipeline moving ``pascal_voc`` boxes (labels in ``class_ids``) with the image;
    ``seed`` seeds albumentations' own generator (per DataLoader worker too, as
    :func:`pipeline.classifier.build_augment`), so a fold trains the same in any job."""
    import albumentations as A
    import cv2

    return A.Compose(
        [A.Affine(scale=(0.9, 1.1), translate_percent=(-0.06, 0.06), rotate=0, border_mode=cv2.BORDER_CONSTANT,
                  fill=0, p=p),
         A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.5)],
        bbox_params=A.BboxParams(format="pascal_voc", label_fields=["class_ids"], min_visibility=0.3),
        seed=int(seed),
    )


class BoxDataset:
    """``paths`` (N), ``labels`` (N, L) with NaN = unknown, ``boxes``: per image an array (n, 5) of
    ``class_id, x_min, y_min, x_max, y_max`` in that PNG's pixels (class ids index the first
    ``n_box_classes`` labels).

    ``__getitem__`` -> dict: ``x`` (1, S, S) float tensor, ``labels`` (L,) (unknown -> 0),
    ``label_mask`` (L,), ``index``; with ``encode`` (e.g. ``functools.partial(encode_targets, ...)``,
    called as ``encode(boxes_input_xyxy, class_ids, label_state)``) also its arrays. A box makes its
    class present whatever the labels say. A torch Dataset by duck typing (no torch import here).
    """

    def __init__(self, paths: Sequence[Path], labels: np.ndarray, boxes: Sequence[np.ndarray] | None, imgsz: int,
                 n_box_classes: int = 8, transform=None, encode: Callable | None = None):
        self.paths = [Path(p) for p in paths]
        self.labels = np.asarray(labels, np.float32).reshape(len(self.paths), -1).copy()
        self.boxes = [np.zeros((0, 5))] * len(self.paths) if boxes is None else [
            np.asarray(b, np.float64).reshape(-1, 5) for b in boxes]
        if len(self.boxes) != len(self.paths):
            raise ValueError(f"{len(self.boxes)} box arrays for {len(self.paths)} images")
        for i, b in enumerate(self.boxes):
            if len(b):
                self.labels[i, b[:, 0].astype(int)] = 1.0
        self.imgsz, self.k, self.transform, self.encode = imgsz, n_box_classes, transform, encode

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, i: int) -> tuple[np.ndarray, Letterbox]:
        return letterbox(read_gray(self.paths[i]), self.imgsz)

    def __getitem__(self, i: int) -> dict:
        import torch

        img, lb = self.load(i)
        b = self.boxes[i]
        xyxy = np.clip(source_to_input(lb, b[:, 1:]), 0, self.imgsz)
        keep = (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])
        xyxy, cids = xyxy[keep], b[keep, 0].astype(int)
        if self.transform is not None:
            out = self.transform(image=img, bboxes=xyxy, class_ids=cids)
            img = np.clip(out["image"], 0.0, 1.0)
            xyxy = np.asarray(out["bboxes"], np.float64).reshape(-1, 4)
            cids = np.asarray(out["class_ids"], int).reshape(-1)
        labels = self.labels[i]
        item = {"x": torch.from_numpy(np.ascontiguousarray(img, np.float32))[None],
                "labels": torch.from_numpy(np.nan_to_num(labels, nan=0.0)),
                "label_mask": torch.from_numpy((~np.isnan(labels)).astype(np.float32)), "index": i}
        if self.encode is not None:
            state = labels[: self.k].astype(np.float64)
            for key, arr in self.encode(xyxy, cids, state).items():
                item[key] = torch.from_numpy(arr)
        return item


__all__ = ["BoxDataset", "build_box_augment", "source_to_input"]
