"""The tables between the readers and the rest of the pipeline, and the raw tables between a reader and
the shared validation pass (:mod:`pipeline.sources.validate`).

Output (see docs/DESIGN.md):

* **annotations**: ``image_id, class_id, class_name, rad_id, x_min, y_min, x_max, y_max``, one row per box
  (or per "no finding" reading, with NaN box). Coordinates are absolute pixels of the image FILE that
  ``images.source`` names, corners, ``x`` to the right and ``y`` down, ``0 <= x_min < x_max <= width``.
* **images**: ``image_id, split (train|test), patient_id, width, height, labels, source``.

Raw (what a reader returns; nothing checked yet):

* **raw images**: the output columns, with ``width, height`` (float, NaN when unknown) the size read from
  the file (or given by a size table the reader trusts), plus ``exists`` (the file is on disk),
  ``size_error`` (why the size could not be read, '' when fine), ``declared_width, declared_height``
  (the size the annotation files state, used by ``data.missing_images=assume``), ``labels`` None where
  they are to be derived from the annotations, and the place each row came from: ``_file``, ``_line``
  (0 = none), ``_at`` (a locator where there are no lines, '' otherwise).
* **raw boxes**: ``image_id``, ``class_name`` and/or ``class_id`` (as written), ``rad_id``, the four
  corners (float) in the coordinate space ``space_w x space_h`` (NaN: the file's own pixels; 1 x 1:
  normalised, as YOLO), ``_normal`` (a row the reader made for an image without objects), ``_file``,
  ``_line``, ``_at``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.sources.problems import Problems

ANNOTATION_COLUMNS = ["image_id", "class_id", "class_name", "rad_id", "x_min", "y_min", "x_max", "y_max"]
IMAGE_COLUMNS = ["image_id", "split", "patient_id", "width", "height", "labels", "source"]
BOX_COLUMNS = ["x_min", "y_min", "x_max", "y_max"]
SPLITS = ("train", "test")
NORMAL_NAME = "No finding"  # the normal class of yolo / voc / coco datasets (last id)
MISSING_IMAGES = ("auto", "error", "skip", "assume")
# data.missing_images=auto: ChestX-ray14's Data_Entry lists the whole NIH release, of which a folder often holds
# a part (bbox_256/, one images_0NN/): the absent ones are left out (counted). Every other format's files list
# the images of the dataset itself, so an absent one is an error.
MISSING_AUTO = {"chestxray14": "skip"}
PLACE_COLUMNS = ["_file", "_line", "_at"]


@dataclass
class Dataset:
    """The two tables, notes on what was fixed or assumed, and the class names (findings at 0..n-1, the
    normal class last at id n)."""

    annotations: pd.DataFrame
    images: pd.DataFrame
    report: list[str] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)

    @property
    def normal_id(self) -> int:
        return len(self.classes) - 1


@dataclass(frozen=True)
class Options:
    """The ``data:`` keys the readers use (see configs/default.yaml), checked by ``pipeline.sources``."""

    root: Path
    limit: int | None = None
    missing_images: str = "error"
    images_subdir: tuple[str, ...] = ()
    annotations: tuple[str, ...] = ()
    test_split: str = "test"
    classes: tuple[str, ...] | None = None
    official_split: bool = True
    meta_csv: str | None = None
    test_meta_csv: str | None = None


@dataclass
class RawDataset:
    """What a reader returns: raw tables (see the module docstring), to be checked once by ``validate.finish``.

    ``classes``: all names, normal last. ``aliases``: other spellings of names. ``class_ids``: raw
    ``class_id`` value -> class index (None: the value is the index, 0..n). ``class_id_label``: what the
    raw id is called in messages. ``sizes_from``: where image sizes came from. ``boxes_from``: a short
    name of the annotation file(s), for report lines. ``check_bounds``: False when no image sizes exist
    (a CSV read without its size table).
    """

    classes: list[str]
    images: pd.DataFrame
    boxes: pd.DataFrame
    problems: Problems = field(default_factory=Problems)
    report: list[str] = field(default_factory=list)
    aliases: dict[str, str] = field(default_factory=dict)
    class_ids: dict | None = None
    class_id_label: str = "class id"
    sizes_from: str = "the image file"
    boxes_from: str = "annotations"
    check_bounds: bool = True


def _column(value, n: int, dtype) -> pd.Series:
    if isinstance(value, pd.Series):
        return pd.Series(value.to_numpy(), dtype=dtype)
    if value is None or np.isscalar(value):
        return pd.Series([value] * n, dtype=dtype)
    return pd.Series(list(value), dtype=dtype)


def raw_images(image_id, split, source, *, file, line=0, at="", exists=True, width=np.nan, height=np.nan,
               declared_width=np.nan, declared_height=np.nan, patient_id="", labels=None,
               size_error="", sizes_from="") -> pd.DataFrame:
    """A raw images table; scalars are broadcast. ``labels`` None = derive from the annotations.
    ``sizes_from``: where this row's size comes from, for messages ('' = the dataset's ``sizes_from``)."""
    ids = pd.Series(list(image_id) if not isinstance(image_id, pd.Series) else image_id.to_numpy(), dtype="str")
    n = len(ids)
    return pd.DataFrame({
        "image_id": ids, "split": _column(split, n, "str"), "patient_id": _column(patient_id, n, "str"),
        "labels": _column(labels, n, "object"), "source": _column(source, n, "str"),
        "exists": _column(exists, n, "bool"), "width": _column(width, n, "float64"),
        "height": _column(height, n, "float64"), "declared_width": _column(declared_width, n, "float64"),
        "declared_height": _column(declared_height, n, "float64"), "size_error": _column(size_error, n, "str"),
        "sizes_from": _column(sizes_from, n, "str"),
        "_file": _column(file, n, "str"), "_line": _column(line, n, "int64"), "_at": _column(at, n, "str"),
    })


def raw_boxes(image_id, *, file, line=0, at="", rad_id="", class_name=None, class_id=None,
              x_min=np.nan, y_min=np.nan, x_max=np.nan, y_max=np.nan, space_w=np.nan, space_h=np.nan,
              normal=False) -> pd.DataFrame:
    """A raw boxes table; give ``class_name`` and/or ``class_id`` (as written in the file). ``normal``: True
    for the rows a reader adds for an image without any object (the normal class; no class to resolve)."""
    ids = pd.Series(list(image_id) if not isinstance(image_id, pd.Series) else image_id.to_numpy(), dtype="str")
    n = len(ids)
    cols = {"image_id": ids}
    if class_name is not None:
        cols["class_name"] = _column(class_name, n, "object")
    if class_id is not None:
        cols["class_id"] = _column(class_id, n, "object")
    cols.update({"rad_id": _column(rad_id, n, "str"),
                 **{c: _column(v, n, "float64") for c, v in zip(BOX_COLUMNS, (x_min, y_min, x_max, y_max))},
                 "space_w": _column(space_w, n, "float64"), "space_h": _column(space_h, n, "float64"),
                 "_normal": _column(normal, n, "bool"), "_file": _column(file, n, "str"), "_line": _column(line, n, "int64"), "_at": _column(at, n, "str")})
    return pd.DataFrame(cols)


def finalize_annotations(df: pd.DataFrame) -> pd.DataFrame:
    """The annotation table in its contract form: fixed columns and dtypes, original row order."""
    out = pd.DataFrame({
        "image_id": df["image_id"].astype("str"),
        "class_id": df["class_id"].astype("int64"),
        "class_name": df["class_name"].astype("str"),
        "rad_id": df["rad_id"].astype("str").fillna(""),
        **{c: df[c].astype("float64") for c in BOX_COLUMNS},
    })
    return out.reset_index(drop=True)


def empty_annotations() -> pd.DataFrame:
    return finalize_annotations(pd.DataFrame({c: pd.Series([], dtype="float64" if c in BOX_COLUMNS else
                                                            "int64" if c == "class_id" else "str")
                                              for c in ANNOTATION_COLUMNS}))


def make_images(df: pd.DataFrame) -> pd.DataFrame:
    """The images table in its contract form (width/height int64 pixels, text columns str, '' for unknown)."""
    out = pd.DataFrame({
        "image_id": df["image_id"].astype("str"), "split": df["split"].astype("str"),
        "patient_id": df["patient_id"].fillna("").astype("str"),
        "width": df["width"].astype("int64"), "height": df["height"].astype("int64"),
        "labels": df["labels"].fillna("").astype("str"), "source": df["source"].astype("str"),
    })
    return out[IMAGE_COLUMNS].reset_index(drop=True)


def keep_first_per_split(images: pd.DataFrame, limit: int | None) -> pd.DataFrame:
    """The first ``limit`` rows of each split (file order), or all rows when ``limit`` is None."""
    if limit is None:
        return images
    return images.groupby("split", sort=False).head(int(limit)).reset_index(drop=True)


def split_normal(names: list[str]) -> tuple[list[str], dict[str, str]]:
    """Finding names plus the normal class last, from a dataset's own class names (YOLO names, COCO
    categories, VOC names). A name that spells the normal class ('No finding', any case) is not a finding:
    it is returned as an alias of the normal class."""
    findings = [n for n in names if n.strip().lower() != NORMAL_NAME.lower()]
    aliases = {n: NORMAL_NAME for n in names if n.strip().lower() == NORMAL_NAME.lower() and n != NORMAL_NAME}
    return findings + [NORMAL_NAME], aliases
