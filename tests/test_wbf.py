"""pipeline.wbf: batched weighted-box fusion against ensemble-boxes itself, image by image, bit for bit."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from ensemble_boxes import weighted_boxes_fusion

from benchmarks.fuse import clustered_image
from pipeline.wbf import CONF_TYPES, weighted_boxes_fusion_batched

WEIGHTS = {"equal": None, "uneven": [1.0, 2.0, 0.5, 0.3, 1.7, 1.0, 0.9, 3.0, 0.7, 1.1]}


def library(per_source, **kw):
    """ensemble-boxes on one image: per_source = [(boxes, scores, labels), ...]."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its swap/clip/zero-area/0-by-0 warnings
        return weighted_boxes_fusion([p[0] for p in per_source], [p[1] for p in per_source],
                                     [p[2] for p in per_source], **kw)


def batched(images, n_sources, **kw):
    """pipeline.wbf on all images at once, split back per image."""
    parts = [(np.full(len(s), i), np.full(len(s), k), b.reshape(-1, 4), s, lab)
             for i, per in enumerate(images) for k, (b, s, lab) in enumerate(per)]
    img, src, b, s, lab = (np.concatenate(x) for x in zip(*parts))
    with np.errstate(invalid="ignore", divide="ignore"):
        out_img, ob, os_, ol = weighted_boxes_fusion_batched(img, src, b, s, lab, n_sources, **kw)
    assert (np.diff(out_img) >= 0).all(), "images come out in ascending order"
    return [(ob[out_img == i], os_[out_img == i], ol[out_img == i]) for i in range(len(images))]


def assert_same(images, n_sources, **kw):
    got = batched(images, n_sources, **kw)
    for i, per in enumerate(images):
        rb, rs, rl = library(per, **kw)
        gb, gs, gl = got[i]
        assert len(gs) == len(rs), f"image {i}: {len(gs)} fused boxes, ensemble-boxes {len(rs)}"
        np.testing.assert_array_equal(gb, np.asarray(rb).reshape(-1, 4), err_msg=f"image {i} boxes")
        np.testing.assert_array_equal(gs, rs, err_msg=f"image {i} scores")
        np.testing.assert_array_equal(gl, rl, err_msg=f"image {i} labels")
    return got


