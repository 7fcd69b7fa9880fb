"""Classifier inputs: grey PNGs read to [0, 1], letterboxed to a square, augmented, batched.

Conventions: images are the prepared PNGs (8 or 16-bit grayscale, aspect kept). Each is scaled to
[0, 1] and **letterboxed** to ``imgsz x imgsz``: resized so its longer side is ``imgsz``, then centred
on a black square. Letterboxing (rather than stretching) keeps the anatomy's proportions (a stretched
heart looks enlarged: cardiomegaly is a ratio) and keeps the map back to original pixels a scale and
an offset (:class:`Letterbox`), which Grad-CAM boxes need.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from pipeline.errors import ConfigError, DataError

# Augmentation probabilities used when cls.augment does not name them.
AUGMENT_DEFAULTS = {"hflip": 0.5, "shift_scale_rotate": 0.5, "brightness_contrast": 0.5}

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


def build_augment(augment: Mapping | None, train: bool = True, seed: int = 0):
    """albumentations pipeline from ``cls.augment`` probabilities (missing keys: AUGMENT_DEFAULTS).

    hflip: horizontal flip (the Kaggle winners used it; mirrored anatomy is a mild, accepted prior);
    shift_scale_rotate: Affine with +-6% shift, 0.9-1.1 scale, +-10 degrees, black border;
    brightness_contrast: +-0.2 brightness and contrast. Returns None when not training.
    ``seed``: albumentations draws from its own generator (not numpy's or torch's), seeded here, and per
    DataLoader worker by :func:`_worker_init`, so a training is repeatable.
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
    ], seed=int(seed))


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


def _worker_init(worker_id: int) -> None:
    import torch

    seed = torch.initial_seed() % (2 ** 32)  # the loader's generator + worker id: repeatable, distinct per worker
    np.random.seed(seed)
    random.seed(seed)
    info = torch.utils.data.get_worker_info()
    transform = getattr(getattr(info, "dataset", None), "transform", None)
    if hasattr(transform, "set_random_seed"):
        transform.set_random_seed(seed)


def make_loader(dataset, batch: int, workers: int, shuffle: bool = False, sampler=None, seed: int = 0,
                device_type: str = "cpu"):
    import torch

    g = torch.Generator()
    g.manual_seed(seed)
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch, shuffle=shuffle and sampler is None, sampler=sampler,
        num_workers=workers, pin_memory=device_type == "cuda", worker_init_fn=_worker_init,
        generator=g, persistent_workers=False, drop_last=False)
