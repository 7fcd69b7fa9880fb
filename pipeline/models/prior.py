"""The box prior: the same few boxes for every image, learned from the training boxes of each class.

A floor for every localisation table: it looks at no pixel, so whatever a network scores above it is
what the network learned from the image. Per class, k-means (k = 3, the protocol's box limit) on the
training boxes as ``x_min, y_min, x_max, y_max`` divided by the image size; the cluster means are the
boxes, scored by their cluster's share of the class's boxes. Pure numpy + scikit-learn.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.boxes import BOX_COLUMNS


def fit_prior(boxes_norm: pd.DataFrame, n_boxes: int = 3, seed: int = 0) -> dict[int, np.ndarray]:
    """``{class_id: array (n <= n_boxes, 5) of score, x_min, y_min, x_max, y_max}`` in [0, 1] units from
    a table ``class_id, x_min .. y_max`` of training boxes already divided by their image's size."""
    from sklearn.cluster import KMeans

    out = {}
    for cid, g in boxes_norm.groupby(boxes_norm["class_id"].astype(int)):
        xyxy = g[BOX_COLUMNS].to_numpy(float)
        k = min(n_boxes, len(np.unique(xyxy, axis=0)))
        km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(xyxy)
        share = np.bincount(km.labels_, minlength=k) / len(xyxy)
        order = np.argsort(-share, kind="stable")
        out[int(cid)] = np.column_stack([share[order], km.cluster_centers_[order]])
    return out


def predict_prior(prior: dict[int, np.ndarray], image_ids, widths, heights) -> pd.DataFrame:
    """The prior's boxes for every image and class, in each image's pixels (``widths[i] x heights[i]``):
    ``image_id, class_id, score, x_min, y_min, x_max, y_max``."""
    rows = []
    for iid, w, h in zip(image_ids, widths, heights):
        scale = np.array([w, h, w, h], float)
        for cid, arr in prior.items():
            for score, *b in arr:
                rows.append((str(iid), cid, float(score), *(np.asarray(b) * scale)))
    return pd.DataFrame(rows, columns=["image_id", "class_id", "score", *BOX_COLUMNS])


__all__ = ["fit_prior", "predict_prior"]
