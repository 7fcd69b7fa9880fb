"""Synthetic chest radiographs in the real on-disk layouts (the embedded demo dataset).

``make_demo(out, fmt, n_train, n_test, seed)`` writes a VinBigData-layout (DICOMs, 3 readers per
train image) or ChestX-ray14-layout (PNGs, Data_Entry_2017.csv, split lists, BBox list) dataset that
the real readers load like the originals. Rendering lives in :mod:`pipeline.demo.synth`.
"""
from __future__ import annotations

import json
from pathlib import Path

from pipeline.errors import DataError
from pipeline.io import write_text_atomic

FORMATS = ("vinbigdata", "chestxray14")
MARKER = ".demo.json"   # written into every demo folder; lets a re-run replace what an earlier run wrote


def make_demo(out: Path, fmt: str = "vinbigdata", n_train: int = 240, n_test: int = 60, seed: int = 42,
              classes=None, image_size: int = 1024) -> Path:
    """Write the synthetic dataset into ``out`` and return ``out``.

    ``fmt``: "vinbigdata" or "chestxray14". ``classes``: finding names to draw (VinBigData names for
    vinbigdata, ChestX-ray14 labels for chestxray14); None = the format's ``DEFAULT_CLASSES``, a few
    distinct, common classes so a small model learns them quickly. ``image_size``: ChestX-ray14 PNG
    side (NIH's is 1024; its BBox list stays in 1024-pixel space whatever this is).

    The same arguments always give byte-identical files. ``out`` must be empty, missing, or an
    earlier demo folder (then the images of the earlier run are removed first, so no stale file
    lingers); any other non-empty folder is refused, so real data is never overwritten.
    """
    out = Path(out)
    if fmt not in FORMATS:
        raise DataError(f"demo format {fmt!r} is not known; use one of: {', '.join(FORMATS)}.")
    if n_train < 1 or n_test < 0:
        raise DataError(f"demo sizes n_train={n_train}, n_test={n_test}: need n_train >= 1 and n_test >= 0.")
    _prepare_folder(out)
    try:
        if fmt == "vinbigdata":
            from pipeline.demo.vinbigdata import write_vinbigdata

            info = write_vinbigdata(out, n_train, n_test, seed, classes)
        else:
            from pipeline.demo.chestxray14 import write_chestxray14

            info = write_chestxray14(out, n_train, n_test, seed, classes, image_size)
    except ValueError as e:   # bad class names
        raise DataError(str(e)) from None
    write_text_atomic(out / MARKER, json.dumps({"format": fmt, "n_train": n_train, "n_test": n_test,
                                                "seed": seed, **info}, indent=1, sort_keys=True) + "\n")
    return out


def _prepare_folder(out: Path) -> None:
    if not out.exists():
        out.mkdir(parents=True)
        return
    if not out.is_dir():
        raise DataError(f"{out} is a file; give demo-data a folder to write the dataset into.")
    entries = list(out.iterdir())
    if not entries:
        return
    if not (out / MARKER).is_file():
        raise DataError(f"{out} is not empty and was not written by demo-data ({MARKER} is missing); "
                        "refusing to write synthetic data into it. Choose an empty or new folder.")
    # An earlier demo: remove its images and tables (only the kinds of files a demo writes).
    for sub, pattern in (("train", "*.dicom"), ("test", "*.dicom"), ("images", "*.png")):
        for p in (out / sub).glob(pattern):
            p.unlink()
    for name in ("train.csv", "test_truth.csv", "train_meta.csv", "test_meta.csv", "sample_submission.csv",
                 "Data_Entry_2017.csv", "BBox_List_2017.csv", "train_val_list.txt", "test_list.txt", MARKER):
        (out / name).unlink(missing_ok=True)
