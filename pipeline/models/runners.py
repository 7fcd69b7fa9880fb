"""One fold of a localising classifier: build, train, predict probabilities and boxes.

The surface the train_cls stage (and ``benchmarks/nih_localise.py``) calls::

    s = MethodSettings(backbone="densenet121", imgsz=384, epochs=20, ...)
    model, info = train("cln", s, Items(paths, labels, boxes))   # or train_fold(...) for both steps
    save(model, checkpoint); model = load("cln", n_labels, s, checkpoint)
    res = predict("cln", s, model, Items(paths, labels))
    table = boxes_table(res, image_ids, widths, heights)      # original pixels, localisation's input
    res.probs                                                 # (N, n_labels) sigmoid probabilities

Methods (:data:`METHODS`):
  * ``gradcam``    -- plain classifier (GAP + linear on the trunk), Grad-CAM boxes;
  * ``multiscale`` -- multiscale CAM (Sedai et al. 2018), boxes from the relevance-weighted CAM; the
    learned per-class relevance weights come back in ``res.info["relevance"]``;
  * ``cln``        -- CLN (classification + centre-heatmap localisation), trained on the boxes of
    ``train.boxes`` (images without boxes still train the classifier).

Labels: (N, L) with 1 / 0 / NaN (unknown); the first ``n_box_classes`` labels are the boxed classes
(ChestX-ray14 ids 0..7). Boxes: per image an array (n, 5) ``class_id, x_min, y_min, x_max, y_max`` in
that PNG's pixels. The model is trained for the fixed number of epochs and the last weights predict.
"""
from __future__ import annotations

import functools
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import numpy as np
import pandas as pd

from pipeline.boxes import BOX_COLUMNS
from pipeline.errors import ConfigError

METHODS = ("gradcam", "multiscale", "cln")


@dataclass
class MethodSettings:
    backbone: str = "densenet121"  # a pipeline.models.trunks name
    weights: str | None = None     # local trunk state dict, or None (from scratch)
    imgsz: int = 256
    epochs: int = 10
    batch: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    n_box_classes: int = 8
    cam_threshold: float = 0.5     # CAM methods: share of the map's maximum that outlines a region
    max_boxes: int = 3
    stages: tuple = (0, 1, 2)      # multiscale: trunk stages (strides 8, 16, 32)
    width: int = 64                # CLN: channels of the localisation neck
    cln_box: str = "centre"        # CLN: box regression, centre (CenterNet) | dense (TTFNet); see pipeline.models.cln
    augment: bool = True
    seed: int = 42
    device: str = "cpu"
    workers: int = 0
    loss_weights: dict = field(default_factory=dict)  # CLN: overrides of cln.LOSS_WEIGHTS

    def as_dict(self) -> dict:
        return asdict(self)


class Items(NamedTuple):
    paths: Sequence[Path]
    labels: np.ndarray
    boxes: Sequence[np.ndarray] | None = None


@dataclass
class FoldResult:
    probs: np.ndarray               # (N, n_labels)
    boxes: list                     # boxes[i][k]: (n, 5) score, x_min, y_min, x_max, y_max in INPUT pixels
    letterboxes: list               # pipeline.classifier.Letterbox of each predicted image
    info: dict                      # history, seconds, relevance weights (multiscale)


def build(method: str, n_labels: int, s: MethodSettings):
    """The untrained network of ``method``."""
    from pipeline.models.cln import build_cln
    from pipeline.models.multiscale import build_multiscale, build_plain
    from pipeline.models.trunks import build_trunk

    if method not in METHODS:
        raise ConfigError(f"method {method!r} is not one of {list(METHODS)}")
    if n_labels < s.n_box_classes:
        raise ConfigError(f"{n_labels} labels but n_box_classes={s.n_box_classes}: the boxed classes must come first")
    trunk = build_trunk(s.backbone, s.weights)
    if method == "gradcam":
        return build_plain(trunk, n_labels)
    if method == "multiscale":
        return build_multiscale(trunk, n_labels, s.stages)
    return build_cln(trunk, n_labels, s.n_box_classes, s.width, s.cln_box)


def _dataset(method: str, items: Items, s: MethodSettings, train: bool):
    from pipeline.models.cln import encode_targets
    from pipeline.models.data import BoxDataset, build_box_augment

    encode = (functools.partial(encode_targets, imgsz=s.imgsz, n_box_classes=s.n_box_classes, box_mode=s.cln_box)
              if method == "cln" and train else None)
    return BoxDataset(items.paths, items.labels, items.boxes if train else None, s.imgsz, s.n_box_classes,
                      build_box_augment(seed=s.seed) if train and s.augment else None, encode)


