"""DenseNet-121 image classifier: model, dataset, augmentation, training loop, prediction, checkpoints.

Used by :mod:`pipeline.stages.train_cls` (normal vs abnormal for the VinBigData 2-class filter, or the
14 findings of ChestX-ray14 / VinBigData) and by :mod:`pipeline.gradcam`.

Conventions
  * Input images are the prepared PNGs (8 or 16-bit grayscale, aspect kept). Each is scaled to
    [0, 1] and **letterboxed** to ``imgsz x imgsz``: resized so its longer side is ``imgsz``, then
    centred on a black square. Letterboxing (rather than stretching) keeps the anatomy's proportions
    (a stretched heart looks enlarged: cardiomegaly is a ratio) and keeps the map back to original
    pixels a scale and an offset (:class:`Letterbox`), which Grad-CAM boxes need.
  * The model takes ``(B, 1, H, W)`` in [0, 1]. Inside, the single channel is repeated to 3 and
    normalised with the ImageNet mean/std, so the first convolution of ImageNet (or any RGB)
    weights stays usable unchanged; from scratch it costs nothing measurable.
  * Checkpoints are state dicts only (``torch.save(model.state_dict())``), read back with
    ``torch.load(..., weights_only=True)``: loading never runs pickled code.

torch, torchvision, albumentations and cv2 are imported inside functions or here (this module is
only imported by the classifier stage), so light tools never pay for them.
"""
from __future__ import annotations

import math
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from pipeline.errors import ConfigError, DataError, PipelineError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Augmentation probabilities used when cls.augment does not name them.
AUGMENT_DEFAULTS = {"hflip": 0.5, "shift_scale_rotate": 0.5, "brightness_contrast": 0.5}


# --------------------------------------------------------------------------------------------------
# images
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Letterbox:
    """Where a source image of ``src_w x src_h`` pixels sits inside the ``size x size`` input.

    The image is resized to ``new_w x new_h`` and pasted at (``pad_x``, ``pad_y``), top-left origin,
    pixel-edge coordinates (pixel i spans [i, i+1)).
    """
    src_w: int
    src_h: int
    new_w: int
    new_h: int
    pad_x: int
    pad_y: int
    size: int

    @classmethod
    def fit(cls, src_w: int, src_h: int, size: int) -> "Letterbox":
        scale = size / max(src_w, src_h)
        new_w = max(1, min(size, int(round(src_w * scale))))
        new_h = max(1, min(size, int(round(src_h * scale))))
        return cls(src_w, src_h, new_w, new_h, (size - new_w) // 2, (size - new_h) // 2, size)

    def to_source(self, boxes_xyxy, width: float | None = None, height: float | None = None) -> np.ndarray:
        """Boxes in input (letterbox) pixels -> pixels of an image ``width x height`` showing the same
        picture (default: the source image). Used with the ORIGINAL size to report Grad-CAM boxes in
        the annotation table's coordinates."""
        width = self.src_w if width is None else width
        height = self.src_h if height is None else height
        b = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4).copy()
        b[:, [0, 2]] = (b[:, [0, 2]] - self.pad_x) * (width / self.new_w)
        b[:, [1, 3]] = (b[:, [1, 3]] - self.pad_y) * (height / self.new_h)
        b[:, [0, 2]] = b[:, [0, 2]].clip(0, width)
        b[:, [1, 3]] = b[:, [1, 3]].clip(0, height)
        return b


def read_gray(path: Path) -> np.ndarray:
    """A grayscale PNG (8 or 16-bit; a colour PNG is converted) as float32 in [0, 1], shape (H, W)."""
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise DataError(f"{path}: cannot read the image (missing or not an image); run the prepare stage again.")
    if img.ndim == 3:
        img = cv2.cvtColor(img[:, :, :3], cv2.COLOR_BGR2GRAY)
    scale = 65535.0 if img.dtype == np.uint16 else 255.0
    return img.astype(np.float32) / scale


