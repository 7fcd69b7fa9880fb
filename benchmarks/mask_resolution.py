"""How much lung IoU the network's input size alone costs: truth masks through the segment stage's own
letterbox and back to original pixels, scored against themselves (docs/notes/lungs.md).

    .venv/bin/python benchmarks/mask_resolution.py ../shared/real/shenzhen --split valid --n 40 --sizes 128 192 256

Each truth mask is letterboxed to the size as the stage letterboxes its images (area interpolation when
shrinking), mapped back with the stage's ``unletterbox`` (bilinear) and thresholded at 0.5, the stage's
default. The IoU printed is the best a perfect network could score at that size: if it is far above what the
model reaches, the errors are the network's, not the resolution's. Reads only the split named (choose
settings on ``valid``, never on ``test``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def round_trip_iou(mask: np.ndarray, size: int, threshold: float = 0.5) -> float:
    """IoU of a boolean mask with itself after the letterbox to ``size`` and back."""
    from pipeline.lungs.metrics import dice_iou
    from pipeline.lungs.preprocess import letterbox_arrays, unletterbox

    (small,), _, lb = letterbox_arrays([mask.astype(np.float32)], size)
    return dice_iou(unletterbox(small, lb) > threshold, mask)[1]


def main(argv=None) -> int:
    from pipeline.lungs.data import read_mask, read_mask_dataset

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", type=Path, help="a lung-mask dataset folder (any layout the segment stage reads)")
    ap.add_argument("--layout", default="auto")
    ap.add_argument("--split", default="valid")
    ap.add_argument("--n", type=int, default=40, help="masks read (the first N of the split, by id)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 192, 256])
    args = ap.parse_args(argv)
    items = sorted(read_mask_dataset(args.root, args.layout).split(args.split), key=lambda it: it.image_id)[:args.n]
    if not items:
        print(f"error: no {args.split!r} images in {args.root}", file=sys.stderr)
        return 2
    masks = [read_mask(it.masks) for it in items]
    print(f"{args.root}: {len(masks)} {args.split} masks")
    for size in args.sizes:
        ious = [round_trip_iou(m, size) for m in masks]
        print(f"{size:5d} px: round-trip IoU mean {np.mean(ious):.4f}, min {np.min(ious):.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
