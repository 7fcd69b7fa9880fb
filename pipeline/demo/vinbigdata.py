"""The demo dataset in the VinBigData (Kaggle) layout: DICOMs, 3 readers per train image, Kaggle's CSVs.

``OUT/train/<id>.dicom``, ``OUT/test/<id>.dicom``, ``train.csv`` (3 radiologists per image, boxes in
the DICOM's own pixels), ``sample_submission.csv``, ``train_meta.csv``/``test_meta.csv``
(``image_id,dim0,dim1``, dim0 = rows), and ``test_truth.csv`` (the clean truth of the test images, in
``train.csv`` form with ``rad_id`` "consensus", so the demo can report an honest test score).
Every image also goes into the lung-segmentation set ``OUT/lungs/`` (:mod:`pipeline.demo.lungs`).

Determinism: every image draws from its own generators seeded by ``(seed, split, index, purpose)``,
and every UID, date and time in the files derives from the seed, so the same seed gives the same bytes.
"""
from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless

from pipeline.classes import NORMAL_ID, VINBIGDATA
from pipeline.demo import synth
from pipeline.demo.lungs import lung_split, write_lung_pair, write_split_csv
from pipeline.io import write_text_atomic, write_with

# Common, visually distinct classes the demo draws by default, so a tiny detector trained for a few
# minutes on CPU reaches a useful mAP. Every class in VINBIGDATA[:14] can still be requested.
DEFAULT_CLASSES = ("Aortic enlargement", "Cardiomegaly", "Pleural effusion", "Nodule/Mass",
                   "Pleural thickening", "Pneumothorax")

P_ABNORMAL = 0.47             # share of images with at least one drawn finding
N_FINDINGS_P = (0.5, 0.3, 0.2)  # probabilities of 1, 2, 3 findings on an abnormal image
TRUTH_RAD_ID = "consensus"

CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"           # Computed Radiography Image Storage
DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"         # Digital X-Ray Image Storage - For Presentation
IMPLEMENTATION_UID = "1.2.826.0.1.3680043.8.498.77301"  # fixed, so files do not change with the pydicom version
IMPLEMENTATION_NAME = "CXR_DEMO_1"
SPLIT_CODE = {"train": 1, "test": 2}
HEADER = "image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max\n"


@dataclass(frozen=True)
class DicomVariant:
    """How one demo DICOM is stored (the ways real chest DICOMs differ)."""

    rows: int
    cols: int
    photometric: str          # MONOCHROME1 (stored inverted) | MONOCHROME2
    bits_stored: int          # 12..16 (BitsAllocated is always 16)
    j2k: bool                 # JPEG 2000 lossless, else Explicit VR Little Endian
    tagless: bool             # only the few tags real VinBigData files carry
    window: bool              # WindowCenter/WindowWidth present
    rescale: tuple | None     # (slope, intercept) or None (no Rescale tags)
    dx: bool                  # Digital X-Ray SOP class (Modality DX), else CR


def sample_variant(rng: np.random.Generator) -> DicomVariant:
    """Draw a storage variant: mostly 400-1200 px, a few near 2000; ~30% nearly tagless (like the real
    files), ~25% JPEG 2000; MONOCHROME1 for most; BitsStored 12..16; window and rescale on some."""
    if rng.random() < 0.06:
        cols = int(rng.integers(1800, 2101))
    else:   # 400..1200, skewed towards the small end so generating and decoding stay quick
        cols = int(400 + 800 * rng.random() ** 1.5)
    rows = int(cols * rng.uniform(0.85, 1.2))
    cols, rows = cols // 4 * 4, max(360, rows // 4 * 4)
    tagless = bool(rng.random() < 0.3)
    # JPEG 2000 encoding is the slowest part of generation (~0.4 s per megapixel), so it goes to
    # about a quarter of the files and never to the few very large ones.
    j2k = cols <= 1200 and bool(rng.random() < (0.45 if tagless else 0.17))
    photometric = "MONOCHROME1" if (tagless or rng.random() < 0.5) else "MONOCHROME2"
    bits = int(rng.choice([12, 14, 15, 16], p=[0.45, 0.25, 0.1, 0.2]))
    window = (not tagless) and bool(rng.random() < 0.5)
    rescale = None
    if not tagless and rng.random() < 0.5:
        rescale = (1.0, -1024.0) if rng.random() < 0.5 else (1.0, 0.0)
    return DicomVariant(rows=rows, cols=max(360, cols), photometric=photometric, bits_stored=bits, j2k=j2k,
                        tagless=tagless, window=window, rescale=rescale, dx=bool(rng.random() < 0.5))


