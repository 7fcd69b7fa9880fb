"""Training and prediction for the :mod:`pipeline.models` networks (plain, multiscale CAM, CLN).

* :func:`fit` -- a fixed number of epochs, AdamW with linear warmup then cosine decay (the schedule of
  :func:`pipeline.classifier.train_model`), and the LAST epoch's weights are the result: nothing is
  chosen on a validation set, so predictions on held-out images are honestly out-of-fold without an
  inner split.
* :func:`predict_cam_boxes` -- image probabilities and, per image and class, up to 3 boxes from the
  model's heatmaps (Grad-CAM for the plain classifier, the combined CAM for multiscale).
* :func:`predict_cln` -- image probabilities and CLN's decoded boxes.

Boxes come back in INPUT (letterbox) pixels as arrays ``(n, 5)``: ``score, x_min, y_min, x_max, y_max``;
the caller maps them to original pixels with ``Letterbox.to_source``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, fields
from typing import Callable, Sequence

import numpy as np


@dataclass
class FitSettings:
    epochs: int = 10
    batch: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    workers: int = 0
    seed: int = 42
    device: str = "cpu"

    @classmethod
    def taken_from(cls, settings) -> "FitSettings":
        """The fit settings of a method's settings object: every field of the same name."""
        return cls(**{f.name: getattr(settings, f.name) for f in fields(cls)})


def masked_bce(logits, batch: dict, pos_weight=None):
    """Mean BCE-with-logits over the known labels (``batch["label_mask"]``)."""
    import torch.nn.functional as F

    mask = batch["label_mask"]
    bce = F.binary_cross_entropy_with_logits(logits, batch["labels"], reduction="none", pos_weight=pos_weight)
    return (bce * mask).sum() / mask.sum().clamp_min(1.0)


def classification_loss(pos_weight=None) -> Callable:
    """``loss_fn(model, batch) -> (loss, parts)`` for models whose forward returns logits."""
    def loss_fn(model, batch):
        loss = masked_bce(model(batch["x"]), batch, pos_weight)
        return loss, {"cls": float(loss.detach())}
    return loss_fn


def cln_loss_fn(pos_weight=None, weights: dict | None = None) -> Callable:
    """``loss_fn(model, batch)`` for CLN (:func:`pipeline.models.cln.cln_loss`)."""
    from pipeline.models.cln import cln_loss

    def loss_fn(model, batch):
        return cln_loss(model(batch["x"]), batch, weights, pos_weight)
    return loss_fn


def pos_weight_of(labels: np.ndarray):
    """BCE pos_weight per label (negatives / positives over the known labels; 1 where undefined)."""
    import torch

    y = np.asarray(labels, np.float64)
    known = ~np.isnan(y)
    pos = np.where(known, y, 0).sum(0)
    neg = known.sum(0) - pos
    w = np.where((pos > 0) & (neg > 0), neg / np.maximum(pos, 1), 1.0)
    return torch.tensor(w, dtype=torch.float32)


def _loader(dataset, batch: int, workers: int, shuffle: bool, seed: int):
    from pipeline.classifier import make_loader

    return make_loader(dataset, batch, workers, shuffle=shuffle, seed=seed)


def _to(batch: dict, device) -> dict:
    return {k: (v.to(device) if hasattr(v, "to") else v) for k, v in batch.items()}


def fit(model, dataset, loss_fn: Callable, s: FitSettings, log: Callable[[str], None] = print) -> dict:
    """Train ``model`` in place for ``s.epochs`` epochs; returns per-epoch mean losses and seconds."""
    import torch

    from pipeline.classifier import seed_everything, warmup_cosine

    if s.epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {s.epochs}")
    seed_everything(s.seed)
    device = torch.device(s.device)
    model.to(device)
    loader = _loader(dataset, s.batch, s.workers, True, s.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    steps = len(loader)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(steps * s.epochs, int(round(s.warmup_epochs * steps))))
    history = []
    for epoch in range(s.epochs):
        start, sums, n = time.perf_counter(), {}, 0
        model.train()
        for batch in loader:
            batch = _to(batch, device)
            opt.zero_grad(set_to_none=True)
            loss, parts = loss_fn(model, batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {float(loss)} in epoch {epoch + 1}; lower the learning rate "
                                         f"(now {s.lr:g})")
            loss.backward()
            opt.step()
            sched.step()
            k = len(batch["x"])
            n += k
            for name, v in {"loss": float(loss.detach()), **parts}.items():
                sums[name] = sums.get(name, 0.0) + v * k
        row = {name: v / max(n, 1) for name, v in sums.items()}
        row["seconds"] = time.perf_counter() - start
        history.append(row)
        log(f"  epoch {epoch + 1}/{s.epochs}: " + "  ".join(f"{k} {v:.4f}" for k, v in row.items() if k != "seconds")
            + f"  ({row['seconds']:.0f} s)")
    return {"history": history, "epochs": s.epochs}


