"""``run.sh slurm``: submit a run as a SLURM job graph (prepare and folds; per-fold arrays; the rest).

    ./run.sh slurm --config configs/vinbigdata.yaml --partition gpu --gpus-per-job 1
    ./run.sh slurm --config configs/demo.yaml --gpus-per-job 0 --cpus-per-task 1 --mem 2G --wait
    ./run.sh slurm --config configs/vinbigdata.yaml det.epochs=30 --dry-run

The graph and why it is shaped so: :mod:`pipeline.slurm`. Resubmitting the same command skips the folds
that finished (each job runs the CLI, which skips finished work by itself).
"""
from __future__ import annotations

import argparse
import copy

from pipeline.errors import PipelineError


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="run.sh slurm", description=(
        "Submit the run as SLURM jobs: prepare+folds, then an array of train_det+predict and an array of "
        "train_cls (one task per fold), then the remaining stages (fuse, evaluate, submit)."))
    p.add_argument("--config", "-c", default=None, help="experiment YAML (default: configs/default.yaml only)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides, e.g. det.epochs=3")
    p.add_argument("--partition", "-p", default=None, help="SLURM partition (default: the cluster's default)")
    p.add_argument("--cpu-partition", default=None,
                   help="partition of the prepare/folds and final jobs, which need no GPU (default: --partition)")
    p.add_argument("--gpus-per-job", type=int, default=None,
                   help="GPUs of each fold job (--gres=gpu:N; default from run.device: cpu 0, auto 1, '0,1' 2)")
    p.add_argument("--cpus-per-task", type=int, default=8, help="CPUs of every job (default 8)")
    p.add_argument("--mem", default="32G", help="memory of every job, sbatch syntax (default 32G)")
    p.add_argument("--time", default="24:00:00", help="time limit of every job, sbatch syntax (default 24:00:00)")
    p.add_argument("--sbatch", action="append", default=[], metavar="OPTION",
                   help="another sbatch option for every job, e.g. --sbatch=--account=abc (repeatable)")
    p.add_argument("--force", action="store_true", help="redo the work of the prepare/folds and fold jobs")
    p.add_argument("--dry-run", action="store_true", help="print the jobs; submit nothing (needs no SLURM)")
    p.add_argument("--wait", action="store_true", help="wait for every job; exit 1 naming any job that failed")
    p.add_argument("--poll", type=float, default=10.0, help="seconds between state checks with --wait (default 10)")
    return p


def job_config(cfg, cpus: int):
    """The config the jobs read: ``cfg`` with ``run.threads`` 0 ("every core") made the job's CPU count,
    since a job's process can see every core of its node when the cluster does not confine it."""
    out = copy.deepcopy(cfg)
    if "threads" in out.run and int(out.run.threads) == 0:
        out.run.threads = int(cpus)
    return out


def main(argv: list[str] | None = None) -> int:
    from pipeline.config import load_config
    from pipeline.slurm import Resources, build_plan, default_gpus, describe, log_file
    from pipeline import slurm_queue

    args = parser().parse_intermixed_args(argv)
    cfg = load_config(args.config, args.overrides)
    if cfg.run.force:
        raise PipelineError("run.force=true would also redo every fold again in the final job; "
                            "pass --force instead (it forces the prepare and fold jobs only).")
    gpus = default_gpus(cfg.run.device) if args.gpus_per_job is None else args.gpus_per_job
    resources = Resources(partition=args.partition, cpu_partition=args.cpu_partition, time=args.time,
                          cpus=args.cpus_per_task, mem=args.mem, gpus=gpus, extra=tuple(args.sbatch))
    cfg = job_config(cfg, args.cpus_per_task)
    plan = build_plan(cfg, resources, force=args.force)
    if args.dry_run:
        print(describe(plan))
        print("dry run: nothing written, nothing submitted")
        return 0
    ids = slurm_queue.submit(plan, cfg)
    print(f"submitted run {plan.run_name}: {len(ids)} jobs (config {plan.config}, ids in {plan.paths.slurm_jobs})")
    for job in plan.jobs:
        array = f" [folds {','.join(map(str, job.folds))}]" if job.is_array else ""
        after = f", after {', '.join(job.after)}" if job.after else ""
        logs = log_file(plan, job, "out", ids[job.name], "<fold>" if job.is_array else None)
        print(f"  {job.name:<5} job {ids[job.name]}{array}: {', '.join(job.stages)}{after}\n        log {logs}")
    id_list = ",".join(ids.values())
    print(f"follow: squeue -j {id_list}   tail -f {plan.paths.slurm_dir.resolve()}/*.out   "
          f"cancel: scancel {' '.join(ids.values())}")
    if not args.wait:
        return 0
    print("waiting for the jobs (Ctrl-C stops waiting; the jobs keep running)...")
    try:
        tasks = slurm_queue.wait(plan, ids, poll_s=args.poll)
    except KeyboardInterrupt:
        print(f"stopped waiting; the jobs keep running: squeue -j {id_list}")
        return 130
    bad = slurm_queue.failures(plan, tasks)
    if bad:
        print(f"{len(bad)} of {len(tasks)} job(s) did not complete:")
        for text in bad:
            print(f"  {text}")
        return 1
    print(f"all {len(tasks)} job(s) completed; submission: {plan.paths.submission}"
          if "submit" in cfg.run.stages else f"all {len(tasks)} job(s) completed")
    return 0
