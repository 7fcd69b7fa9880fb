"""What ``infer`` adds for a run of the localise stage: its networks' boxes and probabilities on new images.

For every network method the run trained (``localise/<method>/fold<k>/model.pt`` with its ``model.json``:
Grad-CAM, multiscale CAM, CLN), the fold models predict each input together (their outputs averaged before
the boxes are drawn, as :func:`pipeline.models.runners.predict` does for a list of models), with the
settings the run trained them with (``model.json``), so a copied run directory is all it needs. Writes

* ``OUT/localisation.csv``: ``image_id, method, class_id, class_name, score, x_min, y_min, x_max, y_max``
  (the 8 BBox_List classes, at most ``max_boxes`` per image, class and method, INPUT file's pixels);
* ``OUT/localisation_probs.csv``: ``image_id, method, p_<label>...`` (the image-level probabilities).

The box prior and YOLO rows of the localise stage are not networks of their own here (the prior is the same
boxes for every image; the detector's folds are applied by ``infer`` itself).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.errors import PipelineError

LOCALISATION_OUT = ["image_id", "method", "class_id", "class_name", "score", "x_min", "y_min", "x_max", "y_max"]
PREFERENCE = ("cln", "multiscale", "gradcam")  # which method's boxes the overlays show without a detector


def localise_models(paths) -> dict[str, list[tuple[Path, dict]]]:
    """``{method: [(weights, model.json contents), ...]}`` for every network fold the run finished."""
    from pipeline.stages.localise import NETWORKS

    out: dict[str, list[tuple[Path, dict]]] = {}
    root = paths.localise_root
    for method in NETWORKS:
        folds = sorted(int(d.name[4:]) for d in (root / method).glob("fold*") if d.name[4:].isdigit())
        found = []
        for k in folds:
            w, info = paths.localise_weights(method, k), paths.localise_model_info(method, k)
            if w.is_file() and info.is_file():
                try:
                    found.append((w, json.loads(info.read_text())))
                except ValueError as exc:
                    raise PipelineError(f"{info}: not readable JSON ({exc}); re-run the localise stage") from None
        if found:
            out[method] = found
    return out


def _settings(method: str, info: dict, device: str):
    from pipeline.models.runners import MethodSettings

    known = set(MethodSettings.__dataclass_fields__)
    values = {k: (tuple(v) if k == "stages" else v) for k, v in (info.get("settings") or {}).items() if k in known}
    return MethodSettings(**{**values, "weights": None, "device": device, "workers": 0})


def localise(cfg, paths, out: Path, items: list[tuple]) -> dict:
    """Run every localisation network of the run on ``items`` ((image_id, png, width, height, frame));
    write the two tables; return ``{"localisation": path, "localisation_methods": [...], "_boxes": table}``."""
    from pipeline.classifier import torch_device
    from pipeline.io import write_csv_atomic
    from pipeline.localisation import BOX_CLASSES
    from pipeline.localise_data import to_original
    from pipeline.models import runners as R

    found = localise_models(paths)
    if not found or not items:
        return {}
    device = str(torch_device(cfg.run.device)[0])
    frames = pd.DataFrame([(i, *frame) for i, _, _, _, frame in items], columns=["image_id", "x0", "y0", "x1", "y1"])
    pngs = [str(png) for _, png, _, _, _ in items]
    boxes, probs = [], []
    for method, folds in found.items():
        labels = list(folds[0][1].get("labels") or [])
        s = _settings(method, folds[0][1], device)
        models = [R.load(method, len(labels), s, w, device) for w, _ in folds]
        res = R.predict(method, s, models, R.Items(pngs, np.zeros((len(pngs), len(labels)), np.float32), None),
                        label_names=labels)
        table = to_original(res, frames)
        table.insert(1, "method", method)
        table["class_name"] = [BOX_CLASSES[int(c)] for c in table["class_id"]]
        boxes.append(table)
        p = pd.DataFrame(res.probs, columns=[f"p_{n}" for n in labels])
        p.insert(0, "method", method)
        p.insert(0, "image_id", [i for i, *_ in items])
        probs.append(p)
        print(f"[infer] localise {method}: {len(folds)} fold model(s), {len(table)} boxes on {len(items)} image(s)")
    table = pd.concat(boxes, ignore_index=True).reindex(columns=LOCALISATION_OUT)
    write_csv_atomic(table, out / "localisation.csv")
    write_csv_atomic(pd.concat(probs, ignore_index=True), out / "localisation_probs.csv")
    return {"localisation": str(out / "localisation.csv"), "localisation_methods": list(found), "_boxes": table}


def overlay_boxes(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of the preferred method (CLN, else multiscale, else Grad-CAM), as detections for overlays."""
    for method in PREFERENCE:
        part = table[table["method"] == method]
        if len(part):
            return part.drop(columns="method").reset_index(drop=True)
    return table.iloc[0:0].drop(columns="method")
