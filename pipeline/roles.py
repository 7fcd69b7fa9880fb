"""Which images the detector trains on and is scored on: the ``detection.csv`` table.

Every image gets one role:

* ``truth``: it has at least one (fused) box of a class the detector learns;
* ``negative``: it has no finding at all (a normal image): the detector learns "nothing here" from it.
  ``labels.negatives: N`` keeps a seeded sample of N of them (ChestX-ray14 has ~60,000);
* ``excluded``: the detector neither trains nor is scored on it, with the reason: findings without any
  box (ChestX-ray14 images outside BBox_List), only findings of classes outside ``labels.classes``
  (unless ``labels.excluded_only: background`` keeps them as negatives), no labels, or a normal image
  not drawn into the negatives' sample;
* ``unlabelled``: a test image without labels (it is predicted and submitted, never scored).

Nothing is dropped silently: prepare prints the count per role and reason, and the table names each image.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.errors import ConfigError
from pipeline.folds import parse_labels

EXCLUDED_ONLY = ("drop", "background")


def detection_roles(images: pd.DataFrame, boxes: pd.DataFrame, normal_id: int, kept: list[int],
                    excluded_only: str = "drop", negatives: int | None = None, seed: int = 0) -> pd.DataFrame:
    """``image_id, split, role, reason`` for every row of ``images`` (labels as '|'-joined ids)."""
    if excluded_only not in EXCLUDED_ONLY:
        raise ConfigError(f"labels.excluded_only: {excluded_only!r} is not one of {list(EXCLUDED_ONLY)}.")
    if negatives is not None and (isinstance(negatives, bool) or int(negatives) < 0):
        raise ConfigError(f"labels.negatives must be null or a number >= 0, got {negatives!r}.")
    kept_set = set(int(k) for k in kept)
    cid = pd.to_numeric(boxes["class_id"], errors="coerce")
    boxed = set(boxes.loc[cid.isin(kept_set) & boxes["x_min"].notna(), "image_id"].astype(str))
    roles, reasons = [], []
    for image_id, split, text in zip(images["image_id"].astype(str), images["split"], images["labels"].fillna("")):
        ids = set(parse_labels(text))
        findings = ids - {normal_id}
        if image_id in boxed:
            role, why = "truth", "boxed findings"
        elif not ids:
            role, why = ("unlabelled", "test image without labels") if split == "test" else ("excluded", "no labels")
        elif not findings:
            role, why = "negative", "no finding"
        elif findings & kept_set:
            role, why = "excluded", "findings without boxes"
        elif excluded_only == "background":
            role, why = "negative", "only findings of classes outside labels.classes (kept as background)"
        else:
            role, why = "excluded", "only findings of classes outside labels.classes"
        roles.append(role)
        reasons.append(why)
    out = pd.DataFrame({"image_id": images["image_id"].astype(str).to_numpy(), "split": images["split"].to_numpy(),
                        "role": roles, "reason": reasons})
    if negatives is not None:
        for split in ("train", "test"):
            neg = np.flatnonzero(((out["role"] == "negative") & (out["split"] == split)).to_numpy())
            if len(neg) > int(negatives):
                rng = np.random.default_rng(int(seed))
                keep = set(rng.choice(neg, size=int(negatives), replace=False).tolist())
                drop = [i for i in neg if i not in keep]
                out.loc[drop, "role"] = "excluded"
                out.loc[drop, "reason"] = f"normal image not in the labels.negatives={int(negatives)} sample"
    return out


def describe_roles(roles: pd.DataFrame) -> list[str]:
    """One line per (split, role, reason) with its count, for the prepare log."""
    counts = roles.groupby(["split", "role", "reason"], sort=False).size()
    return [f"{split}: {n} {role} ({reason})" for (split, role, reason), n in counts.items()]
