"""The demo dataset in the NIH ChestX-ray14 layout, with the real files' quirks.

``OUT/images/<patient:08d>_<follow-up:03d>.png`` (8-bit grayscale), ``Data_Entry_2017.csv`` (CRLF, a
header with a trailing comma: 12 header fields, 11 per row), ``BBox_List_2017.csv`` (header
``Image Index,Finding Label,Bbox [x,y,w,h],,,``, 6 fields per row, LF, 'Infiltrate' for
Infiltration, boxes ``x,y,w,h`` in 1024-pixel space, for some test images only) and
``train_val_list.txt`` / ``test_list.txt`` (split by patient; like NIH's, no newline after the last
line). Patients have several follow-up images. Every image also goes into the lung-segmentation set
``OUT/lungs/`` (:mod:`pipeline.demo.lungs`; there a train image is ``valid`` one in five by name order,
so a patient's images may fall on both sides: fine for a demo of the segmentation, not for a benchmark).
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from pipeline.classes import CHESTXRAY14, NORMAL_ID
from pipeline.demo import synth
from pipeline.demo.lungs import lung_split, write_lung_pair, write_split_csv
from pipeline.demo.vinbigdata import run_parallel
from pipeline.io import write_bytes_atomic, write_text_atomic

# Which synthetic appearance stands for each NIH label (renderer name in synth.RENDERERS).
RENDERER_OF = {
    "Atelectasis": "Atelectasis", "Cardiomegaly": "Cardiomegaly", "Effusion": "Pleural effusion",
    "Infiltration": "Infiltration", "Mass": "Mass", "Nodule": "Nodule/Mass", "Pneumonia": "Lung Opacity",
    "Pneumothorax": "Pneumothorax", "Consolidation": "Consolidation", "Edema": "Edema", "Emphysema": "Emphysema",
    "Fibrosis": "Pulmonary fibrosis", "Pleural_Thickening": "Pleural thickening", "Hernia": "Hernia",
}
assert set(RENDERER_OF) == set(CHESTXRAY14[:NORMAL_ID])

DEFAULT_CLASSES = ("Cardiomegaly", "Effusion", "Mass", "Nodule", "Pneumothorax", "Atelectasis")
BBOX_LABELS = CHESTXRAY14[:8]              # the 8 classes of NIH's box list
BBOX_NAME = {"Infiltration": "Infiltrate"}  # the box list's spelling
P_ABNORMAL = 0.5
P_BBOX = 0.6                              # share of eligible test images that get boxes, as NIH boxed only some
BBOX_SPACE = 1024

DATA_ENTRY_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
                     "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],")
BBOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"
SPACINGS = ("0.143", "0.139", "0.168", "0.171")


def check_classes(classes) -> list[str]:
    names = list(classes) if classes is not None else list(DEFAULT_CLASSES)
    bad = [c for c in names if c not in RENDERER_OF]
    if bad or not names:
        raise ValueError(f"demo classes {bad or names!r} are not ChestX-ray14 labels; "
                         f"choose from: {', '.join(CHESTXRAY14[:NORMAL_ID])}")
    return names


def plan_patients(n_train: int, n_test: int, rng: np.random.Generator) -> list[dict]:
    """Patients with 1..6 images each, assigned wholly to one split, exactly ``n_train`` and ``n_test``
    images in all. Patient ids 1..P are shuffled across splits (as NIH's are)."""
    groups = []
    for split, n in (("train", n_train), ("test", n_test)):
        left = n
        while left > 0:
            k = min(left, 1 + int(min(rng.geometric(0.45) - 1, 5)))
            groups.append({"split": split, "n": k})
            left -= k
    order = rng.permutation(len(groups))
    patients = []
    for pid, g in enumerate((groups[i] for i in order), start=1):
        patients.append({"patient": pid, "split": g["split"], "n": g["n"], "age": int(rng.integers(12, 86)),
                         "sex": "F" if rng.random() < 0.44 else "M"})
    return patients


def _one_image(out: Path, seed: int, patient: dict, follow: int, names: list[str], size: int) -> dict:
    """Render and write one PNG; returns its Data_Entry fields and boxes (runs in a worker process)."""
    pid = patient["patient"]
    rng = np.random.default_rng([seed, 14, pid, follow])
    labels = []
    if rng.random() < P_ABNORMAL:
        k = min(len(names), 1 + int(rng.choice(3, p=(0.55, 0.3, 0.15))))
        labels = sorted(names[i] for i in rng.choice(len(names), size=k, replace=False))
    r = synth.render_image(rng, size, size, [RENDERER_OF[n] for n in labels])
    img = np.clip(np.rint(r.image * 255.0), 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise RuntimeError("PNG encoding failed")
    name = f"{pid:08d}_{follow:03d}.png"
    write_bytes_atomic(out / "images" / name, buf.tobytes())
    write_lung_pair(out, name[:-4], r.image, r.lung_mask())
    boxes = [(label, box) for label, (_, box) in zip(labels, r.findings) if label in BBOX_LABELS]
    w0 = int(rng.integers(2000, 3057))
    entry = ",".join([name, "|".join(labels) or "No Finding", str(follow), str(pid),
                      str(patient["age"] + follow // 3), patient["sex"], "PA" if rng.random() < 0.7 else "AP",
                      str(w0), str(int(w0 * rng.uniform(0.9, 1.15))), *[SPACINGS[int(rng.integers(4))]] * 2])
    return {"name": name, "split": patient["split"], "entry": entry, "boxes": boxes,
            "with_boxes": bool(rng.random() < P_BBOX), "abnormal": bool(labels)}


def _g(v: float) -> str:
    return f"{v:.15g}"


def write_chestxray14(out: Path, n_train: int, n_test: int, seed: int, classes=None, size: int = 1024,
                      workers: int | None = None) -> dict:
    """Write the ChestX-ray14-layout demo under ``out``; returns counts for the caller to report."""
    names = check_classes(classes)
    if size < 64:
        raise ValueError(f"image size {size} is too small; use at least 64 (NIH's is 1024)")
    out = Path(out)
    patients = plan_patients(n_train, n_test, np.random.default_rng([seed, 13]))
    tasks = [(out, seed, p, f, names, size) for p in patients for f in range(p["n"])]
    made = run_parallel(_one_image, tasks, workers)
    made.sort(key=lambda m: m["name"])
    write_split_csv(out, [(m["name"][:-4], lung_split(m["split"], k), m["abnormal"]) for k, m in enumerate(made)])
    write_text_atomic(out / "Data_Entry_2017.csv",
                      "".join(line + "\r\n" for line in [DATA_ENTRY_HEADER] + [m["entry"] for m in made]))
    bbox = [BBOX_HEADER]
    for m in made:
        if m["split"] != "test" or not m["with_boxes"]:
            continue
        for label, (x0, y0, x1, y1) in m["boxes"]:
            s = BBOX_SPACE
            bbox.append(",".join([m["name"], BBOX_NAME.get(label, label),
                                  _g(x0 * s), _g(y0 * s), _g((x1 - x0) * s), _g((y1 - y0) * s)]))
    write_text_atomic(out / "BBox_List_2017.csv", "\n".join(bbox) + "\n")
    for split, fname in (("train", "train_val_list.txt"), ("test", "test_list.txt")):
        write_text_atomic(out / fname, "\n".join(m["name"] for m in made if m["split"] == split))
    return {"train": n_train, "test": n_test, "patients": len(patients), "bbox_rows": len(bbox) - 1,
            "classes": names, "image_size": size}
