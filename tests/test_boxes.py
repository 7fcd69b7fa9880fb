import numpy as np
import pytest

from pipeline.boxes import (clip_xyxy, hflip_xyxy, iou_matrix, xywh_abs_to_xyxy_abs, xyxy_abs_to_norm,
                            xyxy_abs_to_yolo, xyxy_norm_to_abs, yolo_to_xyxy_abs)


def test_xyxy_to_yolo_by_hand():
    # 200 x 400 image; box 10..110 x 20..220: centre (60, 120), size 100 x 200
    y = xyxy_abs_to_yolo([[10, 20, 110, 220]], width=200, height=400)
    np.testing.assert_allclose(y, [[0.3, 0.3, 0.5, 0.5]])
    np.testing.assert_allclose(yolo_to_xyxy_abs(y, 200, 400), [[10, 20, 110, 220]])


def test_per_box_sizes_and_round_trip():
    boxes = np.array([[10, 20, 110, 220.0], [1, 1, 2, 2]])
    w, h = np.array([200, 100]), np.array([400, 10])
    n = xyxy_abs_to_norm(boxes, w, h)
    np.testing.assert_allclose(n, [[0.05, 0.05, 0.55, 0.55], [0.01, 0.1, 0.02, 0.2]])
    np.testing.assert_allclose(xyxy_norm_to_abs(n, w, h), boxes)


def test_xywh_to_xyxy():
    np.testing.assert_allclose(xywh_abs_to_xyxy_abs([[5, 6, 10, 20]]), [[5, 6, 15, 26]])


def test_hflip_is_an_involution():
    b = np.array([[10, 20, 110, 220.0]])
    f = hflip_xyxy(b, 200)
    np.testing.assert_allclose(f, [[90, 20, 190, 220]])
    np.testing.assert_allclose(hflip_xyxy(f, 200), b)


def test_clip_and_iou():
    np.testing.assert_allclose(clip_xyxy([[-1, -2, 300, 50]], 200, 400), [[0, 0, 200, 50]])
    iou = iou_matrix([[0, 0, 10, 10]], [[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]])
    np.testing.assert_allclose(iou, [[1.0, 50 / 150, 0.0]])


def test_empty_and_bad_shapes():
    assert xyxy_abs_to_yolo(np.zeros((0, 4)), 10, 10).shape == (0, 4)
    with pytest.raises(ValueError, match="shape"):
        xyxy_abs_to_yolo([[1, 2, 3]], 10, 10)
