"""Image conversion speed on real VinBigData DICOMs: ours against the decoder's limit, where the time goes,
worker scaling, and the common public-notebook conversion.

    flock /tmp/cxr-heavy.lock .venv/bin/python benchmarks/prepare_images.py [--copies 16] [--reps 3]

- limit: Pillow's reduced-resolution JPEG 2000 decode alone (codestreams already in memory, the same
  reduce level our fast path picks) of the same files; "share" = our throughput / the limit's;
- ours: :func:`pipeline.convert.convert_images` in this process, one worker, CLAHE off (as
  ``dicom2png --no-clahe --workers 1``), on ``--copies`` copies of each real DICOM (distinct files, so
  each is read and its content digest computed as in a first conversion: "first"), then again with
  the digests cached (``--force`` after e.g. another ``image.size``: "cached"). Limit and ours run
  alternately in each repetition, so load from other processes hits both; median and range over reps;
- steps: the same work split into its parts (one file at a time), to show where the time goes;
- workers: wall time of 1 vs 2 worker processes (pool start-up included), median and range;
- reference: the usual notebook conversion (``pixel_array``, ``apply_voi_lut``, min-max, PIL LANCZOS
  thumbnail, PNG) and our full-decode output's correlation with the fast path.
"""
from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

import pipeline  # noqa: E402,F401  (offline environment)
from pipeline import fingerprint  # noqa: E402
from pipeline.convert import ConvertJob, ConvertOptions, convert_images, convert_one  # noqa: E402

DEFAULT_DICOMS = Path(__file__).resolve().parents[2] / "shared" / "real" / "vinbigdata" / "dicom"
ROOT = Path(__file__).resolve().parents[1]


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


def codestreams(files: list[Path]) -> list[tuple[bytes, int, int]]:
    import pydicom
    from pydicom.encaps import get_frame

    out = []
    for f in files:
        ds = pydicom.dcmread(f)
        out.append((get_frame(ds.PixelData, 0, number_of_frames=1), int(ds.Rows), int(ds.Columns)))
    return out


def limit_seconds(streams, size: int) -> float:
    """Pillow's reduced decode alone, at the level our fast path uses for this output size."""
    from PIL import Image

    from pipeline.imaging import output_shape
    from pipeline.j2k import choose_reduce, j2k_codestream_info

    levels = [choose_reduce(h, w, output_shape(h, w, size), j2k_codestream_info(cs).levels) for cs, h, w in streams]
    t0 = time.perf_counter()
    for (cs, _, _), level in zip(streams, levels):
        im = Image.open(io.BytesIO(cs))
        im.reduce = level
        im.load()
    return time.perf_counter() - t0


def ours_seconds(files: list[Path], out: Path, options: ConvertOptions, workers: int = 1, fresh_cache: bool = True,
                 repeat: int = 1) -> float:
    """Wall time of convert_images over ``files`` (each ``repeat`` times, as distinct images)."""
    if fresh_cache:
        # close the open cache first: a connection to the deleted file would still answer from it (before
        # 2026-12-02 every "first" repetition after the first one read its digests from there)
        fingerprint.set_cache_dir(None)
        shutil.rmtree(out / ".cache", ignore_errors=True)
    fingerprint.set_cache_dir(out / ".cache")
    jobs = [ConvertJob(f"{f.stem}_{r}", "", f, out / f"{f.stem}_{r}.png") for r in range(repeat) for f in files]
    t0 = time.perf_counter()
    meta, failures = convert_images(jobs, options, workers=workers, force=True, progress=False)
    dt = time.perf_counter() - t0
    assert failures.empty and len(meta) == len(jobs), failures
    return dt