def letterbox(img: np.ndarray, size: int) -> tuple[np.ndarray, Letterbox]:
    """Resize ``img`` (H, W) so its longer side is ``size`` and centre it on a black ``size x size``."""
    import cv2

    h, w = img.shape[:2]
    lb = Letterbox.fit(w, h, size)
    interp = cv2.INTER_AREA if max(h, w) > size else cv2.INTER_LINEAR
    resized = cv2.resize(img, (lb.new_w, lb.new_h), interpolation=interp)
    out = np.zeros((size, size), dtype=np.float32)
    out[lb.pad_y:lb.pad_y + lb.new_h, lb.pad_x:lb.pad_x + lb.new_w] = resized
    return out, lb


def build_augment(augment: Mapping | None, train: bool = True):
    """albumentations pipeline from ``cls.augment`` probabilities (missing keys: AUGMENT_DEFAULTS).

    hflip: horizontal flip (the Kaggle winners used it; mirrored anatomy is a mild, accepted prior);
    shift_scale_rotate: Affine with +-6% shift, 0.9-1.1 scale, +-10 degrees, black border;
    brightness_contrast: +-0.2 brightness and contrast. Returns None when not training.
    """
    if not train:
        return None
    augment = dict(augment or {})
    unknown = sorted(set(augment) - set(AUGMENT_DEFAULTS))
    if unknown:
        raise ConfigError(f"cls.augment: unknown key(s) {unknown}; known: {sorted(AUGMENT_DEFAULTS)}")
    probs = {**AUGMENT_DEFAULTS, **augment}
    for key, p in probs.items():
        if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0 <= p <= 1:
            raise ConfigError(f"cls.augment.{key} must be a probability in [0, 1], got {p!r}")
    import albumentations as A
    import cv2

    return A.Compose([
        A.HorizontalFlip(p=probs["hflip"]),
        A.Affine(scale=(0.9, 1.1), translate_percent=(-0.0625, 0.0625), rotate=(-10, 10),
                 border_mode=cv2.BORDER_CONSTANT, fill=0, p=probs["shift_scale_rotate"]),
        A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=probs["brightness_contrast"]),
    ])


class XrayDataset:
    """Images (paths) and targets (N, L) -> ``(tensor (1, S, S) in [0, 1], target (L,) float, index)``.

    A torch ``Dataset`` by duck typing (``__len__``/``__getitem__``), so importing this module does not
    import torch. ``targets`` may be None (prediction on unlabelled images): a zero vector is returned.
    """

    def __init__(self, image_paths: Sequence[Path], targets: np.ndarray | None, imgsz: int,
                 transform=None, n_outputs: int = 1):
        self.paths = [Path(p) for p in image_paths]
        self.targets = None if targets is None else np.asarray(targets, dtype=np.float32).reshape(len(self.paths), -1)
        self.imgsz = imgsz
        self.transform = transform
        self.n_outputs = n_outputs if self.targets is None else self.targets.shape[1]

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, i: int) -> tuple[np.ndarray, Letterbox]:
        return letterbox(read_gray(self.paths[i]), self.imgsz)

    def __getitem__(self, i: int):
        import torch

        img, _ = self.load(i)
        if self.transform is not None:
            img = self.transform(image=img)["image"]
            img = np.clip(img, 0.0, 1.0)  # brightness/contrast may leave [0, 1]
        x = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))[None]
        y = (torch.zeros(self.n_outputs) if self.targets is None else torch.from_numpy(self.targets[i]))
        return x, y, i


