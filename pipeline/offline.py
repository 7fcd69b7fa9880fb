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
    # OpenMP threads that finish their share sleep instead of spinning: with 2 cores shared by other
    # processes (CI, a cluster node, a notebook beside a run) spinning made torch ~4x slower (measured:
    # 18.5 vs 4.3 s per DenseNet step at 96 px while another job ran).
    "OMP_WAIT_POLICY": "PASSIVE",
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
    from pipeline.io import locked, make_dirs, write_bytes_atomic

    cfg_dir = make_dirs(Path(os.environ["YOLO_CONFIG_DIR"]) / "Ultralytics")  # set YOLO_CONFIG_DIR to move it
    import matplotlib

    font_src = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        dst = cfg_dir / name
        if not dst.exists():  # parallel fold jobs may race here: each writes its own temporary, then renames
            write_bytes_atomic(dst, font_src.read_bytes())
    from PIL import Image

    pil_open = Image.open
    # ultralytics reads settings.json at import and rewrites it in place on update: a job reading it while
    # another writes would see it cut short and reset it; concurrent jobs take turns.
    with locked(cfg_dir / "settings.json"):
        from ultralytics import settings  # noqa: E402  (env is set above)

        settings.update({"sync": False})
    # ultralytics replaces PIL.Image.open for the whole process with a wrapper that, on a file Pillow cannot
    # identify, calls pip (check_requirements("pi-heif")) instead of raising: every reader here must get
    # Pillow's own UnidentifiedImageError, offline. No radiograph is HEIF.
    if pil_open.__module__ != Image.__name__:  # ultralytics was imported before this call
        from ultralytics.utils.patches import _image_open as pil_open
    Image.open = pil_open
