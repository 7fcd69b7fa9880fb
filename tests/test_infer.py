"""``infer`` on a tiny trained run: every output file, boxes in INPUT pixels (a mirrored copy gives the
mirrored boxes, a copy at twice the size the doubled boxes), unreadable inputs listed with exit 1."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from pipeline.config import save_config
from pipeline.paths import RunPaths
from tests.test_detector import build_run, tiny_cfg


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from pipeline.stages import train_det

    tmp = tmp_path_factory.mktemp("infer")
    build_run(tmp, n_train=12, n_test=2)
    cfg = tiny_cfg(tmp, **{"det.folds": [0, 1], "image.size": 256, "image.clahe": False})
    paths = RunPaths.from_config(cfg)
    train_det.run(cfg, paths)
    save_config(cfg, paths.config)
    return tmp, cfg, paths


def _boxes(out, image_id):
    d = pd.read_csv(out / "detections.csv", dtype={"image_id": str})
    d = d[d["image_id"] == image_id].sort_values("score", ascending=False)
    return d[["score", "x_min", "y_min", "x_max", "y_max"]].to_numpy()


def test_infer_writes_every_file_with_boxes_in_input_pixels(tiny_run, tmp_path):
    from pipeline.__main__ import main

    _, cfg, paths = tiny_run
    src = cv2.imread(str(paths.image("test", "test000")), cv2.IMREAD_GRAYSCALE)
    h, w = src.shape
    inputs = tmp_path / "in"
    inputs.mkdir()
    cv2.imwrite(str(inputs / "a.png"), src)
    cv2.imwrite(str(inputs / "mirror.png"), np.ascontiguousarray(src[:, ::-1]))
    cv2.imwrite(str(inputs / "big.png"), cv2.resize(src, (2 * w, 2 * h), interpolation=cv2.INTER_NEAREST))
    (inputs / "broken.png").write_bytes(b"not a png")
    # a run directory copied elsewhere works (nothing in it points at where it was trained)
    import shutil

    moved = tmp_path / "moved_run"
    shutil.copytree(paths.run_dir, moved)
    out = tmp_path / "out"
    rc = main(["infer", "--run", str(moved), "--out", str(out), "--conf", "0.0001", str(inputs)])
    assert rc == 1  # broken.png could not be read
    fails = pd.read_csv(out / "failures.csv")
    assert fails["image_id"].tolist() == ["broken"] and fails["reason"].iloc[0]
    det = pd.read_csv(out / "detections.csv", dtype={"image_id": str})
    assert list(det.columns) == ["image_id", "class_id", "class_name", "score", "x_min", "y_min", "x_max", "y_max"]
    assert set(det["class_name"]) <= {"rect", "ellipse"} and {"a", "mirror", "big"} <= set(det["image_id"])
    a = det[det.image_id == "a"]
    assert (a.x_min >= 0).all() and (a.x_max <= w).all() and (a.y_max <= h).all()
    assert (det[det.image_id == "big"].x_max > w).any()  # in the big copy's own pixels
    for i in ("a", "mirror", "big"):
        assert (out / "overlays" / f"{i}.png").stat().st_size > 500
    assert "overlays/a.png" in (out / "index.html").read_text()
    assert not (out / "classifier.csv").exists()  # the run has no classifier

    # mirrored input, with flip TTA: the fused boxes are the mirror image of a's (fusion is symmetric)
    ba, bm = _boxes(out, "a"), _boxes(out, "mirror")
    assert len(ba) == len(bm) > 0
    mirrored = np.column_stack([ba[:, 0], w - ba[:, 3], ba[:, 2], w - ba[:, 1], ba[:, 4]])
    key = lambda b: b[np.lexsort((b[:, 1], -np.round(b[:, 0], 4)))]
    np.testing.assert_allclose(key(bm)[:5], key(mirrored)[:5], atol=0.05)
    # the same picture at twice the size: twice the coordinates (to about a PNG pixel), same scores
    bb = _boxes(out, "big")
    np.testing.assert_allclose(bb[:3, 1:], 2 * ba[:3, 1:], atol=2.5)


def test_infer_on_a_lung_model_run_writes_masks_from_the_decoded_picture(tmp_path, monkeypatch):
    """A run with only a lung model (configs/lungs_shenzhen.yaml: no prepare, no dataset.yaml) infers; each
    mask has the input file's size and comes from the decoded picture the segment stage trains on, not
    from the converted PNG (whose CLAHE the model never saw)."""
    import torch

    import pipeline.lungs as lungs
    from pipeline.__main__ import main
    from pipeline.config import load_config
    from pipeline.dicom import read_png
    from pipeline.lungs.model import build_net, save_lung_model
    from tests.test_lungs import _tiny_spec

    run = tmp_path / "lungs_run"
    cfg = load_config(None, {"run.root": str(tmp_path), "run.name": "lungs_run", "run.stages": ["segment"],
                             "image.clahe": True, "image.size": 128, "segment.threshold": 0.4})
    paths = RunPaths.from_config(cfg)
    save_config(cfg, paths.config)
    torch.manual_seed(0)
    save_lung_model(paths.segment_model, build_net(_tiny_spec()).eval(), _tiny_spec(), 64, "histeq", "tb")
    assert not paths.dataset_yaml.exists()

    def dark_half(model, images, threshold=0.5, clean=True, tta_flip=False):  # the "lungs": the darker half
        assert threshold == 0.4 and clean is True  # the run's segment.threshold reaches the prediction
        return [np.asarray(im, float) < np.median(np.asarray(im, float)) for im in images]

    monkeypatch.setattr(lungs, "predict_masks", dark_half)
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:300, :200]
    picture = (60 + 120 * ((xx - 100) ** 2 / 80 ** 2 + (yy - 150) ** 2 / 130 ** 2) + rng.normal(0, 25, (300, 200)))
    src = tmp_path / "in" / "chest.png"
    src.parent.mkdir()
    cv2.imwrite(str(src), np.clip(picture, 0, 255).astype(np.uint8))
    out = tmp_path / "out"
    assert main(["infer", "--run", str(run), "--out", str(out), str(src)]) == 0
    mask = cv2.imread(str(out / "lungs" / "chest.png"), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (300, 200) and set(np.unique(mask)) <= {0, 255}
    expected = dark_half(None, [read_png(src).pixels], threshold=0.4)[0]
    assert np.array_equal(mask > 0, expected)
    converted = cv2.imread(str(out / ".work" / "images" / "chest.png"), cv2.IMREAD_GRAYSCALE)
    from_png = cv2.resize(dark_half(None, [converted], threshold=0.4)[0].astype(np.uint8), (200, 300),
                          interpolation=cv2.INTER_NEAREST) > 0
    assert not np.array_equal(from_png, expected)  # the CLAHE'd, resized PNG would have given another mask
    assert (out / "overlays" / "chest.png").is_file() and not (out / "detections.csv").read_text().strip().count("\n")


def test_the_gate_in_infer_decides_every_input_and_sets_aside_what_it_rejects(tmp_path, monkeypatch):
    """screen.csv has a row for every input, also one conversion refuses (a colour photograph); such an
    input that the gate rejected is set aside (failures.csv says so, exit 0), an unreadable one still fails."""
    import pipeline.gate as gate
    from pipeline.__main__ import main
    from pipeline.config import load_config
    from pipeline.gate.screen import screen_columns

    cfg = load_config(None, {"run.root": str(tmp_path), "run.name": "gate_run", "run.stages": ["screen"]})
    paths = RunPaths.from_config(cfg)
    save_config(cfg, paths.config)
    paths.screen_model.parent.mkdir(parents=True, exist_ok=True)
    paths.screen_model.write_bytes(b"stand-in: screen_files is replaced below")
    seen = []

    def fake_screen(files, model_path, **kw):
        seen.extend(Path(f).name for f in files)
        decide = {"grey.png": ("chest", True), "photo.png": ("not_xray", False), "broken.png": ("unreadable", False)}
        rows = [[Path(f).stem, *decide[Path(f).name], 0.5, 0.25, 0.25, "test"] for f in files]
        return pd.DataFrame(rows, columns=screen_columns(["chest", "other_xray", "not_xray"]))

    monkeypatch.setattr(gate, "screen_files", fake_screen)
    inputs = tmp_path / "in"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    cv2.imwrite(str(inputs / "grey.png"), rng.integers(0, 255, (64, 48), np.uint8))
    cv2.imwrite(str(inputs / "photo.png"), rng.integers(0, 255, (64, 48, 3), np.uint8))
    (inputs / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    assert main(["infer", "--run", str(paths.run_dir), "--out", str(out), str(inputs)]) == 1  # broken.png
    assert sorted(seen) == ["broken.png", "grey.png", "photo.png"]
    screen = pd.read_csv(out / "screen.csv").set_index("image_id")
    assert screen.loc["photo", "decision"] == "not_xray" and bool(screen.loc["grey", "accepted"])
    fails = pd.read_csv(out / "failures.csv").set_index("image_id")
    assert sorted(fails.index) == ["broken", "photo"]
    assert fails.loc["photo", "reason"].startswith("set aside by the gate")
    assert "set aside" not in fails.loc["broken", "reason"]
    (inputs / "broken.png").unlink()
    assert main(["infer", "--run", str(paths.run_dir), "--out", str(tmp_path / "out2"), str(inputs)]) == 0


def test_infer_finds_every_picture_format_in_folders_and_names_the_other_files(tmp_path):
    """A folder holds BMP, TIFF, JPEG (upper-case suffix), PNG and DICOMs named without an extension, with
    ``.dic`` and with a UID (whose last dotted part looks like an extension): each is an input; a text file
    and a non-DICOM extension-less file are listed as not read, never silently lost."""
    from pydicom.data import get_testdata_file

    from pipeline.errors import DataError
    from pipeline.infer import find_inputs

    pic = (np.arange(64 * 48, dtype=np.uint16).reshape(64, 48) * 20)
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    cv2.imwrite(str(folder / "a.bmp"), (pic // 256).astype(np.uint8))
    cv2.imwrite(str(folder / "b.tif"), pic)
    cv2.imwrite(str(folder / "sub" / "c.JPG"), (pic // 256).astype(np.uint8))
    cv2.imwrite(str(folder / "d.png"), pic)
    (folder / "notes.txt").write_text("not an image")
    (folder / "README").write_text("no extension, not DICOM")
    (folder / ".hidden.png").write_bytes(b"skipped: hidden")
    dicom = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    uid = "1.2.840.113619.2.55.3.604688119"
    for name in ("IM0001", "e.dic", uid, uid[:-1] + "8"):  # two UIDs one digit apart: two ids
        (folder / name).write_bytes(dicom)
    ignored: list[Path] = []
    found, failures = find_inputs([str(folder), str(tmp_path / "missing.png")], ignored)
    assert sorted(i for i, _ in found) == sorted(["a", "b", "c", "d", "IM0001", "e", uid, uid[:-1] + "8"])
    assert sorted(p.name for p in ignored) == ["README", "notes.txt"]
    assert [f["image_id"] for f in failures] == ["missing"] and failures[0]["reason"] == "file not found"
    with pytest.raises(DataError, match="two inputs have the image id 'a'"):
        find_inputs([str(folder), str(folder / "a.bmp")])
