import re

import pytest
import yaml

from pipeline.config import CONFIG_DIR, DEFAULT_PATH, load_config, parse_override, save_config
from pipeline.errors import ConfigError


def test_defaults_load_and_attribute_access():
    cfg = load_config()
    assert cfg.det.model == "yolov8n.yaml"
    assert cfg["det"]["epochs"] == cfg.det.epochs
    assert cfg.get_path("labels.iou_thr") == 0.4


def test_every_default_key_has_a_typed_comment():
    # "key: value  # type: what it does" on every leaf line of default.yaml
    for line in DEFAULT_PATH.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or stripped.endswith(":"):
            continue
        assert re.search(r"#\s*[\w\[\]|,. ]+:", line), f"default.yaml line without a typed comment: {line!r}"


EXPERIMENT_FILES = sorted(p.name for p in CONFIG_DIR.glob("*.yaml") if p.name != "default.yaml")


def test_the_shipped_recipes_are_all_checked():
    assert {"demo.yaml", "vinbigdata.yaml", "chestxray14.yaml", "nih_bbox.yaml", "nih_localise.yaml",
            "lungs_shenzhen.yaml", "gate.yaml", "tbx11k.yaml"} <= set(EXPERIMENT_FILES)


@pytest.mark.parametrize("name", EXPERIMENT_FILES)
def test_experiment_files_load(name):
    """Every shipped recipe loads against the defaults and names only stages that exist."""
    from pipeline.stages import STAGES

    cfg = load_config(CONFIG_DIR / name)
    assert cfg.run.name
    stages = cfg.run.stages or []
    assert [s for s in stages if s not in STAGES] == [], f"{name}: unknown stage in run.stages"


def test_merge_order_defaults_then_file_then_overrides(tmp_path):
    exp = tmp_path / "exp.yaml"
    exp.write_text("det:\n  epochs: 7\n  imgsz: 320\n")
    cfg = load_config(exp, ["det.epochs=3", "run.name=x"])
    assert cfg.det.epochs == 3       # override beats file
    assert cfg.det.imgsz == 320      # file beats default
    assert cfg.det.batch == load_config().det.batch  # untouched default
    assert cfg.run.name == "x"


def test_override_values_are_parsed_safely():
    assert parse_override("det.folds=[0, 2]") == ("det.folds", [0, 2])
    assert parse_override("image.clahe=false") == ("image.clahe", False)
    assert parse_override("cls.weights=null") == ("cls.weights", None)
    key, value = parse_override("run.name=__import__('os').system('x')")
    assert value == "__import__('os').system('x')"  # a plain string, never evaluated


def test_unknown_key_suggests_the_closest():
    with pytest.raises(ConfigError, match=r"unknown config key 'det.epoch'.*det\.epochs"):
        load_config(None, ["det.epoch=3"])
    with pytest.raises(ConfigError, match="unknown config key 'detector'"):
        load_config(None, ["detector.epochs=3"])


def test_unknown_key_in_file_names_the_file(tmp_path):
    exp = tmp_path / "bad.yaml"
    exp.write_text("image:\n  sise: 512\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*image\.sise.*image\.size"):
        load_config(exp)


def test_type_errors_name_the_key():
    with pytest.raises(ConfigError, match="'det.epochs' must be int"):
        load_config(None, ["det.epochs=abc"])
    with pytest.raises(ConfigError, match="'image.clahe' must be bool"):
        load_config(None, ["image.clahe=1"])
    with pytest.raises(ConfigError, match="cannot be null"):
        load_config(None, ["det.epochs=null"])
    with pytest.raises(ConfigError, match="is a section"):
        load_config(None, ["det=3"])
    with pytest.raises(ConfigError, match="not key=value"):
        load_config(None, ["det.epochs"])


def test_int_accepted_for_float_and_open_mappings():
    cfg = load_config(None, ["labels.iou_thr=1", "det.train_args={lr0: 0.02, mosaic: 0.0}"])
    assert cfg.labels.iou_thr == 1.0 and isinstance(cfg.labels.iou_thr, float)
    assert cfg.det.train_args == {"lr0": 0.02, "mosaic": 0.0}
    cfg = load_config(None, ["det.train_args.close_mosaic=2"])
    assert cfg.det.train_args == {"close_mosaic": 2}


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("det: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(CONFIG_DIR / "demo.yaml", ["det.epochs=2"])
    out = save_config(cfg, tmp_path / "run" / "config.yaml")
    again = load_config(out)
    assert again.to_dict() == cfg.to_dict()
    assert yaml.safe_load(out.read_text())["det"]["epochs"] == 2


def test_defaults_are_not_shared_between_loads():
    a = load_config()
    a.det.folds.append(99)
    assert 99 not in load_config().det.folds
