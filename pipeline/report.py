"""Figures and the HTML report page of the evaluate stage. Matplotlib only (Agg backend, files only).

Every plot function takes plain tables/dicts, writes one PNG atomically and returns its path; the page
(:func:`write_report`) embeds the PNGs as base64, so ``report.html`` is one self-contained file that
can be mailed or opened from any folder.
"""
from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from pipeline.classes import NORMAL_ID
from pipeline.io import write_text_atomic, write_with
from pipeline.metrics import roc_points


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only, also on a machine with a display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    plt = _plt()
    path = Path(path)
    write_with(path, lambda p: fig.savefig(p, dpi=110, bbox_inches="tight", format="png"))
    plt.close(fig)
    return path


def plot_per_class_ap(per_class: Mapping[str, Mapping[str, float]], class_names: Sequence[str], path: Path,
                      title: str = "Out-of-fold AP per class") -> Path:
    """Grouped horizontal bars: one group per class (by name), one bar per variant (e.g. final, no filter)."""
    plt = _plt()
    variants = list(per_class)
    n = len(class_names)
    fig, ax = plt.subplots(figsize=(8, 0.45 * n + 1.5))
    height = 0.8 / max(1, len(variants))
    y = np.arange(n)
    for j, v in enumerate(variants):
        vals = [per_class[v].get(name, np.nan) for name in class_names]
        ax.barh(y + j * height, np.nan_to_num(vals, nan=0.0), height=height, label=v)
    ax.set_yticks(y + height * (len(variants) - 1) / 2)
    ax.set_yticklabels(class_names)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("AP at the evaluation IoU")
    ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def plot_pr_curves(curves: Mapping[int, tuple], per_class: Mapping[int, float], class_names: Sequence[str],
                   path: Path, title: str = "Precision-recall per class (out-of-fold, final)") -> Path:
    """One small precision-recall panel per class with truth (``curves`` from ``vinbigdata_map``)."""
    plt = _plt()
    ids = sorted(curves)
    cols = 5
    rows = max(1, math.ceil(len(ids) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 2.6 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, cid in zip(axes.ravel(), ids):
        ax.axis("on")
        recall, precision = (np.asarray(a, float) for a in curves[cid])
        if recall.size:
            # the VOC envelope (what the AP integrates) over the raw curve
            env = np.maximum.accumulate(precision[::-1])[::-1]
            ax.plot(recall, precision, lw=0.8, alpha=0.5)
            ax.step(recall, env, where="post", lw=1.2)
        name = class_names[cid] if cid < len(class_names) else str(cid)
        ax.set_title(f"{cid} {name}\nAP {per_class.get(cid, float('nan')):.3f}", fontsize=8)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.tick_params(labelsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def label_distribution(truth: pd.DataFrame, preds: pd.DataFrame, n_classes: int) -> pd.DataFrame:
    """Per class: images with the label in truth, and the expected number predicted (sum over images of
    the top score of that class; a threshold-free count that is exact for calibrated scores)."""
    t = truth.drop_duplicates(["image_id", "class_id"])["class_id"].value_counts()
    top = preds.groupby(["image_id", "class_id"])["score"].max().groupby(level="class_id").sum()
    idx = pd.RangeIndex(n_classes, name="class_id")
    return pd.DataFrame({"truth_images": t.reindex(idx).fillna(0).astype(int),
                         "predicted_images": top.reindex(idx).fillna(0.0)})


def plot_label_distribution(dist: pd.DataFrame, class_names: Sequence[str], path: Path,
                            title: str = "Images per label: truth vs predicted (out-of-fold)") -> Path:
    plt = _plt()
    n = len(dist)
    fig, ax = plt.subplots(figsize=(9, 4))
    x = np.arange(n)
    ax.bar(x - 0.2, dist["truth_images"], width=0.4, label="truth (images with the label)")
    ax.bar(x + 0.2, dist["predicted_images"], width=0.4, label="predicted (sum of top score per image)")
    ax.set_xticks(x)
    ax.set_xticklabels([class_names[i] if i < len(class_names) else str(i) for i in dist.index],
                       rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("images")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _save(fig, path)


def normal_confusion(truth: pd.DataFrame, preds: pd.DataFrame, image_ids: Sequence[str],
                     normal_id: int = NORMAL_ID, threshold: float = 0.5) -> np.ndarray:
    """2x2 counts [[normal->normal, normal->abnormal], [abnormal->normal, abnormal->abnormal]] (rows = truth).

    Truth: an image is abnormal when it has a finding row. Prediction: normal when its class-14 score
    (p(normal)) is at least ``threshold``; an image without a class-14 box is predicted abnormal.
    """
    ids = pd.Index(pd.unique(pd.Series(list(image_ids), dtype="str")))
    abnormal_truth = ids.isin(set(truth.loc[truth["class_id"] != normal_id, "image_id"].astype("str")))
    p_normal = preds.loc[preds["class_id"] == normal_id].groupby("image_id")["score"].max()
    pred_normal = p_normal.reindex(ids).fillna(0.0).to_numpy() >= threshold
    m = np.zeros((2, 2), dtype=int)
    for t, p in ((0, 0), (0, 1), (1, 0), (1, 1)):
        m[t, p] = int(np.sum((abnormal_truth == bool(t)) & ((~pred_normal) == bool(p))))
    return m


def plot_confusion(matrix: np.ndarray, path: Path, title: str = "Image level: normal vs abnormal") -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4, 3.6))
    ax.imshow(matrix, cmap="Blues")
    labels = ["normal", "abnormal"]
    ax.set_xticks([0, 1])
    ax.set_xticklabels(labels)
    ax.set_yticks([0, 1])
    ax.set_yticklabels(labels)
    ax.set_xlabel("predicted (p(normal) >= 0.5)")
    ax.set_ylabel("truth")
    top = matrix.max() if matrix.size else 0
    for (i, j), v in np.ndenumerate(matrix):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if v > top / 2 else "black")
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def plot_roc(curves: Mapping[str, tuple], path: Path, title: str = "Classifier ROC (out-of-fold)") -> Path:
    """``curves``: label -> (y_true, y_score, auc)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 4.2))
    for label, (y, s, auc) in curves.items():
        fpr, tpr, _ = roc_points(y, s)
        ax.plot(fpr, tpr, lw=1.2, label=f"{label} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], "k--", lw=0.6)
    ax.set_xlabel("false-positive rate")
    ax.set_ylabel("true-positive rate")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)


# --------------------------------------------------------------------------------------------------
# the page
# --------------------------------------------------------------------------------------------------
_CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}img{max-width:100%;margin:0.5em 0}
.note{color:#555;font-size:0.9em}"""


def table_html(df: pd.DataFrame, floats: str = "{:.4f}") -> str:
    """An HTML table; a column whose values are all whole numbers (counts) prints them as integers."""
    whole = {}
    for c in df.columns:
        vals = pd.to_numeric(df[c], errors="coerce").dropna()
        raw = df[c].dropna()
        whole[c] = len(vals) == len(raw) and len(vals) > 0 and bool((vals == vals.round()).all()) and \
            not any(isinstance(v, float) and not float(v).is_integer() for v in raw)

    def cell(v, col):
        if isinstance(v, (float, np.floating)):
            if math.isnan(v):
                return ""
            return str(int(v)) if whole[col] else floats.format(v)
        return html.escape(str(v))

    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in [df.index.name or "", *df.columns])
    rows = "".join("<tr>" + f"<td>{html.escape(str(i))}</td>" + "".join(f"<td>{cell(v, c)}</td>" for v, c in zip(r, df.columns))
                   + "</tr>" for i, r in zip(df.index, df.itertuples(index=False)))
    return f"<table><tr>{head}</tr>{rows}</table>"


def write_report(path: Path, title: str, sections: Sequence[tuple[str, str]], figures: Sequence[Path]) -> Path:
    """One HTML page: ``sections`` = [(heading, html body)], then each figure embedded as a base64 PNG."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    for heading, body in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>{body}")
    if figures:
        parts.append("<h2>Figures</h2>")
    for fig in figures:
        data = base64.b64encode(Path(fig).read_bytes()).decode("ascii")
        parts.append(f"<h3>{html.escape(Path(fig).stem.replace('_', ' '))}</h3>"
                     f"<img alt='{html.escape(Path(fig).name)}' src='data:image/png;base64,{data}'>")
    parts.append("</body></html>")
    return write_text_atomic(Path(path), "\n".join(parts))
