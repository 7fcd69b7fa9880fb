"""CLN: head shapes, targets, decoding back to the encoded boxes, NMS, and a loss that falls on demo data."""
from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch

from pipeline.errors import ConfigError
from pipeline.models import cln as C
from pipeline.models.trunks import build_trunk

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("backbone,size", [("resnet18", 64), ("densenet121", 96)])
def test_heads_give_the_right_shapes(backbone, size):
    torch.manual_seed(0)
    net = C.build_cln(build_trunk(backbone), n_labels=14, n_box_classes=8, width=16)
    out = net(torch.rand(2, 1, size, size))
    s = size // C.STRIDE
    assert out["logits"].shape == (2, 14)
    assert out["heat"].shape == (2, 8, s, s) and out["size"].shape == (2, 16, s, s)
    assert out["offset"].shape == (2, 2, s, s) and 0 <= out["offset"].min() and out["offset"].max() <= 1
    # the heatmap starts at the prior probability (CenterNet's bias), not at 0.5
    assert torch.sigmoid(out["heat"]).mean().item() == pytest.approx(C.HEAT_PRIOR, rel=0.5)
    with pytest.raises(ValueError, match="n_box_classes"):
        C.build_cln(build_trunk("resnet18"), n_labels=4, n_box_classes=8)


def test_unknown_backbone_is_a_config_error():
    with pytest.raises(ConfigError, match="resnet18"):
        build_trunk("vgg16")


def test_targets_hand_computed_and_masks():
    # a 24 x 16 box centred at (28, 20) in a 64-pixel input: cell (3, 2) at stride 8, offset (0.5, 0.5)
    state = np.array([np.nan, 0, 1, 0, np.nan, 0, 0, 0])  # 0 unknown, 2 present, 4 unknown
    t = C.encode_targets(np.array([[16, 12, 40, 28]]), [2], state, imgsz=64)
    assert t["heat"].shape == (8, 8, 8)
    assert t["heat"][2, 2, 3] == 1.0 and t["heat"][2].sum() > 1.0 and (t["heat"][[0, 1, 3]] == 0).all()
    np.testing.assert_array_equal(t["heat_mask"], [0, 1, 1, 1, 0, 1, 1, 1])  # present without box / unknown: masked
    np.testing.assert_allclose(t["size"][4:6, 2, 3], [math.log(3), math.log(2)])
    np.testing.assert_allclose(t["offset"][:, 2, 3], [0.5, 0.5])
    assert t["reg_mask"].sum() == 1 and t["reg_mask"][2, 2, 3] == 1


def _perfect_outputs(targets: dict) -> dict:
    heat = torch.from_numpy(np.where(targets["heat"] >= 1, 8.0, -8.0 + 4 * targets["heat"]))[None].float()
    return {"heat": heat, "size": torch.from_numpy(targets["size"])[None], "offset": torch.from_numpy(targets["offset"])[None],
            "logits": torch.zeros(1, 8)}


def test_decode_gives_back_the_encoded_boxes():
    boxes = np.array([[16, 12, 40, 28], [40, 40, 60, 62]], float)
    t = C.encode_targets(boxes, [2, 5], np.zeros(8), imgsz=64)
    res = C.decode(_perfect_outputs(t), max_boxes=3)
    assert len(res) == 1 and len(res[0]) == 8
    np.testing.assert_allclose(res[0][2][0, 1:], boxes[0], atol=1e-4)
    np.testing.assert_allclose(res[0][5][0, 1:], boxes[1], atol=1e-4)
    assert res[0][2][0, 0] == pytest.approx(1 / (1 + math.exp(-8)))
    assert all(len(r) <= 3 for r in res[0])


def test_decode_spends_the_three_boxes_on_different_sites():
    t = C.encode_targets(np.array([[0, 0, 32, 32]]), [0], np.zeros(8), imgsz=64)
    out = _perfect_outputs(t)
    out["size"][:] = math.log(4.0)  # every cell predicts a 32 x 32 box centred in the cell
    out["offset"][:] = 0.5
    out["heat"][0, 0] = -8.0
    out["heat"][0, 0, 2, 2], out["heat"][0, 0, 2, 4], out["heat"][0, 0, 6, 6] = 5.0, 4.0, 3.0  # 2 cells apart: both peaks
    res = C.decode(out, max_boxes=3, nms_iou=0.5)[0][0]
    centres = (res[:, 1:3] + res[:, 3:5]) / 2
    # (2, 4) overlaps (2, 2) by IoU 1/3 < 0.5: kept; all three peaks survive, best first
    np.testing.assert_allclose(centres[:, 0], [(2 + 0.5) * 8, (4 + 0.5) * 8, (6 + 0.5) * 8], atol=1e-4)
    res = C.decode(out, max_boxes=3, nms_iou=0.2)[0][0]
    centres = (res[:, 1:3] + res[:, 3:5]) / 2
    # now the (2, 4) box is suppressed by the better (2, 2) one, and (6, 6) moves up
    np.testing.assert_allclose(centres[:2, 0], [(2 + 0.5) * 8, (6 + 0.5) * 8], atol=1e-4)


