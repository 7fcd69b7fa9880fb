"""Lung segmentation: mask readers (real Shenzhen files, NLM and Montgomery layouts), preprocessing
and augmentation geometry, masks in original pixels, clean-up, crop box, checkpoints, a tiny training."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from pipeline.errors import ConfigError, DataError
from pipeline.lungs import clean_mask, lung_crop_box, read_mask, read_mask_dataset
from pipeline.lungs.augment import augment, augment_probs
from pipeline.lungs.data import hash_split
from pipeline.lungs.metrics import dice_iou, head_metrics
from pipeline.lungs.preprocess import equalise, letterbox_arrays, prepare_input, to_unit, unletterbox


def _write(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), arr)


def _lung_pair(h=60, w=50, seed=0):
    rng = np.random.default_rng(seed)
    img = (rng.uniform(100, 200, (h, w))).astype(np.uint8)
    mask = np.zeros((h, w), np.uint8)
    mask[10:40, 5:20] = 255
    mask[12:45, 28:45] = 255
    img[mask > 0] //= 3
    return img, mask


# ------------------------------------------------------------------------------------------ readers
def test_reads_real_shenzhen(real_dir):
    ds = read_mask_dataset(real_dir / "shenzhen")
    assert ds.layout == "images_masks" and ds.label_name == "tuberculosis" and not ds.skipped
    assert len(ds.items) == 566
    assert {s: len(ds.split(s)) for s in ("train", "valid", "test")} == {"train": 453, "valid": 81, "test": 32}
    # The label column agrees with the NLM file-name convention (_1 = tuberculosis).
    assert all(it.label == int(it.image_id[-1]) for it in ds.items)
    for it in ds.split("test")[:3]:
        raw = cv2.imread(str(it.masks[0]), cv2.IMREAD_GRAYSCALE)
        assert 0 < ((raw > 20) & (raw < 235)).sum(), "JPEG masks have ringing values to threshold"
        mask = read_mask(it.masks, (512, 512))
        assert mask.dtype == bool and 0.1 < mask.mean() < 0.5
        n, _ = cv2.connectedComponents(mask.astype(np.uint8))
        assert n - 1 >= 2, "two lungs"


def test_nlm_layout_with_suffix_and_plain_masks(tmp_path):
    img, mask = _lung_pair()
    _write(tmp_path / "CXR_png" / "CHNCXR_0001_0.png", img)
    _write(tmp_path / "CXR_png" / "MCUCXR_0002_1.png", img)
    _write(tmp_path / "CXR_png" / "CHNCXR_0003_1.png", img)          # no mask: listed, not used
    _write(tmp_path / "masks" / "CHNCXR_0001_0_mask.png", mask)
    _write(tmp_path / "masks" / "MCUCXR_0002_1.png", mask)           # Montgomery files in that download: no suffix
    ds = read_mask_dataset(tmp_path)
    assert ds.layout == "nlm" and ds.split_source == "hash" and ds.label_name == "nlm_suffix"
    assert [(it.image_id, it.label) for it in ds.items] == [("CHNCXR_0001_0", 0), ("MCUCXR_0002_1", 1)]
    assert ds.skipped == [(str(tmp_path / "CXR_png" / "CHNCXR_0003_1.png"), "no mask file")]
    assert all(it.split == hash_split(it.image_id, 0.1, 0.1) for it in ds.items)
    assert np.array_equal(read_mask(ds.items[0].masks), mask > 0)


def test_montgomery_layout_unites_left_and_right(tmp_path):
    img, mask = _lung_pair()
    left, right = mask.copy(), mask.copy()
    left[:, 25:] = 0
    right[:, :25] = 0
    _write(tmp_path / "CXR_png" / "MCUCXR_0001_0.png", img)
    _write(tmp_path / "ManualMask" / "leftMask" / "MCUCXR_0001_0.png", left)
    _write(tmp_path / "ManualMask" / "rightMask" / "MCUCXR_0001_0.png", right)
    ds = read_mask_dataset(tmp_path)
    assert ds.layout == "montgomery" and len(ds.items[0].masks) == 2
    assert np.array_equal(read_mask(ds.items[0].masks, img.shape), mask > 0)


def test_images_masks_layout_with_split_csv_and_errors(tmp_path):
    img, mask = _lung_pair()
    _write(tmp_path / "images" / "a.jpg", img)
    _write(tmp_path / "images" / "b.png", img)
    _write(tmp_path / "masks" / "a.png", (mask > 0).astype(np.uint8))   # a 0/1 mask
    _write(tmp_path / "masks" / "b.jpg", mask)
    (tmp_path / "split.csv").write_text("image_id,split,tb\na,train,1\nb,val,0\nzz,test,0\n")
    ds = read_mask_dataset(tmp_path)
    assert [(it.image_id, it.split, it.label) for it in ds.items] == [("a", "train", 1), ("b", "valid", 0)]
    assert ds.skipped and "zz" in ds.skipped[0][1]
    assert read_mask(ds.items[0].masks).sum() == (mask > 0).sum()
    (tmp_path / "split.csv").write_text("image_id,split\na,training\n")
    with pytest.raises(DataError, match="row 2.*training"):
        read_mask_dataset(tmp_path)
    with pytest.raises(ConfigError, match="no such column"):
        (tmp_path / "split.csv").write_text("image_id,split\na,train\n")
        read_mask_dataset(tmp_path, label_column="tuberculosis")
    _write(tmp_path / "masks" / "a.png", np.zeros((10, 10), np.uint8))
    with pytest.raises(DataError, match="original|own pixels"):
        read_mask(ds.items[0].masks, img.shape)
    with pytest.raises(DataError, match="no lung-mask layout"):
        read_mask_dataset(tmp_path / "images")


# ------------------------------------------------------------------------------------ preprocessing
def test_equalise_is_invariant_to_tone_curves():
    rng = np.random.default_rng(0)
    x = cv2.GaussianBlur(rng.uniform(0, 1, (64, 64)).astype(np.float32), (0, 0), 3)
    x = to_unit(x)
    valid = np.ones_like(x, bool)
    for f in (lambda v: v ** 0.5, lambda v: v ** 2.2, lambda v: 0.2 + 0.5 * v):
        assert np.abs(equalise(to_unit(f(x)), valid) - equalise(x, valid)).mean() < 0.01


def test_letterbox_round_trip_keeps_original_pixels():
    _, mask = _lung_pair(97, 151)
    m = mask > 0
    (boxed,), valid, lb = letterbox_arrays([m.astype(np.float32)], 64)
    assert valid.sum() == lb.new_w * lb.new_h and lb.new_w == 64
    back = unletterbox(boxed, lb) > 0.5
    assert back.shape == m.shape and dice_iou(back, m)[1] > 0.85
    x, lb2 = prepare_input(np.dstack([mask] * 3), 64, "histeq_clahe")
    assert x.shape == (2, 64, 64) and (x[:, ~valid] == 0).all()


def test_augment_moves_image_and_mask_together():
    img, mask = _lung_pair(80, 80)
    m = (mask > 0).astype(np.float32)
    x = np.where(m > 0, 0.9, 0.1).astype(np.float32)      # the image IS the mask
    only_geometry = {k: 0.0 for k in augment_probs({}, 1.0)} | {"affine": 1.0, "hflip": 0.5}
    for seed in range(5):
        ai, am, av = augment(x.copy(), m, np.ones_like(m, bool), only_geometry, np.random.default_rng(seed))
        assert dice_iou(ai > 0.5, am > 0.5)[0] > 0.95
    everything = augment_probs({}, 2.0)
    ai, am, av = augment(x.copy(), m, np.ones_like(m, bool), everything, np.random.default_rng(1))
    assert ai.min() >= 0 and ai.max() <= 1 and (ai[~av] == 0).all()
    with pytest.raises(ConfigError, match="unknown key"):
        augment_probs({"flipp": 0.5}, 1.0)


# ------------------------------------------------------------------------------ masks and crop box
def test_clean_mask_keeps_two_lungs_and_fills_holes():
    m = np.zeros((100, 100), bool)
    m[10:90, 10:40] = True
    m[10:80, 60:90] = True
    m[40:50, 20:30] = False          # a hole (an opacity the network missed)
    m[2:4, 95:97] = True             # a speck
    out = clean_mask(m)
    assert out[45, 25] and not out[3, 96] and out.sum() == 80 * 30 + 70 * 30
    assert not clean_mask(np.zeros((5, 5), bool)).any()


def test_lung_crop_box_is_square_with_margin_and_clipped():
    m = np.zeros((200, 300), bool)
    m[50:150, 100:160] = True        # 60 wide, 100 high
    x0, y0, x1, y1 = lung_crop_box(m, margin=0.1)
    assert (x1 - x0, y1 - y0) == (120, 120) and (x0 + x1) / 2 == 130 and (y0 + y1) / 2 == 100
    crop = m[y0:y1, x0:x1]
    assert crop.sum() == m.sum(), "the crop holds every lung pixel"
    m2 = np.zeros((200, 300), bool)
    m2[0:100, 0:50] = True           # at the corner: slid inside, still square
    assert lung_crop_box(m2, 0.1) == (0, 0, 120, 120)
    m3 = np.zeros((100, 300), bool)
    m3[5:95, 10:290] = True          # wider than the image is high: clipped
    b = lung_crop_box(m3, 0.05)
    assert b[1] == 0 and b[3] == 100 and b[0] == 0 and b[2] == 300
    assert lung_crop_box(np.zeros((10, 10), bool)) is None


def test_metrics_edge_cases():
    a = np.zeros((4, 4), bool)
    assert dice_iou(a, a) == (1.0, 1.0)
    b = a.copy()
    b[:2] = True
    assert dice_iou(b, a) == (0.0, 0.0)
    h = head_metrics([1, 0, None, 1], [0.9, 0.2, 0.5, 0.4])
    assert h["n"] == 3 and h["auc"] == 1.0 and h["sensitivity"] == 0.5 and h["specificity"] == 1.0


# -------------------------------------------------------------------------------------- the model
def _tiny_spec():
    from pipeline.lungs.model import ModelSpec

    return ModelSpec(encoder="mobilenet_v2", encoder_depth=5, decoder_channels=(32, 16, 16, 8, 8), cls_head=True)


def test_masks_come_back_in_original_pixels_and_checkpoint_round_trip(tmp_path):
    import torch

    from pipeline.lungs import load_lung_model, predict_lungs, predict_masks
    from pipeline.lungs.model import build_net, save_lung_model

    torch.manual_seed(0)
    net = build_net(_tiny_spec()).eval()
    path = save_lung_model(tmp_path / "m.pt", net, _tiny_spec(), 64, "histeq", "tuberculosis")
    model = load_lung_model(path)
    assert model.imgsz == 64 and model.label_name == "tuberculosis"
    odd = [np.random.default_rng(0).integers(0, 4096, (97, 151)).astype(np.uint16),
           np.random.default_rng(1).uniform(0, 1, (300, 40)).astype(np.float32)]
    masks = predict_masks(model, odd)
    assert [m.shape for m in masks] == [(97, 151), (300, 40)] and all(m.dtype == bool for m in masks)
    preds = predict_lungs(model, odd, clean=False)
    assert 0.0 <= preds[0].p_label <= 1.0 and preds[0].prob.shape == (97, 151)
    x = torch.zeros(1, 1, 64, 64)
    assert torch.allclose(net(x)[0], model.net(x)[0])
    with pytest.raises(ConfigError, match="does not exist"):
        load_lung_model(tmp_path / "missing.pt")
    torch.save({"a": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(DataError, match="not a lung model"):
        load_lung_model(tmp_path / "other.pt")
    # initial weights: the model's own state dict loads whole; a missing or foreign file is a clear error
    from pipeline.lungs.model import load_init_weights

    torch.save(net.state_dict(), tmp_path / "init.pt")
    assert load_init_weights(build_net(_tiny_spec()), tmp_path / "init.pt").startswith(f"{len(net.state_dict())} of")
    with pytest.raises(ConfigError, match="segment.weights=.*no such file"):
        load_init_weights(net, tmp_path / "absent.pt")
    with pytest.raises(DataError, match="none of its 1 tensors fits"):
        load_init_weights(net, tmp_path / "other.pt")


def _synthetic_cache(n: int, size: int, seed: int):
    from pipeline.demo.anatomy import lung_mask, render_chest
    from pipeline.lungs.train import Cache

    imgs, masks = [], []
    for k in range(n):
        ch = render_chest(np.random.default_rng([seed, k]), size, size)
        imgs.append(np.clip(ch.base, 0, 1).astype(np.float32))
        masks.append(lung_mask(ch).astype(np.float32))
    return Cache([str(k) for k in range(n)], np.stack(imgs), np.stack(masks), np.ones((n, size, size), bool),
                 np.array([k % 2 for k in range(n)], np.float32))


def test_tiny_training_dice_rises(tmp_path):
    import torch

    from pipeline.lungs.model import build_net
    from pipeline.lungs.train import TrainSettings, boxed_scores, train

    from pipeline.lungs.model import ModelSpec

    torch.set_num_threads(2)
    train_cache, held_out = _synthetic_cache(24, 64, 1), _synthetic_cache(8, 64, 2)
    # A small U-Net learns these lungs in ~40 steps (measured: held-out Dice 0.6 -> 0.97); the stage's
    # UNet++ is built and run in the test above.
    spec = ModelSpec(arch="unet", encoder="resnet18", encoder_depth=3, decoder_channels=(32, 16, 8), cls_head=True)
    s = TrainSettings(spec=spec, imgsz=64, cache_size=64, epochs=7, batch=4, lr=3e-3, warmup_epochs=0.2,
                      probs=augment_probs({}, 0.0), seed=0)
    torch.manual_seed(0)
    before = boxed_scores(build_net(s.spec), held_out, s, "cpu")[0]
    net, rows = train(train_cache, s, tmp_path / "last.pt", "fp", monitor=held_out)
    after = rows[-1]["monitor_dice"]
    assert len(rows) == 7 and rows[-1]["loss"] < rows[0]["loss"]
    assert after > 0.85 and after > before + 0.2, (before, [r["monitor_dice"] for r in rows])
    # Resuming a finished run with the same fingerprint trains nothing more and gives the same log.
    _, again = train(train_cache, s, tmp_path / "last.pt", "fp")
    assert again == rows


def test_damaged_resume_file_restarts_training(tmp_path, capsys):
    """A last.pt cut short (a kill while copying) or of another program is said and ignored, never a crash."""
    import torch

    from pipeline.lungs.train import read_resume_state

    cut = tmp_path / "last.pt"
    torch.save({"net": {}, "opt": {}, "sched": {}, "epoch": 3, "fingerprint": "fp"}, cut)
    assert read_resume_state(cut)["epoch"] == 3
    cut.write_bytes(cut.read_bytes()[:40])
    assert read_resume_state(cut) is None
    assert "last.pt: not a resume state of this stage" in capsys.readouterr().out
    torch.save({"weights": 1}, cut)
    assert read_resume_state(cut) is None and "training starts over" in capsys.readouterr().out
    assert read_resume_state(tmp_path / "absent.pt") is None


def test_mask_resolution_benchmark_measures_the_round_trip_loss():
    """benchmarks/mask_resolution.py: a mask through the stage's letterbox and back loses more the smaller
    the network input, and almost nothing at the mask's own size."""
    from tests.benchmark_modules import load_benchmark

    yy, xx = np.mgrid[:300, :240]
    mask = ((xx - 80) / 45.0) ** 2 + ((yy - 150) / 110.0) ** 2 < 1   # one elliptic "lung", not centred
    mod = load_benchmark("mask_resolution")
    tiny, small, full = (mod.round_trip_iou(mask, s) for s in (16, 64, 320))
    assert tiny < small < full and full > 0.99 and tiny < 0.98


