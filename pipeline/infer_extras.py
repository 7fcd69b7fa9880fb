"""What ``infer`` adds when the run has the optional models: lung masks and the input gate.

* lungs: the run's lung model (``segment/model.pt``, or the one ``image.lung_model`` names) predicts each
  input's decoded picture (as the segment stage and the lung crop see pictures; not the CLAHE'd PNG);
  ``OUT/lungs/<image_id>.png`` is a 0/255 mask of the INPUT file's size, and the outline is drawn on the
  overlays;
* gate: the run's gate model (``screen/model.pt``, or ``screen.model``) decides chest / other X-ray / not
  X-ray from the DICOM header where it says, else from the picture: ``OUT/screen.csv``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

LUNG_DECODE_SIDE = 1024  # a DICOM is decoded for the lung model at no more than this longer side (fast JPEG 2000)


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


def extras(cfg, paths, out: Path, pngs: list[tuple[str, Path]], meta: pd.DataFrame,
           inputs: list[tuple[str, Path]]) -> dict:
    """Lung masks for the converted inputs (``pngs``: (image_id, converted PNG)) and screen.csv for EVERY
    input found (``inputs``: (image_id, file)): a colour photograph cannot be converted, but the gate
    still decides it (not_xray), which is what screen.csv is for."""
    summary: dict = {}
    lung = lung_model_path(cfg, paths)
    if lung is not None and pngs:
        summary["lung_masks"] = _lungs(cfg, lung, out, pngs, meta)
        summary["lungs"] = str(out / "lungs")
    gate = gate_model_path(cfg, paths)
    if gate is not None and inputs:
        from pipeline.gate import screen_files
        from pipeline.gate.screen import UNREADABLE
        from pipeline.io import write_csv_atomic

        table = screen_files([src for _, src in inputs], gate, device="cpu")
        table["image_id"] = [i for i, _ in inputs]  # the input file's stem, as in detections.csv
        write_csv_atomic(table, out / "screen.csv")
        summary["screen"] = str(out / "screen.csv")
        rejected = table[~table["accepted"].astype(bool)]
        summary["rejected"] = int(len(rejected))
        # decided by the gate (not unreadable): such an input that prepare's conversion refused is set aside
        summary["gate_rejected_ids"] = sorted(rejected.loc[rejected["decision"] != UNREADABLE, "image_id"].astype(str))
    return summary


def _lungs(cfg, model_path: Path, out: Path, pngs, meta: pd.DataFrame) -> dict[str, np.ndarray]:
    """Masks in ORIGINAL (input) pixels, written as 0/255 PNGs; returned for the overlays.

    The lung model sees each input as the segment stage saw its training images and as the lung crop
    sees them: the decoded picture, linearly mapped (a DICOM's window or percentiles), before prepare's
    resizing and CLAHE; not the converted PNG, whose CLAHE changes the local contrast the model learned
    (on the Shenzhen test split the PNG path lost 0.007 IoU: docs/notes/lungs.md)."""
    import cv2

    from pipeline import imaging
    from pipeline.convert import ConvertOptions
    from pipeline.io import write_bytes_atomic
    from pipeline.lungs import load_lung_model, predict_masks

    options = ConvertOptions.from_config(cfg.image)
    seg = cfg.segment  # the run's scoring settings (threshold, clean-up, flip TTA), as its segment stage used
    model = load_lung_model(model_path, "cpu")
    sources = meta.set_index("image_id")["source"].astype(str)
    masks = {}
    for image_id, _ in pngs:
        img = options.decode(sources[image_id], lambda h, w: imaging.output_shape(h, w, LUNG_DECODE_SIDE))
        mask = predict_masks(model, [img.pixels], threshold=float(seg.threshold), clean=bool(seg.clean),
                             tta_flip=bool(seg.tta_flip))[0]
        if mask.shape != (img.height, img.width):  # a reduced decode: back to the input file's pixels
            mask = cv2.resize(mask.astype(np.uint8), (img.width, img.height), interpolation=cv2.INTER_NEAREST) > 0
        ok, buf = cv2.imencode(".png", (mask * 255).astype(np.uint8))
        write_bytes_atomic(out / "lungs" / f"{image_id}.png", buf.tobytes())
        masks[image_id] = mask
    return masks