@pytest.mark.parametrize("box_mode", ["centre", "dense"])
def test_loss_falls_on_demo_data(tmp_path, box_mode):
    from pipeline.demo.chestxray14 import write_chestxray14
    from pipeline.models import fit as F
    from pipeline.models.data import BoxDataset
    from pipeline.sources.chestxray14 import read_bbox_list

    root = tmp_path / "cxr"
    write_chestxray14(root, 1, 30, seed=5, size=64, workers=1)  # 9 boxed images
    truth, _ = read_bbox_list(root / "BBox_List_2017.csv")
    ids = sorted(truth["image_id"].unique())[:8]
    boxes = [np.column_stack([g["class_id"], g[["x_min", "y_min", "x_max", "y_max"]].to_numpy() / 16])
             for _, g in truth[truth["image_id"].isin(ids)].groupby("image_id")]
    labels = np.zeros((len(ids), 8), np.float32)
    ds = BoxDataset([root / "images" / f"{i}.png" for i in ids], labels, boxes, 64,
                    encode=functools.partial(C.encode_targets, imgsz=64, box_mode=box_mode))
    torch.manual_seed(0)
    net = C.build_cln(build_trunk("resnet18"), 8, 8, width=16, box_mode=box_mode)
    hist = F.fit(net, ds, F.cln_loss_fn(), F.FitSettings(epochs=6, batch=8, lr=3e-3, warmup_epochs=0),
                 log=lambda _m: None)["history"]
    # the GIoU part (weight 5, TTFNet's) falls more slowly than the centre form's L1 on log sizes
    assert hist[-1]["loss"] < (0.6 if box_mode == "centre" else 0.8) * hist[0]["loss"]
    box = "size" if box_mode == "centre" else "box"
    assert hist[-1]["heat"] < hist[0]["heat"] and hist[-1][box] < hist[0][box]
    probs, out_boxes = F.predict_cln(net, BoxDataset(ds.paths, labels, None, 64), max_boxes=3)
    assert probs.shape == (8, 8) and len(out_boxes) == 8 and all(len(b) == 8 for b in out_boxes)
    assert all(a.shape[1] == 5 and len(a) <= 3 for b in out_boxes for a in b)


def test_checkpoint_round_trip_predicts_the_same(tmp_path):
    from pipeline.errors import PipelineError
    from pipeline.models import runners as R

    s = R.MethodSettings(backbone="resnet18", imgsz=64, width=16)
    torch.manual_seed(0)
    net = R.build("cln", 9, s).eval()
    path = R.save(net, tmp_path / "cln.pt")
    back = R.load("cln", 9, s, path)
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(back(x)["heat"], net(x)["heat"])
    with pytest.raises(PipelineError, match="does not fit"):
        R.load("cln", 14, s, path)
    with pytest.raises(PipelineError, match="not found"):
        R.load("cln", 9, s, tmp_path / "missing.pt")


# ------------------------------------------------------------------ the dense (TTFNet) box regression
def test_dense_head_shapes_and_a_bad_mode():
    torch.manual_seed(0)
    net = C.build_cln(build_trunk("resnet18"), n_labels=14, n_box_classes=8, width=16, box_mode="dense")
    out = net(torch.rand(2, 1, 64, 64))
    assert out["size"].shape == (2, 32, 8, 8) and "offset" not in out
    with pytest.raises(ValueError, match="box_mode"):
        C.build_cln(build_trunk("resnet18"), 14, 8, 16, box_mode="anchors")