def step_times(files: list[Path], size: int) -> dict[str, float]:
    """Milliseconds per image of each part of a conversion (CLAHE off), digests uncached."""
    from pipeline import dicom_header, imaging, intensity
    from pipeline.dicom_decode import decode_frame
    from pipeline.io import write_bytes_atomic

    steps: dict[str, float] = {}

    def timed(name, fn):
        t0 = time.perf_counter()
        result = fn()
        steps[name] = steps.get(name, 0.0) + (time.perf_counter() - t0) * 1000 / len(files)
        return result

    for f in files:
        timed("content digest (xxh3-128)", lambda: fingerprint._hash_file(f))
        ds, _ = timed("read + parse header", lambda: dicom_header.read_dataset(f, defer_pixels=True))
        header = timed("check header", lambda: dicom_header.check_image_header(ds, f))
        shape = imaging.output_shape(header.rows, header.columns, size)
        frame = timed("frame read + decode (pillow reduced)",
                      lambda: decode_frame(ds, f, header, target_shape=shape, fast_decode=True, slack=0.1))
        unit, _ = timed("percentiles + mapping", lambda: intensity.map_to_unit(frame.values, ds, invert=True))
        pixels = timed("resize + quantise", lambda: imaging.quantise(imaging.resize(unit, shape), 8))
        png = timed("PNG encode", lambda: imaging.encode_png(pixels, 1))
        timed("atomic write", lambda: write_bytes_atomic(f.with_suffix(".step.png"), png))
    return steps


