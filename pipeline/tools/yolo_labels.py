"""``python -m pipeline yolo-labels``: fuse the radiologists' boxes of train.csv and write YOLO label files.

Example (the whole Kaggle train.csv in a few seconds)::

    python -m pipeline yolo-labels --annotations train.csv --meta train_meta.csv --out labels/ --fuse wbf

Writes ``OUT/<image_id>.txt`` for every image of the annotations (empty for a normal image),
``OUT/boxes.csv`` (the fused boxes in original pixels, train.csv form + n_readers) and
``OUT/dataset.yaml`` (the 14 finding names; class index = class_id). Labels are normalised by the
ORIGINAL image size from ``--meta``, so they fit PNGs of any size with the original aspect ratio
(or square ones).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from pipeline.classes import finding_names
from pipeline.errors import DataError
from pipeline.io import write_csv_atomic
from pipeline.labels import FUSE_METHODS, dataset_yaml, fuse_annotations, write_yolo_labels
from pipeline.paths import is_safe_id


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pipeline yolo-labels",
        description="Fuse the radiologists' boxes (VinBigData train.csv) per image and class and write one YOLO "
                    "label file per image, plus boxes.csv and dataset.yaml.")
    p.add_argument("--annotations", required=True, type=Path,
                   help="VinBigData train.csv: image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max")
    p.add_argument("--meta", required=True, type=Path,
                   help="image sizes: image_id,dim0,dim1 (Kaggle train_meta.csv, dim0 = height) or the "
                        "project's meta.csv (image_id,height,width: original pixels)")
    p.add_argument("--out", required=True, type=Path, help="output folder for <image_id>.txt, boxes.csv, dataset.yaml")
    p.add_argument("--fuse", default="wbf", choices=FUSE_METHODS,
                   help="how boxes of one image and class are merged (default: wbf)")
    p.add_argument("--iou-thr", type=float, default=0.4, help="IoU at which boxes are merged (default: 0.4)")
    p.add_argument("--classes", type=int, nargs="+", default=None, metavar="ID",
                   help="finding ids to keep (default: all, 0..13)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from pipeline.sources.vinbigdata import read_image_sizes, read_vinbigdata_train

    start = time.perf_counter()
    sizes = read_image_sizes(args.meta)
    annotations, report = read_vinbigdata_train(args.annotations, sizes, sizes_from=str(args.meta))
    for line in report:
        print(line)
    if annotations.empty:
        raise DataError(f"{args.annotations}: no annotation rows; nothing to write.")
    t_read = time.perf_counter() - start

    t0 = time.perf_counter()
    boxes = fuse_annotations(annotations, sizes, method=args.fuse, iou_thr=args.iou_thr, classes=args.classes)
    t_fuse = time.perf_counter() - t0

    t0 = time.perf_counter()
    out: Path = args.out
    image_ids = list(dict.fromkeys(annotations["image_id"].astype("str")))
    unsafe = [i for i in image_ids if not is_safe_id(i)]
    if unsafe:  # the reader rejects these already; kept as a guard since ids become file names here
        raise DataError(f"{args.annotations}: image ids that are not safe file names, e.g. {unsafe[:3]}.")
    n_files = write_yolo_labels(boxes, sizes, lambda i: out / f"{i}.txt", image_ids)
    write_csv_atomic(boxes, out / "boxes.csv")
    dataset_yaml(finding_names("vinbigdata"), out / "dataset.yaml")
    t_write = time.perf_counter() - t0

    n_find = int((boxes["class_id"] != 14).sum())
    n_normal = int((boxes["class_id"] == 14).sum())
    print(f"{len(annotations)} annotation rows, {len(image_ids)} images: {n_find} {args.fuse} boxes "
          f"(from {int(annotations['x_min'].notna().sum())} drawn), {n_normal} images without a box")
    print(f"wrote {n_files} label files, boxes.csv and dataset.yaml to {out}")
    print(f"time: read {t_read:.2f} s, fuse {t_fuse:.2f} s, write {t_write:.2f} s, "
          f"total {time.perf_counter() - start:.2f} s")
    return 0
