"""Fusion of the radiologists' boxes into one truth per image, and YOLO label files.

Every train image of VinBigData was read by 3 radiologists, who often drew slightly different boxes
for the same lesion. The winners of the competition merged them per image and class with
weighted-box fusion (WBF) at IoU about 0.4 before training; ``fuse_annotations`` does that (or NMS,
or nothing) and returns the fused truth in ``train.csv`` form (the ``boxes`` table of docs/DESIGN.md).

Conventions:

* Input and output boxes are ``x_min, y_min, x_max, y_max`` in pixels of the ORIGINAL image
  (``xyxy_abs``, x to the right, y down). ensemble-boxes wants ``[0, 1]`` coordinates, so boxes are
  divided by the image's own width/height (``xyxy_norm``) for the library and multiplied back after.
* YOLO label files hold ``class x_center y_center width height`` divided by the ORIGINAL image size.
  Being relative, they stay right for any resized PNG that keeps the aspect ratio, and for a square
  resize too (both axes scale independently).
* ``class_id`` is the dataset's class index (0..13 findings, 14 = no finding); YOLO labels use it
  unchanged, and the dataset YAML lists all 14 finding names so the ids line up.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pandas as pd

from pipeline.boxes import BOX_COLUMNS, iou_matrix, xyxy_abs_to_yolo
from pipeline.classes import NORMAL_ID
from pipeline.errors import ConfigError, DataError
from pipeline.io import write_text_atomic

FUSE_METHODS = ("wbf", "nms", "none")
FUSED_RAD_ID = "fused"
BOXES_COLUMNS = ["image_id", "class_name", "class_id", "rad_id", *BOX_COLUMNS, "n_readers"]

# Fused pixel coordinates are rounded to this many decimals. ensemble-boxes averages in float32
# (about 1e-4 px of noise on a 3000 px image); rounding removes that noise, so three identical
# boxes fuse to exactly the same numbers, and stays far below a pixel.
PIXEL_DECIMALS = 3

# Tie-break for boxes of equal score: ensemble-boxes orders boxes by score with numpy's default
# (unstable) argsort, and the order in which boxes join clusters matters when boxes chain (A overlaps
# B, B overlaps C, A does not overlap C): on the real train.csv about 200 of 4,394 images fuse
# differently in file order than in reverse file order. With all scores equal, numpy here returns the
# rows in order and the library reverses them (highest score first), so the LAST row is processed first.
# A tiny rank-proportional score difference fixes exactly that order on every machine and numpy build,
# and changes the score-weighted coordinates by < 1e-6 relative even for 1,000 boxes of one image.
_TIE_EPS = 1e-9


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------
def _size_lookup(sizes: pd.DataFrame, ids: pd.Series, what: str = "boxes") -> tuple[np.ndarray, np.ndarray]:
    """Width and height (float64 arrays aligned with ``ids``) from ``sizes`` (image_id, width, height)."""
    missing_cols = [c for c in ("image_id", "width", "height") if c not in sizes.columns]
    if missing_cols:
        raise DataError(f"image sizes table lacks column(s) {missing_cols}; it needs image_id, width, height "
                        "(original pixels).")
    table = sizes.assign(image_id=sizes["image_id"].astype("str")).drop_duplicates("image_id").set_index("image_id")
    w = ids.map(table["width"]).to_numpy(dtype="float64", na_value=np.nan)
    h = ids.map(table["height"]).to_numpy(dtype="float64", na_value=np.nan)
    bad = ~(np.isfinite(w) & np.isfinite(h) & (w > 0) & (h > 0))
    if bad.any():
        missing = pd.unique(ids[bad])
        raise DataError(f"{len(missing)} image(s) with {what} have no valid size (width, height > 0) in the image "
                        f"sizes, e.g. {list(missing[:5])}. Give every annotated image its original size "
                        "(train_meta.csv image_id,dim0,dim1, or meta.csv).")
    return w, h


def _check_args(method: str, iou_thr: float, classes: Iterable[int] | None, normal_id: int = NORMAL_ID) -> list[int]:
    if method not in FUSE_METHODS:
        raise ConfigError(f"labels.fuse: unknown method {method!r}; use one of {', '.join(FUSE_METHODS)}.")
    if not (0.0 < float(iou_thr) < 1.0):
        raise ConfigError(f"labels.iou_thr: {iou_thr!r} must lie strictly between 0 and 1 (the winners used 0.4).")
    if classes is None:
        return list(range(normal_id))
    keep = sorted({int(c) for c in classes})
    bad = [c for c in keep if not 0 <= c < normal_id]
    if bad or not keep:
        raise ConfigError(f"labels.classes: {list(classes)!r} must be a non-empty list of finding ids 0..{normal_id - 1} "
                          "(or null for all findings).")
    return keep


def _empty_boxes() -> pd.DataFrame:
    return pd.DataFrame({
        "image_id": pd.Series([], dtype="str"), "class_name": pd.Series([], dtype="str"),
        "class_id": pd.Series([], dtype="int64"), "rad_id": pd.Series([], dtype="str"),
        **{c: pd.Series([], dtype="float64") for c in BOX_COLUMNS}, "n_readers": pd.Series([], dtype="int64"),
    })


def _group_bounds(codes: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) of each run of equal values in a sorted integer array."""
    if len(codes) == 0:
        return []
    cut = np.flatnonzero(np.diff(codes)) + 1
    starts = np.concatenate([[0], cut])
    stops = np.concatenate([cut, [len(codes)]])
    return list(zip(starts.tolist(), stops.tolist()))


