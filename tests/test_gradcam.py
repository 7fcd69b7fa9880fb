"""Grad-CAM, heatmap -> box, and the weak-localisation (IoU accuracy) table, with hand-computed values."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from pipeline import gradcam as G



pytestmark = pytest.mark.usefixtures("one_torch_thread")

# ---------------------------------------------------------------------------------------------
# heatmap -> box
# ---------------------------------------------------------------------------------------------
def _two_regions() -> np.ndarray:
    h = np.zeros((20, 30))
    h[2:6, 3:9] = 1.0      # small (4 x 6 = 24 px) but the peak
    h[10:18, 10:20] = 0.8  # large (8 x 10 = 80 px)
    return h


def test_heatmap_to_box_largest_region_pixel_edges():
    # threshold 0.5 keeps both regions: the larger wins; pixel-edge box (rows 10..17 -> y 10..18)
    assert G.heatmap_to_box(_two_regions(), 0.5) == (10.0, 10.0, 20.0, 18.0)
    # threshold 0.9 keeps only the peak region
    assert G.heatmap_to_box(_two_regions(), 0.9) == (3.0, 2.0, 9.0, 6.0)


def test_heatmap_to_box_diagonal_pixels_connect_and_empty_maps():
    h = np.zeros((5, 5))
    h[1, 1] = h[2, 2] = h[3, 3] = 1.0  # 8-connected diagonal: one region
    assert G.heatmap_to_box(h, 0.5) == (1.0, 1.0, 4.0, 4.0)
    assert G.heatmap_to_box(np.zeros((4, 4)), 0.5) is None
    assert G.heatmap_to_box(np.full((4, 4), np.nan), 0.5) is None


def test_heatmap_to_box_gaussian_blob():
    yy, xx = np.mgrid[:64, :64]
    h = np.exp(-((yy - 20.0) ** 2 + (xx - 40.0) ** 2) / (2 * 5.0 ** 2))
    # h >= 0.5 max where r^2 <= 2 * 25 * ln 2 = 34.66: r <= 5.887 -> pixels 35..45 (x) and 15..25 (y)
    assert G.heatmap_to_box(h, 0.5) == (35.0, 15.0, 46.0, 26.0)


# ---------------------------------------------------------------------------------------------
# IoU accuracy table
# ---------------------------------------------------------------------------------------------
def test_localization_accuracy_hand_computed():
    cols = ["image_id", "class_id", "x_min", "y_min", "x_max", "y_max"]
    truth = pd.DataFrame([
        ["a", 0, 0, 0, 10, 10], ["a", 1, 0, 0, 10, 10], ["b", 0, 0, 0, 10, 10], ["c", 0, 0, 0, 10, 10],
        ["d", 14, np.nan, np.nan, np.nan, np.nan],  # a "No finding" row: no box, not counted
    ], columns=cols)
    pred = pd.DataFrame([
        ["a", 0, 0, 0, 10, 5],     # IoU 50/100 = 0.5
        ["a", 1, 5, 5, 15, 15],    # IoU 25/175 = 0.1429
        ["b", 1, 0, 0, 10, 10],    # other class: b/0 is missed, IoU 0
        ["c", 0, 20, 20, 30, 30],  # two boxes for c/0: the best (0.8) counts
        ["c", 0, 0, 0, 10, 8],
    ], columns=cols)
    res = G.localization_accuracy(pred, truth, class_names={0: "Atelectasis", 1: "Cardiomegaly"})
    assert res["n_boxes"] == 4
    np.testing.assert_allclose(res["ious"], [0.5, 25 / 175, 0.0, 0.8])
    # "IoU above T" is strict: the 0.5 box is not found at T = 0.5
    assert res["overall"] == {"0.1": 0.75, "0.2": 0.5, "0.3": 0.5, "0.4": 0.5, "0.5": 0.25, "0.6": 0.25, "0.7": 0.25}
    at = res["per_class"]["Atelectasis"]
    assert at["n_boxes"] == 3 and at["0.1"] == pytest.approx(2 / 3) and at["0.5"] == pytest.approx(1 / 3)
    assert res["per_class"]["Cardiomegaly"]["0.1"] == 1.0 and res["per_class"]["Cardiomegaly"]["0.2"] == 0.0


def test_localization_accuracy_needs_columns():
    with pytest.raises(ValueError, match="predicted boxes lack columns"):
        G.localization_accuracy(pd.DataFrame({"image_id": []}), pd.DataFrame())


# ---------------------------------------------------------------------------------------------
# Grad-CAM
# ---------------------------------------------------------------------------------------------
class _Toy(nn.Module):
    """Shaped like ChestClassifier (``net.features``, ``net.classifier``): features = identity 1x1 conv
    then 4x4 average pooling, head = global mean -> linear. d(logit_t)/d(features) = w_t / (h*w) everywhere, so the
    Grad-CAM map is ReLU(w_t) * features, normalised: the pooled image itself when w_t > 0."""

    def __init__(self, w):
        super().__init__()
        self.net = nn.Module()
        conv = nn.Conv2d(1, 1, 1, bias=False)  # identity, but a parameter: activations need grad
        nn.init.ones_(conv.weight)
        self.net.features = nn.Sequential(conv, nn.AvgPool2d(4))
        self.net.classifier = nn.Linear(1, len(w), bias=False)
        with torch.no_grad():
            self.net.classifier.weight.copy_(torch.tensor(w, dtype=torch.float32)[:, None])

    def forward(self, x):
        return self.net.classifier(self.net.features(x).mean(dim=(2, 3)))


def test_grad_cam_follows_the_evidence():
    x = torch.zeros(1, 1, 32, 32)
    x[0, 0, 8:16, 20:28] = 1.0  # a bright square: exactly 2 x 2 pooled cells
    model = _Toy([2.0, -1.0])
    cam = G.grad_cam(model, x, 0)
    assert cam.shape == (1, 32, 32) and cam.max() == pytest.approx(1.0) and cam.min() >= 0
    # the square's pooled cells (rows 2-3, cols 5-6) are the peak; bilinear upsampling blurs by 2 px
    x0, y0, x1, y1 = G.heatmap_to_box(cam[0], 0.5)
    assert abs(x0 - 20) <= 2 and abs(x1 - 28) <= 2 and abs(y0 - 8) <= 2 and abs(y1 - 16) <= 2
    # a negative weight: nothing supports the class, the map is all zero
    assert G.grad_cam(model, x, 1).max() == 0
    assert not model.net.features._forward_hooks  # the hook is removed
    assert model.net.classifier.weight.grad is None  # parameter gradients untouched


def test_grad_cam_on_densenet_per_image_targets():
    from pipeline.classifier import build_model

    torch.manual_seed(0)
    model = build_model(3)
    cam = G.grad_cam(model, torch.rand(2, 1, 32, 32), [0, 2])
    assert cam.shape == (2, 32, 32) and cam.dtype == np.float32
    assert ((cam >= 0) & (cam <= 1)).all()
    assert not model.net.features._forward_hooks


def test_overlay_draws_boxes():
    img = np.zeros((40, 60), np.float32)
    heat = np.zeros((40, 60), np.float32)
    pic = G.overlay(img, heat, truth_boxes=[[5, 5, 20, 20]], pred_box=(30, 10, 50, 30), alpha=0.0)
    assert pic.shape == (40, 60, 3) and pic.dtype == np.uint8
    assert tuple(pic[5, 10]) == (0, 255, 0)     # green truth edge (BGR)
    assert tuple(pic[10, 40]) == (0, 0, 255)    # red predicted edge
    assert pic[0, 0].sum() == 0
    assert G.encode_png(pic)[:8] == b"\x89PNG\r\n\x1a\n"


def test_real_chestxray14_boxes_and_image(real_dir, tmp_path):
    """Real BBox_List_2017.csv rows (x, y, w, h in 1024-pixel space) and the real PNG they belong to."""
    from pipeline.boxes import xywh_abs_to_xyxy_abs
    from pipeline.classifier import build_model, letterbox, read_gray

    raw = pd.read_csv(real_dir / "chestxray14" / "BBox_List_2017.csv")
    rows = raw[raw["Image Index"] == "00005066_030.png"]
    assert len(rows) == 3  # Cardiomegaly, Effusion, Infiltrate
    xywh = rows.iloc[:, 2:6].to_numpy(float)
    xyxy = xywh_abs_to_xyxy_abs(xywh)
    truth = pd.DataFrame(xyxy, columns=["x_min", "y_min", "x_max", "y_max"])
    truth.insert(0, "class_id", [1, 2, 3])
    truth.insert(0, "image_id", "00005066_030")
    # predictions: the truth itself; the Effusion box shifted right by half its width (IoU 1/3);
    # nothing for Infiltration
    shifted = truth.iloc[[1]].copy()
    shifted[["x_min", "x_max"]] += xywh[1, 2] / 2
    pred = pd.concat([truth.iloc[[0]], shifted])
    res = G.localization_accuracy(pred, truth)
    np.testing.assert_allclose(res["ious"], [1.0, 1 / 3, 0.0])
    assert res["overall"]["0.3"] == pytest.approx(2 / 3) and res["overall"]["0.4"] == pytest.approx(1 / 3)

    # the image: Grad-CAM box of an untrained model, mapped to original pixels, lies inside the image
    img = read_gray(real_dir / "chestxray14" / "images" / "00005066_030.png")
    x, lb = letterbox(img, 64)
    torch.manual_seed(0)
    cam = G.grad_cam(build_model(14), torch.from_numpy(x)[None, None], 1)[0]
    box = G.heatmap_to_box(cam, 0.5)
    assert box is not None
    orig = lb.to_source([box], 1024, 1024)[0]
    assert 0 <= orig[0] < orig[2] <= 1024 and 0 <= orig[1] < orig[3] <= 1024
    np.testing.assert_allclose(orig, np.array(box) * 16)  # square 1024 -> 64: no padding, scale 16
    pic = G.overlay(x, cam, xyxy / 16, box)
    assert pic.shape == (64, 64, 3)
