"""Lung masks under opacities, measured without lung masks: how much of each radiologist's finding box
the predicted lungs cover, on the NIH ChestX-ray14 boxed images (other hospitals, real disease).

    .venv/bin/python benchmarks/lung_box_coverage.py runs/lungs_shenzhen/segment/model.pt \\
        [OTHER_MODEL.pt ...] --data ../shared/real/chestxray14 --images bbox_256

No lung masks exist for these images, but their BBox_List_2017 boxes say where a finding is. A finding
of the lung parenchyma (Atelectasis, Infiltration, Mass, Nodule, Pneumonia) lies inside the lung field,
which a radiologist's lung mask includes however opaque it is; a model that learned "lung = dark"
leaves such a box out. So, per box, ``coverage`` = share of the box's pixels inside the predicted
lungs, and per class: the mean coverage and the share of boxes at least half covered. Cardiomegaly (the
heart) is the control: it should stay mostly outside. Effusion and Pneumothorax boxes straddle the lung
edge, so their figures are printed but read with care. One line per model, so variants compare in one
run; every model sees the same images. Boxes are in 1024-pixel space (the NIH originals) and are scaled
by each file's size.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pipeline  # noqa: E402,F401  (offline environment first)

INSIDE = ("Atelectasis", "Infiltration", "Mass", "Nodule", "Pneumonia")
CONTROL = "Cardiomegaly"


def coverage(mask: np.ndarray, box: tuple[float, float, float, float]) -> float:
    """Share of the box's pixels (x0, y0, x1, y1 in mask pixels, clipped) inside ``mask``."""
    h, w = mask.shape
    x0, y0 = max(0, int(np.floor(box[0]))), max(0, int(np.floor(box[1])))
    x1, y1 = min(w, int(np.ceil(box[2]))), min(h, int(np.ceil(box[3])))
    if x1 <= x0 or y1 <= y0:
        return float("nan")
    return float(mask[y0:y1, x0:x1].mean())


def summarise(rows):
    import pandas as pd

    df = pd.DataFrame(rows)
    per = df.groupby("finding")["coverage"].agg(mean="mean", half=lambda v: float((v >= 0.5).mean()), n="size")
    inside = df[df["finding"].isin(INSIDE)]["coverage"]
    return per, {"inside_mean": float(inside.mean()), "inside_half": float((inside >= 0.5).mean()),
                 "inside_n": int(inside.size),
                 "control_mean": float(df.loc[df["finding"] == CONTROL, "coverage"].mean())}


def main(argv=None) -> int:
    import torch

    from pipeline.lungs import load_lung_model, predict_masks
    from pipeline.lungs.data import read_image
    from pipeline.sources.chestxray14 import NIH_SIZE, read_bbox_list

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("models", type=Path, nargs="+", help="segment/model.pt files to compare")
    p.add_argument("--data", type=Path, default=Path("../shared/real/chestxray14"),
                   help="NIH folder with BBox_List_2017.csv")
    p.add_argument("--images", default="bbox_256", help="image folder under --data")
    p.add_argument("--n", type=int, default=0, help="first N boxed images by name (0 = all)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None, help="write per-box coverage CSVs here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    # the project's reader: corners in the NIH 1024-pixel space, 'Infiltrate' read as 'Infiltration'
    boxes, _ = read_bbox_list(args.data / "BBox_List_2017.csv")
    boxes["file"] = boxes["image_id"].astype(str) + ".png"
    files = sorted(f for f in boxes["file"].unique() if (args.data / args.images / f).is_file())
    missing = boxes["file"].nunique() - len(files)
    files = files[: args.n or None]
    if not files:
        raise SystemExit(f"no image of {args.data / 'BBox_List_2017.csv'} found in {args.data / args.images}")
    images = [read_image(args.data / args.images / f) for f in files]
    by_file = {f: g for f, g in boxes.groupby("file")}
    print(f"{len(files)} boxed images ({sum(len(by_file[f]) for f in files)} boxes; {missing} listed images not "
          f"on disk), {args.images}")
    for model_path in args.models:
        model = load_lung_model(model_path)
        masks = predict_masks(model, images)
        rows = []
        for f, img, m in zip(files, images, masks):
            s = img.shape[1] / NIH_SIZE, img.shape[0] / NIH_SIZE
            for r in by_file[f].itertuples():
                box = (r.x_min * s[0], r.y_min * s[1], r.x_max * s[0], r.y_max * s[1])
                rows.append({"file": f, "finding": r.class_name, "coverage": coverage(m, box)})
        per, head = summarise(rows)
        if args.out is not None:
            import pandas as pd

            args.out.mkdir(parents=True, exist_ok=True)
            pd.DataFrame(rows).to_csv(args.out / f"coverage_{model_path.parent.parent.name}.csv", index=False)
        print(f"\n{model_path}: boxes of findings inside the lung ({head['inside_n']}): mean coverage "
              f"{head['inside_mean']:.3f}, at least half covered {head['inside_half']:.3f}; "
              f"Cardiomegaly (control, should be low) {head['control_mean']:.3f}")
        print(per.round(3).to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
