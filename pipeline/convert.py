"""Batch conversion of DICOM/PNG radiographs to training PNGs that never loses work.

- Each PNG is written atomically (temporary file + ``os.replace``): a crash, Ctrl-C or kill -9 never
  leaves a partial PNG under its final name, so "the file exists" means "the file is complete";
  temporaries a killed run left behind are removed by the next run.
- Skip rule (one for the whole project, :func:`pipeline.work.is_current`): a job is skipped only when
  its ``dest`` exists and its recorded ``fingerprint`` equals ``job_fingerprint``: a digest of the
  options that change pixels and of the source file's CONTENT (:func:`pipeline.fingerprint.file_digest`),
  never its path or mtime. So ``touch`` or copying the dataset elsewhere converts nothing, and changed
  bytes or another ``image.size``/``image.clahe``/... re-converts. ``force`` redoes everything. Rows of
  older meta tables without a fingerprint never match, so those images are converted again once.
- A killed batch keeps its finished images: with ``journal`` each finished row is appended to a journal
  file that the next batch reads back (:class:`pipeline.convert_records.Journal`).
- A job that fails removes its old PNG (if any): the folder never keeps a PNG meta.csv does not
  describe.
- A bad file becomes one row of ``failures`` (image_id, split, source, reason: one line naming the
  element or problem, no traceback); every other file still converts.
- ``workers > 1``: this process and ``workers - 1`` spawned helpers convert side by side
  (:func:`pipeline.work_pool.run_shared`: nobody waits for the helpers to start), with a tqdm bar.

Content digests are cached in the folder given to :func:`pipeline.fingerprint.set_cache_dir` (the
runner: ``<run dir>/.cache``; dicom2png: ``<out>/.cache``); worker processes use the same folder.

From Python::

    from pipeline.convert import ConvertJob, ConvertOptions, convert_images
    opts = ConvertOptions.from_config(cfg.image)
    meta, failures = convert_images(jobs, opts, workers=2)
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Mapping

if TYPE_CHECKING:  # pandas is imported lazily: spawned workers start faster without it
    import pandas as pd

from pipeline.config import resolve_workers
from pipeline.convert_records import (FAILURE_COLUMNS, META_COLUMNS, Journal, meta_types, previous_rows,
                                      read_meta, remove_stale_temporaries)
from pipeline.errors import ConfigError, DataError
from pipeline.work_pool import run_shared

# Bumped whenever the conversion maths changes, so PNGs made by older code are not kept as current.
# 3: a 16-bit picture file is scaled by the bits its samples use (pipeline.intensity.picture_bits).
PIXEL_METHOD = 3


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
    multiframe: str = "refuse"
    lung_crop: bool = False
    lung_crop_margin: float = 0.05
    lung_model: str | None = None

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
        if not 0 <= float(self.lung_crop_margin) < 1:
            problems.append(f"image.lung_crop_margin must be in [0, 1), got {self.lung_crop_margin}")
        if self.multiframe not in ("refuse", "first"):
            problems.append(f"image.multiframe must be refuse or first, got {self.multiframe!r}")
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
            "multiframe": str(self.multiframe), "method": PIXEL_METHOD,
            **({"lung_crop": float(self.lung_crop_margin), "lung_model": _model_digest(self.lung_model)}
               if self.lung_crop else {}),
        }

    def decode(self, source, target_shape):
        """The decoded picture of ``source`` under these options (window / percentiles, reduced JPEG 2000
        decode towards ``target_shape``, multi-frame rule): what prepare converts and the lung model sees."""
        from pipeline import dicom

        return dicom.read_image(source, voi_lut=self.voi_lut, percentiles=self.percentiles,
                                target_shape=target_shape, fast_decode=self.fast_decode,
                                decode_slack=self.decode_slack, multiframe=self.multiframe)

    @property
    def clahe_label(self) -> str:
        return f"{float(self.clahe_clip)}/{int(self.clahe_grid)}" if self.clahe else "off"


def _model_digest(path: str | None) -> str | None:
    from pipeline.fingerprint import file_digest

    return file_digest(path) if path else None


@dataclass
class ConvertJob:
    """One image to convert: ``source`` (DICOM or PNG) -> ``dest`` (PNG)."""

    image_id: str
    split: str
    source: Path
    dest: Path

    def __post_init__(self) -> None:
        self.source, self.dest = Path(self.source), Path(self.dest)


def job_fingerprint(job: ConvertJob, options: ConvertOptions) -> str:
    """16 hex digits identifying what would produce ``job.dest``: ``options.pixel_key()`` and the
    content digest of ``job.source`` (never its path or mtime). "" when the source cannot be read
    (it will then fail to convert and be reported), which never matches a recorded fingerprint."""
    from pipeline.fingerprint import digest, file_digest

    content = file_digest(job.source)
    return digest({"pixels": options.pixel_key(), "source": content}) if content else ""


def convert_one(job: ConvertJob, options: ConvertOptions) -> dict:
    """Convert one image and write its PNG atomically; returns its meta row. Raises DataError."""
    from pipeline import imaging
    from pipeline.io import write_bytes_atomic

    # Digest before reading: if the source changes while it is read, the recorded (older) digest
    # will not match next time and the image is converted again rather than kept stale.
    fingerprint = job_fingerprint(job, options)

    def target(height: int, width: int) -> tuple[int, int]:
        return imaging.output_shape(height, width, options.size, options.square)

    def decode_target(height: int, width: int) -> tuple[int, int]:
        # a lung crop keeps about half the side or more: decode at twice the output size, so the crop is
        # never enlarged from a reduced decode
        return imaging.output_shape(height, width, 2 * options.size, options.square) if options.lung_crop else \
            target(height, width)

    img = options.decode(job.source, decode_target)
    crop, pixels, notes = None, img.pixels, list(img.notes)
    if options.lung_crop:
        from pipeline.lung_crop import crop_pixels, lung_square

        crop, note = lung_square(pixels, img.width, img.height, str(options.lung_model), options.lung_crop_margin)
        notes.append(note)
        if crop is not None:
            pixels = crop_pixels(pixels, crop, img.width, img.height)
    shown_h, shown_w = (img.height, img.width) if crop is None else (crop[3] - crop[1], crop[2] - crop[0])
    pixels = imaging.resize(pixels, target(shown_h, shown_w))
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
        "fingerprint": fingerprint, "decoder": img.decoder, "notes": "; ".join(notes),
        **dict(zip(("crop_x0", "crop_y0", "crop_x1", "crop_y1"), [str(v) for v in crop] if crop else [""] * 4)),
    }


def _work(args: tuple[ConvertJob, ConvertOptions]) -> tuple[str, dict]:
    """Worker (module level: picklable under spawn). Never raises for a bad file."""
    job, options = args
    try:
        return "ok", convert_one(job, options)
    except DataError as exc:
        reason = str(exc)
    except Exception as exc:  # noqa: BLE001  one bad file must not stop the batch
        reason = (f"{job.source}: unexpected failure while converting ({str(exc).strip() or 'no message'}); "
                  f"please report it with the file")
    reason = " ".join(reason.split())[:700]  # one line, bounded
    return "fail", {"image_id": job.image_id, "split": job.split, "source": str(job.source), "reason": reason}


def _init_worker(cache_dir: Path | None) -> None:
    import cv2

    from pipeline import fingerprint

    cv2.setNumThreads(1)  # one process per core already; OpenCV's own threads would oversubscribe
    fingerprint.set_cache_dir(cache_dir)  # a spawned process starts without the parent's setting


def _one_cv2_thread():
    """OpenCV on one thread in this process while helper processes share the cores; returns the undo."""
    import cv2

    before = cv2.getNumThreads()
    cv2.setNumThreads(1)
    return lambda: cv2.setNumThreads(before)


def _digest_cache_dir() -> Path | None:
    """The digest cache folder this process uses, handed to spawned workers."""
    from pipeline import fingerprint

    return fingerprint.cache_dir()


def convert_images(
    jobs: Iterable[ConvertJob],
    options: ConvertOptions,
    workers: int = 1,
    force: bool = False,
    previous_meta: pd.DataFrame | None = None,
    progress: bool = True,
    journal: Path | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Convert ``jobs``; returns (meta, failures) with the columns of docs/DESIGN.md.

    ``meta`` has one row per converted or skipped image in job order (skipped ones carry their
    ``previous_meta`` row, with ``source`` updated to where the file is now); ``failures`` one row per
    file that could not be converted. ``workers`` <= 0 means all cores. ``journal``: a file where
    finished rows are appended as they finish and read back by the next call (resume after a kill);
    removed when this call returns normally.
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
    record = Journal(journal)
    done = {**previous_rows(previous_meta), **record.rows()}
    remove_stale_temporaries([job.dest for job in jobs])
    rows: dict[int, dict] = {}
    todo: list[tuple[int, ConvertJob]] = []
    for i, (job, redo) in enumerate(zip(jobs, _needs(jobs, options, done, force))):
        if redo:
            todo.append((i, job))
        else:
            rows[i] = {**done[(job.split, job.image_id)], "source": str(job.source)}

    failures: list[dict] = []
    workers = max(1, min(resolve_workers(workers, "workers"), len(todo)))
    bar = _progress(len(todo), progress)

    def collect(result):
        i, (status, row) = result
        _collect(i, status, row, rows, failures, bar, record)

    try:
        if workers == 1:
            # single process: keep OpenCV's threads (nothing else in this process to oversubscribe)
            for i, job in todo:
                collect((i, _work((job, options))))
        else:
            # this process converts too while workers - 1 spawned helpers start (pipeline.work_pool)
            run_shared([((i, job), options) for i, job in todo], _indexed_work, collect, workers,
                       initializer=_init_worker, initargs=(_digest_cache_dir(),), local_setup=_one_cv2_thread)
    finally:
        if bar is not None:
            bar.close()
        record.close(remove=False)
    # A job that was (re)converted and failed must not leave its earlier PNG behind: that PNG was
    # made from other options or another version of the source, and meta.csv no longer lists it.
    by_key = {(job.split, job.image_id): job for _, job in todo}
    for row in failures:
        job = by_key.get((str(row["split"]), str(row["image_id"])))
        if job is not None:
            job.dest.unlink(missing_ok=True)

    meta = meta_types(pd.DataFrame([rows[i] for i in sorted(rows)], columns=META_COLUMNS))
    order = {job.image_id: i for i, job in enumerate(jobs)}
    failures.sort(key=lambda r: order.get(r["image_id"], 0))
    record.close(remove=True)
    return meta, pd.DataFrame(failures, columns=FAILURE_COLUMNS)


def with_journal(previous_meta: pd.DataFrame | None, journal: Path | None) -> pd.DataFrame | None:
    """``previous_meta`` plus the rows a killed batch left in ``journal`` (theirs win): what
    ``convert_images(..., journal=journal)`` will treat as done, for counting skips beforehand."""
    import pandas as pd

    resumed = Journal(journal).rows()
    if not resumed:
        return previous_meta
    rows = {**previous_rows(previous_meta), **resumed}
    return meta_types(pd.DataFrame(list(rows.values()), columns=META_COLUMNS))


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
    return _needs(jobs, options, previous_rows(previous_meta), force)


def _needs(jobs: list[ConvertJob], options: ConvertOptions, done: dict, force: bool) -> list[bool]:
    """The skip rule per job. The source's content digest is computed only for a job that has a
    record and a PNG: every other job is converted anyway, and its worker computes the digest."""
    from pipeline.work import is_current

    out = []
    for job in jobs:
        prev = done.get((job.split, job.image_id))
        keep = (not force and prev is not None and bool(prev.get("fingerprint")) and job.dest.is_file()
                and is_current(prev["fingerprint"], job_fingerprint(job, options), [job.dest]))
        out.append(not keep)
    return out


def _collect(i: int, status: str, row: dict, rows: dict, failures: list, bar, record: Journal) -> None:
    if status == "ok":
        rows[i] = row
        record.add(row)
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


__all__ = ["ConvertOptions", "ConvertJob", "convert_images", "convert_one", "read_meta", "job_fingerprint",
           "needs_conversion", "with_journal", "META_COLUMNS", "FAILURE_COLUMNS", "PIXEL_METHOD"]
