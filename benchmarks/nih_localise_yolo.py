"""YOLOv8n on one fold of the NIH boxed images, for ``benchmarks/nih_localise.py --methods yolo``.

A plain ultralytics YOLOv8n from its YAML (from scratch, ultralytics' default augmentation), trained
for a fixed number of epochs on the training folds' boxes (8 classes) and the last weights predicting
the held-out fold at confidence 0.001 (the protocol keeps the 3 best boxes per image and class).
Images are never copied: ``<cache>/yolo/data/images/<id>.png`` are symbolic links to the PNGs, with
YOLO label files beside (``labels/<id>.txt``), and each fold's ``train.txt`` / ``val.txt`` list them.
Image-level scores for the AUC: the highest box score of each class (0 without a box).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.boxes import BOX_COLUMNS, xyxy_abs_to_yolo
from pipeline.classes import CHESTXRAY14
from pipeline.io import write_text_atomic

K = 8
SPACE = 1024.0


def _link_dataset(images: pd.DataFrame, truth: pd.DataFrame, root: Path) -> list[Path]:
    """Symlinked images and YOLO labels (boxes in 1024 space -> normalised) for every image."""
    by = {k: g for k, g in truth.groupby("image_id")}
    links = []
    for iid, path in zip(images["image_id"], images["path"]):
        link = root / "images" / f"{iid}.png"
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink():
            link.symlink_to(Path(path).resolve())
        g = by.get(iid)
        lines = ""
        if g is not None:
            yolo = xyxy_abs_to_yolo(g[BOX_COLUMNS].to_numpy(float), SPACE, SPACE)
            lines = "".join(f"{int(c)} {' '.join(f'{v:.6f}' for v in b)}\n" for c, b in zip(g["class_id"], yolo))
        write_text_atomic(root / "labels" / f"{iid}.txt", lines)
        links.append(link)
    return links


def train_predict_yolo(images: pd.DataFrame, truth: pd.DataFrame, tr: np.ndarray, va: np.ndarray, args, k: int,
                       cache: Path):
    import yaml

    from pipeline import detector as D

    root = Path(cache) / "yolo"
    links = _link_dataset(images, truth, root / "data")
    fold_dir = root / f"fold{k}"
    train_txt, val_txt, data_yaml = fold_dir / "train.txt", fold_dir / "val.txt", fold_dir / "data.yaml"
    write_text_atomic(train_txt, "".join(f"{links[i]}\n" for i in np.flatnonzero(tr & images["boxed"].to_numpy())))
    write_text_atomic(val_txt, "".join(f"{links[i]}\n" for i in np.flatnonzero(va)))
    write_text_atomic(data_yaml, yaml.safe_dump({"path": str(fold_dir.resolve()), "train": str(train_txt.resolve()),
                                                 "val": str(val_txt.resolve()), "nc": K,
                                                 "names": dict(enumerate(CHESTXRAY14[:K]))}, sort_keys=False))
    YOLO = D.import_ultralytics(args.threads)
    train_args = D.build_train_args(data_yaml=data_yaml, det_dir=fold_dir / "train", epochs=args.yolo_epochs,
                                    imgsz=args.imgsz, batch=args.batch, device="cpu", seed=args.seed,
                                    workers=0, extra={"val": False})
    model = YOLO("yolov8n.yaml")
    model.train(trainer=D.offline_trainer_class(), **train_args)
    weights = fold_dir / "train" / "weights" / "last.pt"
    model = YOLO(str(weights))
    vimg = images[va]
    items = [(iid, Path(p), SPACE, SPACE) for iid, p in zip(vimg["image_id"], vimg["path"])]
    det, failures = D.predict_images(model, items, imgsz=args.imgsz, conf=0.001, iou=0.5, max_det=300,
                                     batch=16, device="cpu", tta_flip=False, desc=f"yolo fold {k}")
    if failures:
        raise RuntimeError(f"YOLO could not read {len(failures)} image(s), e.g. {failures[0]}")
    det = det[det["class_id"] < K][["image_id", "class_id", "score", *BOX_COLUMNS]]
    row = {iid: i for i, iid in enumerate(vimg["image_id"])}
    probs = np.zeros((len(vimg), K))
    for (iid, cid), s in det.groupby(["image_id", "class_id"])["score"].max().items():
        probs[row[iid], int(cid)] = s
    return det.reset_index(drop=True), probs, {"weights": str(weights)}
