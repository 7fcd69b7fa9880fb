"""Training of the lung network: Dice + BCE on the mask, BCE of the classification head on the image
label (images without a label add no head loss), AdamW with linear warmup and cosine decay.

Images are decoded once and held in memory letterboxed to ``cache_size`` (picture in [0, 1], soft
mask, valid map); each step augments them there (:mod:`pipeline.lungs.augment`), shrinks them to
``imgsz`` and normalises them as inference does (:func:`pipeline.lungs.preprocess.normalise`).

Resumable: after every epoch ``last.pt`` holds the network, optimizer and epoch together with the
fingerprint of the unit's inputs; an interrupted training with the same inputs continues from there.
Randomness is seeded per epoch (``(seed, epoch)``), so a resumed run draws what an uninterrupted one
would have drawn.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from pipeline.lungs.augment import augment
from pipeline.lungs.data import MaskItem, read_image, read_mask
from pipeline.lungs.model import ModelSpec, build_net, load_init_weights
from pipeline.lungs.preprocess import letterbox_arrays, normalise, to_unit


@dataclass
class TrainSettings:
    spec: ModelSpec
    imgsz: int = 128
    cache_size: int = 256
    input: str = "histeq"
    epochs: int = 12
    batch: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 0.5
    cls_weight: float = 0.2
    probs: dict = field(default_factory=dict)   # augmentation probabilities (augment_probs)
    seed: int = 42
    weights: str | None = None
    device: str = "cpu"


@dataclass
class Cache:
    ids: list
    img: np.ndarray      # (N, S, S) float32 in [0, 1]
    mask: np.ndarray     # (N, S, S) float32 soft mask
    valid: np.ndarray    # (N, S, S) bool
    label: np.ndarray    # (N,) float32, NaN = unknown


def load_cache(items: Sequence[MaskItem], size: int, on_error: Callable[[MaskItem, Exception], None] | None = None
               ) -> Cache:
    """Decode, scale and letterbox every item to ``size``; an item that fails is reported to ``on_error``
    (and left out) when given, otherwise its error is raised."""
    from pipeline.errors import DataError

    ids, imgs, masks, valids, labels = [], [], [], [], []
    for it in items:
        try:
            raw = read_image(it.image)
            mask = read_mask(it.masks, raw.shape[:2])
        except DataError as exc:
            if on_error is None:
                raise
            on_error(it, exc)
            continue
        (img, m), valid, _ = letterbox_arrays([to_unit(raw), mask.astype(np.float32)], size)
        ids.append(it.image_id)
        imgs.append(img)
        masks.append(m)
        valids.append(valid)
        labels.append(np.nan if it.label is None else float(it.label))
    n = len(ids)
    return Cache(ids, np.stack(imgs) if n else np.zeros((0, size, size), np.float32),
                 np.stack(masks) if n else np.zeros((0, size, size), np.float32),
                 np.stack(valids) if n else np.zeros((0, size, size), bool), np.asarray(labels, np.float32))


def make_batch(cache: Cache, idx: Sequence[int], s: TrainSettings, rng: np.random.Generator | None):
    """Network inputs (B, C, imgsz, imgsz), soft masks (B, 1, imgsz, imgsz) and labels (B,), augmented
    when ``rng`` is given."""
    import cv2

    xs, ys = [], []
    for i in idx:
        img, mask, valid = cache.img[i], cache.mask[i], cache.valid[i]
        if rng is not None:
            img, mask, valid = augment(img.copy(), mask, valid, s.probs, rng)
        if img.shape[0] != s.imgsz:
            img = cv2.resize(img, (s.imgsz, s.imgsz), interpolation=cv2.INTER_AREA)
            mask = cv2.resize(mask, (s.imgsz, s.imgsz), interpolation=cv2.INTER_AREA)
            valid = cv2.resize(valid.astype(np.float32), (s.imgsz, s.imgsz), interpolation=cv2.INTER_AREA) > 0.5
        xs.append(normalise(img, s.input, valid))
        ys.append(mask[None])
    return np.stack(xs), np.stack(ys).astype(np.float32), cache.label[list(idx)]


def seg_loss(logits, target):
    """BCE + soft Dice (per image, then averaged)."""
    import torch.nn.functional as F

    bce = F.binary_cross_entropy_with_logits(logits, target)
    p = logits.sigmoid().flatten(1)
    t = target.flatten(1)
    dice = 1 - (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)
    return bce + dice.mean()


def boxed_scores(net, cache: Cache, s: TrainSettings, device) -> tuple[float, float]:
    """Mean Dice and IoU on ``cache`` in letterbox pixels (a quick per-epoch monitor, not the report)."""
    import torch

    net.eval()
    dices, ious = [], []
    with torch.no_grad():
        for start in range(0, len(cache.ids), 16):
            idx = list(range(start, min(start + 16, len(cache.ids))))
            x, y, _ = make_batch(cache, idx, s, None)
            out = net(torch.from_numpy(x).to(device))
            seg = out[0] if isinstance(out, tuple) else out
            p = (seg.sigmoid().cpu().numpy() > 0.5)
            t = y > 0.5
            inter = (p & t).sum(axis=(1, 2, 3))
            union = (p | t).sum(axis=(1, 2, 3))
            tot = p.sum(axis=(1, 2, 3)) + t.sum(axis=(1, 2, 3))
            dices += list(np.where(tot > 0, 2 * inter / np.maximum(tot, 1), 1.0))
            ious += list(np.where(union > 0, inter / np.maximum(union, 1), 1.0))
    net.train()
    return float(np.mean(dices)), float(np.mean(ious))


def read_resume_state(last_path: Path) -> dict | None:
    """The resume state in ``last_path``, or None when there is none or it cannot be read (a copy cut short,
    another program's file): training then starts over, which is said, never a crash."""
    from pipeline.checkpoints import read_torch_file
    from pipeline.errors import PipelineError

    if not Path(last_path).is_file():
        return None
    try:
        state = read_torch_file(last_path, missing=f"{last_path}: missing", what="a resume state of this stage")
    except PipelineError as exc:
        print(f"[segment] {exc}; training starts over")
        return None
    if not isinstance(state, dict) or not {"net", "opt", "sched", "epoch"} <= set(state):
        print(f"[segment] {last_path}: not a resume state of this stage; training starts over")
        return None
    return state


def train(cache: Cache, s: TrainSettings, last_path: Path, fingerprint: str, monitor: Cache | None = None,
          log: Callable[[dict], None] | None = None, resume: bool = True):
    """Train on ``cache``; returns the network (eval mode) and the per-epoch log rows."""
    import torch

    from pipeline.classifier import seed_everything, warmup_cosine
    from pipeline.io import write_with

    device = torch.device(s.device)
    seed_everything(s.seed)
    net = build_net(s.spec)
    init_note = load_init_weights(net, s.weights) if s.weights else "from scratch"
    net.to(device).train()
    opt = torch.optim.AdamW(net.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    n = len(cache.ids)
    steps_per_epoch = max(1, n // s.batch)   # the last partial batch is dropped (BatchNorm on 1 image is noise)
    total = steps_per_epoch * s.epochs
    factor = warmup_cosine(total, int(round(s.warmup_epochs * steps_per_epoch)))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    start_epoch, rows = 0, []
    state = read_resume_state(last_path) if resume else None
    if state is not None:
        if state.get("fingerprint") == fingerprint:
            net.load_state_dict(state["net"])
            opt.load_state_dict(state["opt"])
            sched.load_state_dict(state["sched"])
            start_epoch, rows = int(state["epoch"]), list(state.get("rows") or [])
            print(f"[segment] resuming after epoch {start_epoch} of {s.epochs}")
    print(f"[segment] training {s.spec.arch}/{s.spec.encoder} at {s.imgsz} px on {n} images, "
          f"{s.epochs} epochs of {steps_per_epoch} steps ({init_note})")
    has_label = ~np.isnan(cache.label)
    use_head = s.spec.cls_head and has_label.any() and s.cls_weight > 0
    bce = torch.nn.BCEWithLogitsLoss()
    for epoch in range(start_epoch, s.epochs):
        t0 = time.perf_counter()
        rng = np.random.default_rng([s.seed, epoch])
        torch.manual_seed(s.seed * 1000 + epoch)
        order = rng.permutation(n)
        sums = {"loss": 0.0, "seg": 0.0, "cls": 0.0}
        for b in range(steps_per_epoch):
            x, y, lab = make_batch(cache, order[b * s.batch:(b + 1) * s.batch], s, rng)
            out = net(torch.from_numpy(x).to(device))
            seg, cls = out if isinstance(out, tuple) else (out, None)
            loss_seg = seg_loss(seg, torch.from_numpy(y).to(device))
            loss_cls = torch.zeros((), device=device)
            known = ~np.isnan(lab)
            if use_head and cls is not None and known.any():
                k = torch.from_numpy(known).to(device)
                loss_cls = bce(cls[:, 0][k], torch.from_numpy(lab[known]).to(device))
            loss = loss_seg + s.cls_weight * loss_cls
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            sums["loss"] += float(loss.detach())
            sums["seg"] += float(loss_seg.detach())
            sums["cls"] += float(loss_cls.detach())
        row = {"epoch": epoch + 1, **{k: v / steps_per_epoch for k, v in sums.items()},
               "lr": float(opt.param_groups[0]["lr"]), "seconds": time.perf_counter() - t0}
        if monitor is not None and len(monitor.ids):
            row["monitor_dice"], row["monitor_iou"] = boxed_scores(net, monitor, s, device)
        rows.append(row)
        if log is not None:
            log(row)
        state = {"fingerprint": fingerprint, "epoch": epoch + 1, "net": net.state_dict(), "opt": opt.state_dict(),
                 "sched": sched.state_dict(), "rows": rows}
        write_with(Path(last_path), lambda p: torch.save(state, p))
    net.eval()
    return net, rows