def copies(originals: list[Path], folder: Path, n: int) -> list[Path]:
    """``n`` copies of each file under distinct names (hard links where possible: each is a file of its
    own path to read and digest, as a copy would be, without the disk space)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for k in range(n):
        for f in originals:
            dest = folder / f"{k:03d}_{f.name}"
            try:
                os.link(f, dest)
            except OSError:
                shutil.copyfile(f, dest)
            out.append(dest)
    return out


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} (range {min(values):.2f}-{max(values):.2f})"


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
    p.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    p.add_argument("--copies", type=int, default=16, help="copies of each DICOM (4 real files x 16 = 64 images)")
    p.add_argument("--cli-copies", type=int, default=100, help="copies of each DICOM for the whole-process runs")
    p.add_argument("--cli-sizes", type=int, nargs="*", default=[512, 1024], help="sizes of the whole-process runs")
    p.add_argument("--worker-repeat", type=int, default=4, help="each file this often in the workers test")
    p.add_argument("--no-reference", action="store_true", help="skip the notebook-reference comparison")
    args = p.parse_args(argv)
    originals = sorted(args.dicoms.glob("*.dicom"))
    if not originals:
        print(f"no *.dicom in {args.dicoms}", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="bench_prepare_"))
    files = copies(originals, tmp / "in", args.copies)
    streams = codestreams(files)
    print(f"{len(files)} files ({len(originals)} real DICOMs x {args.copies} copies) from {args.dicoms}; "
          f"{args.reps} repetitions; single process unless stated\n")
    no_clahe = {"clahe": False}
    ours_seconds(files[:4], tmp / "warm", ConvertOptions(size=512, **no_clahe))  # imports, decoders

    limit_ms: dict[int, float] = {}
    for size in args.sizes:
        opts = ConvertOptions(size=size, **no_clahe)
        lim, first, cached = [], [], []
        for _ in range(args.reps):
            lim.append(len(files) / limit_seconds(streams, size))
            first.append(len(files) / ours_seconds(files, tmp / f"o{size}", opts, fresh_cache=True))
            cached.append(len(files) / ours_seconds(files, tmp / f"o{size}", opts, fresh_cache=False))
        limit_ms[size] = 1000 / statistics.median(lim)
        share_first = [f / li for f, li in zip(first, lim)]
        share_cached = [c / li for c, li in zip(cached, lim)]
        print(f"{size} px: limit (Pillow reduced decode alone) {spread(lim)} img/s = "
              f"{1000 / statistics.median(lim):.1f} ms/img")
        print(f"  ours, first conversion (digests computed) {spread(first)} img/s = "
              f"{1000 / statistics.median(first):.1f} ms/img; share of the limit {spread(share_first)}")
        print(f"  ours, digests cached                      {spread(cached)} img/s = "
              f"{1000 / statistics.median(cached):.1f} ms/img; share of the limit {spread(share_cached)}")
        steps = step_times(files[: len(originals) * 2], size)
        total = sum(steps.values())
        print("  steps (ms/img, one file at a time): " + ", ".join(f"{k} {v:.1f}" for k, v in steps.items())
              + f"; sum {total:.1f}")

    n_jobs = len(files) * args.worker_repeat
    print(f"\nworkers ({n_jobs} images: the {len(files)} files x {args.worker_repeat}; 512 px, CLAHE off, digests "
          f"cached, wall time including pool start-up):")
    opts = ConvertOptions(size=512, **no_clahe)
    ratios, one, two = [], [], []
    ours_seconds(files, tmp / "w", opts, workers=1)  # fill the digest cache
    for _ in range(args.reps):
        t1 = ours_seconds(files, tmp / "w", opts, workers=1, fresh_cache=False, repeat=args.worker_repeat)
        t2 = ours_seconds(files, tmp / "w", opts, workers=2, fresh_cache=False, repeat=args.worker_repeat)
        one.append(n_jobs / t1)
        two.append(n_jobs / t2)
        ratios.append(t1 / t2)
    print(f"  1 worker {spread(one)} img/s; 2 workers {spread(two)} img/s; speed-up {spread(ratios)}x")

    cli_files = copies(originals, tmp / "cli_in", args.cli_copies)
    print(f"\nwhole process: python -m pipeline dicom2png --no-clahe --workers W --size S on {len(cli_files)} "
          f"files ({args.cli_copies} copies of each), start-up included, first conversion:")
    for size in args.cli_sizes:
        for workers in (1, 2):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "pipeline", "dicom2png", str(tmp / "cli_in"), "--out",
                            str(tmp / f"cli_{size}_{workers}"), "--no-clahe", "--workers", str(workers),
                            "--size", str(size), "--quiet"], cwd=ROOT, check=True, capture_output=True)
            dt = time.perf_counter() - t0
            per_img = dt / len(cli_files) * 1000
            share = (f"; share of the in-process limit above ({limit_ms[size]:.1f} ms/img), start-up included: "
                     f"{limit_ms[size] / per_img:.2f}") if workers == 1 and size in limit_ms else ""
            print(f"  {size} px, {workers} worker(s): {dt:.2f} s = {per_img:.1f} ms/img{share}")

    print("\nfast path against our full decode, and against the notebook reference (the 4 originals):")
    for size in args.sizes:
        corr, ref_t, our_t = [], 0.0, 0.0
        for f in originals:
            fast = convert_one(ConvertJob(f.stem, "", f, tmp / "cmp" / f"fast_{size}_{f.stem}.png"),
                               ConvertOptions(size=size))
            convert_one(ConvertJob(f.stem, "", f, tmp / "cmp" / f"full_{size}_{f.stem}.png"),
                        ConvertOptions(size=size, fast_decode=False))
            corr.append(correlation(cv2.imread(str(tmp / "cmp" / f"fast_{size}_{f.stem}.png"), -1),
                                    cv2.imread(str(tmp / "cmp" / f"full_{size}_{f.stem}.png"), -1)))
            assert fast["decode_reduce"] > 1
            if not args.no_reference:
                t0 = time.perf_counter()
                reference_convert(f, tmp / "cmp" / f"ref_{size}_{f.stem}.png", size)
                ref_t += time.perf_counter() - t0
                t0 = time.perf_counter()
                convert_one(ConvertJob(f.stem, "", f, tmp / "cmp" / f"fast_{size}_{f.stem}.png"), ConvertOptions(size=size))
                our_t += time.perf_counter() - t0
        line = f"  {size} px: min correlation fast~full {min(corr):.4f}"
        if not args.no_reference:
            line += f"; ours (CLAHE on) {ref_t / our_t:.1f}x faster than the notebook reference"
        print(line)
    fingerprint.set_cache_dir(None)
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
