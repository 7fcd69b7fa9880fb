"""A run as a SLURM job graph: which jobs, what each runs, what it asks for, what it waits for.

Four groups, each job running the project's own CLI (``<project>/run.sh <stage> --config <config>``)
in the project directory, so a job does exactly what the same command does locally:

    prep    segment, screen, prepare, folds             one job (the gate and lung model prepare may use)
    det     train_det, predict  (det.folds=[k])         an array, task id = fold k      after prep
    cls     train_cls           (cls.folds=[k])         an array, task id = fold k      after prep
    final   run: every stage of run.stages              one job                         after det and cls

Only stages listed in ``run.stages`` get a job (a classifier-only recipe has no ``det`` array). The final
job is ``run.sh run``: finished work (prepare, folds, every fold's training and prediction) is skipped by
the pipeline's own records, the classifier's per-fold tables are combined again from every finished fold
(two array tasks finishing at once may each have combined without the other), and fuse, evaluate and
submit run. Dependencies are ``afterok`` with ``--kill-on-invalid-dep=yes``: when a job fails, what waits
for it is cancelled instead of pending forever. The config every job reads is the one resolved at
submission (``slurm/config.yaml`` in the run directory), so a later edit of the YAML cannot change a
queued job; resubmitting rewrites it and runs the CLI again, which skips finished folds by itself.

This module builds and renders the graph (no SLURM needed: ``--dry-run`` prints it);
:mod:`pipeline.slurm_queue` submits it and follows it.
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import ConfigError
from pipeline.paths import PROJECT_ROOT, RunPaths

PREP_STAGES = ("segment", "screen", "prepare", "folds")  # in run.stages order: prepare may use the gate and lungs
DET_STAGES = ("train_det", "predict")
CLS_STAGES = ("train_cls",)
FINAL_STAGES = ("fuse", "evaluate", "submit")
FOLD_VAR = "FOLD"  # the shell variable holding the fold of an array task (= SLURM_ARRAY_TASK_ID)


@dataclass(frozen=True)
class Resources:
    """What each job asks SLURM for. ``gpus`` goes to the fold jobs only (prep and final need none);
    ``cpu_partition`` (default: ``partition``) is where prep and final run."""

    partition: str | None = None
    cpu_partition: str | None = None
    time: str = "24:00:00"
    cpus: int = 8
    mem: str = "32G"
    gpus: int = 0
    extra: tuple[str, ...] = ()  # more sbatch options for every job, e.g. ("--account=abc", "--qos=high")

    def __post_init__(self) -> None:
        if self.cpus < 1:
            raise ConfigError(f"--cpus-per-task must be at least 1, got {self.cpus}.")
        if self.gpus < 0:
            raise ConfigError(f"--gpus-per-job must be 0 or more, got {self.gpus}.")
        bad = [a for a in self.extra if not a.startswith("--")]
        if bad:
            raise ConfigError(f"--sbatch takes long sbatch options such as --sbatch=--account=abc, got {bad}.")


@dataclass(frozen=True)
class Job:
    name: str                      # prep | det | cls | final
    stages: tuple[str, ...]        # the stages it runs (what --dry-run and the summary say)
    commands: tuple[str, ...]      # shell lines, run in order; the first failure ends the job
    folds: tuple[int, ...] = ()    # array task ids (= folds); empty for a single job
    after: tuple[str, ...] = ()    # names of the jobs it waits for (afterok)
    gpus: int = 0
    note: str = ""

    @property
    def is_array(self) -> bool:
        return bool(self.folds)


@dataclass(frozen=True)
class Plan:
    run_name: str
    paths: RunPaths
    config: Path                   # the resolved config every job reads
    jobs: list[Job] = field(default_factory=list)
    resources: Resources = Resources()

    def job(self, name: str) -> Job:
        return next(j for j in self.jobs if j.name == name)


def default_gpus(device: str) -> int:
    """GPUs per fold job that ``run.device`` implies: ``cpu`` -> 0, ``0,1`` -> 2, ``auto`` or ``0`` -> 1."""
    text = str(device).strip().lower()
    if text == "cpu":
        return 0
    if text in ("", "auto"):
        return 1
    return len([p for p in text.split(",") if p.strip()])


def _fold_list(cfg, key: str) -> tuple[int, ...]:
    raw = cfg.get_path(key)
    n = int(cfg.folds.n_splits)
    folds = []
    for k in raw:
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < n:
            raise ConfigError(f"{key}: {k!r} is not a fold of folds.n_splits={n}; use numbers 0..{n - 1}.")
        if k in folds:
            raise ConfigError(f"{key}: fold {k} is listed twice ({list(raw)}).")
        folds.append(k)
    if not folds:
        raise ConfigError(f"{key} is empty but run.stages trains it; list folds, e.g. {key}=[0,1,2,3,4].")
    return tuple(folds)


def stage_command(stage: str, config: Path, overrides: list[str] = ()) -> str:
    """``<project>/run.sh <stage> --config <config> [overrides]`` as one shell line; an override may
    use ``${FOLD}`` (double-quoted, so the shell substitutes it and never globs the brackets)."""
    words = [shlex.quote(str(PROJECT_ROOT / "run.sh")), stage, "--config", shlex.quote(str(config))]
    words += [f'"{o}"' if "${" in o else shlex.quote(o) for o in overrides]
    return " ".join(words)


def build_plan(cfg, resources: Resources, *, force: bool = False) -> Plan:
    """The job graph of ``cfg`` (a resolved config). ``force`` redoes the work of the prep and fold jobs
    (``run.force=true`` on their commands); the final job never forces, so it reuses what they made."""
    paths = RunPaths.from_config(cfg)
    config = paths.slurm_config.resolve()
    stages = list(cfg.run.stages)
    force_args = ["run.force=true"] if force else []
    fold = "${" + FOLD_VAR + "}"
    jobs: list[Job] = []

    prep = [s for s in stages if s in PREP_STAGES]
    if prep:
        jobs.append(Job("prep", tuple(prep), tuple(stage_command(s, config, force_args) for s in prep)))
    upstream = ("prep",) if prep else ()

    det = [s for s in stages if s in DET_STAGES]
    if det:
        jobs.append(Job("det", tuple(det),
                        tuple(stage_command(s, config, [f"det.folds=[{fold}]"] + force_args) for s in det),
                        folds=_fold_list(cfg, "det.folds"), after=upstream, gpus=resources.gpus,
                        note="one task per fold of det.folds (task id = fold)"))
    if "train_cls" in stages:
        jobs.append(Job("cls", CLS_STAGES,
                        (stage_command("train_cls", config, [f"cls.folds=[{fold}]"] + force_args),),
                        folds=_fold_list(cfg, "cls.folds"), after=upstream, gpus=resources.gpus,
                        note="one task per fold of cls.folds (task id = fold)"))

    final = [s for s in stages if s in FINAL_STAGES]
    if final:
        arrays = tuple(j.name for j in jobs if j.is_array)
        jobs.append(Job("final", tuple(final), (stage_command("run", config, ["run.force=false"]),),
                        after=arrays or upstream,
                        note=f"run.sh run ({', '.join(stages)}): finished stages and folds are skipped, "
                             f"so what runs is {', '.join(final)}"))
    if not jobs:
        raise ConfigError(f"run.stages {stages} has no stage to submit.")
    return Plan(cfg.run.name, paths, config, jobs, resources)


def log_pattern(plan: Plan, job: Job, stream: str) -> Path:
    """sbatch's --output (``out``) / --error (``err``) pattern of ``job``."""
    return plan.paths.slurm_log(job.name, stream, array=job.is_array).resolve()