def image_id(seed: int, split: str, index: int) -> str:
    """32-hex id like Kaggle's, a pure function of (seed, split, index)."""
    return hashlib.md5(f"cxr-demo/vinbigdata/{seed}/{split}/{index}".encode()).hexdigest()


def _rng(seed: int, split: str, index: int, purpose: int) -> np.random.Generator:
    return np.random.default_rng([seed, SPLIT_CODE[split], index, purpose])


def to_stored(img01: np.ndarray, v: DicomVariant, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Display intensities [0, 1] -> stored uint16 pixels of ``v.bits_stored`` bits.

    The detector uses part of its range (an offset and a gain vary per file). MONOCHROME1 stores
    dense = low values. Returns the array and the window (center, width) in *rescaled* units that
    spans the image's content, for files that carry one.
    """
    top = (1 << v.bits_stored) - 1
    lo = rng.uniform(0.0, 0.08) * top
    hi = rng.uniform(0.75, 0.98) * top
    s = lo + img01 * np.float32(hi - lo)
    if v.photometric == "MONOCHROME1":
        s = top - s
    arr = np.clip(np.rint(s), 0, top).astype(np.uint16)
    a, b = lo + 0.05 * (hi - lo), lo + 0.95 * (hi - lo)
    if v.photometric == "MONOCHROME1":
        a, b = top - b, top - a
    slope, intercept = v.rescale or (1.0, 0.0)
    return arr, {"center": round((a + b) / 2 * slope + intercept), "width": round((b - a) * slope)}


def _da_tm(seed: int, index: int) -> tuple[str, str]:
    """A fixed study date/time from (seed, index): 2019-2020, like the VinDr collection years."""
    h = int(hashlib.md5(f"dt/{seed}/{index}".encode()).hexdigest()[:8], 16)
    day = h % 700
    y, doy = (2019, day) if day < 365 else (2020, day - 365)
    month, dom = 1 + doy // 31 % 12, 1 + doy % 28
    return f"{y}{month:02d}{dom:02d}", f"{8 + h % 10:02d}{h // 10 % 60:02d}{h // 600 % 60:02d}"


def build_dataset(img01: np.ndarray, v: DicomVariant, iid: str, seed: int, split: str, index: int,
                  rng: np.random.Generator) -> Dataset:
    """The pydicom Dataset of one demo image (pixels compressed when ``v.j2k``)."""
    def uid(kind: str) -> str:
        # A 2.25.<128-bit integer> UID (the UUID-derived form) hashed from the seed: valid and repeatable.
        # (pydicom's generate_uid(prefix=None) ignores its entropy sources and is random.)
        digest = hashlib.sha256(f"cxr-demo/{seed}/{split}/{iid}/{kind}".encode()).hexdigest()
        return f"2.25.{int(digest[:32], 16)}"

    sop_class = DX_STORAGE if v.dx else CR_STORAGE
    sop_uid = uid("sop")
    arr, win = to_stored(img01, v, rng)

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = IMPLEMENTATION_UID
    ds.file_meta.ImplementationVersionName = IMPLEMENTATION_NAME
    sex = "F" if rng.random() < 0.45 else "M"
    age = int(rng.integers(18, 90))
    if not v.tagless:
        date, time_ = _da_tm(seed, SPLIT_CODE[split] * 100000 + index)
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = sop_uid
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = date
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = time_
        ds.AccessionNumber = ""
        ds.Modality = "DX" if v.dx else "CR"
        ds.Manufacturer = "CXR-DEMO"
        ds.PatientName = f"DEMO^{iid[:8]}"
        ds.PatientID = iid[:12]
        ds.PatientBirthDate = ""
    ds.PatientSex = sex
    ds.PatientAge = f"{age:03d}Y"
    if not v.tagless:
        ds.BodyPartExamined = "CHEST"
        ds.ViewPosition = "PA"
        ds.StudyInstanceUID = uid("study")
        ds.SeriesInstanceUID = uid("series")
        ds.StudyID = "1"
        ds.SeriesNumber = 1
        ds.InstanceNumber = 1
        ds.PatientOrientation = ["L", "F"]
        spacing = [0.15, 0.15] if v.cols < 1500 else [0.1, 0.1]
        if v.dx:
            ds.PresentationIntentType = "FOR PRESENTATION"
            ds.ImagerPixelSpacing = spacing
        else:
            ds.PixelSpacing = spacing
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = v.photometric
    ds.Rows, ds.Columns = v.rows, v.cols
    ds.BitsAllocated = 16
    ds.BitsStored = v.bits_stored
    ds.HighBit = v.bits_stored - 1
    ds.PixelRepresentation = 0
    if v.window:
        ds.WindowCenter = win["center"]
        ds.WindowWidth = max(1, win["width"])
    if v.rescale is not None:
        ds.RescaleIntercept = v.rescale[1]
        ds.RescaleSlope = v.rescale[0]
        ds.RescaleType = "US"
    if v.j2k:
        ds.compress(JPEG2000Lossless, arr, generate_instance_uid=False)  # keep our fixed UID
    else:
        ds.PixelData = arr.tobytes()
    return ds


def run_parallel(fn, args: list[tuple], workers: int | None = None) -> list:
    """``[fn(*a) for a in args]``, spread over worker processes when there is enough work.

    Uses the "spawn" start method: forking a process that has already loaded torch (the pipeline
    may) can deadlock, and spawned workers import only this light module.
    """
    import os

    workers = min(2, os.cpu_count() or 1) if workers is None else workers
    if workers <= 1 or len(args) < 16:
        return [fn(*a) for a in args]
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as ex:
        return list(ex.map(fn, *zip(*args), chunksize=4))


def _fmt(v: float) -> str:
    return f"{v:.1f}"


def _row(iid: str, cid: int, rad: str, box=None) -> str:
    coords = ",".join(_fmt(c) for c in box) if box is not None else ",,,"
    return f"{iid},{VINBIGDATA[cid]},{cid},{rad},{coords}\n"


def _readers(seed: int) -> dict:
    """Per-radiologist habits, fixed by the seed: miss rate, over-call rate, box jitter and bias."""
    rng = np.random.default_rng([seed, 99])
    out = {}
    for k in range(1, 18):
        out[f"R{k}"] = {"miss": rng.uniform(0.04, 0.25), "over": rng.uniform(0.01, 0.07),
                        "jitter": rng.uniform(0.02, 0.06), "grow": rng.uniform(-0.04, 0.06)}
    return out


# A few radiologists read most images (as R8, R9, R10 did in the real data).
_POOL = [f"R{k}" for k in range(1, 18)]
_POOL_W = np.array([0.2 if k in (8, 9, 10) else 0.4 / 14 for k in range(1, 18)])
_POOL_W = _POOL_W / _POOL_W.sum()


def _jitter(box, w: int, h: int, habit: dict, rng: np.random.Generator):
    """One reader's version of a box (pixel corners): each edge moved by a few % of the box size."""
    x0, y0, x1, y1 = box
    bw, bh = x1 - x0, y1 - y0
    g = habit["grow"]
    j = habit["jitter"]
    nx0 = x0 - g * bw / 2 + rng.normal(0, j) * bw
    nx1 = x1 + g * bw / 2 + rng.normal(0, j) * bw
    ny0 = y0 - g * bh / 2 + rng.normal(0, j) * bh
    ny1 = y1 + g * bh / 2 + rng.normal(0, j) * bh
    return synth.to_pixels((min(nx0, nx1 - 1) / w, min(ny0, ny1 - 1) / h, max(nx1, nx0 + 1) / w, max(ny1, ny0 + 1) / h),
                           w, h)


def draw_findings(rng: np.random.Generator, classes: list[str]) -> list[str]:
    """The findings truly present on one image: none (normal) or 1..3 distinct classes."""
    if rng.random() >= P_ABNORMAL:
        return []
    k = min(len(classes), 1 + int(rng.choice(3, p=N_FINDINGS_P)))
    return [classes[i] for i in sorted(rng.choice(len(classes), size=k, replace=False))]


@functools.lru_cache(maxsize=8)
def _readers_cached(seed: int) -> dict:
    return _readers(seed)


def make_image(seed: int, split: str, index: int, classes: list[str], readers: dict) -> dict:
    """Render, encode and annotate one image. Returns its id, Dataset, size, truth and reader rows."""
    iid = image_id(seed, split, index)
    v = sample_variant(_rng(seed, split, index, 1))
    names = draw_findings(_rng(seed, split, index, 2), classes)
    r = synth.render_image(_rng(seed, split, index, 3), v.rows, v.cols, names)
    ds = build_dataset(r.image, v, iid, seed, split, index, _rng(seed, split, index, 4))
    truth = [(VINBIGDATA.index(n), synth.to_pixels(b, v.cols, v.rows)) for n, b in r.findings]
    rows = []
    if split == "train":
        rr = _rng(seed, split, index, 5)
        rads = list(rr.choice(_POOL, size=3, replace=False, p=_POOL_W))
        for rad in rads:
            habit = readers[rad]
            marks = [(cid, _jitter(box, v.cols, v.rows, habit, rr)) for cid, box in truth if rr.random() >= habit["miss"]]
            if rr.random() < habit["over"]:
                name = classes[int(rr.integers(len(classes)))]
                marks.append((VINBIGDATA.index(name),
                               synth.to_pixels(synth.spurious_box(rr, r.chest, name), v.cols, v.rows)))
            rows += [_row(iid, cid, rad, box) for cid, box in marks] or [_row(iid, NORMAL_ID, rad)]
    truth_rows = [_row(iid, cid, TRUTH_RAD_ID, box) for cid, box in truth] or [_row(iid, NORMAL_ID, TRUTH_RAD_ID)]
    return {"id": iid, "ds": ds, "rows": v.rows, "cols": v.cols, "reader_rows": rows, "truth_rows": truth_rows,
            "variant": v, "rendered": r}


def check_classes(classes) -> list[str]:
    names = list(classes) if classes is not None else list(DEFAULT_CLASSES)
    bad = [c for c in names if c not in VINBIGDATA[:NORMAL_ID]]
    if bad or not names:
        raise ValueError(f"demo classes {bad or names!r} are not VinBigData findings; "
                         f"choose from: {', '.join(VINBIGDATA[:NORMAL_ID])}")
    return names


def _write_one(out: Path, seed: int, split: str, index: int, names: list[str]) -> dict:
    """Make one image and write its DICOM; returns what the CSVs need (runs in a worker process)."""
    im = make_image(seed, split, index, names, _readers_cached(seed))
    ds, r = im.pop("ds"), im.pop("rendered")
    write_with(out / split / f"{im['id']}.dicom", lambda p: ds.save_as(p, enforce_file_format=True))
    write_lung_pair(out, im["id"], r.image, r.lung_mask())
    im["lung_split"] = lung_split(split, index)
    im["abnormal"] = bool(r.findings)
    return im


def write_vinbigdata(out: Path, n_train: int, n_test: int, seed: int, classes=None, workers: int | None = None
                     ) -> dict:
    """Write the whole VinBigData-layout demo under ``out``; returns counts for the caller to report.

    Images are independent (own seeds), so they are made in ``workers`` processes (default: up to 2,
    one per core) with identical results in any order.
    """
    names = check_classes(classes)
    out = Path(out)
    train_rows, truth_rows, meta = [], [], {"train": [], "test": []}
    stats = {"j2k": 0, "monochrome1": 0, "tagless": 0}
    tasks = [(split, i) for split, n in (("train", n_train), ("test", n_test)) for i in range(n)]
    made = run_parallel(_write_one, [(out, seed, split, i, names) for split, i in tasks], workers)
    write_split_csv(out, [(im["id"], im["lung_split"], im["abnormal"]) for im in made])
    for (split, _), im in zip(tasks, made):
        meta[split].append(f"{im['id']},{im['rows']},{im['cols']}\n")
        if split == "train":
            train_rows += im["reader_rows"]
        else:
            truth_rows += im["truth_rows"]
        v = im["variant"]
        stats["j2k"] += v.j2k
        stats["monochrome1"] += v.photometric == "MONOCHROME1"
        stats["tagless"] += v.tagless
    # Kaggle's train.csv is not grouped by image; shuffle the rows the same way every time.
    order = np.random.default_rng([seed, 7]).permutation(len(train_rows))
    write_text_atomic(out / "train.csv", HEADER + "".join(train_rows[k] for k in order))
    write_text_atomic(out / "test_truth.csv", HEADER + "".join(truth_rows))
    for split in ("train", "test"):
        write_text_atomic(out / f"{split}_meta.csv", "image_id,dim0,dim1\n" + "".join(meta[split]))
    test_ids = sorted(line.split(",")[0] for line in meta["test"])
    write_text_atomic(out / "sample_submission.csv",
                      "image_id,PredictionString\n" + "".join(f"{i},14 1 0 0 1 1\n" for i in test_ids))
    return {"train": n_train, "test": n_test, "train_rows": len(train_rows), "classes": names, **stats}
