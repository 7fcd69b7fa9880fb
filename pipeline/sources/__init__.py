"""Readers of dataset files into the project's two tables (docs/DESIGN.md, docs/notes/datasets.md):

* ``annotations``: ``image_id, class_id, class_name, rad_id, x_min, y_min, x_max, y_max`` (pixels of the
  image file, corners; NaN box for "no finding" rows);
* ``images``: ``image_id, split, patient_id, width, height, labels, source``.

``load_dataset(cfg)`` picks the reader from ``cfg.data.format``::

    from pipeline.sources import load_dataset
    ds = load_dataset(cfg)   # ds.annotations, ds.images, ds.report (notes), ds.classes (normal class last)

Shape: each reader (``vinbigdata``, ``chestxray14``, ``yolo``, ``voc``, ``coco``) only parses its files into
raw tables (:mod:`pipeline.sources.tables`); :func:`pipeline.sources.validate.finish` checks them once.
"""
from __future__ import annotations

from pathlib import Path

from pipeline.errors import ConfigError
from pipeline.sources.chestxray14 import (
    parse_chestxray14, png_size, read_bbox_list, read_data_entry, read_split_list,
)
from pipeline.sources.coco import find_coco_files, parse_coco
from pipeline.sources.tables import (
    ANNOTATION_COLUMNS, IMAGE_COLUMNS, MISSING_AUTO, MISSING_IMAGES, NORMAL_NAME, Dataset, Options,
)
from pipeline.sources.validate import CLIP_TOLERANCE_PX, finish, labels_from_annotations
from pipeline.sources.vinbigdata import (
    dicom_sizes, parse_vinbigdata, read_image_sizes, read_sample_submission, read_vinbigdata_train,
)
from pipeline.sources.voc import find_voc_xml_dir, parse_voc
from pipeline.sources.yolo import find_yolo_yaml, parse_yolo

READERS = {"vinbigdata": parse_vinbigdata, "chestxray14": parse_chestxray14, "yolo": parse_yolo,
           "voc": parse_voc, "coco": parse_coco}
FORMATS = tuple(READERS)

__all__ = [
    "ANNOTATION_COLUMNS", "CLIP_TOLERANCE_PX", "FORMATS", "IMAGE_COLUMNS", "NORMAL_NAME", "Dataset", "Options",
    "dicom_sizes", "has_dataset", "labels_from_annotations", "load_chestxray14", "load_dataset",
    "load_vinbigdata", "options_from_config", "png_size", "read_bbox_list", "read_data_entry",
    "read_image_sizes", "read_sample_submission", "read_split_list", "read_vinbigdata_train",
]


def _names(value, key: str, allow_empty: bool = False) -> tuple[str, ...]:
    """A config value that is null, one name or a list of names, as a tuple of non-empty strings."""
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(v, str) and v.strip() for v in items):
        raise ConfigError(f"{key} must be null, a name or a list of names, got {value!r}.")
    if not items and not allow_empty:
        raise ConfigError(f"{key} must not be an empty list; use null for the default.")
    return tuple(v.strip() for v in items)


def options_from_config(data) -> Options:
    """The reader options from ``cfg.data``, checked (ConfigError names the key). Keys absent from ``data``
    take their defaults, so a hand-made config with only ``format`` and ``root`` works."""
    fmt = str(data.get("format"))
    if fmt not in READERS:
        raise ConfigError(f"data.format must be one of {list(FORMATS)}, got {fmt!r}.")
    limit = data.get("limit")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"data.limit must be a positive integer or null, got {limit!r}.")
    missing = str(data.get("missing_images", "auto"))
    if missing not in MISSING_IMAGES:
        raise ConfigError(f"data.missing_images must be one of {list(MISSING_IMAGES)}, got {missing!r}.")
    if missing == "auto":
        missing = MISSING_AUTO.get(fmt, "error")
    test_split = data.get("test_split", "test")
    if not isinstance(test_split, str) or not test_split.strip() or test_split.strip().lower() == "train":
        raise ConfigError(f"data.test_split must name the split that becomes test (e.g. test or val), got {test_split!r}.")
    classes = _names(data.get("classes"), "data.classes") or None
    if classes is not None:
        if fmt != "voc":
            raise ConfigError(f"data.classes applies to data.format=voc only (yolo and coco files name their classes); "
                              f"set it to null for {fmt}.")
        if len(set(classes)) != len(classes):
            raise ConfigError(f"data.classes names a class twice: {list(classes)!r}.")
    subdirs = _names(data.get("images_subdir"), "data.images_subdir")
    if subdirs and fmt in ("vinbigdata", "yolo"):
        raise ConfigError(f"data.images_subdir does not apply to data.format={fmt} "
                          + ("(the data YAML names the image folders)" if fmt == "yolo" else "(DICOMs are in train/ and test/)")
                          + "; set it to null.")
    return Options(root=Path(str(data.get("root"))), limit=limit, missing_images=missing, images_subdir=subdirs,
                   annotations=_names(data.get("annotations"), "data.annotations"), test_split=test_split.strip(),
                   classes=classes, official_split=bool(data.get("official_split", True)),
                   meta_csv=data.get("meta_csv"), test_meta_csv=data.get("test_meta_csv"))


def load_dataset(cfg) -> Dataset:
    """Read the dataset named by ``cfg.data`` into a :class:`Dataset`: the format's reader parses its files,
    one shared pass validates them. Raises DataError on bad files, ConfigError on bad ``data.*`` keys."""
    data = cfg.data if hasattr(cfg, "data") else cfg["data"]
    opts = options_from_config(data)
    raw = READERS[str(data.get("format"))](opts)
    return finish(raw, opts.missing_images)


def has_dataset(root: Path | str, fmt: str, annotations=None) -> bool:
    """True when ``root`` holds the dataset's main annotation file (train.csv, Data_Entry, the YOLO data YAML,
    the VOC XML folder, a COCO JSON); ``annotations`` is ``data.annotations`` where the format uses it."""
    root = Path(root)
    if fmt not in READERS:
        raise ConfigError(f"data.format must be one of {list(FORMATS)}, got {fmt!r}.")
    if not root.is_dir():
        return False
    names = _names(annotations, "data.annotations")
    if fmt == "vinbigdata":
        return (root / "train.csv").is_file()
    if fmt == "chestxray14":
        return any(root.glob("Data_Entry*.csv*"))
    if fmt == "yolo":
        return find_yolo_yaml(root, names, required=False) is not None
    if fmt == "voc":
        return find_voc_xml_dir(root, names, required=False) is not None
    return bool(find_coco_files(root, names, required=False))


# --------------------------------------------------------------------------------------------------
# the two readers' former entry points, kept for scripts and notebooks: load_dataset underneath
# --------------------------------------------------------------------------------------------------
def load_vinbigdata(root, meta_csv=None, test_meta_csv=None, limit=None, missing_images: str = "auto") -> Dataset:
    """VinBigData from the Kaggle layout (see :mod:`pipeline.sources.vinbigdata`)."""
    return load_dataset({"data": {"format": "vinbigdata", "root": str(root), "meta_csv": meta_csv,
                                  "test_meta_csv": test_meta_csv, "limit": limit, "missing_images": missing_images}})


def load_chestxray14(root, official_split: bool = True, images_subdir=None, limit=None,
                     missing_images: str = "auto") -> Dataset:
    """ChestX-ray14 from the NIH layout (see :mod:`pipeline.sources.chestxray14`)."""
    return load_dataset({"data": {"format": "chestxray14", "root": str(root), "official_split": official_split,
                                  "images_subdir": images_subdir, "limit": limit, "missing_images": missing_images}})

