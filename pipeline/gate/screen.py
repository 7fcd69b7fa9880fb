"""The gate's decision per input file: DICOM header rules first, the image model where they do not decide.

``screen.csv`` columns (:func:`screen_columns`): ``image_id, decision, accepted, p_<class>..., reason``.

* ``decision`` is a class name: one of the model's classes, or ``chest`` / ``other_xray`` /
  ``not_xray`` when the header decided (those names are reserved for it); ``unreadable`` for a file
  that could be neither judged by its header nor decoded (the tool lists these in ``failures.csv``).
* ``accepted`` is true only when ``decision`` is one of the accepted classes (``screen.accept``,
  stored in the model; ``[chest]`` without one).
* ``p_<class>``: the image model's probabilities, whenever a model was given and the picture could be
  decoded (also where the header decided, for the record); empty otherwise.
* ``reason``: one line: the header elements that decided, or the model's top probability.

How header and image combine (:func:`combine`): a header that decides (a non-radiograph modality, an
X-ray modality that is never a chest film, a radiograph with a body part) is final; a radiograph
without ``BodyPartExamined`` takes the model's most likely X-ray class (every class but ``not_xray``);
a file with no telling header (PNG, JPEG, VinBigData's tag-less DICOMs) takes the model's decision.
Without a model, the header decides alone: an X-ray of unknown body part counts as chest
("BodyPartExamined CHEST/THORAX or absent"), and a file without header evidence is ``undecided``
(not accepted).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from pipeline.errors import DataError
from pipeline.gate.header import CHEST, NOT_XRAY, HeaderDecision, decide_file

UNREADABLE, UNDECIDED = "unreadable", "undecided"


def screen_columns(classes: Sequence[str]) -> list[str]:
    return ["image_id", "decision", "accepted", *[f"p_{c}" for c in classes], "reason"]


def unique_ids(paths: Sequence[Path]) -> list[str]:
    """File stems; where two inputs share a stem, parent folder names are prefixed until they differ."""
    paths = [Path(p) for p in paths]
    depth = [0] * len(paths)
    while True:
        ids = ["__".join([*p.parent.parts[len(p.parent.parts) - d:], p.stem]) if d else p.stem
               for p, d in zip(paths, depth)]
        dup = {i for i in ids if ids.count(i) > 1}
        if not dup:
            return ids
        grew = False
        for k, i in enumerate(ids):
            if i in dup and depth[k] < len(paths[k].parent.parts):
                depth[k] += 1
                grew = True
        if not grew:  # the same file named twice: number the repeats
            seen: dict[str, int] = {}
            for k, i in enumerate(ids):
                seen[i] = seen.get(i, 0) + 1
                ids[k] = i if seen[i] == 1 else f"{i}_{seen[i]}"
            return ids


def _top(probs: np.ndarray, classes: Sequence[str], allowed: Sequence[str] | None = None) -> tuple[str, float]:
    idx = [i for i, c in enumerate(classes) if allowed is None or c in allowed] or list(range(len(classes)))
    best = max(idx, key=lambda i: probs[i])
    return classes[best], float(probs[best])


def combine(header: HeaderDecision | None, probs: np.ndarray | None, classes: Sequence[str],
            accept: Sequence[str]) -> tuple[str, bool, str]:
    """``(decision, accepted, reason)`` for one file (rules in the module docstring)."""
    if header is not None and header.decision is not None:
        decision, reason = header.decision, header.reason
        if probs is not None:
            top, p = _top(probs, classes)
            if top != decision:
                reason += f"; the image model would say {top} (p {p:.2f})"
    elif header is not None and header.xray:
        if probs is None:
            decision, reason = CHEST, header.reason + " (no image model: taken as chest)"
        else:
            decision, p = _top(probs, classes, [c for c in classes if c != NOT_XRAY])
            reason = f"{header.reason}: an X-ray; image model: {decision} (p {p:.2f})"
    elif probs is None:
        decision = UNDECIDED
        reason = (header.reason if header is not None else "not a DICOM") + "; no image model given: undecided"
    else:
        decision, p = _top(probs, classes)
        reason = (f"{header.reason}: " if header is not None else "") + f"image model: {decision} (p {p:.2f})"
    return decision, decision in accept, reason


def configured_model(cfg) -> Path:
    """The gate model prepare and infer use: ``screen.model``, or this run's ``screen/model.pt``;
    a ConfigError saying how to get one when the file is not there."""
    from pipeline.errors import ConfigError
    from pipeline.paths import RunPaths

    path = Path(cfg.screen.model) if cfg.screen.model else RunPaths.from_config(cfg).screen_model
    if not path.is_file():
        raise ConfigError(f"screen.model: gate model {path} not found; train one (./run.sh run --config "
                          "configs/gate.yaml writes runs/gate/screen/model.pt) and set screen.model to its path")
    return path


def screen_files(paths: Sequence[str | Path], model_path: str | Path | None = None, device="cpu",
                 batch: int = 64, progress: bool = False) -> pd.DataFrame:
    """Screen files (DICOM, PNG, JPEG, ...): a DataFrame with the ``screen.csv`` columns, one row per
    input, in the order given. ``model_path`` None = header rules only (see the module docstring)."""
    from tqdm import tqdm

    from pipeline.gate.images import is_dicom, read_rgb

    paths = [Path(p) for p in paths]
    model, meta = None, {"classes": ["chest", "other_xray", "not_xray"], "accept": [CHEST], "imgsz": 0}
    if model_path is not None:
        from pipeline.gate.model import load_gate

        model, meta = load_gate(model_path, device)
    classes, accept, imgsz = meta["classes"], meta["accept"], meta["imgsz"]
    headers: list[HeaderDecision | None] = []
    errors: list[str | None] = []
    pictures: dict[int, np.ndarray] = {}
    for k, path in enumerate(tqdm(paths, desc="[screen] reading", disable=not progress, mininterval=5)):
        header, error = None, None
        try:
            if is_dicom(path):
                header = decide_file(path)
            needs_pixels = model is not None or header is None or header.decision is None
            if needs_pixels and model is not None:
                pictures[k] = read_rgb(path, max_side=2 * imgsz)
            elif header is None:  # no model, not a DICOM: at least check that it is an image
                read_rgb(path, max_side=64)
        except DataError as exc:
            if header is None or header.decision is None:
                error = str(exc)
        headers.append(header)
        errors.append(error)
    probs: dict[int, np.ndarray] = {}
    if model is not None and pictures:
        from pipeline.gate.model import predict_probs

        keys = sorted(pictures)
        out = predict_probs(model, [pictures[k] for k in keys], imgsz, batch=batch)
        probs = dict(zip(keys, out))
    rows = []
    for k, (image_id, header, error) in enumerate(zip(unique_ids(paths), headers, errors)):
        p = probs.get(k)
        if error is not None:
            decision, accepted, reason = UNREADABLE, False, error
        else:
            decision, accepted, reason = combine(header, p, classes, accept)
        rows.append([image_id, decision, bool(accepted),
                     *([round(float(v), 4) for v in p] if p is not None else [np.nan] * len(classes)), reason])
    return pd.DataFrame(rows, columns=screen_columns(classes))
