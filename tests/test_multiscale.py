"""Multiscale CAM (Sedai et al. 2018): relevance weights, maps, Grad-CAM on the plain classifier, heatmap -> boxes."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline import gradcam as G
from pipeline.models.fit import relevance_table
from pipeline.models.multiscale import build_multiscale, build_plain
from pipeline.models.trunks import build_trunk

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_multiscale(build_trunk("resnet18"), 5).eval()


def test_relevance_weights_sum_to_one_per_class_before_and_after_training(model):
    w = model.relevance_weights()
    assert w.shape == (5, 3)
    torch.testing.assert_close(w, torch.full((5, 3), 1 / 3))  # started equal
    # one optimizer step on a loss that favours stage 0 for class 0 and stage 2 for class 1
    opt = torch.optim.SGD([model.relevance], lr=1.0)
    loss = -model.relevance_weights()[0, 0] - model.relevance_weights()[1, 2]
    loss.backward()
    opt.step()
    w = model.relevance_weights().detach()
    torch.testing.assert_close(w.sum(1), torch.ones(5))
    assert (w >= 0).all() and w[0, 0] > 1 / 3 and w[1, 2] > 1 / 3 and w[0].argmax() == 0
    table = relevance_table(model, ["a", "b", "c", "d", "e"])
    assert list(table["a"]) == ["stride8", "stride16", "stride32"]
    assert sum(table["b"].values()) == pytest.approx(1.0)
    with torch.no_grad():
        model.relevance.zero_()


def test_logits_are_the_mean_of_the_combined_map(model):
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        logits = model(x)
        cams = model.cams(x)
        stage = model.stage_cams(x)
    assert cams.shape == (2, 5, 64, 64)
    assert [tuple(a.shape[-2:]) for a in stage] == [(8, 8), (4, 4), (2, 2)]
    # bilinear upsampling by a whole factor keeps the mean up to the border rows: close, not equal
    torch.testing.assert_close(cams.mean((2, 3)), logits, atol=0.05, rtol=0.05)


def test_stage_choice_is_checked():
    with pytest.raises(ValueError, match="stages"):
        build_multiscale(build_trunk("resnet18"), 3, stages=(0, 3))
    m = build_multiscale(build_trunk("resnet18"), 3, stages=(1, 2))
    assert m.relevance_weights().shape == (3, 2)


def test_grad_cams_of_the_plain_classifier_equal_its_class_activation_maps():
    torch.manual_seed(1)
    net = build_plain(build_trunk("resnet18"), 4).eval()
    x = torch.rand(2, 1, 64, 64)
    maps = G.grad_cams(net, x, [0, 3])
    assert maps.shape == (2, 2, 64, 64) and maps.max() <= 1.0 + 1e-6
    # GAP + linear: Grad-CAM weights are the classifier's own weights / (h w), so the map is CAM
    with torch.no_grad():
        f = net.trunk(x)[-1]
        cam = torch.relu(torch.einsum("bchw,c->bhw", f, net.fc.weight[3]))
    cam = torch.nn.functional.interpolate(cam[:, None], size=(64, 64), mode="bilinear", align_corners=False)[:, 0]
    cam = cam / cam.flatten(1).max(1).values.clamp_min(1e-12)[:, None, None]
    np.testing.assert_allclose(maps[:, 1], cam.numpy(), atol=1e-4)
    # one class alone gives the same map as in the batch of classes
    np.testing.assert_allclose(G.grad_cams(net, x, [3])[:, 0], maps[:, 1], atol=1e-5)


def test_heatmap_to_boxes_ranks_regions_by_heat_mass():
    h = np.zeros((20, 30))
    h[2:6, 3:9] = 1.0      # 24 px at 1.0: mass 24
    h[10:18, 10:20] = 0.6  # 80 px at 0.6: mass 48
    h[0:2, 25:27] = 0.55   # 4 px: mass 2.2
    h[18:20, 0:2] = 0.52   # 4 px: mass 2.08
    boxes = G.heatmap_to_boxes(h, 0.5)
    assert [b[1:] for b in boxes] == [(10.0, 10.0, 20.0, 18.0), (3.0, 2.0, 9.0, 6.0), (25.0, 0.0, 27.0, 2.0)]
    total = 24 + 48 + 2.2 + 2.08
    np.testing.assert_allclose([b[0] for b in boxes], [48 / total, 24 / total, 2.2 / total])
    assert len(G.heatmap_to_boxes(h, 0.5, max_boxes=1)) == 1
    assert [b[1:] for b in G.heatmap_to_boxes(h, 0.9)] == [(3.0, 2.0, 9.0, 6.0)]
    assert G.heatmap_to_boxes(np.zeros((4, 4))) == [] and G.heatmap_to_boxes(np.full((3, 3), np.nan)) == []
    with pytest.raises(ValueError, match="2-d"):
        G.heatmap_to_boxes(np.zeros(5))
