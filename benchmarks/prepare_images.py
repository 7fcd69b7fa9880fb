"""Image conversion speed: ours vs the common public-notebook conversion, on real VinBigData DICOMs.

    .venv/bin/python benchmarks/prepare_images.py [--dicoms DIR] [--reps 3] [--sizes 1024 512]

Reference (as in most public VinBigData notebooks): ``pydicom`` ``pixel_array`` (full decode),
``pydicom.pixels.apply_voi_lut``, MONOCHROME1 inversion, min-max to 8 bits, PIL
``thumbnail((size, size), Image.LANCZOS)``, ``Image.save`` PNG. Ours: :func:`pipeline.convert.convert_one`
with the default options (reduced-resolution JPEG 2000 decode, percentile mapping, area resize,
CLAHE, PNG level 1). Both single process, same files, same run; the median of ``--reps``
repetitions is reported. Also: correlation of our fast output with our full-decode output, and
wall time with 1 and 2 worker processes.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

import pipeline  # noqa: E402,F401  (offline environment)
from pipeline.convert import ConvertJob, ConvertOptions, convert_images, convert_one  # noqa: E402

DEFAULT_DICOMS = Path(__file__).resolve().parents[2] / "shared" / "real" / "vinbigdata" / "dicom"


def reference_convert(src: Path, dest: Path, size: int) -> None:
    """The usual notebook conversion (kept as written there, apart from the pydicom 3 import)."""
    import pydicom
    from PIL import Image
    from pydicom.pixels import apply_voi_lut

    ds = pydicom.dcmread(src)
    data = apply_voi_lut(ds.pixel_array, ds)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        data = np.amax(data) - data
    data = data - np.min(data)
    data = data / np.max(data)
    data = (data * 255).astype(np.uint8)
    im = Image.fromarray(data)
    im.thumbnail((size, size), Image.LANCZOS)
    im.save(dest)


def time_per_rep(fn, files: list[Path], reps: int) -> float:
    """Median over reps of the time to convert all files once (seconds)."""
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for f in files:
            fn(f)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    import cv2

    if a.shape != b.shape:
        b = cv2.resize(b, (a.shape[1], a.shape[0]), interpolation=cv2.INTER_AREA)
    return float(np.corrcoef(a.ravel().astype(np.float64), b.ravel().astype(np.float64))[0, 1])


def main(argv: list[str] | None = None) -> int:
    import cv2

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dicoms", type=Path, default=DEFAULT_DICOMS)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--sizes", type=int, nargs="+", default=[1024, 512])
    p.add_argument("--copies", type=int, default=8, help="each file repeated this often in the workers test")
    args = p.parse_args(argv)
    files = sorted(args.dicoms.glob("*.dicom"))
    if not files:
        print(f"no *.dicom in {args.dicoms}", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="bench_prepare_"))
    print(f"{len(files)} DICOMs from {args.dicoms}; {args.reps} repetitions (median); single process\n")

    # warm up imports and decoders so neither side pays them
    reference_convert(files[0], tmp / "warm.png", 512)
    convert_one(ConvertJob("warm", "x", files[0], tmp / "warm2.png"), ConvertOptions(size=512))

    rows = []
    for size in args.sizes:
        opts = ConvertOptions(size=size)
        full = ConvertOptions(size=size, fast_decode=False)
        ref_t = time_per_rep(lambda f: reference_convert(f, tmp / f"ref_{size}_{f.stem}.png", size), files, args.reps)
        our_t = time_per_rep(lambda f: convert_one(ConvertJob(f.stem, "x", f, tmp / f"our_{size}_{f.stem}.png"), opts),
                             files, args.reps)
        full_t = time_per_rep(lambda f: convert_one(ConvertJob(f.stem, "x", f, tmp / f"full_{size}_{f.stem}.png"), full),
                              files, args.reps)
        reduce = [convert_one(ConvertJob(f.stem, "x", f, tmp / f"our_{size}_{f.stem}.png"), opts)["decode_reduce"]
                  for f in files]
        corr = [correlation(cv2.imread(str(tmp / f"our_{size}_{f.stem}.png"), cv2.IMREAD_UNCHANGED),
                            cv2.imread(str(tmp / f"full_{size}_{f.stem}.png"), cv2.IMREAD_UNCHANGED)) for f in files]
        n = len(files)
        rows.append((size, n / ref_t, n / full_t, n / our_t, ref_t / our_t, min(corr), sorted(set(reduce))))

    print(f"{'size':>5} | {'reference img/s':>15} | {'ours full img/s':>15} | {'ours fast img/s':>15} | "
          f"{'ours/ref':>8} | {'min corr fast~full':>18} | decode_reduce")
    print("-" * 105)
    for size, ref, full, ours, ratio, corr, red in rows:
        print(f"{size:>5} | {ref:>15.2f} | {full:>15.2f} | {ours:>15.2f} | {ratio:>7.1f}x | {corr:>18.4f} | {red}")
    targets = {1024: 3.0, 512: 8.0}
    for size, *_, ratio, corr, _red in rows:
        if size in targets:
            verdict = "met" if ratio >= targets[size] else "NOT met"
            print(f"target >= {targets[size]:g}x at {size} px: {verdict} ({ratio:.1f}x); correlation >= 0.99: "
                  f"{'met' if corr >= 0.99 else 'NOT met'} ({corr:.4f})")

    print(f"\nworkers ({len(files)} files x {args.copies} = {len(files) * args.copies} images, 512 px, "
          f"wall time including pool start-up):")
    jobs = [ConvertJob(f"{f.stem}_{k}", "x", f, tmp / "w" / f"{f.stem}_{k}.png")
            for k in range(args.copies) for f in files]
    base = None
    for workers in (1, 2):
        t0 = time.perf_counter()
        meta, failures = convert_images(jobs, ConvertOptions(size=512), workers=workers, force=True, progress=False)
        dt = time.perf_counter() - t0
        base = base or dt
        print(f"  workers={workers}: {dt:6.2f} s  {len(jobs) / dt:6.2f} img/s  speed-up {base / dt:4.2f}x  "
              f"(failures: {len(failures)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