def _heat_boxes(maps: np.ndarray, threshold: float, max_boxes: int) -> list[np.ndarray]:
    from pipeline.gradcam import heatmap_to_boxes

    return [np.asarray(heatmap_to_boxes(m, threshold, max_boxes), np.float64).reshape(-1, 5) for m in maps]


def _models(model) -> list:
    return list(model) if isinstance(model, (list, tuple)) else [model]


def predict_cam_boxes(model, dataset, classes: Sequence[int], kind: str, threshold: float = 0.5,
                      max_boxes: int = 3, batch: int = 16, device: str = "cpu") -> tuple[np.ndarray, list]:
    """``(probs (N, L), boxes)`` with ``boxes[i][j]`` the boxes of ``classes[j]`` in image i.

    ``kind``: ``gradcam`` (:func:`pipeline.gradcam.grad_cams` on ``model.cam_layer``) or ``multiscale``
    (``model.cams``: ReLU, then each map divided by its maximum). Boxes from
    :func:`pipeline.gradcam.heatmap_to_boxes` at ``threshold`` of the map's maximum. ``model`` may be a
    list (the folds of a run, for new images): probabilities and normalised maps are averaged first.
    """
    import torch

    from pipeline.gradcam import grad_cams

    if kind not in ("gradcam", "multiscale"):
        raise ValueError(f"kind must be gradcam or multiscale, got {kind!r}")
    models = [m.to(device).eval() for m in _models(model)]
    probs = np.zeros((len(dataset), models[0].n_outputs), np.float32)
    boxes: list = [None] * len(dataset)
    for b in _loader(dataset, batch, 0, False, 0):
        x, idx = b["x"].to(device), b["index"].numpy()
        p_sum, m_sum = 0.0, 0.0
        for m in models:
            with torch.no_grad():
                p_sum = p_sum + torch.sigmoid(m(x)).cpu().numpy()
            if kind == "gradcam":
                maps = grad_cams(m, x, classes)
            else:
                with torch.no_grad():
                    cam = torch.relu(m.cams(x)[:, list(classes)])
                peak = cam.flatten(2).max(2).values.clamp_min(1e-12)[..., None, None]
                maps = (cam / peak).cpu().numpy()
            m_sum = m_sum + maps
        probs[idx] = p_sum / len(models)
        for i, heat in zip(idx, m_sum / len(models)):
            boxes[i] = _heat_boxes(heat, threshold, max_boxes)
    return probs, boxes


def predict_cln(model, dataset, max_boxes: int = 3, batch: int = 16, device: str = "cpu") -> tuple[np.ndarray, list]:
    """``(probs (N, L), boxes)``: ``boxes[i][k]`` = CLN's boxes of box class k in image i. ``model`` may
    be a list (a run's folds): their outputs (logits, heatmap logits, sizes, offsets) are averaged,
    then decoded once."""
    import torch

    from pipeline.models.cln import decode

    models = [m.to(device).eval() for m in _models(model)]
    probs = np.zeros((len(dataset), models[0].n_outputs), np.float32)
    boxes: list = [None] * len(dataset)
    for b in _loader(dataset, batch, 0, False, 0):
        idx = b["index"].numpy()
        x = b["x"].to(device)
        with torch.no_grad():
            outs = [m(x) for m in models]
            out = {k: sum(o[k] for o in outs) / len(outs) for k in outs[0]}
            probs[idx] = (sum(torch.sigmoid(o["logits"]) for o in outs) / len(outs)).cpu().numpy()
        for i, per_class in zip(idx, decode(out, max_boxes)):
            boxes[i] = per_class
    return probs, boxes


def relevance_table(model, label_names: Sequence[str]) -> dict:
    """``{label: {"stride8": w, "stride16": w, "stride32": w}}`` of a multiscale CAM model."""
    from pipeline.models.trunks import STRIDES

    w = model.relevance_weights().detach().cpu().numpy()
    return {n: {f"stride{STRIDES[s]}": float(w[j, i]) for i, s in enumerate(model.stages)}
            for j, n in enumerate(label_names)}


__all__ = ["FitSettings", "classification_loss", "cln_loss_fn", "fit", "masked_bce", "pos_weight_of",
           "predict_cam_boxes", "predict_cln", "relevance_table"]