def _tie_scores(n: int, base: np.ndarray | float = 1.0) -> np.ndarray:
    """``base`` less a tiny rank-proportional amount that ranks equal scores last row first (see _TIE_EPS)."""
    return np.asarray(base, dtype="float64") - _TIE_EPS * np.arange(n - 1, -1, -1, dtype="float64")


# --------------------------------------------------------------------------------------------------
# fusion
# --------------------------------------------------------------------------------------------------
def _fuse_wbf_image(norm: np.ndarray, labels: np.ndarray, iou_thr: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """WBF of one image's boxes (all classes; the library fuses each label on its own).

    All boxes go in as ONE "model" with score 1 (less a tie-break that fixes the processing order to
    last row first, the library's own order for equal scores; see _TIE_EPS). That choice gives the
    fused box we want: the score-weighted mean of the clustered boxes, i.e. their plain mean, whatever
    reader drew them. (One list per reader would give the same coordinates: WBF clusters boxes of all
    models together; the per-model lists only change the confidence rescaling.) With a single model and
    ``allows_overflow=True`` the returned confidence is ``mean score x cluster size``, so rounding it
    gives ``n_readers``, the number of boxes merged. Boxes of one reader that overlap are merged too.
    Returns normalised xyxy boxes, labels, and box counts.
    """
    from ensemble_boxes import weighted_boxes_fusion

    boxes, scores, labs = weighted_boxes_fusion(
        [norm], [_tie_scores(len(norm))], [labels], weights=None, iou_thr=iou_thr, skip_box_thr=0.0,
        conf_type="avg", allows_overflow=True)
    return np.asarray(boxes, dtype="float64"), np.asarray(labs).astype("int64"), np.rint(scores).astype("int64")


def _support(norm: np.ndarray, labels: np.ndarray, iou_thr: float) -> np.ndarray:
    """For each box, how many boxes of its class in the image overlap it with IoU > ``iou_thr`` (itself included)."""
    iou = iou_matrix(norm, norm)
    same = labels[:, None] == labels[None, :]
    return ((iou > iou_thr) & same).sum(axis=1)


def _fuse_nms_image(norm: np.ndarray, labels: np.ndarray, iou_thr: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """NMS of one image's boxes: keep the box most readers agree with, drop the boxes it overlaps.

    Readers give no confidence, so a box's NMS score is its support: the number of same-class boxes
    overlapping it with IoU > ``iou_thr`` (itself included); ties go to the later row (as in WBF). NMS then keeps
    the consensus box of a cluster rather than an arbitrary one. ``n_readers`` of a kept box is 1 plus
    the boxes it suppressed (each dropped box is charged to the first kept box, in NMS order, that
    overlaps it above the threshold, which is the box that removed it).
    """
    from ensemble_boxes import nms

    support = _support(norm, labels, iou_thr).astype("float64")
    scores = _tie_scores(len(norm), support)  # distinct: the kept boxes are found again by their score
    kept_boxes, kept_scores, kept_labels = nms([norm], [scores], [labels.astype("float64")], iou_thr=iou_thr)
    order = np.argsort(-scores, kind="stable")
    rank = np.empty(len(scores), dtype=np.int64)
    rank[order] = np.arange(len(scores))
    index_of = {float(s): i for i, s in enumerate(scores)}
    kept = np.array([index_of[float(s)] for s in kept_scores], dtype=np.int64)
    kept = kept[np.argsort(rank[kept])]  # NMS order: highest score first
    counts = np.ones(len(kept), dtype=np.int64)
    dropped = np.setdiff1d(np.arange(len(norm)), kept)
    if len(dropped):
        iou = iou_matrix(norm[dropped], norm[kept])
        hit = (iou > iou_thr) & (labels[dropped][:, None] == labels[kept][None, :])
        # only kept boxes ranked before the dropped one can have removed it
        hit &= rank[kept][None, :] < rank[dropped][:, None]
        owner = np.where(hit.any(axis=1), hit.argmax(axis=1), -1)
        np.add.at(counts, owner[owner >= 0], 1)
    return norm[kept], labels[kept].astype("int64"), counts


def fuse_annotations(annotations: pd.DataFrame, sizes: pd.DataFrame, method: str = "wbf", iou_thr: float = 0.4,
                     classes: Iterable[int] | None = None, class_names: list[str] | None = None,
                     normal_id: int = NORMAL_ID) -> pd.DataFrame:
    """Merge the radiologists' boxes of each image and class into the fused truth (the ``boxes`` table).

    ``annotations``: ``image_id, class_id, class_name, rad_id, x_min, y_min, x_max, y_max`` in original
    pixels, "No finding" rows (class 14) with empty boxes. ``sizes``: ``image_id, width, height``
    (original pixels) for every image that has a box. ``method``:

    * ``wbf``: weighted-box fusion (ensemble-boxes) at ``iou_thr`` on coordinates divided by the image
      size; a fused box is the mean of the boxes it merges (see :func:`_fuse_wbf_image`);
    * ``nms``: ensemble-boxes NMS; the box with the most overlapping same-class boxes survives;
    * ``none``: every box is kept as drawn (``rad_id`` stays the reader's, ``n_readers`` = 1).

    ``classes``: finding ids to keep (None = 0..13); boxes of other classes are dropped. Returns
    ``image_id, class_name, class_id, rad_id ("fused"), x_min, y_min, x_max, y_max, n_readers`` in
    original pixels, images in their first-appearance order, then class_id and x_min. ``n_readers`` is
    the number of boxes merged into a row. An image of ``annotations`` left without a box (all readers
    said "No finding", or it only has boxes of dropped classes) gets one class-14 row with an empty
    box, whose ``n_readers`` is the number of its "No finding" rows.
    """
    keep = _check_args(method, iou_thr, classes, normal_id)
    need = ["image_id", "class_id", *BOX_COLUMNS]
    missing = [c for c in need if c not in annotations.columns]
    if missing:
        raise DataError(f"annotation table lacks column(s) {missing}; it needs {need} (+ class_name, rad_id).")
    ann = annotations.reset_index(drop=True)
    ids = ann["image_id"].astype("str")
    image_order = pd.unique(ids)
    code_of = pd.Series(np.arange(len(image_order)), index=image_order)
    cls = ann["class_id"].to_numpy(dtype="int64")
    coords = ann[BOX_COLUMNS].to_numpy(dtype="float64")
    boxed = np.isin(cls, keep) & np.isfinite(coords).all(axis=1)
    if class_names is None:
        class_names = _class_names_from(ann)

    fin = ann.loc[boxed]
    fin_ids = ids[boxed]
    w, h = _size_lookup(sizes, fin_ids)
    abs_xyxy = coords[boxed]
    img_code = code_of.reindex(fin_ids.to_numpy()).to_numpy()
    labels = cls[boxed]

    if method == "none":
        out = pd.DataFrame({"image_id": fin_ids.to_numpy(), "class_id": labels,
                            "rad_id": fin["rad_id"].astype("str").to_numpy() if "rad_id" in fin else "",
                            **{c: abs_xyxy[:, i] for i, c in enumerate(BOX_COLUMNS)},
                            "n_readers": np.ones(len(fin), dtype="int64"), "_code": img_code})
    else:
        norm = np.clip(abs_xyxy / np.stack([w, h, w, h], axis=1), 0.0, 1.0)
        order = np.argsort(img_code, kind="stable")  # group by image, file order within an image
        fuse_one = _fuse_wbf_image if method == "wbf" else _fuse_nms_image
        parts_box, parts_lab, parts_n, parts_code = [], [], [], []
        for start, stop in _group_bounds(img_code[order]):
            rows = order[start:stop]
            b, lab, n = fuse_one(norm[rows], labels[rows], float(iou_thr))
            parts_box.append(b * np.array([w[rows[0]], h[rows[0]], w[rows[0]], h[rows[0]]]))
            parts_lab.append(lab)
            parts_n.append(n)
            parts_code.append(np.full(len(lab), img_code[rows[0]]))
        if parts_box:
            fused = np.round(np.concatenate(parts_box), PIXEL_DECIMALS)
            lab = np.concatenate(parts_lab)
            code = np.concatenate(parts_code)
            n = np.concatenate(parts_n)
        else:
            fused, lab, code, n = np.zeros((0, 4)), np.zeros(0, "int64"), np.zeros(0, "int64"), np.zeros(0, "int64")
        out = pd.DataFrame({"image_id": image_order[code] if len(code) else np.array([], dtype=object),
                            "class_id": lab, "rad_id": FUSED_RAD_ID,
                            **{c: fused[:, i] for i, c in enumerate(BOX_COLUMNS)}, "n_readers": n, "_code": code})

    # Images without any kept box: one class-14 row with an empty box.
    has_box = np.zeros(len(image_order), dtype=bool)
    has_box[out["_code"].to_numpy(dtype="int64")] = True
    normal_codes = np.flatnonzero(~has_box)
    n_normal_rows = pd.Series(cls == normal_id).groupby(ids.map(code_of).to_numpy()).sum()
    normal = pd.DataFrame({"image_id": image_order[normal_codes], "class_id": normal_id, "rad_id": FUSED_RAD_ID,
                           **{c: np.nan for c in BOX_COLUMNS},
                           "n_readers": n_normal_rows.reindex(normal_codes).fillna(0).to_numpy(dtype="int64"),
                           "_code": normal_codes})
    out = pd.concat([out, normal], ignore_index=True) if len(normal) else out
    if out.empty:
        return _empty_boxes()
    out = out.sort_values(["_code", "class_id", "x_min", "y_min"], kind="stable", na_position="last")
    names = np.asarray(list(class_names), dtype=object)
    result = pd.DataFrame({
        "image_id": out["image_id"].astype("str").to_numpy(),
        "class_name": pd.array(names[out["class_id"].to_numpy(dtype="int64")], dtype="str"),
        "class_id": out["class_id"].to_numpy(dtype="int64"),
        "rad_id": out["rad_id"].astype("str").to_numpy(),
        **{c: out[c].to_numpy(dtype="float64") for c in BOX_COLUMNS},
        "n_readers": out["n_readers"].to_numpy(dtype="int64"),
    })
    return result.astype({"image_id": "str", "rad_id": "str"})


def _class_names_from(ann: pd.DataFrame) -> list[str]:
    """Class names by id: from the table's own class_name column, else the VinBigData list."""
    from pipeline.classes import VINBIGDATA

    names = list(VINBIGDATA)
    if "class_name" in ann.columns:
        pairs = ann[["class_id", "class_name"]].drop_duplicates("class_id")
        for cid, name in zip(pairs["class_id"].to_numpy(dtype="int64"), pairs["class_name"].astype("str")):
            if 0 <= cid < len(names):
                names[cid] = name
    return names


# --------------------------------------------------------------------------------------------------
# YOLO labels
# --------------------------------------------------------------------------------------------------
def yolo_label_lines(boxes: pd.DataFrame, sizes: pd.DataFrame, normal_id: int = NORMAL_ID) -> dict[str, str]:
    """The text of each image's YOLO label file, keyed by image_id (images without a finding box absent).

    Lines are ``class x_center y_center width height``, divided by the ORIGINAL image size, 6 decimals,
    ``class`` = ``class_id`` unchanged. Rows with class 14 or an empty box write nothing.
    """
    cls = boxes["class_id"].to_numpy(dtype="int64")
    xyxy = boxes[BOX_COLUMNS].to_numpy(dtype="float64")
    ok = (cls != normal_id) & np.isfinite(xyxy).all(axis=1)
    if not ok.any():
        return {}
    ids = boxes["image_id"].astype("str")[ok]
    w, h = _size_lookup(sizes, ids, "boxes to write as YOLO labels")
    yolo = np.clip(xyxy_abs_to_yolo(xyxy[ok], w, h), 0.0, 1.0)
    lines = [f"{c} {a:.6f} {b:.6f} {d:.6f} {e:.6f}" for c, (a, b, d, e) in zip(cls[ok].tolist(), yolo.tolist())]
    text = pd.Series(lines, index=ids.to_numpy()).groupby(level=0, sort=False).agg("\n".join)
    return {i: t + "\n" for i, t in text.items()}


def write_yolo_labels(boxes: pd.DataFrame, sizes: pd.DataFrame, label_path_for: Callable[[str], Path],
                      image_ids: Iterable[str], normal_id: int = NORMAL_ID) -> int:
    """Write one YOLO label file per id of ``image_ids`` at ``label_path_for(id)``, atomically; return the count.

    ``boxes`` is the fused table (original pixels); ``sizes`` has ``image_id, width, height`` (ORIGINAL
    pixels). An image without a finding box (a normal image, or one absent from ``boxes``) gets an empty
    file, which ultralytics reads as "background, nothing to find". A file already holding exactly the
    right text is left alone, so re-running is cheap and keeps timestamps.
    """
    texts = yolo_label_lines(boxes, sizes, normal_id)
    made: set[Path] = set()
    n = 0
    for image_id in image_ids:
        image_id = str(image_id)
        path = Path(label_path_for(image_id))
        text = texts.get(image_id, "")
        try:
            same = path.is_file() and path.read_text() == text
        except OSError:
            same = False
        if not same:
            if path.parent not in made:
                path.parent.mkdir(parents=True, exist_ok=True)
                made.add(path.parent)
            _write_small_atomic(path, text)
        n += 1
    return n


def _write_small_atomic(path: Path, text: str) -> None:
    """Write-then-rename like :func:`pipeline.io.write_text_atomic`, for many small files in a known folder.

    A fixed per-process temporary name (instead of ``mkstemp`` and a ``mkdir`` per file) makes the
    15,000 label files of VinBigData about 3x faster to write (1.1 s instead of 3.2 s here).
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def dataset_yaml(names: list[str], path: Path | str, normal: str = "No finding") -> Path:
    """Write the base ultralytics dataset YAML: ``nc`` and ``names`` as ``{id: name}``, atomically.

    ``names`` are the finding classes in id order (0..n-1), so YOLO class indices equal ``class_id``;
    ``normal`` names the normal class (id n), which :func:`pipeline.classes.run_classes` reads back.
    ``path``/``train``/``val`` are left for each fold's own data YAML (written by train_det).
    """
    import yaml

    body = {"nc": len(names), "names": {i: str(n) for i, n in enumerate(names)}, "normal": str(normal)}
    header = ("# ultralytics dataset classes (written by prepare); class index = class_id of boxes.csv.\n"
              "# Each fold's data.yaml adds path/train/val.\n")
    return write_text_atomic(Path(path), header + yaml.safe_dump(body, sort_keys=False, allow_unicode=True))
