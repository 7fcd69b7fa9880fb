"""Both notebooks execute top to bottom: on a small hand-built run directory, and 01 on the real train.csv."""
from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from pipeline.stages import evaluate, fuse
from tests.test_evaluate_submit import build_run

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def execute(name: str, monkeypatch, **env) -> nbformat.NotebookNode:
    """Run a notebook in a fresh kernel (the venv's python3 spec) with parameters from the environment."""
    from jupyter_client.kernelspec import KernelSpecManager
    from nbclient import NotebookClient

    if "python3" not in KernelSpecManager().find_kernel_specs():
        pytest.skip("no python3 Jupyter kernel spec (install ipykernel into the venv)")
    for key, value in env.items():
        monkeypatch.setenv(key, str(value))  # the kernel inherits this process's environment
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(nb, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    return nb


def outputs(nb) -> str:
    text = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            text.append(out.get("text", "") or str(out.get("data", {}).get("text/plain", "")))
    return "\n".join(text)


def images(nb) -> int:
    return sum("image/png" in out.get("data", {}) for cell in nb.cells for out in cell.get("outputs", []))


def test_notebooks_are_valid_nbformat_v4():
    for name in ("01_explore.ipynb", "02_results.ipynb"):
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        nbformat.validate(nb)
        assert nb.nbformat == 4
        assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code")  # stored without outputs


@pytest.fixture
def hand_run(tmp_path):
    cfg, paths = build_run(tmp_path, images=True)
    fuse.run(cfg, paths)
    evaluate.run(cfg, paths)
    return paths


def test_explore_and_results_on_a_run_directory(hand_run, monkeypatch):
    nb = execute("01_explore.ipynb", monkeypatch, RUN_DIR=hand_run.run_dir, TRAIN_CSV="", META_CSV="")
    text = outputs(nb)
    assert "7 rows, 6 images" in text
    assert images(nb) >= 4  # distribution, boxes per image, box shares, sample images
    nb = execute("02_results.ipynb", monkeypatch, RUN_DIR=hand_run.run_dir)
    text = outputs(nb)
    assert "oof_map" in text and "no_filter" in text
    assert images(nb) >= 3  # per-class AP, predictions on images, ROC


def test_explore_on_the_real_train_csv(real_dir, monkeypatch, tmp_path):
    vin = real_dir / "vinbigdata"
    nb = execute("01_explore.ipynb", monkeypatch, RUN_DIR=tmp_path / "none", TRAIN_CSV=vin / "train.csv",
                 META_CSV=vin / "train_meta.csv", MAX_GROUPS=200)
    text = outputs(nb)
    assert "67,914 rows, 15,000 images, 17 readers" in text
    assert "31818" in text  # "No finding" readings in the label table
    assert "no PNGs" in text  # no run directory: the sample-image cell says so instead of failing


def test_results_on_a_classifier_only_run(tmp_path, monkeypatch):
    cfg, paths = build_run(tmp_path, images=True)
    for p in paths.predictions_dir.glob("det_*"):
        p.unlink()
    evaluate.run(cfg, paths)  # classifier-only metrics.json
    nb = execute("02_results.ipynb", monkeypatch, RUN_DIR=paths.run_dir)
    text = outputs(nb)
    assert "classifier metrics only" in text and "cls_auc" in text
    assert images(nb) == 1  # the ROC only
