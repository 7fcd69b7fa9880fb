"""benchmarks/det_inner.py: the nested split never holds an image of the outer fold it chooses for."""
from __future__ import annotations

import pandas as pd
import pytest

from tests.benchmark_modules import load_benchmark

inner = load_benchmark("det_inner")


def _prepared(tmp_path, n=40):
    run = tmp_path / "prep"
    (run / "images" / "train").mkdir(parents=True)
    (run / "labels" / "train").mkdir(parents=True)
    ids = [f"im{i:03d}" for i in range(n)]
    pd.DataFrame({"image_id": ids, "split": "train", "patient_id": [f"p{i // 2}" for i in range(n)],
                  "width": 64, "height": 64, "labels": ["0" if i % 3 else "1" for i in range(n)],
                  "source": [f"/x/{i}.png" for i in ids]}).to_csv(run / "images.csv", index=False)
    pd.DataFrame({"image_id": ids, "fold": [i % 2 for i in range(n)]}).to_csv(run / "folds.csv", index=False)
    for name in ("meta.csv", "boxes.csv", "detection.csv"):
        (run / name).write_text("image_id\n")
    (run / "images" / "train" / "im000.png").write_bytes(b"png")
    return run, ids


def test_parse_variant():
    assert inner.parse_variant("plain") == ("plain", [])
    assert inner.parse_variant("adamw:det.train_args.optimizer=auto,det.epochs=3") == (
        "adamw", ["det.train_args.optimizer=auto", "det.epochs=3"])
    with pytest.raises(SystemExit, match="plain word"):
        inner.parse_variant("two words:det.epochs=3")
    with pytest.raises(SystemExit, match="not KEY=VALUE"):
        inner.parse_variant("a:det.epochs")


def test_inner_folds_leave_the_outer_fold_out(tmp_path):
    run, ids = _prepared(tmp_path)
    folds = inner.inner_folds(run, outer=1, n_splits=4, seed=7)
    outer_training = {i for n, i in enumerate(ids) if n % 2 == 0}
    assert set(folds["image_id"]) == outer_training  # every training image of fold 1 once, none of fold 1's own
    assert len(folds) == len(outer_training)
    assert sorted(folds["fold"].unique()) == [0, 1, 2, 3]
    with pytest.raises(SystemExit, match="--outer-fold 5"):
        inner.inner_folds(run, outer=5, n_splits=4, seed=7)


def test_run_dir_links_images_and_copies_tables(tmp_path):
    run, _ = _prepared(tmp_path)
    folds = inner.inner_folds(run, outer=0, n_splits=4, seed=7)
    out = tmp_path / "cache" / "inner0_plain"
    inner.make_run_dir(run, out, folds)
    assert (out / "images" / "train").is_symlink() and (out / "images" / "train" / "im000.png").read_bytes() == b"png"
    assert (out / "labels" / "train").is_symlink()
    assert (out / "images.csv").read_text() == (run / "images.csv").read_text()
    assert not (out / "images.csv").is_symlink()  # a copy: the inner run may rewrite its tables
    assert pd.read_csv(out / "folds.csv")["image_id"].tolist() == folds["image_id"].tolist()
    inner.make_run_dir(run, out, folds)  # a second time (a rerun of the variant) is fine


def test_variant_command_trains_and_scores_the_asked_inner_folds(tmp_path):
    args = inner.argparse.Namespace(config="configs/tbx11k.yaml", cache=tmp_path, score_folds=3, threads=1,
                                    overrides=["det.epochs=2"])
    cmd = inner.variant_command(args, "inner1_adamw", ["det.train_args.optimizer=auto"])
    assert cmd[1:4] == ["-m", "pipeline", "run"]
    assert "det.folds=[0,1,2]" in cmd and f"run.root={tmp_path}" in cmd and "run.name=inner1_adamw" in cmd
    assert cmd[-2:] == ["det.epochs=2", "det.train_args.optimizer=auto"]  # the variant's own keys win
    with pytest.raises(SystemExit, match="--score-folds 5"):
        inner.main(["--prepared", str(tmp_path), "--config", "c.yaml", "--outer-fold", "0", "--cache", str(tmp_path),
                    "--variant", "plain", "--score-folds", "5"])