def clustered(seed, n_images=6, n_sources=10, boxes=30, round_scores=None, drop_source=0.1):
    """Normalised per-image lists from the benchmark's clustered generator; some sources left empty."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n_images):
        w, h = rng.integers(2000, 3000), rng.integers(2300, 3400)
        per = []
        for b, s, lab in clustered_image(rng, w, h, n_sources, boxes, mean_hard=6):
            if rng.random() < drop_source:
                b, s, lab = b[:0], s[:0], lab[:0]
            if round_scores is not None:
                s = np.round(s, round_scores)
            per.append((b / [w, h, w, h], s, lab.astype(float)))
        images.append(per)
    return images


@pytest.mark.parametrize("weights", list(WEIGHTS), ids=list(WEIGHTS))
@pytest.mark.parametrize("conf_type", CONF_TYPES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_ensemble_boxes_on_clustered_detections(seed, conf_type, weights):
    images = clustered(seed)
    got = assert_same(images, 10, weights=WEIGHTS[weights], iou_thr=0.4, skip_box_thr=0.0, conf_type=conf_type)
    fused = sum(len(g[1]) for g in got)
    inputs = sum(len(s) for per in images for _, s, _ in per)
    assert 0 < fused < inputs / 2, "the clustered data must actually merge boxes"


@pytest.mark.parametrize("conf_type", CONF_TYPES)
def test_equal_scores_keep_the_library_order(conf_type):
    # scores on a 0.01 grid: many ties, also in classes with more than 16 boxes (numpy's argsort is
    # then not an insertion sort), and in the final per-image order
    images = clustered(7, n_images=4, boxes=60, round_scores=2, drop_source=0.0)
    s = np.concatenate([s for per in images for _, s, _ in per])
    assert len(s) - len(np.unique(s)) > 1000
    assert_same(images, 10, weights=WEIGHTS["uneven"], iou_thr=0.4, conf_type=conf_type)


@pytest.mark.parametrize("iou_thr", [0.0, 0.25, 0.55, 0.8])
@pytest.mark.parametrize("skip_box_thr", [0.0, 0.02])
def test_other_thresholds(iou_thr, skip_box_thr):
    assert_same(clustered(3, n_images=3), 10, iou_thr=iou_thr, skip_box_thr=skip_box_thr, conf_type="avg")


def test_duplicates_edges_and_inputs_the_library_cleans():
    b = np.array([[0.0, 0.0, 0.2, 0.3],      # at the corner of the image
                  [0.0, 0.0, 0.2, 0.3],      # an exact duplicate in the same source
                  [0.8, 0.7, 1.0, 1.0],      # touching the far edges
                  [1.1, 0.9, 0.85, 0.75],    # corners swapped and beyond the edge: swapped, clipped
                  [0.5, 0.5, 0.5, 0.6],      # zero area: dropped
                  [-0.2, 0.1, 0.1, 0.4]])    # beyond the left edge: clipped
    s = np.array([0.9, 0.9, 0.6, 0.5, 0.7, 0.3])
    lab = np.array([3.0, 3.0, 5.0, 5.0, 3.0, 3.0])
    one = [(b, s, lab), (b[:0], s[:0], lab[:0]), (b[[0, 2]] * 0.98, s[[0, 2]] * 0.5, lab[[0, 2]])]
    for conf_type in CONF_TYPES:
        got = assert_same([one], 3, weights=[1.0, 2.0, 0.5], iou_thr=0.4, conf_type=conf_type)
        # clusters: corner box + its duplicate + source 2's copy; the left-edge box (IoU 0.29 with the
        # corner box once clipped); the far-edge box + source 2's copy; the swapped one (IoU 0.375)
        assert len(got[0][1]) == 4


def test_single_boxes_empty_images_and_zero_scores():
    box = np.array([[0.1, 0.1, 0.4, 0.5]])
    images = [
        [(box, np.array([0.7]), np.array([2.0])), (box[:0], np.zeros(0), np.zeros(0))],   # one box
        [(box[:0], np.zeros(0), np.zeros(0))] * 2,                                           # nothing
        [(box, np.array([0.0]), np.array([1.0])), (box, np.array([0.0]), np.array([1.0]))],  # 0 / 0: NaN box
        [(np.repeat(box, 3, axis=0), np.array([0.5, 0.5, 0.5]), np.array([0.0, 13.0, 0.0]))] * 2,
    ]
    for conf_type in CONF_TYPES:
        got = batched(images, 2, conf_type=conf_type, iou_thr=0.4)
        assert len(got[1][1]) == 0
        for i in (0, 2, 3):
            rb, rs, rl = library(images[i], conf_type=conf_type, iou_thr=0.4)
            np.testing.assert_array_equal(got[i][0], rb)  # NaN equals NaN here
            np.testing.assert_array_equal(got[i][1], rs)
            np.testing.assert_array_equal(got[i][2], rl)
    # one box of two equally weighted sources: half its score ('avg'), its own box
    b, s, lab = batched(images[:1], 2)[0]
    np.testing.assert_array_equal(b, box)
    assert s.tolist() == [0.35] and lab.tolist() == [2.0]


def test_nothing_in_gives_nothing_out():
    img, b, s, lab = weighted_boxes_fusion_batched(np.zeros(0), np.zeros(0), np.zeros((0, 4)), np.zeros(0),
                                                   np.zeros(0), 3)
    assert len(img) == len(s) == len(lab) == 0 and b.shape == (0, 4)


def test_bad_arguments_are_errors():
    one = (np.zeros(1), np.zeros(1), np.array([[0.1, 0.1, 0.2, 0.2]]), np.ones(1), np.zeros(1))
    with pytest.raises(ValueError, match="conf_type"):
        weighted_boxes_fusion_batched(*one, 1, conf_type="mean")
    with pytest.raises(ValueError, match="2 weights for 1 sources"):
        weighted_boxes_fusion_batched(*one, 1, weights=[1, 2])
    with pytest.raises(ValueError, match="source indices"):
        weighted_boxes_fusion_batched(one[0], np.array([3]), *one[2:], 2)