# --------------------------------------------------------------------------------------------------
# model and checkpoints
# --------------------------------------------------------------------------------------------------
def _model_class():
    import torch
    from torch import nn

    class ChestClassifier(nn.Module):
        """torchvision DenseNet-121 (``self.net``) with a grayscale front and an ``n_outputs`` head.

        ``forward`` takes (B, 1, H, W) in [0, 1] and returns logits (B, n_outputs).
        ``self.net.features`` is the convolutional trunk whose output (before the final ReLU and
        pooling) Grad-CAM hooks.
        """

        def __init__(self, net: nn.Module):
            super().__init__()
            self.net = net
            # Not persistent: the checkpoint holds only learned weights.
            self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

        @property
        def n_outputs(self) -> int:
            return self.net.classifier.out_features

        def forward(self, x):
            if x.shape[1] == 1:
                x = x.expand(-1, 3, -1, -1)  # repeat gray to RGB: pretrained first conv stays usable
            return self.net((x - self.mean) / self.std)

    return ChestClassifier


# Old torchvision DenseNet files (e.g. densenet121-a639ec97.pth, the ImageNet weights) name layers
# "norm.1"/"conv.2"; current torchvision names them "norm1"/"conv2".
_OLD_DENSENET_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$")


def _clean_state_dict(state: Mapping) -> dict:
    if "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    out = {}
    for key, value in state.items():
        for prefix in ("module.", "net."):  # DataParallel; our own ChestClassifier checkpoints
            if key.startswith(prefix):
                key = key[len(prefix):]
        m = _OLD_DENSENET_KEY.match(key)
        if m:
            key = m.group(1) + m.group(2)
        out[key] = value
    return out


def load_backbone_weights(net, path: Path) -> list[str]:
    """Load a local DenseNet-121 state dict into ``net`` (a torchvision densenet121).

    Every trunk tensor (``features.*``) must be present with the same shape (else PipelineError
    naming the first mismatches). The classifier head is loaded only when its shape matches
    (an ImageNet 1000-class head is skipped). Returns the names of skipped head tensors.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise PipelineError(
            f"cls.weights: weights file not found: {path}. Pass the path of a local DenseNet-121 state dict "
            "(e.g. torchvision's densenet121-a639ec97.pth downloaded elsewhere), 'imagenet' (needs internet), "
            "or null to train from scratch.")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 (pickle/zip errors vary)
        raise PipelineError(f"cls.weights: {path} is not a readable PyTorch state dict ({exc}). "
                            "Save it with torch.save(model.state_dict()).") from None
    if not isinstance(raw, Mapping):
        raise PipelineError(f"cls.weights: {path} holds a {type(raw).__name__}, not a state dict. "
                            "Save it with torch.save(model.state_dict()).")
    state = _clean_state_dict(raw)
    own = net.state_dict()
    problems, skipped = [], []
    for key, tensor in own.items():
        if key not in state:
            # num_batches_tracked is a counter, not a weight: files from old torchvision lack it
            if not key.startswith("classifier.") and not key.endswith("num_batches_tracked"):
                problems.append(f"missing {key}")
            continue
        if tuple(state[key].shape) != tuple(tensor.shape):
            if key.startswith("classifier."):
                skipped.append(key)
                continue
            problems.append(f"{key}: file {tuple(state[key].shape)} vs DenseNet-121 {tuple(tensor.shape)}")
    unexpected = [k for k in state if k not in own]
    if problems or unexpected:
        shown = problems[:5] + [f"unexpected {k}" for k in unexpected[:5]]
        raise PipelineError(
            f"cls.weights: {path} does not fit DenseNet-121 ({len(problems)} mismatched/missing, "
            f"{len(unexpected)} unexpected tensors), e.g. {'; '.join(shown)}. "
            "Pass a torchvision densenet121 state dict.")
    # A head of another size (ImageNet's 1000 classes) is dropped whole: build_model replaces it.
    load = {k: v for k, v in state.items() if not (skipped and k.startswith("classifier."))}
    net.load_state_dict(load, strict=False)
    return skipped


def build_model(n_outputs: int, weights: str | Path | None = None):
    """A DenseNet-121 ChestClassifier with ``n_outputs`` logits.

    ``weights``: None = random init (torchvision ``weights=None``: nothing is downloaded);
    a path = a local DenseNet-121 state dict (trunk loaded with a strict shape check; the head is
    replaced when its size differs); ``"imagenet"`` = torchvision's DEFAULT weights, which are
    downloaded unless already in the torch hub cache (fails offline with a PipelineError).
    """
    import torchvision
    from torch import nn

    if weights is None or str(weights).strip() == "":
        net = torchvision.models.densenet121(weights=None)
    elif str(weights).lower() == "imagenet":
        try:
            net = torchvision.models.densenet121(weights=torchvision.models.DenseNet121_Weights.DEFAULT)
        except Exception as exc:  # noqa: BLE001 (URLError, OSError, hash errors...)
            raise PipelineError(
                f"cls.weights=imagenet: could not get torchvision's DenseNet-121 ImageNet weights ({exc}). "
                "This machine is offline: download densenet121-a639ec97.pth on a machine with internet "
                "(https://download.pytorch.org/models/densenet121-a639ec97.pth), copy it here and set "
                "cls.weights=<path to the file>.") from None
    else:
        net = torchvision.models.densenet121(weights=None)
        load_backbone_weights(net, Path(weights))
    net.classifier = nn.Linear(net.classifier.in_features, n_outputs)
    return _model_class()(net)


def save_checkpoint(model, path: Path) -> Path:
    """State dict only (no pickled objects), written atomically."""
    import torch

    from pipeline.io import write_with

    target = model.module if hasattr(model, "module") else model
    state = {k: v.detach().cpu() for k, v in target.state_dict().items()}
    return write_with(Path(path), lambda p: torch.save(state, p))


def load_checkpoint(path: Path, n_outputs: int, device="cpu"):
    """Build a ChestClassifier and load a checkpoint written by :func:`save_checkpoint` (weights_only)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"classifier checkpoint not found: {path}; run the train_cls stage first.")
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = build_model(n_outputs, None)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise PipelineError(f"{path}: checkpoint does not match a DenseNet-121 with {n_outputs} outputs "
                            f"({str(exc).splitlines()[0]}); retrain with the current cls settings.") from None
    return model.to(device).eval()