def test_dense_targets_hand_computed():
    # a 48 x 40 box centred at (32, 32) in a 64-pixel input: 6 x 5 cells, centre cell (4, 4); the core is the
    # central 0.54 of the box: cells whose centre x + 0.5 lies within 0.54 * 6 / 2 = 1.62 of 4 (x = 2..5) and
    # whose y + 0.5 lies within 0.54 * 5 / 2 = 1.35 of 4 (y = 3, 4)
    t = C.encode_targets(np.array([[8, 12, 56, 52]]), [1], np.zeros(8), imgsz=64, box_mode="dense")
    assert set(t) == {"heat", "heat_mask", "box", "box_weight"}
    cells = np.argwhere(t["box_weight"][1] > 0)
    assert sorted(map(tuple, cells)) == [(y, x) for y in (3, 4) for x in (2, 3, 4, 5)]
    assert t["box_weight"][1].sum() == pytest.approx(1.0) and t["box_weight"][[0, 2, 3]].sum() == 0
    assert t["box_weight"][1].argmax() == 4 * 8 + 4  # the centre cell weighs most (the Gaussian's peak)
    np.testing.assert_allclose(t["box"][4:8, 3, 2], [1, 1.5, 7, 6.5])  # the box in cells, at every core cell
    assert t["heat"][1, 4, 4] == 1.0 and t["heat_mask"][1] == 1


def test_dense_a_smaller_box_keeps_the_cells_it_shares():
    big, small = [0, 0, 64, 64], [24, 24, 40, 40]
    t = C.encode_targets(np.array([small, big]), [0, 0], np.zeros(8), imgsz=64, box_mode="dense")
    np.testing.assert_allclose(t["box"][0:4, 4, 4], np.array(small) / 8)  # regardless of the input order
    np.testing.assert_allclose(t["box"][0:4, 2, 2], np.array(big) / 8)  # outside the small box's core: the big one
    assert (t["box_weight"][0] > 0).sum() == 16  # the big box's 4 x 4 core, 4 of its cells now the small box's
    # a box smaller than a cell still regresses at its centre cell
    t = C.encode_targets(np.array([[9, 9, 12, 11]]), [2], np.zeros(8), imgsz=64, box_mode="dense")
    assert (t["box_weight"][2] > 0).sum() == 1 and t["box_weight"][2, 1, 1] == pytest.approx(1.0)


def _perfect_dense(t: dict, k: int = 8) -> dict:
    h, w = t["box_weight"].shape[1:]
    cx, cy = (np.arange(w) + 0.5)[None, :], (np.arange(h) + 0.5)[:, None]
    size = np.zeros((4 * k, h, w), np.float32)
    for c in range(k):
        x0, y0, x1, y1 = t["box"][4 * c:4 * c + 4]
        m = t["box_weight"][c] > 0
        d = np.stack([cx - x0, cy - y0, x1 - cx, y1 - cy])
        size[4 * c:4 * c + 4][:, m] = np.log(np.maximum(d[:, m], 1e-6))
    heat = torch.from_numpy(np.where(t["heat"] >= 1, 8.0, -8.0 + 4 * t["heat"]))[None].float()
    return {"heat": heat, "size": torch.from_numpy(size)[None], "logits": torch.zeros(1, 8)}


def test_dense_decode_gives_back_the_encoded_boxes_and_the_loss_is_zero_there():
    boxes = np.array([[16, 12, 40, 28], [40, 40, 61, 62]], float)
    t = C.encode_targets(boxes, [2, 5], np.zeros(8), imgsz=64, box_mode="dense")
    out = _perfect_dense(t)
    res = C.decode(out, max_boxes=3)
    np.testing.assert_allclose(res[0][2][0, 1:], boxes[0], atol=1e-3)
    np.testing.assert_allclose(res[0][5][0, 1:], boxes[1], atol=1e-3)
    batch = {k: torch.from_numpy(v)[None] for k, v in t.items()}
    batch.update(labels=torch.zeros(1, 8), label_mask=torch.ones(1, 8))
    _total, parts = C.cln_loss(out, batch)
    assert parts["box"] < 1e-4 and set(parts) == {"cls", "heat", "box"}
    out["size"] = out["size"] + 0.5  # every distance 1.65x too long: the GIoU loss sees it
    assert C.cln_loss(out, batch)[1]["box"] > 0.3


def test_giou_identical_overlapping_and_apart():
    a = torch.tensor([0.0, 0, 2, 2]).view(4, 1, 1)
    assert C.giou(a, a).item() == pytest.approx(1.0)
    assert C.giou(a, torch.tensor([1.0, 0, 3, 2]).view(4, 1, 1)).item() == pytest.approx(1 / 3)
    # apart: IoU 0, minus the empty share of the hull (4 + 4 of 16 -> -0.5)
    assert C.giou(a, torch.tensor([2.0, 2, 4, 4]).view(4, 1, 1)).item() == pytest.approx(-0.5)