def log_file(plan: Plan, job: Job, stream: str, job_id: str, fold: int | None = None) -> Path:
    """The log a submitted job (or array task ``fold``) writes: the pattern with its ids filled in."""
    text = str(log_pattern(plan, job, stream))
    text = text.replace("%A", job_id).replace("%j", job_id)
    return Path(text.replace("%a", str(fold)) if fold is not None else text)


def sbatch_options(plan: Plan, job: Job) -> list[str]:
    """Every ``#SBATCH`` option of ``job`` (resources, array, logs); dependencies are passed at
    submission, when the ids of the jobs it waits for are known."""
    r = plan.resources
    opts = [f"--job-name={plan.run_name}-{job.name}",
            f"--output={log_pattern(plan, job, 'out')}", f"--error={log_pattern(plan, job, 'err')}",
            f"--chdir={PROJECT_ROOT}"]
    if job.is_array:
        opts.append("--array=" + ",".join(map(str, job.folds)))
    partition = r.partition if job.is_array else (r.cpu_partition or r.partition)
    if partition:
        opts.append(f"--partition={partition}")
    opts += [f"--time={r.time}", "--ntasks=1", f"--cpus-per-task={r.cpus}", f"--mem={r.mem}"]
    if job.gpus:
        opts.append(f"--gres=gpu:{job.gpus}")
    opts.append("--kill-on-invalid-dep=yes")
    return opts + list(r.extra)


