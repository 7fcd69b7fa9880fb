"""Lung masks on chest X-rays WITHOUT masks (other hospitals): plausibility figures and a contact sheet.

    .venv/bin/python benchmarks/segment.py runs/lungs_shenzhen/segment/model.pt \\
        ../shared/real/chestxray14/images_256 ../shared/real/tbx11k/images --n 60 --out runs/lungs_check

No truth exists for these images, so this measures what a wrong mask usually breaks:
* ``two_parts``: share of images whose cleaned mask has exactly two connected parts;
* ``share_ok``: share whose lung area is 8-50 % of the image;
* ``balanced``: share whose smaller lung is at least 35 % of the larger (by area);
* ``plausible``: all three at once.
It writes ``<out>/sheet_<folder>.png`` (masks outlined on the images) and ``<out>/plausibility.csv``.
A plausible mask can still be wrong; look at the sheet. ``--finding Effusion --finding Consolidation ...``
keeps only the NIH images with those findings (from the folder's ../Data_Entry_2017.csv): lungs under
opacities, where a model trained on clear lungs fails first.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pipeline  # noqa: E402,F401  (offline environment first)


def plausibility(mask: np.ndarray) -> dict:
    import cv2

    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8))
    areas = sorted(stats[1:, cv2.CC_STAT_AREA].tolist(), reverse=True)
    share = float(mask.mean())
    balance = areas[1] / areas[0] if len(areas) >= 2 else 0.0
    row = {"parts": len(areas), "share": share, "balance": balance, "two_parts": len(areas) == 2,
           "share_ok": 0.08 <= share <= 0.5, "balanced": balance >= 0.35}
    row["plausible"] = row["two_parts"] and row["share_ok"] and row["balanced"]
    return row


def with_findings(files: list[Path], data_entry: Path, wanted: set[str]) -> list[Path]:
    """The files whose NIH 'Finding Labels' (``A|B|...``) name one of ``wanted``."""
    import pandas as pd

    if not data_entry.is_file():
        raise SystemExit(f"--finding needs {data_entry} (the NIH table beside the image folder)")
    table = pd.read_csv(data_entry, usecols=["Image Index", "Finding Labels"])
    labels = dict(zip(table["Image Index"].astype(str), table["Finding Labels"].astype(str)))
    return [f for f in files if wanted & set(labels.get(f.name, "").split("|"))]


def sheet(images, masks, cols: int = 10, side: int = 160) -> np.ndarray:
    import cv2

    from pipeline.lungs.preprocess import to_unit

    tiles = []
    for img, m in zip(images, masks):
        g = cv2.resize((to_unit(img) * 255).astype(np.uint8), (side, side), interpolation=cv2.INTER_AREA)
        t = cv2.cvtColor(g, cv2.COLOR_GRAY2BGR)
        small = cv2.resize(m.astype(np.uint8), (side, side), interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(small, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(t, contours, -1, (0, 0, 255), 1)
        tiles.append(t)
    while len(tiles) % cols:
        tiles.append(np.zeros_like(tiles[0]))
    return np.vstack([np.hstack(tiles[r:r + cols]) for r in range(0, len(tiles), cols)])


def main(argv=None) -> int:
    import cv2
    import pandas as pd
    import torch

    from pipeline.lungs import load_lung_model, predict_masks
    from pipeline.lungs.data import IMAGE_EXTS, read_image

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model", type=Path)
    p.add_argument("folders", type=Path, nargs="+")
    p.add_argument("--n", type=int, default=60, help="images per folder (every k-th by name)")
    p.add_argument("--out", type=Path, default=Path("runs/lungs_check"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--finding", action="append", default=[],
                   help="NIH ChestX-ray14 folders only: keep images whose 'Finding Labels' in the folder's "
                        "../Data_Entry_2017.csv name this finding (repeatable: any of them), e.g. --finding Effusion")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_lung_model(args.model)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for folder in args.folders:
        files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_EXTS)
        if args.finding:
            files = with_findings(files, folder.parent / "Data_Entry_2017.csv", set(args.finding))
        files = files[:: max(1, len(files) // args.n)][: args.n]
        images = [read_image(f) for f in files]
        masks = predict_masks(model, images)
        name = f"{folder.parent.name}_{folder.name}"
        cv2.imwrite(str(args.out / f"sheet_{name}.png"), sheet(images, masks))
        rows += [{"folder": name, "file": f.name, **plausibility(m)} for f, m in zip(files, masks)]
    df = pd.DataFrame(rows)
    df.to_csv(args.out / "plausibility.csv", index=False)
    print(df.groupby("folder")[["two_parts", "share_ok", "balanced", "plausible"]].mean().round(3).to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
