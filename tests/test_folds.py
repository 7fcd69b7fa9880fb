"""Folds: coverage, test split excluded, patients kept whole, determinism, and label balance on real
VinBigData labels (and real ChestX-ray14 patients) compared with plain / grouped KFold."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import GroupKFold, KFold

from pipeline.config import load_config
from pipeline.errors import ConfigError, DataError
from pipeline.folds import fold_balance, make_folds, max_share_deviation, parse_labels
from pipeline.paths import RunPaths


def _images(n_train=60, n_test=10, patients=True, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_train):
        labs = sorted(set(rng.choice(4, size=rng.integers(1, 3)).tolist())) if i % 3 else [14]
        rows.append({"image_id": f"im{i:03d}", "split": "train", "patient_id": f"P{i // 3}" if patients and i % 5 else "",
                     "labels": "|".join(map(str, labs))})
    for i in range(n_test):
        rows.append({"image_id": f"t{i:03d}", "split": "test", "patient_id": "", "labels": ""})
    return pd.DataFrame(rows)


def test_parse_labels():
    assert parse_labels("0|3") == [0, 3]
    assert parse_labels("14") == [14]
    assert parse_labels("") == [] and parse_labels(float("nan")) == []
    assert parse_labels("3|0|3") == [0, 3]


def test_every_train_image_once_and_test_excluded():
    images = _images()
    folds = make_folds(images, 5, seed=1)
    assert list(folds.columns) == ["image_id", "fold"]
    train_ids = images.loc[images.split == "train", "image_id"]
    assert sorted(folds.image_id) == sorted(train_ids) and folds.image_id.is_unique
    assert not set(folds.image_id) & set(images.loc[images.split == "test", "image_id"])
    assert set(folds.fold) == {0, 1, 2, 3, 4}


def test_patients_never_split_across_folds():
    images = _images(n_train=90)
    folds = make_folds(images, 4, seed=3).merge(images, on="image_id")
    with_pid = folds[folds.patient_id != ""]
    assert with_pid.groupby("patient_id").fold.nunique().max() == 1
    # without grouping the same patients do get split (so the test above means something)
    loose = make_folds(images, 4, seed=3, group_by_patient=False).merge(images, on="image_id")
    assert loose[loose.patient_id != ""].groupby("patient_id").fold.nunique().max() > 1


def test_deterministic_and_order_independent():
    images = _images()
    a = make_folds(images, 5, seed=7)
    b = make_folds(images.sample(frac=1.0, random_state=0), 5, seed=7)
    assert a.set_index("image_id").fold.to_dict() == b.set_index("image_id").fold.to_dict()
    c = make_folds(images, 5, seed=8)
    assert a.set_index("image_id").fold.to_dict() != c.set_index("image_id").fold.to_dict()


def test_bad_inputs():
    images = _images(n_train=6, patients=False)
    with pytest.raises(ConfigError, match="n_splits"):
        make_folds(images, 1, seed=0)
    with pytest.raises(DataError, match="n_splits=10"):
        make_folds(images, 10, seed=0)
    bad = images.copy()
    bad.loc[2, "labels"] = "0|x"
    with pytest.raises(DataError, match="im002"):
        make_folds(bad, 2, seed=0)
    dup = pd.concat([images, images.iloc[[0]]])
    with pytest.raises(DataError, match="im000"):
        make_folds(dup, 2, seed=0)


def test_balance_table_hand_computed():
    images = pd.DataFrame({"image_id": ["a", "b", "c", "d"], "split": "train", "labels": ["0", "0|1", "14", "1"]})
    folds = pd.DataFrame({"image_id": ["a", "b", "c", "d"], "fold": [0, 0, 1, 1]})
    table = fold_balance(images, folds)
    assert table.loc[0].to_dict() == {"images": 2, 0: 2, 1: 1, 14: 0}
    assert table.loc[1].to_dict() == {"images": 2, 0: 0, 1: 1, 14: 1}
    # class 0: overall share 2/4, fold shares 1 and 0 -> largest gap 0.5
    assert max_share_deviation(table) == pytest.approx(0.5)


@pytest.fixture(scope="module")
def vinbig_labels(real_dir):
    ann = pd.read_csv(real_dir / "vinbigdata" / "train.csv", usecols=["image_id", "class_id"])
    labels = ann.groupby("image_id")["class_id"].apply(lambda s: "|".join(map(str, sorted(set(s))))).reset_index(name="labels")
    labels["split"] = "train"
    labels["patient_id"] = ""
    return labels


def _kfold_deviation(images, splitter, groups=None):
    fold = np.zeros(len(images), dtype=int)
    for k, (_, val) in enumerate(splitter.split(images, groups=groups)):
        fold[val] = k
    return max_share_deviation(fold_balance(images, pd.DataFrame({"image_id": images.image_id, "fold": fold})))


def test_real_vinbigdata_labels_better_balanced_than_kfold(vinbig_labels):
    images = vinbig_labels  # 15,000 real images, 15 classes
    folds = make_folds(images, 5, seed=42)
    assert len(folds) == 15000
    sizes = folds.fold.value_counts()
    assert sizes.max() - sizes.min() <= 30
    ours = max_share_deviation(fold_balance(images, folds))
    plain = _kfold_deviation(images, KFold(5, shuffle=True, random_state=42))
    assert ours < 0.005 and ours < plain / 2, (ours, plain)


def test_real_chestxray14_patients_grouped_and_balanced(real_dir):
    from pipeline.classes import CHESTXRAY14

    d = pd.read_csv(real_dir / "chestxray14" / "Data_Entry_2017.csv", usecols=[0, 1, 3])
    d.columns = ["image_id", "findings", "patient_id"]
    d = d[d.patient_id <= 2500].copy()  # ~9,000 images of 2,500 real patients (1 to 100+ images each)
    index = {name: i for i, name in enumerate(CHESTXRAY14)}
    d["labels"] = d.findings.map(lambda s: "|".join(str(i) for i in sorted(index[x] for x in s.split("|"))))
    d["patient_id"] = d.patient_id.astype(str)
    d["split"] = "train"
    folds = make_folds(d, 5, seed=42)
    merged = folds.merge(d, on="image_id")
    assert merged.groupby("patient_id").fold.nunique().max() == 1
    ours = max_share_deviation(fold_balance(d, folds))
    grouped = _kfold_deviation(d, GroupKFold(5, shuffle=True, random_state=42), groups=d.patient_id)
    assert ours < grouped, (ours, grouped)


def test_folds_stage_writes_and_reports(tmp_path, capsys):
    from pipeline.stages import folds as stage

    cfg = load_config(None, {"run.root": str(tmp_path), "run.name": "r", "folds.n_splits": 3})
    paths = RunPaths.from_config(cfg)
    paths.run_dir.mkdir(parents=True)
    _images().to_csv(paths.images_csv, index=False)
    summary = stage.run(cfg, paths)
    out = capsys.readouterr().out
    assert "images" in out and summary["n_images"] == 60 and summary["n_splits"] == 3
    written = pd.read_csv(paths.folds_csv)
    assert list(written.columns) == ["image_id", "fold"] and len(written) == 60
    # a hand-edited folds.csv is not silently kept: the config decides (folds.file takes a team's folds)
    edited = written.copy()
    edited["fold"] = np.arange(60) % 3
    edited.to_csv(paths.folds_csv, index=False)
    stage.run(cfg, paths)
    assert "changed" in capsys.readouterr().out
    assert pd.read_csv(paths.folds_csv).fold.tolist() == written.fold.tolist()
