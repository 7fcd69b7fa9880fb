"""``python -m pipeline dicom2png INPUT... --out DIR``: convert DICOM/PNG files or folders to PNGs.

Writes ``DIR/<stem>.png``, ``DIR/meta.csv`` and ``DIR/failures.csv`` (always, possibly empty).
Folders are searched recursively for ``*.dicom``, ``*.dcm``, ``*.png`` and extension-less files that
are DICOM (``DICM`` at byte 128). A second run skips images already done (``DIR/meta.csv`` is the
record); ``--force`` redoes them. Exit status: 0 when everything converted, 1 when any file failed.

Defaults come from the ``image:`` section of configs/default.yaml; flags override them.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from pipeline.errors import DataError

EXTENSIONS = (".dicom", ".dcm", ".png")
OUTPUT_NAMES = ("meta.csv", "failures.csv")


def _is_dicom_without_extension(path: Path) -> bool:
    if path.suffix:
        return False
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM"


def collect_inputs(inputs: list[str | Path]) -> list[Path]:
    """Files named directly (any name) plus the images found under named folders, sorted per folder."""
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            for p in sorted(path.rglob("*")):
                if p.is_file() and not p.name.startswith(".") and (
                        p.suffix.lower() in EXTENSIONS or _is_dicom_without_extension(p)):
                    found.append(p)
        else:
            raise DataError(f"input {path} does not exist; give DICOM/PNG files or folders")
    return found


def build_parser(defaults) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipeline dicom2png", description=__doc__.split("\n\n")[0])
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="DICOM/PNG files or folders (recursive)")
    p.add_argument("--out", required=True, type=Path, help="output folder for <stem>.png, meta.csv, failures.csv")
    p.add_argument("--size", type=int, default=defaults.size, help=f"longer side (or both with --square); default {defaults.size}")
    p.add_argument("--square", action="store_true", default=defaults.square, help="resize to size x size")
    clahe = p.add_mutually_exclusive_group()
    clahe.add_argument("--clahe", dest="clahe", action="store_true", default=defaults.clahe, help="apply CLAHE (default)")
    clahe.add_argument("--no-clahe", dest="clahe", action="store_false", help="no CLAHE")
    p.add_argument("--bits", type=int, choices=(8, 16), default=defaults.bits, help=f"PNG bit depth; default {defaults.bits}")
    p.add_argument("--workers", type=int, default=1, help="worker processes (0 = all cores); default 1")
    p.add_argument("--force", action="store_true", help="convert again even if done in a previous run")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    from pipeline.config import load_config
    from pipeline.convert import ConvertJob, ConvertOptions, convert_images, needs_conversion, read_meta
    from pipeline.io import write_csv_atomic

    cfg_defaults = ConvertOptions.from_config(load_config().image)
    args = build_parser(cfg_defaults).parse_args(argv)
    options = ConvertOptions.from_config({**cfg_defaults.__dict__, "size": args.size, "square": args.square,
                                          "clahe": args.clahe, "bits": args.bits})
    sources = collect_inputs(args.inputs)
    out: Path = args.out
    by_stem: dict[str, Path] = {}
    for src in sources:
        stem = src.stem
        if stem in by_stem and by_stem[stem].resolve() != src.resolve():
            raise DataError(f"two inputs would both write {out / (stem + '.png')}: {by_stem[stem]} and {src}; "
                            f"rename one or convert them into different --out folders")
        if stem in ("meta", "failures"):
            raise DataError(f"{src}: the name {stem!r} would clash with {stem}.csv bookkeeping; rename it")
        by_stem.setdefault(stem, src)
    jobs = [ConvertJob(stem, "", src, out / f"{stem}.png") for stem, src in by_stem.items()]

    meta_path, failures_path = out / "meta.csv", out / "failures.csv"
    previous = read_meta(meta_path)
    skipped = 0 if args.force else len(jobs) - sum(needs_conversion(jobs, options, previous))
    meta, failures = convert_images(jobs, options, workers=args.workers, force=args.force,
                                    previous_meta=previous, progress=not args.quiet)
    # Keep rows of earlier runs for images not named this time, so meta.csv describes the folder.
    if previous is not None:
        others = previous[~previous["image_id"].isin(meta["image_id"])
                          & ~previous["image_id"].isin(failures["image_id"])]
        others = others[[(out / f"{i}.png").is_file() for i in others["image_id"]]]
        meta = pd.concat([meta, others], ignore_index=True) if len(others) else meta
    out.mkdir(parents=True, exist_ok=True)
    write_csv_atomic(meta, meta_path)
    write_csv_atomic(failures, failures_path)

    converted = len(jobs) - len(failures) - skipped
    print(f"dicom2png: {converted} converted, {skipped} skipped (already done), {len(failures)} failed "
          f"-> {out} (meta.csv, failures.csv)")
    for rec in failures.head(10).itertuples():
        print(f"  failed: {rec.source}: {rec.reason}")
    if len(failures) > 10:
        print(f"  ... {len(failures) - 10} more in {failures_path}")
    return 1 if len(failures) else 0