def train(method: str, s: MethodSettings, items: Items, log: Callable[[str], None] = print):
    """``(model, info)``: ``method``'s network trained on ``items`` for ``s.epochs`` (last weights)."""
    from pipeline.models import fit as F

    start = time.perf_counter()
    model = build(method, np.asarray(items.labels).shape[1], s)
    tr = _dataset(method, items, s, True)
    pos_weight = F.pos_weight_of(tr.labels)
    loss_fn = (F.cln_loss_fn(pos_weight, s.loss_weights) if method == "cln" else F.classification_loss(pos_weight))
    fs = F.FitSettings.taken_from(s)
    log(f"[{method}] train {len(tr)} images, {s.backbone} at {s.imgsz} px, {s.epochs} epochs")
    hist = F.fit(model, tr, loss_fn, fs, log)
    return model, {"history": hist["history"], "train_seconds": round(time.perf_counter() - start, 1),
                   "n_train": len(tr), "settings": s.as_dict()}


def predict(method: str, s: MethodSettings, model, items: Items,
            label_names: Sequence[str] | None = None) -> FoldResult:
    """Probabilities and boxes of ``items`` (their boxes, if any, are ignored). ``label_names`` name
    the rows of the multiscale relevance table (default "0", "1", ...). ``model`` may be a list of
    fold models of one method and settings: their outputs are averaged before the boxes are drawn."""
    from pipeline.models import fit as F

    start = time.perf_counter()
    va = _dataset(method, items, s, False)
    if method == "cln":
        probs, boxes = F.predict_cln(model, va, s.max_boxes, s.batch, s.device)
    else:
        probs, boxes = F.predict_cam_boxes(model, va, list(range(s.n_box_classes)), method, s.cam_threshold,
                                           s.max_boxes, s.batch, s.device)
    info = {"predict_seconds": round(time.perf_counter() - start, 1), "n_predict": len(va)}
    if method == "multiscale" and not isinstance(model, (list, tuple)):
        names = list(label_names) if label_names is not None else [str(j) for j in range(probs.shape[1])]
        info["relevance"] = F.relevance_table(model, names)
    return FoldResult(probs, boxes, [va.load(i)[1] for i in range(len(va))], info)


def train_fold(method: str, s: MethodSettings, train_items: Items, predict_items: Items,
               log: Callable[[str], None] = print, label_names: Sequence[str] | None = None) -> FoldResult:
    """:func:`train` on ``train_items``, then :func:`predict` ``predict_items``; ``info`` holds both."""
    model, info = train(method, s, train_items, log)
    res = predict(method, s, model, predict_items, label_names)
    res.info = {**info, **res.info}
    return res


def save(model, path: Path) -> Path:
    """State dict only, written atomically (:func:`pipeline.classifier.save_checkpoint`)."""
    from pipeline.classifier import save_checkpoint

    return save_checkpoint(model, Path(path))


def load(method: str, n_labels: int, s: MethodSettings, path: Path, device: str = "cpu"):
    """The network of ``method`` with the state dict at ``path`` (``weights_only``: no pickled code)."""
    from pipeline.checkpoints import read_torch_file
    from pipeline.errors import PipelineError

    path = Path(path)
    state = read_torch_file(path, f"checkpoint not found: {path}; train the fold first.",
                            what=f"a {method} checkpoint of the localise stage (re-run that fold)")
    model = build(method, n_labels, MethodSettings(**{**s.as_dict(), "weights": None}))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise PipelineError(f"{path}: does not fit a {method} network on {s.backbone} with {n_labels} labels "
                            f"({str(exc).splitlines()[0]}); retrain with the current settings.") from None
    return model.to(device).eval()


def boxes_table(res: FoldResult, image_ids: Sequence[str], widths, heights) -> pd.DataFrame:
    """``image_id, class_id, score, x_min, y_min, x_max, y_max`` in original pixels (each image
    ``widths[i] x heights[i]``, showing the same picture as its PNG), at most ``max_boxes`` per class."""
    rows = []
    for i, iid in enumerate(image_ids):
        lb = res.letterboxes[i]
        for k, arr in enumerate(res.boxes[i]):
            arr = np.asarray(arr, np.float64).reshape(-1, 5)
            if not len(arr):
                continue
            xyxy = lb.to_source(arr[:, 1:], float(widths[i]), float(heights[i]))
            for score, b in zip(arr[:, 0], xyxy):
                rows.append((str(iid), k, float(score), *map(float, b)))
    return pd.DataFrame(rows, columns=["image_id", "class_id", "score", *BOX_COLUMNS])


__all__ = ["FoldResult", "Items", "METHODS", "MethodSettings", "boxes_table", "build", "load", "predict", "save",
           "train", "train_fold"]
