"""The prepare stage end to end on a small synthetic VinBigData dataset (DICOMs in the Kaggle layout)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from pipeline.boxes import BOX_COLUMNS, yolo_to_xyxy_abs
from pipeline.classes import VINBIGDATA
from pipeline.config import CONFIG_DIR, load_config
from pipeline.errors import PipelineError
from pipeline.paths import RunPaths
from pipeline.runner import run_stage


def overrides(tmp_path):
    # small and quick: 12 train + 4 test DICOMs, 128 px PNGs, conversion in this process
    return {"run.root": str(tmp_path / "runs"), "data.root": str(tmp_path / "data"), "data.demo_n_train": 12,
            "data.demo_n_test": 4, "image.size": 128, "run.workers": 1}


def read_csv(path):
    return pd.read_csv(path, dtype={"image_id": str, "split": str}, keep_default_na=False)


def check_outputs(paths: RunPaths) -> None:
    """images, meta.csv, labels, boxes.csv and dataset.yaml exist and agree."""
    images = read_csv(paths.images_csv)
    meta = read_csv(paths.meta_csv)
    assert sorted(zip(meta["split"], meta["image_id"])) == sorted(zip(images["split"], images["image_id"]))
    assert (images["split"].value_counts().to_dict()) == {"train": 12, "test": 4}
    for r in meta.itertuples():
        with Image.open(paths.image(r.split, r.image_id)) as im:
            assert im.size == (r.out_width, r.out_height)
        assert max(r.out_width, r.out_height) == 128
        # the PNG keeps the original aspect ratio (to a pixel)
        assert abs(r.out_width / r.out_height - r.width / r.height) < 2 / 128
    # meta's original sizes are those of images.csv (the sizes the boxes were checked against)
    both = meta.merge(images, on=["image_id", "split"], suffixes=("", "_t"))
    assert (both["width"] == both["width_t"]).all() and (both["height"] == both["height_t"]).all()

    boxes = pd.read_csv(paths.boxes_csv, dtype={"image_id": str})
    train = images[images["split"] == "train"]
    assert set(boxes["image_id"]) == set(train["image_id"])
    assert (boxes["rad_id"] == "fused").all()
    ann = pd.read_csv(paths.annotations_csv, dtype={"image_id": str})
    # every drawn box lands in exactly one fused box; a normal image's row counts its "No finding" readings
    finding = boxes["class_id"] != 14
    assert boxes.loc[finding, "n_readers"].sum() == ann["x_min"].notna().sum()
    no_finding = ann[ann["class_id"] == 14].groupby("image_id").size()
    normal = boxes[~finding].set_index("image_id")["n_readers"]
    assert (normal == no_finding.reindex(normal.index)).all()

    size = meta.set_index("image_id")
    for image_id in train["image_id"]:
        label = paths.label("train", image_id)
        lines = label.read_text().splitlines()
        mine = boxes[(boxes["image_id"] == image_id) & (boxes["class_id"] != 14)]
        assert len(lines) == len(mine)
        if not lines:
            assert (boxes.loc[boxes["image_id"] == image_id, "class_id"] == 14).all()
            continue
        arr = np.array([ln.split() for ln in lines], dtype=float)
        back = yolo_to_xyxy_abs(arr[:, 1:], size.loc[image_id, "width"], size.loc[image_id, "height"])
        order = np.lexsort((mine["x_min"].to_numpy(), mine["class_id"].to_numpy()))
        assert arr[:, 0].astype(int).tolist() == mine["class_id"].to_numpy()[order].tolist()
        np.testing.assert_allclose(back, mine[BOX_COLUMNS].to_numpy()[order], atol=2e-3)
    assert not paths.labels_dir("test").exists()  # test images have no labels
    data = yaml.safe_load(paths.dataset_yaml.read_text())
    assert data["names"] == dict(enumerate(VINBIGDATA[:14])) and data["nc"] == 14


def break_one_dicom(data_root):
    """Add an image whose header reads fine but whose pixel data is cut short, with 3 readers' rows."""
    import pydicom

    src = next(p for p in sorted((data_root / "train").glob("*.dicom"))
               if not pydicom.dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID.is_compressed)
    ds = pydicom.dcmread(src)
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 3]
    ds.save_as(data_root / "train" / "broken0001.dicom")
    with open(data_root / "train.csv", "a") as fh:
        for rad in ("R1", "R2", "R3"):
            fh.write(f"broken0001,No finding,14,{rad},,,,\n")


