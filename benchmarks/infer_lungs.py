"""Lung masks through ``./run.sh infer`` scored against a mask dataset: what a user (or an outside check)
gets from a finished lung run on new images, not what the segment stage measured on its own split.

    .venv/bin/python benchmarks/infer_lungs.py runs/lungs_shenzhen ../shared/real/shenzhen --split test \\
        --out /tmp/infer_lungs

It reads the dataset with the segment stage's readers (any layout of docs/notes/lungs.md: images/ +
masks/, the NLM CXR_png/ + masks/ downloads, Montgomery's ManualMask/), runs the infer command line
exactly as documented (``python -m pipeline infer --run RUN --out OUT FILES...``) on the split's images
(``--split all``: every image), then scores each ``OUT/lungs/<image_id>.png`` against its truth mask in
the image's own pixels: per-image Dice and IoU and their mean / median / 10th percentile / minimum,
written to ``<out>/infer_lungs.csv`` and ``<out>/infer_lungs.json``. An image that infer did not write a
mask for counts as IoU 0 and is listed; the script then exits 1.

A model scored on images it trained on says nothing: give a split the run never trained on (the
lung recipe trains on Shenzhen train + valid; its test split is held out), or another hospital's set.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pipeline  # noqa: E402,F401  (offline environment first)


def score(items, lungs_dir: Path) -> tuple[list[dict], list[str]]:
    """Per-image Dice / IoU of ``lungs_dir/<image_id>.png`` against each item's truth mask."""
    from pipeline.lungs.data import read_image, read_mask
    from pipeline.lungs.metrics import dice_iou

    rows, missing = [], []
    for it in items:
        truth = read_mask(it.masks)
        path = lungs_dir / f"{it.image_id}.png"
        if not path.is_file():
            missing.append(it.image_id)
            rows.append({"image_id": it.image_id, "dice": 0.0, "iou": 0.0, "note": "no mask written"})
            continue
        pred = read_image(path) > 127
        if pred.shape != truth.shape:
            raise SystemExit(f"{path}: infer wrote {pred.shape[1]}x{pred.shape[0]} but the truth mask is "
                             f"{truth.shape[1]}x{truth.shape[0]}: masks must be in the input file's pixels")
        d, i = dice_iou(pred, truth)
        rows.append({"image_id": it.image_id, "dice": d, "iou": i, "note": ""})
    return rows, missing


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="a finished run directory with segment/model.pt (e.g. runs/lungs_shenzhen)")
    ap.add_argument("data", help="a lung-mask dataset folder (any layout the segment stage reads)")
    ap.add_argument("--layout", default="auto")
    ap.add_argument("--split", default="test", help="train | valid | test | all (default test)")
    ap.add_argument("--out", default="/tmp/infer_lungs", help="infer's output folder and the scores")
    ap.add_argument("--n", type=int, default=0, help="score only the first N images by id (0 = all)")
    args = ap.parse_args(argv)

    from pipeline.lungs.data import read_mask_dataset
    from pipeline.lungs.metrics import summarise

    ds = read_mask_dataset(args.data, layout=args.layout)
    items = ds.items if args.split == "all" else ds.split(args.split)
    items = sorted(items, key=lambda it: it.image_id)[: args.n or None]
    if not items:
        raise SystemExit(f"{args.data}: no image in split {args.split!r}")
    out = Path(args.out)
    cmd = [sys.executable, "-m", "pipeline", "infer", "--run", str(args.run), "--out", str(out)]
    cmd += [str(it.image) for it in items]
    t0 = time.perf_counter()
    rc = subprocess.call(cmd, cwd=ROOT)
    seconds = time.perf_counter() - t0
    if rc != 0:
        print(f"infer exited {rc}; scoring the masks it wrote", file=sys.stderr)
    rows, missing = score(items, out / "lungs")

    import pandas as pd

    pd.DataFrame(rows).to_csv(out / "infer_lungs.csv", index=False)
    summary = {"run": str(args.run), "data": str(args.data), "split": args.split, "n": len(rows),
               "iou": summarise(r["iou"] for r in rows), "dice": summarise(r["dice"] for r in rows),
               "missing": missing, "infer_seconds": round(seconds, 1), "infer_rc": rc}
    (out / "infer_lungs.json").write_text(json.dumps(summary, indent=1))
    iou, dice = summary["iou"], summary["dice"]
    print(f"{len(rows)} images of {args.data} ({args.split}) through infer ({seconds:.0f} s): "
          f"lung IoU mean {iou['mean']:.4f} (median {iou['median']:.4f}, p10 {iou['p10']:.4f}, min {iou['min']:.4f}); "
          f"Dice mean {dice['mean']:.4f}")
    if missing:
        print(f"no mask written for {len(missing)} image(s): {missing[:5]}", file=sys.stderr)
    return 1 if missing or rc != 0 else 0


if __name__ == "__main__":
    sys.exit(main())
