"""The gate's image classifier: torchvision DenseNet-121 over RGB pictures, trained from scratch.

* Network: :func:`pipeline.classifier.build_model` (DenseNet-121, ``weights=None``, or a local
  DenseNet-121 state dict via ``screen.weights``) with one logit per class. Input ``(B, 3, S, S)`` in
  [0, 1]: colour is kept (a colour picture is never an X-ray), and grey inputs have three equal
  channels; augmentation turns 40% of training pictures grey so that greyscale photographs must be
  told apart by their content, not their colour.
* Pictures are squashed to ``imgsz x imgsz`` (see :func:`pipeline.gate.dataset.load_picture`).
* Augmentation (albumentations, :func:`build_augment`): random resized crops, flips, rotation,
  grey conversion, colour jitter, gamma, inversion (a MONOCHROME1 image shown raw), blur or noise,
  JPEG re-compression, CLAHE (as prepared PNGs look). Chest pictures stay upright (no 90-degree
  turns, milder crops): a chest film is read upright, other pictures have no fixed orientation.
* Training: Adam (the gate paper's optimiser, lr 1e-3), linear warm-up for half an epoch then cosine
  decay, cross-entropy with label smoothing 0.05, class-balanced draws with replacement
  (:func:`pipeline.gate.dataset.sample_weights`), ``screen.epoch_size`` draws per epoch. The last
  epoch's weights are kept: nothing is chosen on held-out data.
* Checkpoint (:func:`save_gate`): one ``torch.save`` file of plain types, read back with
  ``weights_only=True``: ``{"format": "cxr-gate/1", "classes", "accept", "imgsz", "state_dict"}``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from pipeline.errors import PipelineError

FORMAT = "cxr-gate/1"


@dataclass
class GateSettings:
    """What :func:`train_gate` needs; the stage fills it from ``cfg.screen`` and ``cfg.run``."""
    classes: list[str]
    upright: list[str] = field(default_factory=lambda: ["chest"])
    imgsz: int = 96
    epochs: int = 10
    epoch_size: int = 1200
    batch: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    label_smoothing: float = 0.05
    balance: str = "sqrt"
    augment: bool = True
    weights: str | None = None
    threads: int = 2
    device: str = "auto"
    seed: int = 42


def build_augment(imgsz: int, upright: bool):
    """The training transform (albumentations) for one class family (see the module docstring)."""
    import albumentations as A
    import cv2

    crop = (0.45, 1.0) if upright else (0.25, 1.0)
    steps = [A.RandomResizedCrop(size=(imgsz, imgsz), scale=crop, ratio=(0.75, 1.333), p=1.0)]
    if not upright:
        steps += [A.RandomRotate90(p=0.5), A.VerticalFlip(p=0.2)]
    steps += [
        A.HorizontalFlip(p=0.5),
        A.Affine(rotate=(-15, 15), scale=(0.9, 1.1), border_mode=cv2.BORDER_CONSTANT, fill=0, p=0.4),
        A.ToGray(p=0.4),
        A.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.4, hue=0.05, p=0.5),
        A.RandomGamma(gamma_limit=(70, 150), p=0.3),
        A.CLAHE(clip_limit=2.0, p=0.15),
        A.InvertImg(p=0.08),
        A.OneOf([A.GaussianBlur(blur_limit=(3, 5)), A.GaussNoise(std_range=(0.02, 0.08), per_channel=False)], p=0.3),
        A.ImageCompression(quality_range=(40, 95), p=0.3),
    ]
    return A.Compose(steps)


def resize_square(img: np.ndarray, imgsz: int) -> np.ndarray:
    import cv2

    if img.shape[:2] == (imgsz, imgsz):
        return img
    interp = cv2.INTER_AREA if min(img.shape[:2]) > imgsz else cv2.INTER_LINEAR
    return cv2.resize(img, (imgsz, imgsz), interpolation=interp)


class GateDataset:
    """uint8 (S', S', 3) pictures and class indices -> ``(tensor (3, S, S) in [0, 1], label)``.
    A torch Dataset by duck typing; ``upright`` holds the class indices that keep their orientation."""

    def __init__(self, pictures: Sequence[np.ndarray], labels: Sequence[int] | None, imgsz: int,
                 augment: bool = False, upright: Sequence[int] = ()):
        self.pictures, self.imgsz = list(pictures), imgsz
        self.labels = np.zeros(len(self.pictures), np.int64) if labels is None else np.asarray(labels, np.int64)
        self.upright = set(int(u) for u in upright)
        self.transforms = {True: build_augment(imgsz, True), False: build_augment(imgsz, False)} if augment else None

    def __len__(self) -> int:
        return len(self.pictures)

    def __getitem__(self, i: int):
        import torch

        img, label = self.pictures[i], int(self.labels[i])
        if self.transforms is not None:
            img = self.transforms[label in self.upright](image=img)["image"]
        img = resize_square(img, self.imgsz)
        x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float().div_(255.0)
        return x, label


def train_gate(pictures, labels, sources, s: GateSettings, log_path: Path | None = None):
    """Train from scratch (or ``s.weights``) and return ``(model, history)``; history rows per epoch:
    ``epoch, loss, train_acc, lr, seconds`` (also written to ``log_path`` as CSV after every epoch)."""
    import pandas as pd
    import torch
    from torch.utils.data import DataLoader, WeightedRandomSampler

    from pipeline.classifier import build_model, seed_everything, torch_device, warmup_cosine
    from pipeline.gate.dataset import sample_weights
    from pipeline.io import write_csv_atomic

    torch.set_num_threads(max(1, int(s.threads)))
    seed_everything(s.seed)
    device, _ = torch_device(s.device)
    labels = np.asarray(labels, np.int64)
    upright = [s.classes.index(c) for c in s.upright if c in s.classes]
    ds = GateDataset(pictures, labels, s.imgsz, augment=s.augment, upright=upright)
    weights = sample_weights(labels, np.asarray(sources), s.balance)
    gen = torch.Generator().manual_seed(s.seed)
    sampler = WeightedRandomSampler(torch.as_tensor(weights, dtype=torch.double), num_samples=s.epoch_size,
                                    replacement=True, generator=gen)
    loader = DataLoader(ds, batch_size=s.batch, sampler=sampler, num_workers=0, drop_last=len(ds) > s.batch)
    # channels_last: oneDNN's convolutions run 1.2-1.4x faster on this CPU in that layout (measured)
    model = build_model(len(s.classes), s.weights).to(device, memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    steps = max(1, len(loader)) * s.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(steps, max(1, len(loader) // 2)))
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=s.label_smoothing)
    history = []
    for epoch in range(1, s.epochs + 1):
        model.train()
        start, total, correct, seen = time.perf_counter(), 0.0, 0, 0
        for x, y in loader:
            x, y = x.to(device, memory_format=torch.channels_last), torch.as_tensor(y).to(device)
            opt.zero_grad(set_to_none=True)
            logits = model(x)
            loss = loss_fn(logits, y)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
        row = {"epoch": epoch, "loss": total / max(seen, 1), "train_acc": correct / max(seen, 1),
               "lr": opt.param_groups[0]["lr"], "seconds": time.perf_counter() - start}
        history.append(row)
        print(f"[screen] epoch {epoch}/{s.epochs}: loss {row['loss']:.4f}, train accuracy {row['train_acc']:.3f}, "
              f"{row['seconds']:.0f} s", flush=True)
        if log_path is not None:
            write_csv_atomic(pd.DataFrame(history), log_path)
    return model.eval(), history


def predict_probs(model, pictures: Sequence[np.ndarray], imgsz: int, batch: int = 64, device=None) -> np.ndarray:
    """Softmax probabilities (N, classes) for uint8 RGB pictures (any size: squashed to ``imgsz``)."""
    import torch

    device = device or next(model.parameters()).device
    ds = GateDataset(pictures, None, imgsz)
    out = []
    model.eval()
    with torch.no_grad():
        for i in range(0, len(ds), batch):
            x = torch.stack([ds[j][0] for j in range(i, min(i + batch, len(ds)))])
            x = x.to(device, memory_format=torch.channels_last)
            out.append(torch.softmax(model(x).float(), dim=1).cpu().numpy())
    n = model.n_outputs if hasattr(model, "n_outputs") else 0
    return np.concatenate(out) if out else np.zeros((0, n), np.float32)


def save_gate(model, path: Path, classes: list[str], accept: list[str], imgsz: int) -> Path:
    import torch

    from pipeline.io import write_with

    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    blob = {"format": FORMAT, "classes": list(classes), "accept": list(accept), "imgsz": int(imgsz),
            "state_dict": state}
    return write_with(Path(path), lambda p: torch.save(blob, p))


def load_gate(path: str | Path, device="cpu"):
    """``(model in eval mode, {"classes", "accept", "imgsz"})`` from a file written by :func:`save_gate`."""
    from pipeline.checkpoints import read_torch_file
    from pipeline.classifier import build_model

    path = Path(path)
    blob = read_torch_file(path, f"gate model not found: {path}; train one with the screen stage "
                                 "(./run.sh run --config configs/gate.yaml) or give the path of its screen/model.pt",
                           what="a readable gate model")
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise PipelineError(f"{path}: not a gate model written by the screen stage (format {FORMAT!r} expected)")
    meta = {"classes": list(blob["classes"]), "accept": list(blob["accept"]), "imgsz": int(blob["imgsz"])}
    model = build_model(len(meta["classes"]), None)
    try:
        model.load_state_dict(blob["state_dict"], strict=True)
    except RuntimeError as exc:
        raise PipelineError(f"{path}: weights do not fit a DenseNet-121 with {len(meta['classes'])} classes "
                            f"({str(exc).splitlines()[0]})") from None
    return model.to(device).eval(), meta