def test_prepare_demo_end_to_end(tmp_path, capsys):
    cfg = load_config(CONFIG_DIR / "demo.yaml", overrides(tmp_path))
    paths = RunPaths.from_config(cfg)

    summary = run_stage("prepare", cfg)
    assert summary["skipped"] is False
    assert (summary["n_train"], summary["n_test"], summary["n_failures"]) == (12, 4, 0)
    boxes = pd.read_csv(paths.boxes_csv)
    assert summary["n_boxes"] == int((boxes["class_id"] != 14).sum()) > 0
    assert read_csv(paths.failures_csv).empty
    check_outputs(paths)

    # a second run with the same config converts nothing
    mtimes = {p: p.stat().st_mtime_ns for p in paths.images_dir("train").glob("*.png")}
    capsys.readouterr()
    again = run_stage("prepare", cfg)
    assert again["skipped"] is True and again["n_train"] == 12
    assert "16 converted earlier: skipped" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in paths.images_dir("train").glob("*.png")} == mtimes
    check_outputs(paths)
    # touching every source, or copying the dataset elsewhere and pointing data.root there, converts nothing
    import os
    import shutil

    for src in (tmp_path / "data").rglob("*"):
        if src.is_file():
            os.utime(src, ns=(0, src.stat().st_mtime_ns + 10**9))
    assert run_stage("prepare", cfg)["n_converted"] == 0
    shutil.copytree(tmp_path / "data", tmp_path / "elsewhere")
    moved = load_config(CONFIG_DIR / "demo.yaml", {**overrides(tmp_path), "data.root": str(tmp_path / "elsewhere")})
    assert run_stage("prepare", moved)["n_converted"] == 0
    assert {p: p.stat().st_mtime_ns for p in paths.images_dir("train").glob("*.png")} == mtimes

    # a broken DICOM: the good images are all written, then the stage fails naming failures.csv
    break_one_dicom(tmp_path / "data")
    with pytest.raises(PipelineError, match=r"1 of 17 image\(s\) could not be converted.*failures\.csv"):
        run_stage("prepare", cfg)
    failures = read_csv(paths.failures_csv)
    assert failures["image_id"].tolist() == ["broken0001"]
    assert failures.loc[0, "reason"]
    meta = read_csv(paths.meta_csv)
    assert len(meta) == 16 and "broken0001" not in set(meta["image_id"])
    assert not paths.image("train", "broken0001").exists()
    assert not paths.label("train", "broken0001").exists()
    assert "broken0001" in set(read_csv(paths.images_csv)["image_id"])
    assert "broken0001" in set(pd.read_csv(paths.boxes_csv)["image_id"])  # the truth is complete


def test_prepare_cli_exits_nonzero_on_a_broken_image(tmp_path, capsys):
    from pipeline.__main__ import main

    args = ["prepare", "--config", str(CONFIG_DIR / "demo.yaml")] + [f"{k}={v}" for k, v in overrides(tmp_path).items()]
    args = [a.replace("demo_n_train=12", "demo_n_train=3").replace("demo_n_test=4", "demo_n_test=1") for a in args]
    assert main(args) == 0
    break_one_dicom(tmp_path / "data")
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "broken0001" in err and "failures.csv" in err
    # after removing the broken file and its rows, the stage finishes
    (tmp_path / "data" / "train" / "broken0001.dicom").unlink()
    csv = tmp_path / "data" / "train.csv"
    csv.write_text("".join(ln for ln in csv.read_text().splitlines(True) if not ln.startswith("broken0001")))
    capsys.readouterr()
    assert main(args) == 0
    assert "0 image(s)" in capsys.readouterr().out and read_csv(tmp_path / "runs" / "demo" / "failures.csv").empty


def test_prepare_rerun_with_other_image_size_rewrites_pngs(tmp_path, capsys):
    """image.size=128 then image.size=64 image.clahe=false: every PNG and meta row is redone, none kept stale."""
    small = {**overrides(tmp_path), "data.demo_n_train": 3, "data.demo_n_test": 1}
    cfg = load_config(CONFIG_DIR / "demo.yaml", small)
    paths = RunPaths.from_config(cfg)
    run_stage("prepare", cfg)
    meta1 = read_csv(paths.meta_csv).set_index("image_id")
    assert (meta1[["out_width", "out_height"]].max(axis=1) == 128).all()
    mtimes = {p: p.stat().st_mtime_ns for p in paths.images_dir("train").glob("*.png")}

    cfg2 = load_config(CONFIG_DIR / "demo.yaml", {**small, "image.size": 64, "image.clahe": False})
    capsys.readouterr()
    summary = run_stage("prepare", cfg2)  # the config changed, so the stage runs again
    assert summary["skipped"] is False and summary["n_failures"] == 0
    out = capsys.readouterr().out
    assert "converting 4 image(s)" in out and "skipped" not in out.split("converting")[1].splitlines()[0]
    meta2 = read_csv(paths.meta_csv).set_index("image_id")
    assert sorted(meta2.index) == sorted(meta1.index)
    assert (meta2[["out_width", "out_height"]].max(axis=1) == 64).all() and (meta2["clahe"] == "off").all()
    assert (meta2["fingerprint"] != meta1.loc[meta2.index, "fingerprint"]).all()
    for r in meta2.reset_index().itertuples():
        with Image.open(paths.image(r.split, r.image_id)) as im:
            assert im.size == (r.out_width, r.out_height)
    assert all(p.stat().st_mtime_ns != t for p, t in mtimes.items())

    # back to the first config: redone again (the 64 px PNGs are not "done" for 128), same fingerprints as run 1
    capsys.readouterr()
    assert run_stage("prepare", cfg)["skipped"] is False
    assert "converting 4 image(s)" in capsys.readouterr().out
    meta3 = read_csv(paths.meta_csv).set_index("image_id")
    pd.testing.assert_series_equal(meta3["fingerprint"], meta1.loc[meta3.index, "fingerprint"])
    for r in meta3.reset_index().itertuples():
        with Image.open(paths.image(r.split, r.image_id)) as im:
            assert max(im.size) == 128
