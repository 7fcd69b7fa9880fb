"""``python -m pipeline demo-data OUT``: write the synthetic demo dataset in a real on-disk layout."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pipeline demo-data",
        description="Write synthetic chest radiographs in the VinBigData (DICOM + train.csv, 3 readers per image) "
                    "or ChestX-ray14 (PNG + Data_Entry_2017.csv) layout. The same seed gives the same bytes.")
    p.add_argument("out", type=Path, help="folder to write (must be empty, new, or an earlier demo folder)")
    p.add_argument("--format", dest="fmt", choices=["vinbigdata", "chestxray14"], default="vinbigdata")
    p.add_argument("--n-train", type=int, default=240, help="train (ChestX-ray14: train_val) images (default 240)")
    p.add_argument("--n-test", type=int, default=60, help="test images (default 60)")
    p.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    p.add_argument("--classes", default=None,
                   help="comma-separated finding names to draw (default: a few common, distinct classes)")
    p.add_argument("--image-size", type=int, default=1024, help="ChestX-ray14 PNG side (default 1024, like NIH)")
    return p


def main(argv: list[str] | None = None) -> int:
    from pipeline.demo import MARKER, make_demo

    args = _parser().parse_args(argv)
    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
    t0 = time.perf_counter()
    out = make_demo(args.out, fmt=args.fmt, n_train=args.n_train, n_test=args.n_test, seed=args.seed,
                    classes=classes, image_size=args.image_size)
    info = json.loads((out / MARKER).read_text())
    secs = time.perf_counter() - t0
    if args.fmt == "vinbigdata":
        print(f"wrote {info['train']} train and {info['test']} test DICOMs to {out}/train, {out}/test "
              f"({info['j2k']} JPEG 2000, {info['monochrome1']} MONOCHROME1, {info['tagless']} nearly tagless) "
              f"in {secs:.1f} s")
        print(f"tables: train.csv ({info['train_rows']} reader rows), test_truth.csv, train_meta.csv, test_meta.csv, "
              "sample_submission.csv")
    else:
        print(f"wrote {info['train'] + info['test']} PNGs ({info['image_size']} px) of {info['patients']} patients "
              f"to {out}/images in {secs:.1f} s")
        print(f"tables: Data_Entry_2017.csv, BBox_List_2017.csv ({info['bbox_rows']} boxes), "
              "train_val_list.txt, test_list.txt")
    print(f"classes drawn: {', '.join(info['classes'])}")
    return 0