# --------------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------------
def resolve_device(spec: str | int | None):
    """``run.device`` -> ``(torch.device, [gpu ids])`` (see :func:`pipeline.device.parse_device`);
    several ids mean DataParallel over them. GPUs that are not there are a ConfigError."""
    import torch

    from pipeline.device import parse_device, require_gpus

    parsed = parse_device(spec)
    if isinstance(parsed, str):
        return torch.device(parsed), []
    require_gpus(parsed, spec)
    return torch.device(f"cuda:{parsed[0]}"), parsed


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def _worker_init(worker_id: int) -> None:
    import torch

    seed = torch.initial_seed() % (2 ** 32)
    np.random.seed(seed)
    random.seed(seed)


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


def make_loader(dataset, batch: int, workers: int, shuffle: bool = False, sampler=None, seed: int = 0,
                device_type: str = "cpu"):
    import torch

    g = torch.Generator()
    g.manual_seed(seed)
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch, shuffle=shuffle and sampler is None, sampler=sampler,
        num_workers=workers, pin_memory=device_type == "cuda", worker_init_fn=_worker_init,
        generator=g, persistent_workers=False, drop_last=False)


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


def model_outputs(model) -> int:
    return (model.module if hasattr(model, "module") else model).n_outputs


def train_model(train_ds: XrayDataset, val_ds: XrayDataset, s: TrainSettings, out_dir: Path,
                log: Callable[[str], None] = print, *, checkpoint: Path | None = None,
                log_csv: Path | None = None) -> dict:
    """Train one fold; keep the checkpoint with the best validation AUC at ``checkpoint``
    (default ``out_dir/best.pt``).

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
    device, gpu_ids = resolve_device(s.device)
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

        val_probs = predict_probs(runner, val_ds, s.batch * 2, s.workers, device, tta_flip=False, amp=s.amp)
        with torch.no_grad():
            p = torch.from_numpy(val_probs).clamp(1e-7, 1 - 1e-7)
            logit = torch.log(p) - torch.log1p(-p)
            val_loss = float(nn.functional.binary_cross_entropy_with_logits(
                logit, torch.from_numpy(val_ds.targets), pos_weight=None if pos_weight is None else pos_weight.cpu()))
        # a diverged model's NaN outputs have no AUC (and per_label_auc rejects them)
        val_auc = mean_auc(val_ds.targets, val_probs) if np.isfinite(val_probs).all() else math.nan
        # Higher AUC wins; an equal AUC (common on small or easy folds, where it saturates at 1) is
        # broken by the lower validation loss; an undefined AUC (one class) leaves the loss alone.
        score = (-math.inf if math.isnan(val_auc) else val_auc, -val_loss)
        diverged = not math.isfinite(val_loss) or (not use_amp and not math.isfinite(train_loss))
        # a NaN score compares False with everything: it must never count as an improvement
        improved = not diverged and score > best_score
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
        if stale >= s.patience:
            log(f"  early stop: no better validation AUC for {s.patience} epochs")
            break
    if best_epoch < 0:  # only with epochs=0
        raise PipelineError(f"no epoch was run (cls.epochs={s.epochs}); set cls.epochs >= 1.")
    best_row = rows[best_epoch]
    return {"best_epoch": best_epoch, "best_val_auc": best_row["val_auc"], "best_val_loss": best_row["val_loss"],
            "epochs_run": len(rows), "train_losses": [r["train_loss"] for r in rows], "device": str(device),
            "checkpoint": str(best_path), "diverged_epoch": diverged_epoch}


# --------------------------------------------------------------------------------------------------
# thresholds and metrics at a threshold
# --------------------------------------------------------------------------------------------------
def youden_threshold(y_true, y_score) -> float:
    """Threshold maximising Youden's J = TPR - FPR on (out-of-fold) scores; 0.5 if one class only.

    Youden's J weights sensitivity and specificity equally, so it does not depend on prevalence
    (F1 would push the threshold towards the majority class on imbalanced labels).
    """
    from sklearn.metrics import roc_curve

    y_true = np.asarray(y_true).astype(int)
    if y_true.min() == y_true.max():
        return 0.5
    fpr, tpr, thr = roc_curve(y_true, y_score)
    j = tpr - fpr
    t = float(thr[int(np.argmax(j))])
    return min(t, 1.0)  # roc_curve's first threshold is +inf


def metrics_at_threshold(y_true, y_score, threshold: float) -> dict:
    """Accuracy, precision, recall, F1 of ``score >= threshold`` (0 where undefined)."""
    y = np.asarray(y_true).astype(bool)
    pred = np.asarray(y_score) >= threshold
    tp = int((pred & y).sum())
    fp = int((pred & ~y).sum())
    fn = int((~pred & y).sum())
    tn = int((~pred & ~y).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"threshold": float(threshold), "accuracy": (tp + tn) / max(len(y), 1), "precision": precision,
            "recall": recall, "f1": f1, "tp": tp, "fp": fp, "fn": fn, "tn": tn}


def env_workers(value: int | None, run_workers: int) -> int:
    """DataLoader workers: ``cls.workers`` if set (0 = main process), else ``run.workers``
    (where 0 means all cores)."""
    if value is not None:
        return max(0, int(value))
    from pipeline.config import resolve_workers

    return resolve_workers(run_workers)


__all__ = [
    "AUGMENT_DEFAULTS", "Letterbox", "TrainSettings", "XrayDataset", "build_augment", "build_model",
    "env_workers", "letterbox", "load_backbone_weights", "load_checkpoint", "make_loader", "mean_auc",
    "metrics_at_threshold", "pos_weight_from_targets", "predict_probs", "read_gray", "resolve_device",
    "sample_weights", "save_checkpoint", "seed_everything", "train_model", "warmup_cosine", "youden_threshold",
]
