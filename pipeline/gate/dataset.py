"""The gate's training data: an ImageFolder-style table, a held-out split by group, pictures in memory.

**Table** (:func:`build_table`; written as ``screen/dataset.csv``): one row per picture,
``image_id, label, source, group, kind, path, what``.

* ``screen.folders`` maps a class to folders (``{chest: [a, b], other_xray: [c]}``): several folders
  may feed one class, so real sets are used where they lie. ``screen.image_root`` is the ImageFolder
  form: each subfolder of the root named after a class holds that class's pictures. Folders are
  searched recursively for DICOM and raster images (:func:`pipeline.gate.images.collect_images`).
* A folder's ``source`` is its last two path parts (``tbx11k_images``, ``chestxray14_bbox_256``), or for a
  folder written ``{data.root}/...`` its path after the root (``{data.root}/other`` -> ``other``):
  what ``screen.holdout_sources`` names, and what per-source figures are reported by.
* ``screen.extras`` adds pictures bundled in installed packages (:mod:`pipeline.gate.extras`) and
  ``screen.synthetic`` generated ones (:mod:`pipeline.gate.synthetic`) to ``screen.extras_class``.

**Groups.** A file's group is its name without the extension and without a trailing ``_<digits>``
(lower case): NIH ChestX-ray14's ``00001555_002`` -> patient ``00001555``, Shenzhen's
``CHNCXR_0017_1`` -> ``chncxr_0017``. A group is held out or trained on as a whole, in every folder it
appears in (the same NIH image in ``bbox_256`` and ``images_256``, one VinBigData image at three sizes).

**Split** (:func:`assign_splits`): every group of a ``screen.holdout_sources`` source is ``test``
(cross-source figures); of every other (class, source), a ``screen.holdout_fraction`` share of its
groups, chosen by a seeded hash (reproducible, independent of file order), is ``test``. Nothing is
tuned on ``test``: the model of the last epoch is the one evaluated.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.errors import ConfigError, DataError

TABLE_COLUMNS = ["image_id", "label", "source", "group", "kind", "path", "what"]
SOURCE_BALANCE = ("sqrt", "equal", "size")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]+")


def source_name(folder: str | Path) -> str:
    """``../shared/real/tbx11k/images`` -> ``tbx11k_images`` (the last two path parts, made safe)."""
    parts = [p for p in Path(folder).resolve().parts if p not in ("/", "")][-2:]
    return _UNSAFE.sub("_", "_".join(parts)).strip("_") or "root"


def group_key(path: str | Path) -> str:
    """File name without extension and trailing ``_<digits>``, lower case (see the module docstring)."""
    return re.sub(r"_\d+$", "", Path(path).stem).lower() or Path(path).stem.lower()


def resolve_folder(folder: str, key: str) -> Path:
    """A configured folder: as given (relative to the working directory), else under the project root."""
    from pipeline.paths import PROJECT_ROOT

    p = Path(folder).expanduser()
    for candidate in ([p] if p.is_absolute() else [Path.cwd() / p, PROJECT_ROOT / p]):
        if candidate.is_dir():
            return candidate.resolve()
    raise ConfigError(f"{key}: folder {folder!r} not found (relative paths are read from the working directory "
                      "or the project root); point it at a folder of images")


DATA_ROOT = "{data.root}"  # in a screen folder: the run's data.root (the demo's pictures move with it)


def class_folders(sc, data_root: str | Path | None = None) -> list[tuple[str, Path, str]]:
    """``(class, folder, config key)`` for every configured folder, classes checked against ``screen.classes``.
    A folder may start with ``{data.root}``, replaced by ``data_root``."""
    return [(label, folder, key) for label, folder, key, _ in folder_sources(sc, data_root)]


def _root_relative_source(folder: str) -> str:
    """``{data.root}/lungs/images`` -> ``lungs_images``, ``{data.root}/other`` -> ``other``: the same name
    wherever the data root lies, so moving a demo or dataset does not rename its pictures (and retrain)."""
    rel = [p for p in folder[len(DATA_ROOT):].replace("\\", "/").split("/") if p not in ("", ".")]
    return _UNSAFE.sub("_", "_".join(rel)).strip("_") or "root"


def folder_sources(sc, data_root: str | Path | None = None) -> list[tuple[str, Path, str, str]]:
    """:func:`class_folders` with each folder's source name: the path after ``{data.root}`` for a folder
    written that way (see :func:`_root_relative_source`), else its last two path parts (:func:`source_name`)."""
    classes = list(sc.classes)
    out: list[tuple[str, Path, str, str]] = []
    for label, folders in (sc.folders or {}).items():
        if label not in classes:
            raise ConfigError(f"screen.folders.{label}: {label!r} is not in screen.classes {classes}; add it there "
                              "or fix the name")
        if isinstance(folders, str):
            folders = [folders]
        if not isinstance(folders, list) or not all(isinstance(f, str) for f in folders):
            raise ConfigError(f"screen.folders.{label}: give a folder or a list of folders, got {folders!r}")
        if data_root is None and any(DATA_ROOT in f for f in folders):
            raise ConfigError(f"screen.folders.{label}: {DATA_ROOT} is only known inside a run (the screen stage)")
        for i, raw in enumerate(folders):
            f = raw.replace(DATA_ROOT, str(data_root)) if data_root is not None else raw
            key = f"screen.folders.{label}[{i}]"
            folder = resolve_folder(f, key)
            source = _root_relative_source(raw) if raw.startswith(DATA_ROOT) else source_name(folder)
            out.append((label, folder, key, source))
    if sc.image_root:
        root = resolve_folder(sc.image_root, "screen.image_root")
        for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if sub.name not in classes:
                raise ConfigError(f"screen.image_root: subfolder {sub} is not a class of screen.classes {classes}; "
                                  "rename it or add the class")
            out.append((sub.name, sub, f"screen.image_root/{sub.name}", source_name(sub)))
    return out


def build_table(sc, seed: int, data_root: str | Path | None = None) -> tuple[pd.DataFrame, list[str]]:
    """The table of every picture the ``screen:`` section names, and notes (missing bundled files)."""
    from pipeline.gate.extras import list_extras
    from pipeline.gate.images import collect_images
    from pipeline.gate.synthetic import KINDS

    rows, notes, seen = [], [], set()

    def add(label, source, group, kind, path, what, stem):
        image_id = _UNSAFE.sub("_", f"{source}__{stem}")
        base, n = image_id, 1
        while image_id in seen:
            n += 1
            image_id = f"{base}_{n}"
        seen.add(image_id)
        rows.append((image_id, label, source, group, kind, str(path), what))

    for label, folder, key, src in folder_sources(sc, data_root):
        files = collect_images([folder])
        if not files:
            raise DataError(f"{key}: no images (DICOM, PNG, JPEG...) found under {folder}")
        for f in files:
            add(label, src, group_key(f), "file", f, "", f.stem)
    if sc.extras or sc.synthetic:
        if sc.extras_class not in sc.classes:
            raise ConfigError(f"screen.extras_class: {sc.extras_class!r} is not in screen.classes {list(sc.classes)}")
    if sc.extras:
        try:
            found, missing = list_extras(list(sc.extras))
        except ValueError as exc:
            raise ConfigError(f"screen.extras: {exc}") from None
        for extra, path in found:
            add(sc.extras_class, extra.source, extra.group, "extra", path, extra.what, Path(extra.relpath).stem)
        notes += [f"bundled picture not found (package {e.package} missing?): {e.package}/{e.relpath}" for e in missing]
    for i in range(int(sc.synthetic)):
        kind = KINDS[i % len(KINDS)]
        add(sc.extras_class, "synthetic", f"synthetic_{i}", "synthetic", f"{kind}:{synthetic_seed(seed, i)}",
            f"synthetic {kind}", f"{kind}_{i:04d}")
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    empty = [c for c in sc.classes if not (table["label"] == c).any()] if len(table) else list(sc.classes)
    if empty:
        raise DataError(f"screen: no pictures for class(es) {empty}; give them folders in screen.folders "
                        "(or subfolders of screen.image_root)")
    return table, notes


def synthetic_seed(seed: int, index: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{index}".encode()).digest()[:4], "little")


def _rank(seed: int, group: str) -> str:
    return hashlib.sha256(f"{seed}:{group}".encode()).hexdigest()


def assign_splits(table: pd.DataFrame, fraction: float, holdout_sources, seed: int) -> pd.Series:
    """``train``/``test`` per row (see the module docstring); groups never straddle the two."""
    if not 0 <= fraction < 1:
        raise ConfigError(f"screen.holdout_fraction must be in [0, 1), got {fraction}")
    known = set(table["source"])
    wanted = {source_name(s) if ("/" in s and Path(s).exists()) else s for s in holdout_sources}
    unknown = sorted(wanted - known)
    if unknown:
        raise ConfigError(f"screen.holdout_sources: {unknown} not among the sources {sorted(known)}")
    split: dict[str, str] = {g: "test" for g in table.loc[table["source"].isin(wanted), "group"]}
    for (_, source), part in table[~table["source"].isin(wanted)].groupby(["label", "source"], sort=True):
        groups = sorted(set(part["group"]), key=lambda g: _rank(seed, g))
        n_test = int(round(fraction * len(groups)))
        if fraction > 0 and len(groups) >= 2:
            n_test = min(max(n_test, 1), len(groups) - 1)
        n_test -= sum(split.get(g) == "test" for g in groups)
        for g in groups:
            if g not in split:
                split[g] = "test" if n_test > 0 else "train"
                n_test -= split[g] == "test"
    return table["group"].map(split).rename("split")


def sample_weights(labels: np.ndarray, sources: np.ndarray, balance: str) -> np.ndarray:
    """Draw weights: every class equally often; inside a class, each source's share grows with its size
    as ``sqrt`` (default: a 9-image set is not drawn as often as a 600-image one, nor 8x less),
    ``equal`` or ``size`` (plain per-image)."""
    if balance not in SOURCE_BALANCE:
        raise ConfigError(f"screen.source_balance: {balance!r} is not one of {list(SOURCE_BALANCE)}")
    w = np.zeros(len(labels), dtype=np.float64)
    classes = np.unique(labels)
    for c in classes:
        in_c = labels == c
        srcs, counts = np.unique(sources[in_c], return_counts=True)
        share = {"sqrt": np.sqrt(counts), "equal": np.ones_like(counts, float), "size": counts.astype(float)}[balance]
        share = share / share.sum()
        for s, n, sh in zip(srcs, counts, share):
            w[in_c & (sources == s)] = sh / n / len(classes)
    return w


def load_picture(row, side: int) -> np.ndarray:
    """One table row as uint8 (side, side, 3): decoded, then squashed to a square (aspect not kept, for
    every class alike, so padding or aspect can not tell the classes apart)."""
    import cv2

    from pipeline.gate.extras import EXTRAS, read_extra
    from pipeline.gate.images import read_rgb
    from pipeline.gate.synthetic import synthetic_image

    if row.kind == "synthetic":
        kind, seed = row.path.split(":")
        img = synthetic_image(kind, int(seed))
    elif row.kind == "extra":
        extra = next(e for e in EXTRAS if Path(row.path).as_posix().endswith(e.relpath))
        img = read_extra(extra, Path(row.path), max_side=side * 2)
    else:
        img = read_rgb(row.path, max_side=side * 2)
    interp = cv2.INTER_AREA if min(img.shape[:2]) >= side else cv2.INTER_LINEAR
    return cv2.resize(img, (side, side), interpolation=interp)


def load_pictures(table: pd.DataFrame, side: int, progress: bool = True) -> tuple[list, dict[str, str]]:
    """Every row's picture (None where it failed) and ``{image_id: error}`` for the failures."""
    from tqdm import tqdm

    pics, errors = [], {}
    for row in tqdm(list(table.itertuples(index=False)), desc="[screen] reading pictures", disable=not progress,
                    mininterval=5):
        try:
            pics.append(load_picture(row, side))
        except DataError as exc:
            pics.append(None)
            errors[row.image_id] = str(exc)
    return pics, errors
