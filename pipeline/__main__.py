"""Command line: ``python -m pipeline <command> [args]`` (``./run.sh <command> [args]``).

Stages take ``[--config FILE] [--force] [key=value ...]``; tools have their own flags (``--help``).
"""
from __future__ import annotations

import argparse
import importlib
import sys

from pipeline.errors import PipelineError
from pipeline.runner import STAGES

# Standalone tools: module with main(argv) -> int.
TOOLS = {
    "demo-data": ("pipeline.tools.demo_data", "write a synthetic dataset in the VinBigData or ChestX-ray14 layout"),
    "score": ("pipeline.tools.score", "score a submission with the VinBigData metric (VOC mAP at IoU 0.4)"),
    "dicom2png": ("pipeline.tools.dicom2png", "convert DICOM/PNG files or folders to training PNGs"),
    "yolo-labels": ("pipeline.tools.yolo_labels", "fuse radiologists' boxes and write YOLO label files"),
}

USAGE = """usage: python -m pipeline <command> [args]

pipeline (stages read configs/default.yaml <- --config FILE <- key=value overrides):
  demo         generate the demo dataset and run every stage on it (configs/demo.yaml)
  run          run the stages listed in run.stages, in order, skipping finished ones
{stages}
tools:
{tools}

Run `python -m pipeline <command> --help` for a command's options."""


def _usage() -> str:
    stages = "\n".join(f"  {s:<12} run one stage" for s in STAGES)
    tools = "\n".join(f"  {name:<12} {help_}" for name, (_, help_) in TOOLS.items())
    return USAGE.format(stages=stages, tools=tools)


def _stage_parser(command: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m pipeline {command}")
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
