"""The input gate (pipeline.gate): DICOM header rules on real files, the image loader, synthetic and
bundled pictures, the held-out split, screen_files' table and the screen-images tool."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.data import get_testdata_file

from pipeline.errors import ConfigError, DataError
from pipeline.gate import screen_columns, screen_files
from pipeline.gate.dataset import assign_splits, group_key, sample_weights, source_name
from pipeline.gate.extras import list_extras, read_extra
from pipeline.gate.header import decide_file, is_chest_body_part
from pipeline.gate.images import collect_images, read_rgb
from pipeline.gate.synthetic import KINDS, synthetic_image

CLASSES = ["chest", "other_xray", "not_xray"]
DICOMDIR_CR = Path(pydicom.__file__).parent / "data" / "test_files" / "dicomdirtests" / "77654033" / "CR1" / "6154"


def _chest_dicoms(real_dir: Path) -> list[Path]:
    return sorted((real_dir / "dicom").glob("*.dcm"))


# ---------------------------------------------------------------------------------------------
# header rules
def test_real_chest_cr_dicoms_pass_the_header(real_dir):
    files = _chest_dicoms(real_dir)
    assert len(files) == 3  # SIIM CR (JPEG baseline), NEMA RG1 CR (JPEG 2000, JPEG-LS)
    for f in files:
        h = decide_file(f)
        assert h.decision == "chest", (f, h)
        assert h.modality == "CR" and h.body_part == "CHEST" and h.view == "PA"
        assert "Modality CR" in h.reason and "BodyPartExamined CHEST" in h.reason and "ViewPosition PA" in h.reason


@pytest.mark.parametrize("name, modality", [("CT_small.dcm", "CT"), ("MR_small.dcm", "MR"),
                                            ("examples_ybr_color.dcm", "US"), ("JPEG2000.dcm", "NM")])
def test_non_radiograph_dicoms_are_rejected_with_the_element(name, modality):
    h = decide_file(get_testdata_file(name))
    assert h.decision == "not_xray"
    assert f"Modality {modality}" in h.reason and "not a radiograph" in h.reason


def test_vinbigdata_dicoms_without_tags_are_left_to_the_image(real_dir):
    files = sorted((real_dir / "vinbigdata" / "dicom").glob("*.dicom"))
    assert files
    for f in files:
        h = decide_file(f)
        assert h.decision is None and not h.xray and "without Modality or SOPClassUID" in h.reason


def test_cr_of_another_body_part_is_other_xray():
    h = decide_file(DICOMDIR_CR)  # pydicom's bundled CR, BodyPartExamined CSPINE, ViewPosition LL
    assert h.decision == "other_xray"
    assert "BodyPartExamined CSPINE" in h.reason and "ViewPosition LL" in h.reason


@pytest.mark.parametrize("edits, decision, words", [
    ({"Modality": "MG"}, "other_xray", "Modality MG (mammography)"),
    ({"Modality": "RF"}, "other_xray", "fluoroscopy"),
    ({"Modality": "DX", "BodyPartExamined": "THORAX"}, "chest", "BodyPartExamined THORAX"),
    ({"BodyPartExamined": "HAND"}, "other_xray", "BodyPartExamined HAND"),
    ({"BodyPartExamined": None}, None, "no BodyPartExamined"),
    ({"Modality": None}, None, "SOPClassUID"),
    ({"Modality": "OT"}, "not_xray", "Modality OT"),
])
def test_header_rules_on_edited_copies_of_a_real_chest_cr(real_dir, tmp_path, edits, decision, words):
    ds = pydicom.dcmread(_chest_dicoms(real_dir)[0])
    for key, value in edits.items():
        if value is None:
            delattr(ds, key)
        else:
            setattr(ds, key, value)
    out = tmp_path / "edited.dcm"
    ds.save_as(out)
    h = decide_file(out)
    assert h.decision == decision and words in h.reason, h


def test_chest_body_part_spellings():
    assert all(map(is_chest_body_part, ["CHEST", "thorax", "PORT CHEST", "TORAX", "LUNG"]))
    assert not any(map(is_chest_body_part, ["HAND", "CSPINE", "SKULL", "ABDOMEN", "KNEE"]))


def test_a_non_dicom_is_a_clear_error(tmp_path):
    bad = tmp_path / "x.dcm"
    bad.write_bytes(b"not a dicom at all" * 20)
    with pytest.raises(DataError, match="x.dcm"):
        decide_file(bad)


# ---------------------------------------------------------------------------------------------
# loader
def test_read_rgb_of_16bit_rgba_palette_jpeg_and_colour_dicom(tmp_path):
    ramp = (np.arange(64 * 48, dtype=np.uint32).reshape(48, 64) * 4).astype(np.uint16) + 1000
    cv2.imwrite(str(tmp_path / "x16.png"), ramp)
    img = read_rgb(tmp_path / "x16.png")
    assert img.dtype == np.uint8 and img.shape == (48, 64, 3)
    assert img.min() <= 2 and img.max() >= 253 and (img[..., 0] == img[..., 2]).all()  # stretched grey

    from PIL import Image

    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[5:10, 5:10] = (255, 0, 0, 255)  # a red square on a transparent background
    Image.fromarray(rgba, "RGBA").save(tmp_path / "logo.png")
    img = read_rgb(tmp_path / "logo.png")
    assert tuple(img[0, 0]) == (255, 255, 255) and tuple(img[7, 7]) == (255, 0, 0)

    Image.fromarray(rgba[..., :3]).convert("P").save(tmp_path / "pal.gif")
    assert read_rgb(tmp_path / "pal.gif").shape == (20, 30, 3)
    colour = np.random.default_rng(0).integers(0, 255, (400, 300, 3), dtype=np.uint8)
    Image.fromarray(colour).save(tmp_path / "photo.jpg")
    assert max(read_rgb(tmp_path / "photo.jpg", max_side=100).shape[:2]) == 100

    us = read_rgb(get_testdata_file("examples_ybr_color.dcm"))  # multi-frame colour ultrasound: first frame
    assert us.shape == (240, 320, 3) and np.ptp(us.astype(int), axis=2).max() > 50


def test_read_rgb_of_a_real_chest_dicom(real_dir):
    img = read_rgb(real_dir / "dicom" / "RG1_J2KI.dcm", max_side=256)  # MONOCHROME1, JPEG 2000
    assert max(img.shape[:2]) == 256 and img.std() > 20


@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\n" + b"\x00" * 30, b"plain text, not an image"])
def test_read_rgb_of_bad_files_names_the_file(tmp_path, content):
    bad = tmp_path / "broken.png"
    bad.write_bytes(content)
    with pytest.raises(DataError, match="broken.png"):
        read_rgb(bad)


def test_collect_images_finds_images_and_dicoms_of_any_name(tmp_path):
    (tmp_path / "sub").mkdir()
    cv2.imwrite(str(tmp_path / "sub" / "a.png"), np.zeros((4, 4), np.uint8))
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "scan").write_bytes(Path(DICOMDIR_CR).read_bytes())
    (tmp_path / "sub" / "1.2.840.113619.2.55.3.6").write_bytes(Path(DICOMDIR_CR).read_bytes())  # UID-named
    (tmp_path / "sub" / "b.dic").write_bytes(Path(DICOMDIR_CR).read_bytes())
    (tmp_path / "sub" / "1.2.3.4").write_bytes(b"not an image, dotted name")
    found = collect_images([tmp_path])
    assert sorted(p.name for p in found) == ["1.2.840.113619.2.55.3.6", "a.png", "b.dic", "scan"]
    uid = next(p for p in found if p.name.startswith("1.2"))
    assert read_rgb(uid).shape[2] == 3  # read as the DICOM it is, not refused for its ".6" suffix
    with pytest.raises(DataError, match="does not exist"):
        collect_images([tmp_path / "missing"])


# ---------------------------------------------------------------------------------------------
# training pictures
@pytest.mark.parametrize("kind", KINDS)
def test_synthetic_pictures_are_seeded_and_varied(kind):
    a, b, c = synthetic_image(kind, 1), synthetic_image(kind, 1), synthetic_image(kind, 2)
    assert a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3
    assert np.array_equal(a, b)
    assert a.shape != c.shape or not np.array_equal(a, c)
    assert a.std() > 5


def test_bundled_extras_are_found_and_readable():
    found, missing = list_extras(["packages", "pydicom"])
    assert not missing, missing
    assert {e.source for e, _ in found} == {"packages", "pydicom"}
    for extra, path in found:
        img = read_extra(extra, path, max_side=64)
        assert img.dtype == np.uint8 and img.shape[2] == 3 and max(img.shape[:2]) <= 64, extra


def test_groups_and_source_names():
    assert group_key("x/00001555_002.png") == group_key("y/00001555_000.png") == "00001555"
    assert group_key("CHNCXR_0017_1.jpg") == "chncxr_0017"
    assert group_key("tb0005.jpg") == "tb0005"
    assert source_name("../shared/real/tbx11k/images") == "tbx11k_images"


def _table(rows):
    return pd.DataFrame(rows, columns=["image_id", "label", "source", "group"])


def test_split_keeps_groups_whole_across_folders_and_holds_out_sources():
    rows = [(f"a{i}_{v}", "chest", "nih_bbox", f"p{i}", ) for i in range(20) for v in range(2)]
    rows += [(f"b{i}", "chest", "nih_images", f"p{i}") for i in range(10, 30)]  # patients shared with nih_bbox
    rows += [(f"s{i}", "chest", "shenzhen", f"s{i}") for i in range(8)]
    rows += [(f"h{i}", "other_xray", "hands", f"h{i}") for i in range(12)]
    t = _table(rows)
    split = assign_splits(t, 0.25, ["shenzhen"], seed=3)
    t["split"] = split
    assert (t.groupby("group")["split"].nunique() == 1).all()  # no group on both sides
    assert (t.loc[t.source == "shenzhen", "split"] == "test").all()
    for source in ("nih_bbox", "hands"):
        part = t[t.source == source].drop_duplicates("group")
        assert 0.15 <= (part.split == "test").mean() <= 0.35
    assert split.equals(assign_splits(t.iloc[::-1], 0.25, ["shenzhen"], seed=3).loc[t.index])  # order-free
    with pytest.raises(ConfigError, match="holdout_sources"):
        assign_splits(t, 0.25, ["nowhere"], seed=3)


def test_sample_weights_balance_classes_and_sources():
    labels = np.array([0] * 100 + [0] * 4 + [1] * 10)
    sources = np.array(["big"] * 100 + ["small"] * 4 + ["hands"] * 10)
    w = sample_weights(labels, sources, "sqrt")
    assert w[labels == 0].sum() == pytest.approx(w[labels == 1].sum())
    share_small = w[sources == "small"].sum() / w[labels == 0].sum()
    assert share_small == pytest.approx(2 / 12)  # sqrt(4) / (sqrt(100) + sqrt(4))
    assert sample_weights(labels, sources, "equal")[sources == "small"].sum() == pytest.approx(0.25)


# ---------------------------------------------------------------------------------------------
# screen_files and the tool
@pytest.fixture(scope="module")
def tiny_gate(tmp_path_factory, one_torch_thread):
    """An untrained gate checkpoint (real format, real network) at 32 px: enough to check the plumbing."""
    from pipeline.classifier import build_model
    from pipeline.gate.model import save_gate

    path = tmp_path_factory.mktemp("gate") / "model.pt"
    save_gate(build_model(3, None).eval(), path, CLASSES, ["chest"], 32)
    return path


def test_screen_files_table(real_dir, tmp_path, tiny_gate):
    cv2.imwrite(str(tmp_path / "photo.png"), np.random.default_rng(0).integers(0, 255, (40, 60, 3), np.uint8))
    files = [*_chest_dicoms(real_dir), Path(get_testdata_file("CT_small.dcm")), tmp_path / "photo.png",
             next((real_dir / "vinbigdata" / "dicom").glob("*.dicom"))]
    table = screen_files(files, tiny_gate)
    assert list(table.columns) == screen_columns(CLASSES) == [
        "image_id", "decision", "accepted", "p_chest", "p_other_xray", "p_not_xray", "reason"]
    assert list(table["image_id"]) == [f.stem for f in files]
    assert (table["decision"][:3] == "chest").all() and table["accepted"][:3].all()
    ct = table.iloc[3]
    assert ct.decision == "not_xray" and not ct.accepted and "Modality CT" in ct.reason
    for row in table.iloc[4:].itertuples():  # decided by the (untrained) image model
        assert row.decision in CLASSES and "image model" in row.reason
        assert row.accepted == (row.decision == "chest")
    probs = table[["p_chest", "p_other_xray", "p_not_xray"]].to_numpy()
    assert np.allclose(probs.sum(1), 1, atol=1e-3)


def test_screen_files_without_a_model_uses_the_header_alone(real_dir, tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((8, 8), np.uint8))
    files = [_chest_dicoms(real_dir)[0], Path(get_testdata_file("MR_small.dcm")), tmp_path / "a.png"]
    table = screen_files(files)
    assert list(table["decision"]) == ["chest", "not_xray", "undecided"]
    assert list(table["accepted"]) == [True, False, False]
    assert table["p_chest"].isna().all()


def test_tool_lists_a_bad_file_and_exits_non_zero(real_dir, tmp_path, tiny_gate):
    from pipeline.__main__ import main

    folder = tmp_path / "in"
    folder.mkdir()
    cv2.imwrite(str(folder / "photo.png"), np.full((30, 30, 3), 90, np.uint8))
    (folder / "ct.dcm").write_bytes(Path(get_testdata_file("CT_small.dcm")).read_bytes())
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    out = tmp_path / "out"
    rc = main(["screen-images", "--model", str(tiny_gate), "--out", str(out), str(folder),
               str(_chest_dicoms(real_dir)[0])])
    assert rc == 1
    screened = pd.read_csv(out / "screen.csv")
    assert list(screened.columns) == screen_columns(CLASSES)
    assert sorted(screened["image_id"]) == sorted(["ct", "photo", _chest_dicoms(real_dir)[0].stem])
    failures = pd.read_csv(out / "failures.csv")
    assert list(failures["path"]) == [str(folder / "broken.jpg")] and "broken.jpg" in failures["error"][0]

    rc = main(["screen-images", "--model", str(tmp_path / "none.pt"), "--out", str(out), str(folder)])
    assert rc == 2  # a missing model is a clear error, not a traceback


def test_gate_recipe_config_resolves(real_dir):
    from pipeline.config import load_config
    from pipeline.gate.dataset import class_folders

    recipe = Path(__file__).resolve().parents[1] / "configs" / "gate.yaml"
    cfg = load_config(recipe)
    # the recipe names ../shared/real; read the same folders where the real data lies (CXR_REAL_DATA)
    moved = {label: [str(f).replace("../shared/real", str(real_dir), 1) for f in folders]
             for label, folders in dict(cfg.screen.folders).items()}
    cfg = load_config(recipe, {"screen.folders": moved})
    assert cfg.run.stages == ["screen"]
    folders = class_folders(cfg.screen)
    assert {label for label, _, _ in folders} == set(CLASSES)
    with pytest.raises(ConfigError, match="screen.folders.lungs"):
        class_folders(load_config(None, {"screen.folders": {"lungs": [str(real_dir / "hands")]}}).screen)


def test_demo_gate_folders_follow_data_root(tmp_path):
    """configs/demo.yaml names its pictures under {data.root}: a run with another data.root finds them there."""
    from pipeline.config import load_config
    from pipeline.gate.dataset import class_folders

    for sub in ("lungs/images", "other"):
        (tmp_path / "d" / sub).mkdir(parents=True)
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml", [f"data.root={tmp_path / 'd'}"])
    got = {label: folder for label, folder, _ in class_folders(cfg.screen, cfg.data.root)}
    assert got == {"chest": tmp_path / "d" / "lungs" / "images", "not_xray": tmp_path / "d" / "other"}
    with pytest.raises(ConfigError, match="only known inside a run"):
        class_folders(cfg.screen)


def test_pictures_under_data_root_keep_their_ids_when_the_root_moves(tmp_path):
    """The gate's table (its ids are in its fingerprint) must not change when the demo is copied elsewhere."""
    import numpy as np
    from PIL import Image

    from pipeline.config import load_config
    from pipeline.gate.dataset import build_table

    tables = []
    for root in (tmp_path / "here", tmp_path / "elsewhere" / "copy"):
        for sub in ("lungs/images", "other"):
            (root / sub).mkdir(parents=True)
            Image.fromarray(np.full((8, 8), 99, np.uint8)).save(root / sub / "a.png")
        cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml",
                          [f"data.root={root}", "screen.synthetic=0"])
        table, _ = build_table(cfg.screen, 0, cfg.data.root)
        tables.append(table.sort_values("image_id")[["image_id", "label", "source"]].reset_index(drop=True))
    assert tables[0].equals(tables[1])
    assert sorted(tables[0]["source"]) == ["lungs_images", "other"]


