"""image.lung_crop: boxes between ORIGINAL pixels and the crop a PNG shows, and prepare with the crop on
(every box kept in original pixels; labels in the crop's frame; boxes outside the crop counted)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.frames import boxes_in_frames, frame_table, frame_to_original, original_to_frame, png_to_original


def test_a_box_into_the_crop_and_back_is_itself_and_outside_boxes_are_reported():
    frame = (100.0, 50.0, 700.0, 650.0)  # a 600 px square inside a 1000 x 800 image
    boxes = np.array([[150, 100, 300, 260], [90, 40, 160, 120], [800, 700, 900, 790]], float)
    inside_frame, inside, cut = original_to_frame(boxes, frame)
    assert inside.tolist() == [True, True, False] and cut.tolist() == [False, True, False]
    np.testing.assert_allclose(frame_to_original(inside_frame[:1], frame), boxes[:1])
    # the PNG is the crop at 300 px: PNG pixels -> original pixels
    png_box = inside_frame[:1] * 0.5
    np.testing.assert_allclose(png_to_original(png_box, 300, 300, frame, 1000, 800), boxes[:1])
    meta = pd.DataFrame({"image_id": ["a", "b"], "width": [1000, 500], "height": [800, 400],
                         "crop_x0": ["100", ""], "crop_y0": ["50", ""], "crop_x1": ["700", ""], "crop_y1": ["650", ""]})
    frames = frame_table(meta)
    assert tuple(frames.loc["a"]) == frame and tuple(frames.loc["b"]) == (0, 0, 500, 400)
    table = pd.DataFrame({"image_id": ["a", "a", "a", "b"], "class_id": [0, 1, 2, 14],
                          "x_min": [150, 90, 800, np.nan], "y_min": [100, 40, 700, np.nan],
                          "x_max": [300, 160, 900, np.nan], "y_max": [260, 120, 790, np.nan]})
    moved, sizes, counts = boxes_in_frames(table, frames)
    assert counts["outside"] == 1 and counts["cut"] == 1 and counts["outside_ids"] == ["a"]
    assert len(moved) == 3 and moved["class_id"].tolist() == [0, 1, 14]
    np.testing.assert_allclose(moved.iloc[0][["x_min", "y_min", "x_max", "y_max"]].to_numpy(float), [50, 50, 200, 210])
    assert sizes.set_index("image_id").loc["a"].tolist() == [600, 600]


def test_prepare_with_the_lung_crop_keeps_every_box_in_original_pixels(tmp_path, monkeypatch, capsys):
    import pipeline.lung_crop as lc
    from pipeline.boxes import yolo_to_xyxy_abs
    from pipeline.config import CONFIG_DIR, load_config
    from pipeline.paths import RunPaths
    from pipeline.runner import run_stage
    from tests.test_prepare_stage import overrides, read_csv

    def fake_square(pixels, width, height, model_path, margin):  # the lungs: the middle of the image
        return (width // 4, height // 5, width - width // 4, height - height // 10), "lung crop (test)"

    monkeypatch.setattr(lc, "lung_square", fake_square)
    model = tmp_path / "lungs.pt"
    model.write_bytes(b"stand-in: lung_square is replaced above")
    cfg = load_config(CONFIG_DIR / "demo.yaml", {**overrides(tmp_path), "data.demo_n_train": 6, "data.demo_n_test": 1,
                                                  "image.lung_crop": True, "image.lung_model": str(model)})
    paths = RunPaths.from_config(cfg)
    summary = run_stage("prepare", cfg)
    out = capsys.readouterr().out
    assert "lung crop: 7 of 7 image(s) cropped" in out and "boxes_outside_crop" in summary
    meta = read_csv(paths.meta_csv).set_index("image_id")
    boxes = pd.read_csv(paths.boxes_csv, dtype={"image_id": str})
    found = 0
    for image_id, r in meta[meta["split"] == "train"].iterrows():
        x0, y0, x1, y1 = (float(r[c]) for c in ("crop_x0", "crop_y0", "crop_x1", "crop_y1"))
        assert (x0, y0) == (r["width"] // 4, r["height"] // 5)
        assert max(r["out_width"], r["out_height"]) == 128  # the crop, resized to image.size
        assert abs(r["out_width"] / r["out_height"] - (x1 - x0) / (y1 - y0)) < 0.05
        lines = [ln.split() for ln in paths.label("train", image_id).read_text().splitlines()]
        if not lines:
            continue
        yolo = np.array(lines, float)
        back = yolo_to_xyxy_abs(yolo[:, 1:], x1 - x0, y1 - y0) + np.array([x0, y0, x0, y0])
        mine = boxes[(boxes["image_id"] == image_id) & (boxes["class_id"] != 14)]
        inside, _, _ = original_to_frame(mine[["x_min", "y_min", "x_max", "y_max"]].to_numpy(float), (x0, y0, x1, y1))
        # every label, mapped back through the crop, is a truth box (clipped to the crop) in original pixels
        clipped = frame_to_original(inside, (x0, y0, x1, y1))
        for b in back:
            assert np.abs(clipped - b).max(axis=1).min() < 0.01 * max(r["width"], r["height"])
            found += 1
    assert found > 0


def test_the_crop_needs_a_lung_model(tmp_path):
    from pipeline.errors import ConfigError
    from pipeline.lung_crop import check_model

    with pytest.raises(ConfigError, match="segment"):
        check_model(str(tmp_path / "missing.pt"))
    with pytest.raises(ConfigError, match="lung model"):
        check_model(None)
