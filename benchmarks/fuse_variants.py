"""A finished run's out-of-fold detections fused again several ways, and scored (docs/notes/fusion.md).

    .venv/bin/python benchmarks/fuse_variants.py runs/demo            # VinBigData mAP@0.4 of the finding classes
    .venv/bin/python benchmarks/fuse_variants.py runs/tbx11k --coco   # + COCO AP50 / AP, per class and agnostic

Reads ``predictions/det_*_fold*_oof.csv`` (every fold, both flips), ``boxes.csv``, ``images.csv`` and
``folds.csv`` of the run; scores against the run's truth boxes on its out-of-fold images, the normal class
left out (no classifier, no filter: only how the detector's boxes are combined). Variants: the un-flipped
and the flipped detections alone, WBF with ``avg`` and ``max`` confidence, and WBF after NMS inside each
source (``fuse.source_nms``), all at ``--iou`` (the fuse stage's ``fuse.iou_thr``, default 0.4).
Diagnostic only: a choice made on these figures is a choice made on the run's out-of-fold images.
"""
from __future__ import annotations

import argparse
import glob
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    from pipeline.coco_metrics import coco_scores
    from pipeline.fusion import fuse_detections
    from pipeline.metrics import vinbigdata_map

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--iou", type=float, default=0.4)
    ap.add_argument("--coco", action="store_true", help="also COCO AP50 / AP (class-agnostic too)")
    args = ap.parse_args(argv)
    files = sorted(glob.glob(str(args.run / "predictions" / "det_*_fold*_oof.csv")))
    if not files:
        print(f"error: no predictions/det_*_fold*_oof.csv in {args.run}; run the predict stage first", file=sys.stderr)
        return 2
    oof = pd.concat([pd.read_csv(f, dtype={"image_id": str}) for f in files], ignore_index=True)
    boxes = pd.read_csv(args.run / "boxes.csv", dtype={"image_id": str})
    ids = sorted(pd.read_csv(args.run / "folds.csv", dtype={"image_id": str})["image_id"])
    sizes = pd.read_csv(args.run / "images.csv", dtype={"image_id": str})[["image_id", "width", "height"]]
    names = dict(zip(boxes["class_id"], boxes["class_name"]))
    normal = max(names) if names.get(max(names)) == "No finding" else max(names) + 1
    truth = boxes[boxes["image_id"].isin(set(ids)) & (boxes["class_id"] != normal)]
    finding_names = [names.get(c, str(c)) for c in range(normal)]
    sources = [oof[oof["tta"] == t].drop(columns="tta") for t in ("orig", "hflip") if (oof["tta"] == t).any()]
    variants = {"un-flipped alone": sources[0]}
    if len(sources) > 1:
        variants["flipped alone"] = sources[1]
    for conf in ("avg", "max"):
        variants[f"WBF {conf}"] = fuse_detections(sources, sizes, "wbf", args.iou, conf_type=conf)
    variants["source NMS, then WBF avg"] = fuse_detections(sources, sizes, "wbf", args.iou, source_nms=True)
    print(f"{args.run}: {len(ids)} out-of-fold images, {len(truth)} truth boxes, {len(files)} prediction files")
    for name, pred in variants.items():
        pred = pred[pred["class_id"] != normal]
        res = vinbigdata_map(truth, pred, iou_thr=0.4)
        per = ", ".join(f"{names.get(c, c)} {ap:.3f}" for c, ap in sorted(res["per_class"].items()))
        line = f"{name:26s} mAP@0.4 {res['map']:.4f} ({per})"
        if args.coco:
            c = coco_scores(truth, pred, finding_names, normal, ids)
            line += (f"; COCO AP50 {c['ap50']:.4f}, agnostic AP50 {c['agnostic']['ap50']:.4f}, "
                     f"agnostic AP {c['agnostic']['ap']:.4f}")
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
