"""Training one fold of the classifier: class balance, optimiser and schedule, the epoch loop with
selection of the kept epoch, prediction with flip TTA."""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from pipeline.classifier.data import XrayDataset, make_loader
from pipeline.classifier.model import build_model, model_outputs, save_checkpoint, torch_device
from pipeline.errors import ConfigError, PipelineError

def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def pos_weight_from_targets(targets: np.ndarray) -> np.ndarray:
    """BCE ``pos_weight`` per label = negatives / positives on the training data (1 where a label has
    no positive or no negative, where the ratio is undefined)."""
    t = np.asarray(targets, dtype=np.float64).reshape(len(targets), -1)
    pos = t.sum(0)
    neg = len(t) - pos
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.where((pos > 0) & (neg > 0), neg / np.maximum(pos, 1), 1.0)
    return w.astype(np.float32)


def sample_weights(targets: np.ndarray) -> np.ndarray:
    """Per-sample weights for WeightedRandomSampler that balance labels.

    Each positive label contributes 1 / (its count); an image with no positive label counts as the
    "none" group, 1 / (size of that group). An image takes the largest of its values, so the rarest
    finding it carries decides how often it is drawn. Binary task: classes drawn equally often.
    """
    t = np.asarray(targets, dtype=np.float64).reshape(len(targets), -1) > 0.5
    pos = t.sum(0)
    none = ~t.any(1)
    inv = np.where(pos > 0, 1.0 / np.maximum(pos, 1), 0.0)
    w = (t * inv[None, :]).max(1)
    if none.any():
        w[none] = 1.0 / none.sum()
    if t.shape[1] == 1:  # binary: positives vs negatives, each half of the draws
        w = np.where(t[:, 0], 1.0 / max(pos[0], 1), 1.0 / max((~t[:, 0]).sum(), 1))
    return w


@dataclass
class TrainSettings:
    """What :func:`train_model` needs; the stage fills it from ``cfg.cls`` and ``cfg.run``."""
    imgsz: int = 384
    epochs: int = 20
    batch: int = 16
    lr: float = 3e-4
    optimizer: str = "adamw"
    weight_decay: float = 1e-4
    patience: int = 5
    balance: str = "pos_weight"
    augment: Mapping | None = None
    warmup_epochs: float = 1.0
    workers: int = 0
    device: str = "auto"
    amp: bool = True
    seed: int = 42
    weights: str | None = None


def _build_optimizer(params, s: TrainSettings):
    import torch

    name = s.optimizer.lower()
    if name == "adamw":
        return torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)
    if name == "radam":
        # decoupled_weight_decay: weight decay as in AdamW rather than L2 in the gradient
        return torch.optim.RAdam(params, lr=s.lr, weight_decay=s.weight_decay, decoupled_weight_decay=True)
    raise ConfigError(f"cls.optimizer: {s.optimizer!r} is not one of adamw, radam")


def warmup_cosine(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """LR multiplier per optimizer step: linear warmup 1/w .. 1, then cosine from 1 down to 0."""
    total_steps = max(1, total_steps)
    warmup_steps = max(0, min(warmup_steps, total_steps - 1))

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def mean_auc(targets: np.ndarray, probs: np.ndarray) -> float:
    """Mean ROC AUC over the labels that have both classes in ``targets`` (NaN when none has)."""
    from pipeline.metrics import per_label_auc

    t = np.asarray(targets).reshape(len(targets), -1)
    names = [f"l{j}" for j in range(t.shape[1])]
    return per_label_auc(t, np.asarray(probs).reshape(t.shape), names)["mean"]


def predict_probs(model, dataset, batch: int, workers: int = 0, device=None, tta_flip: bool = False,
                  amp: bool = True) -> np.ndarray:
    """Sigmoid probabilities (N, n_outputs) in dataset order; with ``tta_flip`` the mean of the image
    and its horizontal mirror."""
    import torch

    device = device or next(model.parameters()).device
    loader = make_loader(dataset, batch, workers, device_type=device.type)
    model.eval()
    out = np.zeros((len(dataset), model_outputs(model)), dtype=np.float32)
    use_amp = amp and device.type == "cuda"
    with torch.no_grad():
        for x, _, idx in loader:
            x = x.to(device, non_blocking=True)
            with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=use_amp):
                p = torch.sigmoid(model(x).float())
                if tta_flip:
                    p = (p + torch.sigmoid(model(torch.flip(x, dims=[3])).float())) / 2
            out[idx.numpy()] = p.float().cpu().numpy()
    return out


