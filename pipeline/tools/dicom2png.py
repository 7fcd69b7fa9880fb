"""``python -m pipeline dicom2png INPUT... --out DIR``: convert DICOM/PNG files or folders to PNGs.

Writes ``DIR/<stem>.png`` (``DIR/<sub-folder>/<stem>.png`` for files in sub-folders of an input folder,
whose meta ``split`` is that sub-folder), ``DIR/meta.csv`` and ``DIR/failures.csv`` (always, possibly empty).
Folders are searched recursively for DICOM (``*.dicom``, ``*.dcm``) and pictures (PNG, JPEG, BMP, TIFF,
WebP: ``pipeline.sources.files.IMAGE_SUFFIXES``), and for files of any other name whose content is DICOM
(``DICM`` at byte 128, or a DICOM data element at byte 0 for files without the preamble): no extension,
``.dic``, or a UID as the name, whose last dotted part looks like an extension. Other files found there are
counted and named in the summary, not converted. A second run skips images
whose PNG exists and whose source content and pixel options are unchanged (``DIR/meta.csv`` is the
record; content digests are cached in ``DIR/.cache``); ``--force`` redoes them. A killed run resumes:
finished images are journalled in ``DIR/.meta-journal.jsonl`` until meta.csv is written. Exit status:
0 when everything converted, 1 when any file failed.

Defaults come from the ``image:`` section of configs/default.yaml; flags override them.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from pipeline.errors import DataError
from pipeline.sources.files import IMAGE_SUFFIXES

OUTPUT_NAMES = ("meta.csv", "failures.csv")
ID_SUFFIXES = (*IMAGE_SUFFIXES, ".dic")  # what image_id() takes off a name
CACHE_DIR = ".cache"                   # content-digest cache (pipeline.fingerprint), safe to delete
JOURNAL_NAME = ".meta-journal.jsonl"   # rows of finished images until meta.csv is written


def _is_dicom_by_content(path: Path) -> bool:
    from pipeline.dicom_header import looks_like_dicom

    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return looks_like_dicom(head)


def image_id(path: Path) -> str:
    """The file name without its extension; a name whose last dotted part is not an image extension (a
    DICOM named by its UID, 1.2.840.113619.2.55.3.6) is kept whole, so that a series' files stay apart."""
    return path.stem if path.suffix.lower() in ID_SUFFIXES else path.name


def collect_inputs(inputs: list[str | Path], ignored: list[Path] | None = None) -> list[Path]:
    """Files named directly (any name) plus the images found under named folders, sorted per folder.
    Other files under those folders are appended to ``ignored`` when a list is given."""
    return [src for src, _ in collect_sources(inputs, ignored)]


def collect_sources(inputs: list[str | Path], ignored: list[Path] | None = None) -> list[tuple[Path, str]]:
    """(file, sub-folder) pairs: the sub-folder (posix, "" at the top) of each file below the input
    folder it was found in, so that ``a/IM0001`` and ``b/IM0001`` stay apart; "" for files named directly."""
    found: list[tuple[Path, str]] = []
    for item in inputs:
        path = Path(item)
        if path.is_file():
            found.append((path, ""))
        elif path.is_dir():
            for p in sorted(path.rglob("*")):
                if not p.is_file() or any(part.startswith(".") for part in p.relative_to(path).parts):
                    continue
                if p.suffix.lower() in IMAGE_SUFFIXES or _is_dicom_by_content(p):
                    found.append((p, "" if p.parent == path else p.parent.relative_to(path).as_posix()))
                elif ignored is not None:
                    ignored.append(p)
        else:
            raise DataError(f"input {path} does not exist; give DICOM/PNG files or folders")
    return found


def plan_jobs(sources: list[tuple[Path, str]], out: Path):
    """One ConvertJob per source: ``out/<sub-folder>/<stem>.png``, split = sub-folder; clashes are errors."""
    from pipeline.convert import ConvertJob

    by_key: dict[tuple[str, str], Path] = {}
    for src, sub in sources:
        key = (sub, image_id(src))
        if key in by_key and by_key[key].resolve() != src.resolve():
            dest = out / sub / f"{key[1]}.png"
            raise DataError(f"two inputs would both write {dest}: {by_key[key]} and {src}; "
                            f"rename one or convert them into different --out folders")
        if not sub and key[1] in ("meta", "failures"):
            raise DataError(f"{src}: the name {key[1]!r} would clash with {key[1]}.csv bookkeeping; rename it")
        by_key.setdefault(key, src)
    return [ConvertJob(stem, sub, src, out / sub / f"{stem}.png") for (sub, stem), src in by_key.items()]


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
    p.add_argument("--multiframe", choices=("refuse", "first"), default=defaults.multiframe,
                   help=f"multi-frame DICOMs: refuse them (listed in failures.csv) or convert their first frame; "
                        f"default {defaults.multiframe}")
    p.add_argument("--workers", type=int, default=1, help="worker processes (0 = all cores); default 1")
    p.add_argument("--force", action="store_true", help="convert again even if done in a previous run")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    from pipeline import fingerprint
    from pipeline.config import load_config
    from pipeline.convert import ConvertOptions, convert_images, needs_conversion, read_meta, with_journal
    from pipeline.io import write_csv_atomic

    cfg_defaults = ConvertOptions.from_config(load_config().image)
    args = build_parser(cfg_defaults).parse_args(argv)
    options = ConvertOptions.from_config({**cfg_defaults.__dict__, "size": args.size, "square": args.square,
                                          "clahe": args.clahe, "bits": args.bits, "multiframe": args.multiframe})
    ignored: list[Path] = []
    out: Path = args.out
    jobs = plan_jobs(collect_sources(args.inputs, ignored), out)
    fingerprint.set_cache_dir(out / CACHE_DIR)

    meta_path, failures_path = out / "meta.csv", out / "failures.csv"
    previous = with_journal(read_meta(meta_path), out / JOURNAL_NAME)  # a killed run's finished images count
    skipped = 0 if args.force else len(jobs) - sum(needs_conversion(jobs, options, previous))
    meta, failures = convert_images(jobs, options, workers=args.workers, force=args.force,
                                    previous_meta=previous, progress=not args.quiet, journal=out / JOURNAL_NAME)
    # Keep rows of earlier runs for images not named this time, so meta.csv describes the folder.
    if previous is not None:
        named = {(j.split, j.image_id) for j in jobs}
        others = previous[[(s, i) not in named and (out / s / f"{i}.png").is_file()
                           for s, i in zip(previous["split"], previous["image_id"])]]
        meta = pd.concat([meta, others], ignore_index=True) if len(others) else meta
    out.mkdir(parents=True, exist_ok=True)
    write_csv_atomic(meta, meta_path)
    write_csv_atomic(failures, failures_path)

    converted = len(jobs) - len(failures) - skipped
    print(f"dicom2png: {converted} converted, {skipped} skipped (already done), {len(failures)} failed "
          f"-> {out} (meta.csv, failures.csv)")
    for rec in failures.head(10).itertuples():
        print(f"  failed: {rec.reason}")  # each reason starts with the file's path
    if len(failures) > 10:
        print(f"  ... {len(failures) - 10} more in {failures_path}")
    if ignored:
        shown = ", ".join(str(p) for p in ignored[:5])
        print(f"  {len(ignored)} other file(s) in the input folders are neither .dcm/.dicom/.png nor DICOM, "
              f"not converted: {shown}{' ...' if len(ignored) > 5 else ''}")
    return 1 if len(failures) else 0
