"""screen.enabled: prepare sets aside the images the input gate rejects, lists them in screen.csv and says so;
none is dropped silently."""
from __future__ import annotations

import pandas as pd

from pipeline.config import CONFIG_DIR, load_config
from pipeline.paths import RunPaths
from pipeline.runner import run_stage
from tests.test_prepare_stage import overrides, read_csv


def test_rejected_images_are_set_aside_and_listed(tmp_path, monkeypatch, capsys):
    import pipeline.gate as gate

    calls = {}

    def fake_screen(sources, model, device="cpu", progress=False):
        calls["n"] = len(sources)
        first = sorted(sources)[0]
        return pd.DataFrame({"image_id": [p for p in sources], "decision": ["not_xray" if p == first else "chest"
                                                                            for p in sources],
                             "accepted": [p != first for p in sources], "p_chest": 0.5,
                             "reason": ["image model: not an X-ray" if p == first else "ok" for p in sources]})

    model = tmp_path / "gate.pt"
    model.write_bytes(b"stand-in: screen_files is replaced below")
    monkeypatch.setattr(gate, "screen_files", fake_screen)
    cfg = load_config(CONFIG_DIR / "demo.yaml", {**overrides(tmp_path), "data.demo_n_train": 4, "data.demo_n_test": 1,
                                                  "screen.enabled": True, "screen.model": str(model)})
    paths = RunPaths.from_config(cfg)
    summary = run_stage("prepare", cfg)
    assert calls["n"] == 5 and summary["n_rejected_by_screen"] == 1
    assert "1 of 5 image(s) set aside" in capsys.readouterr().out
    screen = read_csv(paths.screen_csv)
    gone = screen.loc[screen["accepted"].astype(str) == "False", "image_id"].tolist()
    assert len(screen) == 5 and len(gone) == 1
    images = read_csv(paths.images_csv)
    assert gone[0] not in set(images["image_id"]) and len(images) == 4
    assert not any(paths.image(s, gone[0]).exists() for s in ("train", "test"))
