"""Readers of lung-mask datasets in their common layouts, into one list of :class:`MaskItem`.

Layouts (``layout`` argument; ``auto`` picks the one whose folders exist):

* ``images_masks``: ``<root>/images/<name>.<ext>`` and ``<root>/masks/<name>.<ext>`` with the same
  stem (PNG, JPEG, BMP or TIFF, extensions may differ between the two). Shenzhen as shipped in
  ``../shared/real/shenzhen`` (JPEG masks) and the demo's ``lungs/`` set (PNG masks) look like this.
* ``nlm``: the Kaggle "Chest Xray Masks and Labels" download of the NLM sets:
  ``<root>/CXR_png/<name>.png`` and ``<root>/masks/<name>_mask.png`` (Shenzhen) or
  ``<root>/masks/<name>.png`` (its Montgomery images).
* ``montgomery``: the NLM Montgomery County download: ``<root>/CXR_png/<name>.png`` and
  ``<root>/ManualMask/leftMask/<name>.png`` + ``<root>/ManualMask/rightMask/<name>.png``; the lung
  mask is the union of the two.

Mask pixels: a mask file is read as greyscale; a pixel is lung when it is above half the file's
range (``> 127`` for 8-bit, which also thresholds JPEG ringing), or above 0 when the file holds only
0 and 1. Several mask files of one image (Montgomery) are united.

Splits: ``split.csv`` (``image_id, split[, label columns]``, split in train | valid | val | test)
when there is one (``split_csv``), otherwise a fixed hash of the id (``hash_split``), so a split never
depends on file order or on which other files exist. Image labels (for the classification head):
a column of ``split.csv`` (``label_column``), or the NLM file-name convention ``<name>_0`` (normal) /
``<name>_1`` (abnormal: tuberculosis for Shenzhen and Montgomery).

Images without a mask, and split.csv rows without an image, are not silently dropped: they are
returned in ``MaskDataset.skipped`` (file, reason) for the stage to list.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.errors import ConfigError, DataError

LAYOUTS = ("auto", "images_masks", "nlm", "montgomery")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
SPLITS = ("train", "valid", "test")
_SPLIT_ALIASES = {"train": "train", "valid": "valid", "val": "valid", "validation": "valid", "test": "test"}
_NLM_LABEL = re.compile(r"_([01])$")


@dataclass(frozen=True)
class MaskItem:
    """One image and the mask file(s) whose union is its lung mask."""

    image_id: str
    image: Path
    masks: tuple[Path, ...]
    split: str                      # train | valid | test
    label: int | None = None        # image-level label for the classification head, None = unknown


@dataclass
class MaskDataset:
    root: Path
    layout: str
    items: list[MaskItem]
    label_name: str | None                    # what ``label`` means (a split.csv column or "nlm_suffix")
    skipped: list[tuple[str, str]] = field(default_factory=list)   # (file, reason)
    split_source: str = ""                    # the split.csv read, or "hash"

    def split(self, *names: str) -> list[MaskItem]:
        return [it for it in self.items if it.split in names]

    def files(self) -> list[Path]:
        """Every file the items read, in a fixed order (what a fingerprint hashes)."""
        out = []
        for it in self.items:
            out.append(it.image)
            out.extend(it.masks)
        return out


def _by_stem(folder: Path, suffix: str = "") -> dict[str, Path]:
    """``stem (without suffix) -> file`` of the image files in ``folder``; two files of one stem are an error."""
    out: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if not p.is_file() or p.suffix.lower() not in IMAGE_EXTS or p.name.startswith("."):
            continue
        stem = p.stem
        if suffix:
            if not stem.endswith(suffix):
                continue
            stem = stem[: -len(suffix)]
        if stem in out:
            raise DataError(f"{folder}: two files for '{stem}' ({out[stem].name}, {p.name}); keep one of them.")
        out[stem] = p
    return out


def detect_layout(root: Path) -> str:
    root = Path(root)
    if (root / "CXR_png").is_dir() and (root / "ManualMask").is_dir():
        return "montgomery"
    if (root / "CXR_png").is_dir() and (root / "masks").is_dir():
        return "nlm"
    if (root / "images").is_dir() and (root / "masks").is_dir():
        return "images_masks"
    raise DataError(f"{root}: no lung-mask layout found: expected images/ + masks/, CXR_png/ + masks/ "
                    "or CXR_png/ + ManualMask/leftMask, rightMask (see docs/notes/lungs.md); set segment.data_root.")


def _pairs(root: Path, layout: str) -> tuple[dict[str, Path], dict[str, tuple[Path, ...]]]:
    """Images by id and mask files by id for one layout."""
    if layout == "images_masks":
        return _by_stem(root / "images"), {k: (v,) for k, v in _by_stem(root / "masks").items()}
    images = _by_stem(root / "CXR_png")
    if layout == "nlm":
        suffixed = _by_stem(root / "masks", "_mask")
        plain = {k: v for k, v in _by_stem(root / "masks").items() if not k.endswith("_mask")}
        return images, {k: (suffixed.get(k) or plain[k],) for k in set(suffixed) | set(plain)}
    left, right = _by_stem(root / "ManualMask" / "leftMask"), _by_stem(root / "ManualMask" / "rightMask")
    return images, {k: tuple(p for p in (left.get(k), right.get(k)) if p is not None) for k in set(left) | set(right)}


def hash_split(image_id: str, valid_fraction: float, test_fraction: float) -> str:
    """A fixed split from the id alone (sha256), independent of file order and of other files."""
    u = int(hashlib.sha256(image_id.encode()).hexdigest()[:8], 16) / 2 ** 32
    return "test" if u < test_fraction else "valid" if u < test_fraction + valid_fraction else "train"


def _read_split_csv(path: Path) -> "object":
    import pandas as pd

    try:
        df = pd.read_csv(path, dtype={"image_id": str, "split": str})
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read the split table ({exc}); it needs columns image_id,split.") from None
    missing = [c for c in ("image_id", "split") if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; a split table has image_id,split[,label].")
    bad = [(i + 2, s) for i, s in enumerate(df["split"]) if str(s).strip().lower() not in _SPLIT_ALIASES]
    if bad:
        raise DataError(f"{path}: row {bad[0][0]}: split {bad[0][1]!r} is not train, valid (val) or test.")
    dup = df["image_id"][df["image_id"].duplicated()]
    if len(dup):
        raise DataError(f"{path}: image_id {dup.iloc[0]!r} appears more than once.")
    return df


def _label_column(df, label_column: str, path: Path) -> str | None:
    """The split.csv column holding 0/1 labels, or None (``auto``: the only other column, if 0/1)."""
    if df is None or label_column == "none":
        return None
    others = [c for c in df.columns if c not in ("image_id", "split")]
    if label_column == "auto":
        if len(others) != 1:
            return None
        col = others[0]
        return col if set(df[col].dropna().astype(str)) <= {"0", "1", "0.0", "1.0"} else None
    if label_column not in df.columns:
        raise ConfigError(f"segment.label_column={label_column!r}: {path} has no such column (columns: "
                          f"{list(df.columns)}); use auto, none or one of them.")
    return label_column


def _label_value(value, where: str) -> int | None:
    if value is None or (isinstance(value, float) and np.isnan(value)) or str(value).strip() == "":
        return None
    try:
        v = int(float(value))
    except ValueError:
        v = -1
    if v not in (0, 1):
        raise DataError(f"{where}: label {value!r} is not 0 or 1.")
    return v


def read_mask_dataset(root: str | Path, layout: str = "auto", split_csv: str | Path | None = None,
                      label_column: str = "auto", valid_fraction: float = 0.1,
                      test_fraction: float = 0.1) -> MaskDataset:
    """Read a lung-mask dataset (see the module docstring). ``split_csv`` None = ``<root>/split.csv``
    when it exists; a relative path is taken under ``root`` when not found as given."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"lung-mask dataset folder {root} does not exist; set segment.data_root to it.")
    if layout not in LAYOUTS:
        raise ConfigError(f"segment.layout={layout!r}: use one of {', '.join(LAYOUTS)}.")
    layout = detect_layout(root) if layout == "auto" else layout
    try:
        images, masks = _pairs(root, layout)
    except FileNotFoundError as exc:
        raise DataError(f"{root}: layout {layout!r} expects the folder {exc.filename}; check segment.layout.") from None
    if split_csv is None:
        split_path = root / "split.csv" if (root / "split.csv").is_file() else None
    else:
        split_path = Path(split_csv)
        if not split_path.is_file() and (root / split_path).is_file():
            split_path = root / split_path
        if not split_path.is_file():
            raise DataError(f"segment.split_csv={split_csv!r}: no such file (also tried under {root}).")
    df = _read_split_csv(split_path) if split_path is not None else None
    label_col = _label_column(df, label_column, split_path)
    skipped: list[tuple[str, str]] = []
    rows = {}
    if df is not None:
        for i, r in enumerate(df.itertuples(index=False)):
            rows[str(r.image_id)] = (i, r)
        skipped += [(f"{split_path}:{rows[k][0] + 2}", f"split.csv lists '{k}' but there is no such image")
                    for k in sorted(set(rows) - set(images))]
    skipped += [(str(p), "mask file without an image") for k, ps in sorted(masks.items()) if k not in images for p in ps]
    use_nlm = label_column == "auto" and label_col is None and images and all(_NLM_LABEL.search(k) for k in images)
    items = []
    for image_id, path in sorted(images.items()):
        if image_id not in masks or not masks[image_id]:
            skipped.append((str(path), "no mask file"))
            continue
        if df is not None:
            if image_id not in rows:
                skipped.append((str(path), f"not in {split_path.name}"))
                continue
            i, r = rows[image_id]
            split = _SPLIT_ALIASES[str(r.split).strip().lower()]
            label = _label_value(getattr(r, label_col), f"{split_path}: row {i + 2}") if label_col else None
        else:
            split = hash_split(image_id, valid_fraction, test_fraction)
            label = None
        if use_nlm:
            label = int(_NLM_LABEL.search(image_id).group(1))
        items.append(MaskItem(image_id, path, masks[image_id], split, label))
    if not items:
        raise DataError(f"{root}: no image with a mask found (layout {layout}); {len(skipped)} file(s) skipped, "
                        f"e.g. {skipped[0] if skipped else 'none'}.")
    return MaskDataset(root, layout, items, label_col or ("nlm_suffix" if use_nlm else None), skipped,
                       str(split_path) if split_path is not None else "hash")