def render_script(plan: Plan, job: Job) -> str:
    """The batch script of ``job``: its sbatch options, the environment, its commands."""
    head = [f"#!/bin/bash",
            f"# cxr-pipeline job '{job.name}' of run {plan.run_name}: {', '.join(job.stages)}"
            + (f"; {job.note}" if job.note else ""),
            "# written by `run.sh slurm`; submitted with sbatch (dependencies on its command line)"]
    head += [f"#SBATCH {o}" for o in sbatch_options(plan, job)]
    fold_line = f'{FOLD_VAR}="${{SLURM_ARRAY_TASK_ID}}"' if job.is_array else f'{FOLD_VAR}=""'
    body = [
        "set -euo pipefail",
        f"cd {shlex.quote(str(PROJECT_ROOT))}",
        "# one thread per CPU SLURM gave this job (torch and OpenCV would otherwise use every core of the node)",
        'export OMP_NUM_THREADS="${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}"',
        "export PYTHONUNBUFFERED=1",
        fold_line,
        "trap 'echo \"[slurm] exit status $? at $(date -Is)\"' EXIT",
        f'echo "[slurm] job ${{SLURM_JOB_ID}} ({job.name}${{{FOLD_VAR}:+ fold ${FOLD_VAR}}}) on $(hostname), '
        f'started $(date -Is), OMP_NUM_THREADS=${{OMP_NUM_THREADS}}"',
    ]
    return "\n".join(head + [""] + body + list(job.commands)) + "\n"


def describe(plan: Plan) -> str:
    """What ``--dry-run`` prints: per job its stages, array, resources, dependencies, logs and commands."""
    lines = [f"SLURM job graph of run {plan.run_name} ({len(plan.jobs)} jobs; config {plan.config})", ""]
    for job in plan.jobs:
        array = f", array over folds {list(job.folds)}" if job.is_array else ""
        lines.append(f"job {job.name}: {', '.join(job.stages)}{array}")
        if job.note:
            lines.append(f"  note:      {job.note}")
        opts = sbatch_options(plan, job)
        res = [o for o in opts if o.split("=")[0] in ("--partition", "--time", "--cpus-per-task", "--mem", "--gres",
                                                      "--array", "--ntasks")] + list(plan.resources.extra)
        lines.append(f"  resources: {' '.join(res)}")
        lines.append(f"  after:     {', '.join(job.after) + ' (afterok)' if job.after else '(nothing)'}")
        lines.append(f"  logs:      {log_pattern(plan, job, 'out')}  (.err beside it)")
        lines.append(f"  script:    {plan.paths.slurm_script(job.name).resolve()}")
        lines += [f"  run:       {c}" for c in job.commands]
        lines.append("")
    return "\n".join(lines)
