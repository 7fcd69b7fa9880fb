"""What ``infer`` adds when the run has the optional models: lung masks and the input gate.

* lungs: the run's lung model (``segment/model.pt``, or the one ``image.lung_model`` names) predicts each
  input; ``OUT/lungs/<image_id>.png`` is a 0/255 mask of the INPUT file's size, and the outline is drawn
  on the overlays;
* gate: the run's gate model (``screen/model.pt``, or ``screen.model``) decides chest / other X-ray / not
  X-ray from the DICOM header where it says, else from the picture: ``OUT/screen.csv``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def lung_model_path(cfg, paths) -> Path | None:
    configured = (cfg.get("image") or {}).get("lung_model")
    for p in ([Path(configured)] if configured else []) + [paths.segment_model]:
        if p.is_file():
            return p
    return None


def gate_model_path(cfg, paths) -> Path | None:
    configured = (cfg.get("screen") or {}).get("model")
    for p in ([Path(configured)] if configured else []) + [paths.screen_model]:
        if p.is_file():
            return p
    return None


def extras(cfg, paths, out: Path, pngs: list[tuple[str, Path]], meta: pd.DataFrame) -> dict:
    """Lung masks and screen.csv for the converted inputs (``pngs``: (image_id, converted PNG))."""
    summary: dict = {}
    lung = lung_model_path(cfg, paths)
    if lung is not None and pngs:
        summary["lung_masks"] = _lungs(cfg, lung, out, pngs, meta)
        summary["lungs"] = str(out / "lungs")
    gate = gate_model_path(cfg, paths)
    if gate is not None and len(meta):
        from pipeline.gate import screen_files
        from pipeline.io import write_csv_atomic

        table = screen_files(meta["source"].tolist(), gate, device="cpu")
        table["image_id"] = meta["image_id"].astype(str).to_numpy()  # the input file's stem, as in detections.csv
        write_csv_atomic(table, out / "screen.csv")
        summary["screen"] = str(out / "screen.csv")
        summary["rejected"] = int((~table["accepted"].astype(bool)).sum())
    return summary


def _lungs(cfg, model_path: Path, out: Path, pngs, meta: pd.DataFrame) -> dict[str, np.ndarray]:
    """Masks in ORIGINAL (input) pixels, written as 0/255 PNGs; returned for the overlays."""
    import cv2

    from pipeline.io import write_bytes_atomic
    from pipeline.lungs import load_lung_model, predict_masks

    from pipeline.frames import frame_table

    model = load_lung_model(model_path, "cpu")
    size = meta.set_index("image_id")[["width", "height"]].astype(int)
    frames = frame_table(meta).round().astype(int)
    masks = {}
    for start in range(0, len(pngs), 16):
        chunk = pngs[start:start + 16]
        images = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for _, p in chunk]
        for (image_id, _), mask in zip(chunk, predict_masks(model, images)):
            # the PNG shows the frame (the whole image, or the lung crop): back to the input file's pixels
            x0, y0, x1, y1 = frames.loc[image_id, ["x0", "y0", "x1", "y1"]]
            full = np.zeros((int(size.at[image_id, "height"]), int(size.at[image_id, "width"])), dtype=bool)
            full[y0:y1, x0:x1] = cv2.resize(mask.astype(np.uint8), (int(x1 - x0), int(y1 - y0)),
                                            interpolation=cv2.INTER_NEAREST).astype(bool)
            ok, buf = cv2.imencode(".png", (full * 255).astype(np.uint8))
            write_bytes_atomic(out / "lungs" / f"{image_id}.png", buf.tobytes())
            masks[image_id] = full
    return masks
