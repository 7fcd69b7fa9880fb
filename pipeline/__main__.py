"""Command line: ``python -m pipeline <command> [args]`` (``./run.sh <command> [args]``).

Stages take ``[--config FILE] [--force] [key=value ...]``; tools have their own flags (``--help``).
"""
from __future__ import annotations

import argparse
import importlib
import sys

from pipeline.errors import PipelineError
from pipeline.stages import STAGES

# Standalone tools: module with main(argv) -> int.
TOOLS = {
    "demo-data": ("pipeline.tools.demo_data", "write a synthetic dataset in the VinBigData or ChestX-ray14 layout"),
    "score": ("pipeline.tools.score", "score a submission with the VinBigData metric (VOC mAP at IoU 0.4)"),
    "dicom2png": ("pipeline.tools.dicom2png", "convert DICOM/PNG files or folders to training PNGs"),
    "yolo-labels": ("pipeline.tools.yolo_labels", "fuse radiologists' boxes and write YOLO label files"),
    "infer": ("pipeline.tools.infer", "apply a finished run's models to new DICOM/PNG/JPEG images (boxes in input pixels)"),
    "slurm": ("pipeline.tools.slurm", "submit the run as a SLURM job graph (per-fold arrays); --dry-run prints it"),
    "screen-images": ("pipeline.tools.screen", "is each input a chest X-ray? gate model + DICOM header rules -> screen.csv"),
}

# Stages that also have a tool form on files: ./run.sh <stage> --model M --out DIR INPUT... runs the tool.
TOOL_FORMS = {"screen": "screen-images"}

# One example per tool for ./run.sh --help (a tool missing here shows its --help hint instead).
TOOL_EXAMPLES = {
    "demo-data": "./run.sh demo-data /tmp/demo --format chestxray14 --n-train 40",
    "score": "./run.sh score --truth train.csv --submission submissions/demo.csv",
    "dicom2png": "./run.sh dicom2png ../shared/real/dicom --out /tmp/png --size 1024",
    "yolo-labels": "./run.sh yolo-labels --annotations train.csv --meta train_meta.csv --out /tmp/labels",
    "infer": "./run.sh infer --run runs/demo --out /tmp/infer data/demo/test",
    "slurm": "./run.sh slurm --config configs/vinbigdata.yaml --partition gpu --gpus-per-job 1 --dry-run",
    "screen-images": "./run.sh screen-images --model runs/gate/screen/model.pt --out /tmp/screen ../shared/real/hands",
}

USAGE = """usage: ./run.sh <command> [args]      (= python -m pipeline <command> [args] inside .venv)

  ./run.sh                     set up on first use, then the whole demo (= ./run.sh demo)
  ./run.sh test [pytest args]  the test suite (e.g. ./run.sh test -m slow, -m gpu, -k fuse)

pipeline (configs/default.yaml <- --config FILE <- key=value overrides; finished work is skipped):
  demo         generate the demo dataset and run every stage on it (configs/demo.yaml)
                 e.g. ./run.sh demo det.epochs=5
  run          run the stages listed in run.stages, in order
                 e.g. ./run.sh run --config configs/vinbigdata.yaml data.root=/data/vinbigdata
{stages}
tools (own flags):
{tools}

`./run.sh <command> --help` says what a stage reads, writes and which config keys it uses."""


def _usage() -> str:
    from pipeline.stages import STAGES

    stages = "\n".join(f"  {s.name:<12} {s.summary}\n                 e.g. {s.example}" for s in STAGES.values())
    tools = "\n".join(f"  {name:<12} {help_}\n                 e.g. {TOOL_EXAMPLES.get(name, f'./run.sh {name} --help')}"
                      for name, (_, help_) in TOOLS.items())
    return USAGE.format(stages=stages, tools=tools)


def _stage_parser(command: str) -> argparse.ArgumentParser:
    from pipeline.stages import STAGES

    info = STAGES.get(command)
    if info is None:
        desc = ("generate the demo dataset (when missing) and run every stage of configs/demo.yaml" if command == "demo"
                else "run the stages of run.stages in order; each skips the work it finished earlier")
        epilog = None
    else:
        desc = info.summary
        epilog = (f"reads:  {info.reads}\nwrites: {info.writes} (under runs/<run.name>/)\n"
                  f"config: {info.keys}\nexample: {info.example}")
    p = argparse.ArgumentParser(prog=f"./run.sh {command}", description=desc, epilog=epilog,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", "-c", default=None, help="experiment YAML (default: configs/default.yaml only)")
    p.add_argument("--force", action="store_true", help="redo finished work instead of skipping it")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides, e.g. det.epochs=3")
    return p


def _run_pipeline(command: str, argv: list[str]) -> int:
    from pipeline.config import CONFIG_DIR, load_config
    from pipeline.runner import run_all, run_stage

    args = _stage_parser(command).parse_args(argv)
    config = args.config
    if command == "demo" and config is None:
        config = CONFIG_DIR / "demo.yaml"
    overrides = list(args.overrides) + (["run.force=true"] if args.force else [])
    cfg = load_config(config, overrides)
    if command in ("run", "demo"):
        run_all(cfg)
    else:
        run_stage(command, cfg)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] == "--version":
        from pipeline import __version__

        print(__version__)
        return 0
    command, rest = argv[0], argv[1:]
    # ./run.sh screen is the stage (--config, key=value) or, given files, the tool (--model/--out INPUT...)
    if command in TOOL_FORMS and any(a.split("=")[0] in ("--model", "--out") for a in rest):
        command = TOOL_FORMS[command]
    try:
        if command in TOOLS:
            module = importlib.import_module(TOOLS[command][0])
            return int(module.main(rest) or 0)
        if command in STAGES or command in ("run", "demo"):
            return _run_pipeline(command, rest)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished work is kept; run the same command again to resume", file=sys.stderr)
        return 130
    print(f"unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
