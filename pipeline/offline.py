"""The one place that keeps third-party libraries off the network.

Must run before ultralytics, albumentations, torchvision, timm or huggingface_hub are imported;
``import pipeline`` calls :func:`apply`, so every entry point (CLI, tests, notebooks) gets it.
Nothing in this project downloads weights or data: models train from YAML or load local files.
"""
from __future__ import annotations

import os
from pathlib import Path

# Where ultralytics keeps its settings.json and looks for Arial.ttf. Inside the project, so a
# user's ~/.config is not touched and nothing is fetched (the font is placed from matplotlib).
CONFIG_DIR = Path(__file__).resolve().parent.parent / ".cache" / "ultralytics"

ENV = {
    "YOLO_OFFLINE": "1",             # ultralytics: no hub, no GitHub asset checks
    "YOLO_AUTOINSTALL": "0",         # ultralytics: never pip-install missing packages at run time
    "YOLO_VERBOSE": "0",             # ultralytics: quiet; our stages print their own progress
    "NO_ALBUMENTATIONS_UPDATE": "1", # albumentations: no version check at import
    "HF_HUB_OFFLINE": "1",           # huggingface_hub / timm
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1",
    "MPLBACKEND": "Agg",             # plots are files; no display on servers
}


def apply() -> None:
    """Set the offline environment (without overriding a value the user set on purpose)."""
    for key, value in ENV.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("YOLO_CONFIG_DIR", str(CONFIG_DIR))


def prepare_ultralytics() -> None:
    """Call right before importing ultralytics: font in place, settings that would sync turned off.

    ultralytics fetches ``Arial.ttf`` on every train/val even with ``plots=False`` unless a file of
    that name is in its config dir; matplotlib's DejaVuSans serves (it only draws labels).
    """
    apply()
    # ultralytics keeps its files in $YOLO_CONFIG_DIR/Ultralytics (utils.get_user_config_dir).
    cfg_dir = Path(os.environ["YOLO_CONFIG_DIR"]) / "Ultralytics"
    cfg_dir.mkdir(parents=True, exist_ok=True)
    import matplotlib

    font_src = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        dst = cfg_dir / name
        if not dst.exists():
            tmp = dst.with_suffix(".tmp")
            tmp.write_bytes(font_src.read_bytes())
            tmp.replace(dst)  # atomic: parallel fold processes may race here
    from ultralytics import settings  # noqa: E402  (env is set above)

    settings.update({"sync": False})
