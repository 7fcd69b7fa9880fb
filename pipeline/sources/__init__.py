"""Readers of the real dataset files into the project's two tables (docs/DESIGN.md):

* ``annotations``: ``image_id, class_id, class_name, rad_id, x_min, y_min, x_max, y_max`` (original pixels,
  corners; NaN box for "no finding" rows);
* ``images``: ``image_id, split, patient_id, width, height, labels, source``.

``load_dataset(cfg)`` picks the reader from ``cfg.data.format``::

    from pipeline.sources import load_dataset
    ds = load_dataset(cfg)          # ds.annotations, ds.images, ds.report (notes on what was fixed/assumed)
"""
from __future__ import annotations

from pipeline.errors import ConfigError
from pipeline.sources.chestxray14 import (
    load_chestxray14, png_size, read_bbox_list, read_data_entry, read_split_list,
)
from pipeline.sources.common import (
    ANNOTATION_COLUMNS, CLIP_TOLERANCE_PX, IMAGE_COLUMNS, Dataset, labels_from_annotations, validate_boxes,
)
from pipeline.sources.vinbigdata import (
    dicom_sizes, load_vinbigdata, read_image_sizes, read_sample_submission, read_vinbigdata_train,
)

FORMATS = ("vinbigdata", "chestxray14")

__all__ = [
    "ANNOTATION_COLUMNS", "CLIP_TOLERANCE_PX", "FORMATS", "IMAGE_COLUMNS", "Dataset", "dicom_sizes",
    "labels_from_annotations", "load_chestxray14", "load_dataset", "load_vinbigdata", "png_size",
    "read_bbox_list", "read_data_entry", "read_image_sizes", "read_sample_submission", "read_split_list",
    "read_vinbigdata_train", "validate_boxes",
]


def load_dataset(cfg) -> Dataset:
    """Read the dataset named by ``cfg.data`` (format, root, meta_csv, test_meta_csv, limit,
    official_split, images_subdir) into a :class:`Dataset`. Raises DataError on bad files, ConfigError on
    an unknown format or a bad limit."""
    data = cfg.data
    fmt = str(data.format)
    limit = data.get("limit")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"data.limit must be a positive integer or null, got {limit!r}.")
    if fmt == "vinbigdata":
        return load_vinbigdata(data.root, meta_csv=data.get("meta_csv"), test_meta_csv=data.get("test_meta_csv"),
                               limit=limit)
    if fmt == "chestxray14":
        return load_chestxray14(data.root, official_split=bool(data.get("official_split", True)),
                                images_subdir=data.get("images_subdir"), limit=limit)
    raise ConfigError(f"data.format must be one of {list(FORMATS)}, got {fmt!r}.")
