"""Batch conversion of DICOM/PNG radiographs to training PNGs that never loses work.

- Each PNG is written atomically (temporary file + ``os.replace``): a crash or Ctrl-C never
  leaves a partial PNG, so "the file exists" means "the file is complete".
- Resume: a job whose ``dest`` exists AND has a row in ``previous_meta`` with the same
  ``fingerprint`` is skipped (its previous row is returned) unless ``force``; everything else is
  (re)converted. The fingerprint (``job_fingerprint``) hashes the options that change pixels and the
  source file's size and mtime, so a run with another ``image.size``/``image.clahe``/... or an edited
  source re-converts instead of silently keeping stale PNGs. Rows from older meta tables without the
  column never match, so those images are converted again once.
- A job that fails removes its old PNG (if any): the folder never keeps a PNG meta.csv does not
  describe.
- A bad file becomes one row of ``failures`` (image_id, split, source, reason: one line, no
  traceback); every other file still converts.
- ``workers > 1`` runs a spawn-safe process pool (chunked ``imap_unordered``), with a tqdm bar.

From Python::

    from pipeline.convert import ConvertJob, ConvertOptions, convert_images
    opts = ConvertOptions.from_config(cfg.image)
    meta, failures = convert_images(jobs, opts, workers=2)
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Mapping

if TYPE_CHECKING:  # pandas is imported lazily: spawned workers start faster without it
    import pandas as pd

import numpy as np

from pipeline.config import resolve_workers
from pipeline.errors import ConfigError, DataError

META_COLUMNS = ["image_id", "split", "height", "width", "out_height", "out_width", "photometric",
                "bits_stored", "transfer_syntax", "source", "mapping", "inverted", "clahe", "decode_reduce",
                "fingerprint"]
FAILURE_COLUMNS = ["image_id", "split", "source", "reason"]


@dataclass
class ConvertOptions:
    """How images are converted; ``from_config(cfg.image)`` reads the ``image:`` config section."""

    size: int = 1024
    square: bool = False
    bits: int = 8
    voi_lut: str = "auto"
    percentiles: tuple[float, float] = (0.5, 99.5)
    clahe: bool = True
    clahe_clip: float = 2.0
    clahe_grid: int = 8
    denoise: bool = False
    fast_decode: bool = True
    decode_slack: float = 0.1
    denoise_strength: float = 3.0
    png_compression: int = 1

    def __post_init__(self) -> None:
        self.percentiles = tuple(float(p) for p in self.percentiles)  # type: ignore[assignment]
        problems = []
        if int(self.size) < 16:
            problems.append(f"image.size must be >= 16, got {self.size}")
        if self.bits not in (8, 16):
            problems.append(f"image.bits must be 8 or 16, got {self.bits}")
        if self.voi_lut not in ("auto", "on", "off"):
            problems.append(f"image.voi_lut must be auto, on or off, got {self.voi_lut!r}")
        if len(self.percentiles) != 2 or not 0 <= self.percentiles[0] < self.percentiles[1] <= 100:
            problems.append(f"image.percentiles must be [low, high] with 0 <= low < high <= 100, got {list(self.percentiles)}")
        if self.clahe_clip <= 0 or int(self.clahe_grid) < 1:
            problems.append(f"image.clahe_clip must be > 0 and image.clahe_grid >= 1, got {self.clahe_clip}, {self.clahe_grid}")
        if not 0 <= self.decode_slack < 0.5:
            problems.append(f"image.decode_slack must be in [0, 0.5), got {self.decode_slack}")
        if not 0 <= self.png_compression <= 9:
            problems.append(f"png_compression must be 0..9, got {self.png_compression}")
        if problems:
            raise ConfigError("; ".join(problems))

    @classmethod
    def from_config(cls, image_cfg: Mapping) -> "ConvertOptions":
        """Build from the ``image:`` section (``cfg.image``); keys not named here keep defaults."""
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in dict(image_cfg).items() if k in known})

    def pixel_key(self) -> dict:
        """The options that change the PNG's pixels, normalised so that knobs of a disabled step
        (``clahe_clip``/``clahe_grid`` with CLAHE off, ``denoise_strength`` with denoise off) and
        ``png_compression`` (lossless) do not count."""
        return {
            "size": int(self.size), "square": bool(self.square), "bits": int(self.bits),
            "voi_lut": str(self.voi_lut), "percentiles": [float(p) for p in self.percentiles],
            "clahe": bool(self.clahe),
            "clahe_clip": float(self.clahe_clip) if self.clahe else None,
            "clahe_grid": int(self.clahe_grid) if self.clahe else None,
            "denoise": bool(self.denoise),
            "denoise_strength": float(self.denoise_strength) if self.denoise else None,
            "fast_decode": bool(self.fast_decode), "decode_slack": float(self.decode_slack),
        }

    @property
    def clahe_label(self) -> str:
        return f"{float(self.clahe_clip)}/{int(self.clahe_grid)}" if self.clahe else "off"


@dataclass
class ConvertJob:
    """One image to convert: ``source`` (DICOM or PNG) -> ``dest`` (PNG)."""

    image_id: str
    split: str
    source: Path
    dest: Path

    def __post_init__(self) -> None:
        self.source, self.dest = Path(self.source), Path(self.dest)


FINGERPRINT_DIGITS = 16


def job_fingerprint(job: ConvertJob, options: ConvertOptions) -> str:
    """16 hex digits identifying what would produce ``job.dest``: ``options.pixel_key()`` plus the
    size and mtime (ns) of ``job.source``. "" when the source cannot be stat'ed (it will then fail to
    convert and be reported), which never matches a recorded fingerprint."""
    try:
        st = os.stat(job.source)
    except OSError:
        return ""
    blob = json.dumps({"options": options.pixel_key(), "source_size": int(st.st_size),
                       "source_mtime_ns": int(st.st_mtime_ns)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:FINGERPRINT_DIGITS]


def convert_one(job: ConvertJob, options: ConvertOptions) -> dict:
    """Convert one image and write its PNG atomically; returns its meta row. Raises DataError."""
    from pipeline import dicom, imaging
    from pipeline.io import write_bytes_atomic

    # Stat before reading: if the source changes while it is read, the recorded (older) mtime will
    # not match next time and the image is converted again rather than kept stale.
    fingerprint = job_fingerprint(job, options)

    def target(height: int, width: int) -> tuple[int, int]:
        return imaging.output_shape(height, width, options.size, options.square)

    img = dicom.read_image(job.source, voi_lut=options.voi_lut, percentiles=options.percentiles,
                           target_shape=target, fast_decode=options.fast_decode,
                           decode_slack=options.decode_slack)
    out_shape = imaging.output_shape(img.height, img.width, options.size, options.square)
    pixels = imaging.resize(img.pixels, out_shape)
    pixels = imaging.quantise(pixels, options.bits)
    mapping = img.mapping
    if options.denoise:
        pixels = imaging.denoise(pixels, options.denoise_strength)
        mapping += f", denoise {options.denoise_strength:g}"
    if options.clahe:
        pixels = imaging.clahe(pixels, options.clahe_clip, options.clahe_grid)
    write_bytes_atomic(job.dest, imaging.encode_png(pixels, options.png_compression))
    return {
        "image_id": job.image_id, "split": job.split, "height": img.height, "width": img.width,
        "out_height": int(pixels.shape[0]), "out_width": int(pixels.shape[1]),
        "photometric": img.photometric, "bits_stored": img.bits_stored,
        "transfer_syntax": img.transfer_syntax, "source": str(job.source), "mapping": mapping,
        "inverted": bool(img.inverted), "clahe": options.clahe_label, "decode_reduce": int(img.decode_reduce),
        "fingerprint": fingerprint,
    }


def _work(args: tuple[ConvertJob, ConvertOptions]) -> tuple[str, dict]:
    """Worker (module level: picklable under spawn). Never raises for a bad file."""
    job, options = args
    try:
        return "ok", convert_one(job, options)
    except DataError as exc:
        reason = str(exc)
    except Exception as exc:  # noqa: BLE001  one bad file must not stop the batch
        reason = f"{type(exc).__name__}: {exc}"
    reason = " ".join(reason.split())[:500]  # one line, bounded
    return "fail", {"image_id": job.image_id, "split": job.split, "source": str(job.source), "reason": reason}


def _init_worker() -> None:
    import cv2

    cv2.setNumThreads(1)  # one process per core already; OpenCV's own threads would oversubscribe


def convert_images(
    jobs: Iterable[ConvertJob],
    options: ConvertOptions,
    workers: int = 1,
    force: bool = False,
    previous_meta: pd.DataFrame | None = None,
    progress: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Convert ``jobs``; returns (meta, failures) with the columns of docs/DESIGN.md.

    ``meta`` has one row per converted or skipped image in job order (skipped ones carry their
    ``previous_meta`` row); ``failures`` one row per file that could not be converted.
    ``workers`` <= 0 means all cores.
    """
    import pandas as pd

    jobs = list(jobs)
    seen: dict[tuple[str, str], Path] = {}
    for job in jobs:
        key = (job.split, job.image_id)
        if key in seen:
            raise DataError(f"image id {job.image_id!r} (split {job.split}) appears twice: {seen[key]} and "
                            f"{job.source}; image ids must be unique within a split")
        seen[key] = job.source
    done = _previous_rows(previous_meta)
    rows: dict[int, dict] = {}
    todo: list[tuple[int, ConvertJob]] = []
    for i, (job, redo) in enumerate(zip(jobs, _needs(jobs, options, done, force))):
        if redo:
            todo.append((i, job))
        else:
            rows[i] = done[(job.split, job.image_id)]

    failures: list[dict] = []
    workers = max(1, min(resolve_workers(workers, "workers"), len(todo)))
    bar = _progress(len(todo), progress)
    try:
        if workers == 1:
            # single process: keep OpenCV's threads (nothing else in this process to oversubscribe)
            results = ((i, _work((job, options))) for i, job in todo)
            for i, (status, row) in results:
                _collect(i, status, row, rows, failures, bar)
        else:
            ctx = mp.get_context("spawn")  # safe with threads (OpenCV, torch) in the parent
            chunk = max(1, min(8, len(todo) // (workers * 4)))
            with ctx.Pool(workers, initializer=_init_worker) as pool:
                args = [((i, job), options) for i, job in todo]
                for i, (status, row) in pool.imap_unordered(_indexed_work, args, chunksize=chunk):
                    _collect(i, status, row, rows, failures, bar)
    finally:
        if bar is not None:
            bar.close()
    # A job that was (re)converted and failed must not leave its earlier PNG behind: that PNG was
    # made from other options or another version of the source, and meta.csv no longer lists it.
    by_key = {(job.split, job.image_id): job for _, job in todo}
    for row in failures:
        job = by_key.get((str(row["split"]), str(row["image_id"])))
        if job is not None:
            job.dest.unlink(missing_ok=True)

    meta = pd.DataFrame([rows[i] for i in sorted(rows)], columns=META_COLUMNS)
    meta = _meta_types(meta)
    order = {job.image_id: i for i, job in enumerate(jobs)}
    failures.sort(key=lambda r: order.get(r["image_id"], 0))
    return meta, pd.DataFrame(failures, columns=FAILURE_COLUMNS)


def _indexed_work(args):
    (i, job), options = args
    return i, _work((job, options))


def needs_conversion(
    jobs: Iterable[ConvertJob],
    options: ConvertOptions,
    previous_meta: pd.DataFrame | None = None,
    force: bool = False,
) -> list[bool]:
    """For each job, whether ``convert_images`` would (re)convert it (True) or keep its earlier
    PNG and ``previous_meta`` row (False: PNG present and the row's fingerprint matches)."""
    jobs = list(jobs)
    return _needs(jobs, options, _previous_rows(previous_meta), force)


def _needs(jobs: list[ConvertJob], options: ConvertOptions, done: dict, force: bool) -> list[bool]:
    out = []
    for job in jobs:
        prev = done.get((job.split, job.image_id))
        keep = (not force and prev is not None and job.dest.is_file()
                and bool(prev.get("fingerprint")) and prev["fingerprint"] == job_fingerprint(job, options))
        out.append(not keep)
    return out


def _collect(i: int, status: str, row: dict, rows: dict, failures: list, bar) -> None:
    if status == "ok":
        rows[i] = row
    else:
        failures.append(row)
        if bar is not None:
            bar.set_postfix_str(f"failed {len(failures)}")
    if bar is not None:
        bar.update(1)


def _progress(total: int, enabled: bool):
    if not enabled or total == 0:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="images", unit="img", dynamic_ncols=True)


def _previous_rows(previous_meta: pd.DataFrame | None) -> dict[tuple[str, str], dict]:
    if previous_meta is None or len(previous_meta) == 0:
        return {}
    missing = [c for c in ("image_id", "split") if c not in previous_meta.columns]
    if missing:
        raise DataError(f"previous meta table lacks columns {missing}; expected {META_COLUMNS}")
    out = {}
    for rec in previous_meta.to_dict("records"):
        row = {c: rec.get(c) for c in META_COLUMNS}
        fp = row["fingerprint"]  # None (older table) or NaN never matches: that image is converted again
        row["fingerprint"] = fp if isinstance(fp, str) else ""
        out[(str(row["split"]), str(row["image_id"]))] = row
    return out


def _meta_types(meta: pd.DataFrame) -> pd.DataFrame:
    """Stable dtypes whether rows came from this run or from a CSV read back (resume)."""
    import pandas as pd

    meta = meta.copy()
    for col in ("height", "width", "out_height", "out_width", "bits_stored", "decode_reduce"):
        meta[col] = pd.to_numeric(meta[col]).astype("int64") if len(meta) else meta[col].astype("int64")
    meta["inverted"] = meta["inverted"].map(_to_bool).astype(bool) if len(meta) else meta["inverted"].astype(bool)
    if "fingerprint" not in meta.columns:  # a table written before the column existed
        meta["fingerprint"] = ""
    meta["fingerprint"] = meta["fingerprint"].fillna("")
    for col in ("image_id", "split", "photometric", "transfer_syntax", "source", "mapping", "clahe", "fingerprint"):
        meta[col] = meta[col].astype(str)
    return meta


def _to_bool(v) -> bool:
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    return str(v).strip().lower() in ("true", "1", "yes")


def read_meta(path: Path) -> pd.DataFrame | None:
    """A previous ``meta.csv`` for resuming, or None when absent; ids and splits read as strings.

    A table from an older version without the ``fingerprint`` column is accepted: its fingerprints
    read as "", so each of its images is converted again on the next run."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        return None
    # keep_default_na=False: an empty split (dicom2png) or an id like "NA" stays a string
    # fingerprint as str: an all-digit hash would otherwise read as a number ("1e5..." as a float)
    meta = pd.read_csv(path, dtype={"image_id": str, "split": str, "transfer_syntax": str, "clahe": str,
                                    "fingerprint": str}, keep_default_na=False)
    if "fingerprint" not in meta.columns:
        meta["fingerprint"] = ""
    missing = [c for c in META_COLUMNS if c not in meta.columns]
    if missing:
        raise DataError(f"{path}: not a conversion meta table (missing columns {missing}); "
                        f"delete it or pass --force")
    return _meta_types(meta[META_COLUMNS])


__all__ = ["ConvertOptions", "ConvertJob", "convert_images", "convert_one", "read_meta", "job_fingerprint",
           "needs_conversion",
           "META_COLUMNS", "FAILURE_COLUMNS"]