# ---------------------------------------------------------------------------------------- pixels
def read_image(path: Path) -> np.ndarray:
    """A greyscale image as stored (uint8 or uint16, shape (H, W)); colour is converted to grey."""
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise DataError(f"{path}: cannot read the image (missing, truncated or not an image file).")
    if img.ndim == 3:
        img = cv2.cvtColor(img[:, :, :3], cv2.COLOR_BGR2GRAY) if img.shape[2] >= 3 else img[:, :, 0]
    return img


def read_mask(paths: tuple[Path, ...] | list[Path], shape: tuple[int, int] | None = None) -> np.ndarray:
    """The union of the mask files as a boolean (H, W) array; ``shape`` (H, W) is checked when given."""
    out = None
    for p in paths:
        m = read_image(Path(p))
        top = int(m.max()) if m.size else 0
        lung = m > 0 if top <= 1 else m > (np.iinfo(m.dtype).max // 2 if m.dtype.kind == "u" else top / 2)
        if out is not None and lung.shape != out.shape:
            raise DataError(f"{p}: mask is {lung.shape[1]}x{lung.shape[0]} but {paths[0]} is "
                            f"{out.shape[1]}x{out.shape[0]}; the masks of one image must have one size.")
        out = lung if out is None else out | lung
    if out is None:
        raise DataError("read_mask: no mask file given")
    if shape is not None and out.shape != tuple(shape):
        raise DataError(f"{paths[0]}: mask is {out.shape[1]}x{out.shape[0]} pixels but its image is "
                        f"{shape[1]}x{shape[0]}; masks must be in the image's own pixels.")
    return out
