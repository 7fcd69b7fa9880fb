"""``python -m pipeline screen-images --model PATH --out DIR INPUT...``: is each input a chest X-ray?

Applies the input gate (DICOM header rules, then the image model of a ``screen/model.pt`` written by the
screen stage) to files or folders (searched recursively) of DICOM, PNG, JPEG, TIFF, BMP, GIF or WebP
images. Writes ``DIR/screen.csv`` (``image_id, decision, accepted, p_<class>..., reason``, one row per
readable input, in input order) and ``DIR/failures.csv`` (``path, error``; always, possibly empty).
Exit status: 0 when every input was screened, 1 when any could not be read, 2 for a usage error.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from pipeline.errors import DataError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipeline screen-images", description=__doc__.split("\n\n")[0])
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders (recursive)")
    p.add_argument("--model", required=True, type=Path, help="gate model: screen/model.pt of a screen stage run")
    p.add_argument("--out", required=True, type=Path, help="folder for screen.csv and failures.csv")
    p.add_argument("--device", default="cpu", help="cpu (default), or a GPU such as 0 / cuda:0")
    p.add_argument("--batch", type=int, default=64, help="pictures per inference batch (default 64)")
    return p


def main(argv: list[str] | None = None) -> int:
    from pipeline.gate import UNREADABLE, screen_files
    from pipeline.gate.images import collect_images
    from pipeline.io import write_csv_atomic

    args = build_parser().parse_args(argv)
    files = collect_images(args.inputs)
    if not files:
        raise DataError(f"no images found in {' '.join(args.inputs)}; give DICOM, PNG or JPEG files or folders")
    device = args.device
    if str(device) not in ("cpu", "mps"):
        from pipeline.classifier import torch_device

        device = torch_device(device)[0]
    table = screen_files(files, args.model, device=device, batch=args.batch, progress=True)
    bad = (table["decision"] == UNREADABLE).to_numpy()
    failures = pd.DataFrame({"path": [str(f) for f, b in zip(files, bad) if b],
                             "error": table.loc[bad, "reason"].tolist()})
    write_csv_atomic(table[~bad], args.out / "screen.csv")
    write_csv_atomic(failures, args.out / "failures.csv")
    good = table[~bad]
    counts = ", ".join(f"{d} {n}" for d, n in good["decision"].value_counts().items())
    print(f"screened {len(good)} of {len(files)} input(s): {int(good['accepted'].sum())} accepted ({counts or 'none'}); "
          f"-> {args.out / 'screen.csv'}")
    if len(failures):
        print(f"{len(failures)} input(s) could not be read, listed in {args.out / 'failures.csv'}, e.g. "
              f"{failures['error'].iloc[0]}")
        return 1
    return 0
