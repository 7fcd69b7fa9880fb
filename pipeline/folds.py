"""Cross-validation folds: multilabel-stratified, grouped by patient. Pure functions, no config.

Every ``train`` image gets exactly one fold; ``test`` images (VinBigData's test set, ChestX-ray14's
official ``test_list.txt``) never get one. Stratification runs over the image-level label sets of
``images.csv`` (``labels`` = '|'-joined class ids, ``"14"`` for normal), so each fold holds about
the same share of every finding and of normal images.

Grouping: where ``patient_id`` is known, all of a patient's images go to the same fold (otherwise a
model is validated on other radiographs of a patient it trained on, and the out-of-fold score is
optimistic). Patients are stratified as units by the UNION of their images' labels, then mapped
back to their images. Rows with an empty ``patient_id`` are their own group.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.errors import ConfigError, DataError


def parse_labels(text) -> list[int]:
    """``"0|3"`` -> ``[0, 3]``; empty / NaN -> ``[]`` (label set unknown, e.g. an unlabelled image)."""
    if text is None or (isinstance(text, float) and np.isnan(text)):
        return []
    text = str(text).strip()
    if not text:
        return []
    out = []
    for part in text.split("|"):
        part = part.strip()
        if not part:
            continue
        try:
            out.append(int(float(part)))
        except ValueError:
            raise ValueError(f"label {part!r} in {text!r} is not a class id") from None
    return sorted(set(out))


def label_matrix(label_sets: list[list[int]], classes: list[int] | None = None) -> tuple[np.ndarray, list[int]]:
    """Binary indicator matrix (n_items, n_classes) of label sets; ``classes`` default: every id present."""
    if classes is None:
        classes = sorted({c for labels in label_sets for c in labels})
    index = {c: j for j, c in enumerate(classes)}
    y = np.zeros((len(label_sets), len(classes)), dtype=np.int64)
    for i, labels in enumerate(label_sets):
        for c in labels:
            if c in index:
                y[i, index[c]] = 1
    return y, list(classes)


def _train_rows(images: pd.DataFrame, source: str) -> pd.DataFrame:
    missing = [c for c in ("image_id", "split", "labels") if c not in images.columns]
    if missing:
        raise DataError(f"{source}: missing column(s) {missing}; expected image_id, split, patient_id, labels "
                        "(written by the prepare stage).")
    train = images[images["split"].astype(str) == "train"].copy()
    ids = train["image_id"].astype(str)
    dup = ids[ids.duplicated()]
    if len(dup):
        raise DataError(f"{source}: image_id {dup.iloc[0]!r} appears {int((ids == dup.iloc[0]).sum())} times "
                        "among train images; ids must be unique. Re-run prepare.")
    return train


def make_folds(images: pd.DataFrame, n_splits: int, seed: int, group_by_patient: bool = True,
               n_tries: int = 5, source: str = "images.csv") -> pd.DataFrame:
    """Assign a fold (0..n_splits-1) to every ``split == "train"`` row of ``images``.

    ``images`` has columns image_id, split, labels and (optionally) patient_id. Returns a DataFrame
    ``[image_id, fold]`` in the row order of the train images. Deterministic for a given seed and
    independent of the input row order (groups are sorted by key before splitting).
    Raises ConfigError for n_splits < 2 and DataError when there are fewer groups than folds.
    """
    if not isinstance(n_splits, (int, np.integer)) or n_splits < 2:
        raise ConfigError(f"folds.n_splits must be an integer >= 2, got {n_splits!r}.")
    train = _train_rows(images, source)
    ids = train["image_id"].astype(str).to_numpy()
    labels = []
    for row_no, text in zip(train.index, train["labels"].tolist()):
        try:
            labels.append(parse_labels(text))
        except ValueError as exc:
            raise DataError(f"{source}: row {row_no} (image_id {ids[len(labels)]!r}): {exc}. "
                            "labels must be '|'-joined class ids like '0|3' or '14'.") from None

    # Group key: the patient where known, else the image itself.
    if group_by_patient and "patient_id" in train.columns:
        pid = train["patient_id"].astype(object).where(train["patient_id"].notna(), "")
        pid = pid.astype(str).str.strip().to_numpy()
        keys = np.where(pid != "", np.char.add("patient:", pid.astype(str)), np.char.add("image:", ids))
    else:
        keys = np.char.add("image:", ids.astype(str))

    group_keys = np.array(sorted(set(keys.tolist())), dtype=object)
    if len(group_keys) < n_splits:
        raise DataError(f"{source}: {len(group_keys)} train group(s) (patients/images) but folds.n_splits={n_splits}; "
                        "lower folds.n_splits or add images.")
    group_of = {k: i for i, k in enumerate(group_keys)}
    gidx = np.array([group_of[k] for k in keys.tolist()], dtype=np.int64)
    pooled: list[set[int]] = [set() for _ in group_keys]
    for g, labs in zip(gidx, labels):
        pooled[g].update(labs)
    y, _ = label_matrix([sorted(s) for s in pooled])
    # Patients differ in size (ChestX-ray14: 1 to 184 images). Stratifying on the label union
    # alone would treat them alike, so big patients could pile up in one fold; extra indicator
    # columns "more than 1 / 3 / 10 / 30 images" spread them like a rare label.
    sizes = np.bincount(gidx, minlength=len(group_keys))
    size_cols = [(sizes > t).astype(np.int64) for t in (1, 3, 10, 30) if (sizes > t).any()]
    if size_cols:
        y = np.column_stack([y, *size_cols])
    if y.shape[1] == 0:  # no labels at all: stratification has nothing to balance, split evenly
        y = np.zeros((len(group_keys), 1), dtype=np.int64)

    # With multi-image groups the group-level split only approximates image-level balance: try a
    # few seeds derived from `seed` and keep the split whose image-level class shares deviate least.
    tries = max(1, int(n_tries)) if (sizes > 1).any() else 1
    y_img, _ = label_matrix(labels)
    best, best_dev = None, np.inf
    for t in range(tries):
        group_fold = _split_groups(y, n_splits, int(seed) + 1000 * t)
        fold = group_fold[gidx]
        dev = _image_share_deviation(y_img, fold, n_splits)
        if dev < best_dev - 1e-12:
            best, best_dev = fold, dev
    return pd.DataFrame({"image_id": ids, "fold": best})


def _split_groups(y: np.ndarray, n_splits: int, seed: int) -> np.ndarray:
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

    splitter = MultilabelStratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    group_fold = np.full(len(y), -1, dtype=np.int64)
    for fold, (_, val_idx) in enumerate(splitter.split(np.zeros((len(y), 1)), y)):
        group_fold[val_idx] = fold
    assert (group_fold >= 0).all()
    return group_fold


def _image_share_deviation(y_img: np.ndarray, fold: np.ndarray, n_splits: int) -> float:
    if y_img.shape[1] == 0:
        return 0.0
    counts = np.stack([y_img[fold == k].sum(axis=0) for k in range(n_splits)])
    sizes = np.bincount(fold, minlength=n_splits)[:, None].clip(min=1)
    overall = y_img.sum(axis=0) / len(y_img)
    return float(np.abs(counts / sizes - overall).max())


def fold_balance(images: pd.DataFrame, folds: pd.DataFrame) -> pd.DataFrame:
    """Per-fold table: ``images`` (count) and one column per class id with the images holding it.

    Index: fold. Used for the printed balance table and to measure stratification quality.
    """
    merged = folds.merge(images[["image_id", "labels"]].astype({"image_id": str}), on="image_id", how="left")
    sets = [parse_labels(t) for t in merged["labels"].tolist()]
    y, classes = label_matrix(sets)
    table = pd.DataFrame(y, columns=[int(c) for c in classes])
    table.insert(0, "images", 1)
    table["fold"] = merged["fold"].to_numpy()
    return table.groupby("fold").sum().sort_index()


def max_share_deviation(balance: pd.DataFrame) -> float:
    """Largest absolute gap between a fold's share of a class and the class's overall share.

    Share = images of the class in that fold / images in that fold. 0 means perfectly balanced.
    """
    counts = balance.drop(columns=["images"])
    if counts.empty:
        return 0.0
    share = counts.div(balance["images"], axis=0)
    overall = counts.sum() / balance["images"].sum()
    return float((share - overall).abs().to_numpy().max())


def format_balance(balance: pd.DataFrame, class_names: list[str] | None = None) -> str:
    """The balance table as text, class columns headed by id (and a legend of names when given)."""
    text = balance.to_string()
    if class_names:
        legend = ", ".join(f"{c}={class_names[c]}" for c in balance.columns if isinstance(c, (int, np.integer))
                           and 0 <= c < len(class_names))
        text += "\nclasses: " + legend
    return text