def train_model(train_ds: XrayDataset, val_ds: XrayDataset | None, s: TrainSettings, out_dir: Path,
                log: Callable[[str], None] = print, *, checkpoint: Path | None = None,
                log_csv: Path | None = None) -> dict:
    """Train one fold; keep the checkpoint with the best AUC on ``val_ds`` (the images that choose the
    epoch: an inner holdout of the training folds, by default) at ``checkpoint`` (default ``out_dir/best.pt``).
    ``val_ds=None``: no selection, the last epoch is kept (and no early stopping).

    Early stopping after ``s.patience`` epochs without a better validation AUC (ties broken by the
    lower validation loss). When the validation fold has a single class for every label (AUC
    undefined), the lowest validation loss decides.
    Divergence (a NaN/inf validation loss, or a NaN/inf training loss without AMP, whose GradScaler
    skips such steps itself): when an earlier epoch left a checkpoint, training stops there and the
    summary says ``diverged_epoch``; when none did, :class:`PipelineError` says so and what to change
    (no checkpoint of a NaN model is ever written, so nothing downstream loads one by mistake).
    Writes ``log_csv`` (default ``out_dir/log.csv``, one row per epoch). Returns a summary dict (best
    epoch and AUC, ...).
    """
    import pandas as pd
    import torch
    from torch import nn

    from pipeline.io import write_csv_atomic

    seed_everything(s.seed)
    if hasattr(train_ds.transform, "set_random_seed"):  # albumentations' own generator: same draws for a fold
        train_ds.transform.set_random_seed(s.seed)      # whichever job or fold order trains it
    device, gpu_ids = torch_device(s.device)
    n_out = train_ds.targets.shape[1]
    model = build_model(n_out, s.weights).to(device)
    runner = nn.DataParallel(model, device_ids=gpu_ids) if len(gpu_ids) > 1 else model

    balance = s.balance.lower()
    if balance not in ("pos_weight", "sampler", "none"):
        raise ConfigError(f"cls.balance: {s.balance!r} is not one of pos_weight, sampler, none")
    pos_weight = (torch.from_numpy(pos_weight_from_targets(train_ds.targets)).to(device)
                  if balance == "pos_weight" else None)
    criterion = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    sampler = None
    if balance == "sampler":
        g = torch.Generator()
        g.manual_seed(s.seed)
        sampler = torch.utils.data.WeightedRandomSampler(
            torch.as_tensor(sample_weights(train_ds.targets), dtype=torch.double), num_samples=len(train_ds),
            replacement=True, generator=g)
    train_loader = make_loader(train_ds, s.batch, s.workers, shuffle=True, sampler=sampler, seed=s.seed,
                               device_type=device.type)
    optimizer = _build_optimizer(model.parameters(), s)
    steps_per_epoch = len(train_loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(steps_per_epoch * s.epochs, int(round(s.warmup_epochs * steps_per_epoch))))
    use_amp = s.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    best_path = Path(checkpoint) if checkpoint is not None else out_dir / "best.pt"
    log_path = Path(log_csv) if log_csv is not None else out_dir / "log.csv"
    rows: list[dict] = []
    diverged_epoch = None
    best_score, best_epoch, stale = (-math.inf, -math.inf), -1, 0
    for epoch in range(s.epochs):
        start = time.perf_counter()
        runner.train()
        total, seen = 0.0, 0
        for x, y, _ in train_loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=use_amp):
                logits = runner(x)
            loss = criterion(logits.float(), y)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            total += float(loss.detach()) * len(x)
            seen += len(x)
        train_loss = total / max(seen, 1)

        if val_ds is not None:
            val_probs = predict_probs(runner, val_ds, s.batch * 2, s.workers, device, tta_flip=False, amp=s.amp)
            with torch.no_grad():
                p = torch.from_numpy(val_probs).clamp(1e-7, 1 - 1e-7)
                logit = torch.log(p) - torch.log1p(-p)
                val_loss = float(nn.functional.binary_cross_entropy_with_logits(
                    logit, torch.from_numpy(val_ds.targets),
                    pos_weight=None if pos_weight is None else pos_weight.cpu()))
            # a diverged model's NaN outputs have no AUC (and per_label_auc rejects them)
            val_auc = mean_auc(val_ds.targets, val_probs) if np.isfinite(val_probs).all() else math.nan
        else:  # no selection images (cls.select=last): every finite epoch replaces the previous one
            val_loss, val_auc = (0.0 if math.isfinite(train_loss) else math.nan), math.nan
        # Higher AUC wins; an equal AUC (common on small or easy folds, where it saturates at 1) is
        # broken by the lower validation loss; an undefined AUC (one class) leaves the loss alone.
        score = (-math.inf if math.isnan(val_auc) else val_auc, -val_loss)
        diverged = not math.isfinite(val_loss) or (not use_amp and not math.isfinite(train_loss))
        # a NaN score compares False with everything: it must never count as an improvement
        improved = not diverged and (val_ds is None or score > best_score)
        if improved:
            best_score, best_epoch, stale = score, epoch, 0
            save_checkpoint(model, best_path)
        else:
            stale += 1
        rows.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "val_auc": val_auc,
                     "lr": optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - start,
                     "best": improved})
        write_csv_atomic(pd.DataFrame(rows), log_path)
        log(f"  epoch {epoch + 1}/{s.epochs}: train loss {train_loss:.4f}  val loss {val_loss:.4f}  "
            f"val AUC {val_auc:.4f}{'  *' if improved else ''}  ({rows[-1]['seconds']:.1f} s)")
        if diverged:
            diverged_epoch = epoch
            what = (f"training diverged in epoch {epoch + 1} (train loss {train_loss:.4g}, validation loss "
                    f"{val_loss:.4g})")
            if best_epoch < 0:
                raise PipelineError(
                    f"{what}, before any epoch gave a usable model, so no checkpoint was written to {best_path}. "
                    f"Lower cls.lr (now {s.lr:g}, e.g. to {s.lr / 10:g}), raise cls.warmup_epochs (now "
                    f"{s.warmup_epochs:g}), or set cls.amp=false; see {log_path}.")
            log(f"  {what}: stopped; keeping epoch {best_epoch + 1}. Lower cls.lr (now {s.lr:g}) to train longer.")
            break
        if val_ds is not None and stale >= s.patience:
            log(f"  early stop: no better validation AUC for {s.patience} epochs")
            break
    if best_epoch < 0:  # only with epochs=0
        raise PipelineError(f"no epoch was run (cls.epochs={s.epochs}); set cls.epochs >= 1.")
    best_row = rows[best_epoch]
    return {"best_epoch": best_epoch, "best_val_auc": best_row["val_auc"], "best_val_loss": best_row["val_loss"],
            "epochs_run": len(rows), "train_losses": [r["train_loss"] for r in rows], "device": str(device),
            "checkpoint": str(best_path), "diverged_epoch": diverged_epoch}


def env_workers(value: int | None, run_workers: int) -> int:
    """DataLoader workers: ``cls.workers`` if set (0 = main process), else ``run.workers``
    (where 0 means all cores)."""
    if value is not None:
        return max(0, int(value))
    from pipeline.config import resolve_workers

    return resolve_workers(run_workers)
