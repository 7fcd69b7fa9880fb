"""Synthetic chest radiographs in the real on-disk layouts (the embedded demo dataset).

``make_demo(out, fmt, n_train, n_test, seed)`` writes a VinBigData-layout (DICOMs, 3 readers per
train image) or ChestX-ray14-layout (PNGs, Data_Entry_2017.csv, split lists, BBox list) dataset that
the real readers load like the originals, plus two side sets:

* ``out/lungs/``: every image again as a PNG with its lung-field mask and ``split.csv``
  (:mod:`pipeline.demo.lungs`; read by :mod:`pipeline.lungs.data`), so the demo trains a segmentation;
* ``out/other/``: a few images that are not chest X-rays, ``labels.csv`` (:mod:`pipeline.demo.other`),
  for the input gate.

Rendering lives in :mod:`pipeline.demo.synth` (anatomy, findings and geometry in their own modules).
"""
from __future__ import annotations

import json
from pathlib import Path

from pipeline.demo import lungs as _lungs
from pipeline.demo import other as _other
from pipeline.errors import DataError
from pipeline.io import write_text_atomic

FORMATS = ("vinbigdata", "chestxray14")
MARKER = ".demo.json"   # written into every demo folder; lets a re-run replace what an earlier run wrote


def make_demo(out: Path, fmt: str = "vinbigdata", n_train: int = 240, n_test: int = 60, seed: int = 42,
              classes=None, image_size: int = 1024, other_per_kind: int = 2) -> Path:
    """Write the synthetic dataset into ``out`` and return ``out``.

    ``fmt``: "vinbigdata" or "chestxray14". ``classes``: finding names to draw (VinBigData names for
    vinbigdata, ChestX-ray14 labels for chestxray14); None = the format's ``DEFAULT_CLASSES``, a few
    distinct, common classes so a small model learns them quickly. ``image_size``: ChestX-ray14 PNG
    side (NIH's is 1024; its BBox list stays in 1024-pixel space whatever this is). ``other_per_kind``:
    non-chest images of each kind in ``out/other/`` (0 = none).

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
    info["lung_masks"] = n_train + n_test
    info["other"] = _other.write_other(out, seed, other_per_kind) if other_per_kind > 0 else 0
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
    _lungs.clean(out)
    _other.clean(out)
    for name in ("train.csv", "test_truth.csv", "train_meta.csv", "test_meta.csv", "sample_submission.csv",
                 "Data_Entry_2017.csv", "BBox_List_2017.csv", "train_val_list.txt", "test_list.txt", MARKER):
        (out / name).unlink(missing_ok=True)


def ensure_demo(cfg, stage: str, need: str | None = None) -> None:
    """With ``data.demo`` on, write the demo into ``data.root`` when it is not there yet (or lacks the side
    set ``need``, e.g. ``lungs`` or ``other``), so whichever demo stage runs first finds its data."""
    from pipeline.sources import has_dataset

    root, fmt = Path(cfg.data.root), str(cfg.data.format)
    if not cfg.data.demo:
        return
    if has_dataset(root, fmt, cfg.data.get("annotations")) and (need is None or (root / need).is_dir()):
        return
    print(f"[{stage}] data.demo: generating the synthetic {fmt} dataset in {root} "
          f"({cfg.data.demo_n_train} train, {cfg.data.demo_n_test} test images, lung masks, non-chest pictures)")
    make_demo(root, fmt=fmt, n_train=int(cfg.data.demo_n_train), n_test=int(cfg.data.demo_n_test),
              seed=int(cfg.run.seed))