def test_image_root_layout_and_several_folders_for_one_class(tmp_path):
    from pipeline.config import load_config
    from pipeline.gate.dataset import build_table

    for sub in ("chest", "not_xray", "extra_chest"):
        (tmp_path / sub).mkdir()
        cv2.imwrite(str(tmp_path / sub / f"{sub}_1.png"), np.full((8, 8), 9, np.uint8))
    (tmp_path / "hands").mkdir()
    cv2.imwrite(str(tmp_path / "hands" / "h.png"), np.full((8, 8), 9, np.uint8))
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "chest").rename(root / "chest")
    (tmp_path / "not_xray").rename(root / "not_xray")
    sc = load_config(None, {"screen": {"image_root": str(root), "extras": [], "synthetic": 2,
                                       "folders": {"chest": [str(tmp_path / "extra_chest")],
                                                   "other_xray": str(tmp_path / "hands")}}}).screen
    table, notes = build_table(sc, seed=0)
    assert sorted(table.loc[table.label == "chest", "source"]) == sorted([f"{tmp_path.name}_extra_chest", "root_chest"])
    assert (table.kind == "synthetic").sum() == 2 and not notes
    (root / "lungs").mkdir()
    with pytest.raises(ConfigError, match="lungs"):
        build_table(sc, seed=0)
