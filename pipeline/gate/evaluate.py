"""Held-out figures of the gate: per-class accuracy (recall), confusion matrix, per-source accuracy.

``confusion[i][j]`` counts pictures of true class ``i`` decided as class ``j`` (rows = truth).
Per-class accuracy is the diagonal over the row sums (the share of class ``i`` decided correctly);
balanced accuracy is their mean; accuracy is the share of all pictures decided correctly.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, int), np.asarray(y_pred, int)), 1)
    return cm


def summarise(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> dict:
    """``{n, accuracy, balanced_accuracy, per_class: {c: {n, accuracy}}, confusion, classes}``
    (accuracies None where a class has no picture)."""
    cm = confusion_matrix(y_true, y_pred, len(classes))
    rows = cm.sum(1)
    per_class = {c: {"n": int(rows[i]), "accuracy": (float(cm[i, i] / rows[i]) if rows[i] else None)}
                 for i, c in enumerate(classes)}
    present = [v["accuracy"] for v in per_class.values() if v["accuracy"] is not None]
    n = int(cm.sum())
    return {"n": n, "accuracy": float(np.trace(cm) / n) if n else None,
            "balanced_accuracy": float(np.mean(present)) if present else None,
            "per_class": per_class, "classes": list(classes), "confusion": cm.tolist()}


def per_source(frame: pd.DataFrame) -> list[dict]:
    """Accuracy per (label, source) of a frame with columns ``label, source, correct``."""
    out = []
    for (label, source), part in frame.groupby(["label", "source"], sort=True):
        out.append({"label": label, "source": source, "n": int(len(part)),
                    "accuracy": float(part["correct"].mean())})
    return out


def format_confusion(cm, classes: list[str]) -> str:
    """The confusion matrix as a small text table (rows = truth, columns = decision)."""
    width = max(len(c) for c in classes) + 2
    head = " " * width + "".join(f"{c:>{width}}" for c in classes)
    lines = [head] + [f"{c:<{width}}" + "".join(f"{v:>{width}}" for v in row) for c, row in zip(classes, cm)]
    return "\n".join(lines)


def plot_confusion(cm, classes: list[str], path: Path, title: str) -> Path:
    """The confusion matrix as a PNG (counts and row shares), written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from pipeline.io import write_with

    cm = np.asarray(cm)
    share = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig = Figure(figsize=(1.6 + 1.3 * len(classes), 1.2 + 1.1 * len(classes)), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(111)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{cm[i, j]}\n{share[i, j]:.1%}", ha="center", va="center",
                    color="white" if share[i, j] > 0.6 else "black", fontsize=9)
    ax.set_xticks(range(len(classes)), classes, rotation=30, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("decision")
    ax.set_ylabel("truth")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return write_with(Path(path), lambda p: fig.savefig(p, format="png"))