def test_infer_lungs_benchmark_scores_written_masks_and_counts_missing_ones(tmp_path):
    """benchmarks/infer_lungs.py: each OUT/lungs/<id>.png against its truth, a missing mask counts IoU 0 and
    is listed, a mask not in the input's pixels is refused."""
    import cv2

    from pipeline.lungs.data import MaskItem
    from tests.benchmark_modules import load_benchmark

    truth = np.zeros((40, 60), np.uint8)
    truth[10:30, 10:50] = 255
    items = []
    for name in ("same", "half", "gone"):
        cv2.imwrite(str(tmp_path / f"{name}_mask.png"), truth)
        items.append(MaskItem(name, tmp_path / f"{name}.png", (tmp_path / f"{name}_mask.png",), "test"))
    lungs = tmp_path / "lungs"
    lungs.mkdir()
    cv2.imwrite(str(lungs / "same.png"), truth)
    half = truth.copy()
    half[:, 30:] = 0
    cv2.imwrite(str(lungs / "half.png"), half)
    mod = load_benchmark("infer_lungs")
    rows, missing = mod.score(items, lungs)
    assert [round(r["iou"], 3) for r in rows] == [1.0, 0.5, 0.0] and missing == ["gone"]
    cv2.imwrite(str(lungs / "same.png"), cv2.resize(truth, (30, 20)))
    with pytest.raises(SystemExit, match="input file's pixels"):
        mod.score(items[:1], lungs)


def test_lung_box_coverage_counts_the_share_of_a_box_inside_the_mask():
    """benchmarks/lung_box_coverage.py: a box half inside the lungs covers 0.5, a box off the image is
    not counted, and the control class stays apart from the in-lung findings."""
    from tests.benchmark_modules import load_benchmark

    mod = load_benchmark("lung_box_coverage")
    mask = np.zeros((100, 100), bool)
    mask[20:80, 10:45] = True
    assert mod.coverage(mask, (10, 20, 45, 80)) == 1.0
    assert mod.coverage(mask, (27.5, 20, 62.5, 80)) == pytest.approx(0.5, abs=0.02)
    assert np.isnan(mod.coverage(mask, (120, 120, 140, 140)))
    rows = [{"finding": "Nodule", "coverage": 1.0}, {"finding": "Mass", "coverage": 0.25},
            {"finding": "Cardiomegaly", "coverage": 0.1}]
    per, head = mod.summarise(rows)
    assert head["inside_n"] == 2 and head["inside_mean"] == pytest.approx(0.625)
    assert head["inside_half"] == 0.5 and head["control_mean"] == pytest.approx(0.1)
    assert per.loc["Mass", "half"] == 0.0 and per.loc["Nodule", "n"] == 1
