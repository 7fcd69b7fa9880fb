"""Submit a :class:`pipeline.slurm.Plan` with ``sbatch`` and follow it with ``scontrol``.

Submission writes the job scripts and the resolved config into ``<run dir>/slurm/``, checks every job
with ``sbatch --test-only`` first (a graph is never half-submitted because the cluster cannot run one of
its jobs), then submits in order with ``--dependency=afterok:<ids>``; if a later ``sbatch`` fails, the
jobs already submitted are cancelled (by their ids). The ids go to ``slurm/jobs.json``; a new submission
while jobs of the last one are still queued or running is refused (two graphs writing one run directory).

States come from ``scontrol show job -o`` (no accounting database needed: the local test cluster has
none); a job that slurmctld no longer knows (``MinJobAge`` after it ended) is judged by the last line its
script writes to its ``.out`` log (``[slurm] exit status N``); ``sacct`` is not used.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.io import write_text_atomic
from pipeline.slurm import Job, Plan, log_file, render_script

TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
            "BOOT_FAIL", "DEADLINE", "SPECIAL_EXIT", "REVOKED"}
NO_CLUSTER = ("`sbatch` is not on PATH: no SLURM client here. Start a single-node cluster on this machine with "
              "`scripts/local_slurm.sh start` (Debian/Ubuntu, root), run this on a cluster's login node, or "
              "add --dry-run to print the jobs without submitting.")


class SlurmError(PipelineError):
    """sbatch/scontrol refused or failed; the message carries SLURM's own words."""


def _slurm(args: list[str], what: str) -> str:
    if shutil.which(args[0]) is None:
        raise SlurmError(NO_CLUSTER if args[0] == "sbatch" else f"`{args[0]}` is not on PATH. {NO_CLUSTER}")
    proc = subprocess.run(args, capture_output=True, text=True)
    if proc.returncode != 0:
        msg = (proc.stderr.strip() or proc.stdout.strip() or f"exit status {proc.returncode}").replace("\n", "; ")
        raise SlurmError(f"{what}: {msg}")
    return proc.stdout + proc.stderr


@dataclass
class Task:
    """One job, or one array task (``fold`` set), as slurmctld reports it."""

    job: str          # plan job name
    job_id: str       # the id sbatch returned (the array's id for tasks)
    fold: int | None
    state: str
    exit_code: str = ""
    reason: str = ""

    @property
    def label(self) -> str:
        where = f" fold {self.fold}" if self.fold is not None else ""
        sid = f"{self.job_id}_{self.fold}" if self.fold is not None else self.job_id
        return f"{self.job}{where} (SLURM job {sid})"


def parse_scontrol(text: str) -> list[dict[str, str]]:
    """``scontrol show job -o`` output -> one dict per line (``JobState``, ``ArrayTaskId``, ...)."""
    records = []
    for line in text.splitlines():
        if "JobId=" not in line:
            continue
        rec = {}
        for m in re.finditer(r"(\S+?)=(\S*)", line):
            rec.setdefault(m.group(1), m.group(2))
        records.append(rec)
    return records


def expand_ids(spec: str) -> list[int]:
    """An ``ArrayTaskId`` value (``3``, ``0-4``, ``0,2,5-7``, ``1-9%2``) -> the task ids."""
    out: list[int] = []
    for part in spec.split("%")[0].split(","):
        if "-" in part:
            lo, hi = part.split("-", 1)
            step = 1
            if ":" in hi:
                hi, s = hi.split(":", 1)
                step = int(s)
            out.extend(range(int(lo), int(hi) + 1, step))
        elif part:
            out.append(int(part))
    return out


def _from_log(plan: Plan, job: Job, job_id: str, fold: int | None) -> Task:
    """State of a job slurmctld has forgotten, from its log's last line."""
    log = log_file(plan, job, "out", job_id, fold)
    try:
        lines = log.read_text(errors="replace").strip().splitlines()
    except OSError:
        lines = []
    last = lines[-1] if lines else ""
    m = re.search(r"\[slurm\] exit status (\d+)", last)
    if m:
        return Task(job.name, job_id, fold, "COMPLETED" if m.group(1) == "0" else "FAILED", f"{m.group(1)}:0")
    return Task(job.name, job_id, fold, "UNKNOWN", reason=f"no longer known to slurmctld and {log} has no exit line")


def job_tasks(plan: Plan, job: Job, job_id: str) -> list[Task]:
    """Every task of a submitted job (one for a single job), pending ranges expanded."""
    proc = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True)
    records = parse_scontrol(proc.stdout) if proc.returncode == 0 else []
    seen: dict[int | None, Task] = {}
    for rec in records:
        state = rec.get("JobState", "UNKNOWN")
        common = dict(state=state, exit_code=rec.get("ExitCode", ""), reason=rec.get("Reason", ""))
        if job.is_array and rec.get("ArrayTaskId"):
            for k in expand_ids(rec["ArrayTaskId"]):
                seen[k] = Task(job.name, job_id, k, **common)
        else:
            seen[None] = Task(job.name, job_id, None, **common)
    wanted: list[int | None] = list(job.folds) if job.is_array else [None]
    return [seen[k] if k in seen else _from_log(plan, job, job_id, k) for k in wanted]


def write_files(plan: Plan, cfg) -> dict[str, Path]:
    """The resolved config and every job's script, in ``<run dir>/slurm/``. Returns job name -> script."""
    from pipeline.config import save_config

    plan.paths.slurm_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, plan.config)
    scripts = {}
    for job in plan.jobs:
        path = plan.paths.slurm_script(job.name)
        write_text_atomic(path, render_script(plan, job))
        path.chmod(0o755)
        scripts[job.name] = path
    return scripts


def still_queued(plan: Plan) -> list[str]:
    """Ids of the last submission's jobs that are still pending or running."""
    try:
        record = json.loads(plan.paths.slurm_jobs.read_text())
    except (OSError, ValueError):
        return []
    ids = [str(j["id"]) for j in record.get("jobs", {}).values()]
    if not ids or shutil.which("squeue") is None:
        return []
    proc = subprocess.run(["squeue", "-h", "-o", "%i", "-j", ",".join(ids)], capture_output=True, text=True)
    alive = {line.split("_")[0] for line in proc.stdout.split()}
    return [i for i in ids if i in alive]


def submit(plan: Plan, cfg) -> dict[str, str]:
    """Write, check and submit every job in order; returns job name -> SLURM job id."""
    if shutil.which("sbatch") is None:
        raise SlurmError(NO_CLUSTER)
    busy = still_queued(plan)
    if busy:
        raise SlurmError(f"jobs {', '.join(busy)} of the last submission of run {plan.run_name} are still queued or "
                         f"running ({plan.paths.slurm_jobs}); two graphs would write one run directory. Wait for them "
                         f"(squeue -j {','.join(busy)}) or cancel them (scancel {' '.join(busy)}), then submit again.")
    scripts = write_files(plan, cfg)
    for job in plan.jobs:
        _slurm(["sbatch", "--test-only", str(scripts[job.name])],
               f"SLURM cannot run job '{job.name}' as asked ({scripts[job.name]}); lower --cpus-per-task, --mem, "
               f"--gpus-per-job or --time, or choose another --partition. sbatch --test-only said")
    ids: dict[str, str] = {}
    try:
        for job in plan.jobs:
            args = ["sbatch", "--parsable"]
            if job.after:
                args.append("--dependency=afterok:" + ":".join(ids[a] for a in job.after))
            out = _slurm(args + [str(scripts[job.name])], f"sbatch refused job '{job.name}'")
            ids[job.name] = out.strip().splitlines()[-1].split(";")[0].strip()
    except SlurmError:
        if ids:
            subprocess.run(["scancel", *ids.values()], capture_output=True)
            raise SlurmError(f"submission stopped; cancelled the jobs already submitted ({', '.join(ids.values())})") \
                from None
        raise
    record = {"run": plan.run_name, "submitted": time.strftime("%Y-%m-%dT%H:%M:%S"), "config": str(plan.config),
              "jobs": {j.name: {"id": ids[j.name], "stages": list(j.stages), "folds": list(j.folds),
                                "after": list(j.after), "script": str(scripts[j.name])} for j in plan.jobs}}
    write_text_atomic(plan.paths.slurm_jobs, json.dumps(record, indent=2))
    return ids


def wait(plan: Plan, ids: dict[str, str], poll_s: float = 10.0, echo=print) -> list[Task]:
    """Poll until every task has ended; prints each state change. Returns the final tasks."""
    last: dict[str, str] = {}
    while True:
        tasks = [t for job in plan.jobs for t in job_tasks(plan, job, ids[job.name])]
        for t in tasks:
            if last.get(t.label) != t.state:
                echo(f"  {t.label}: {t.state}" + (f" ({t.reason})" if t.reason not in ("", "None") else ""))
                last[t.label] = t.state
        if all(t.state in TERMINAL or t.state == "UNKNOWN" for t in tasks):
            return tasks
        time.sleep(poll_s)


def failures(plan: Plan, tasks: list[Task]) -> list[str]:
    """One paragraph per task that did not complete: what, its state, its logs and the end of its .err."""
    out = []
    for t in tasks:
        if t.state == "COMPLETED":
            continue
        job = plan.job(t.job)
        err = log_file(plan, job, "err", t.job_id, t.fold)
        log = log_file(plan, job, "out", t.job_id, t.fold)
        if t.state == "CANCELLED" and "Dependency" in t.reason:
            out.append(f"{t.label}: not run: a job it waits for failed ({t.reason})")
            continue
        text = f"{t.label}: {t.state}" + (f", exit {t.exit_code}" if t.exit_code else "") + \
               (f", {t.reason}" if t.reason not in ("", "None") else "") + f"\n    log: {err}  (stdout: {log})"
        try:
            tail = err.read_text(errors="replace").strip().splitlines()[-8:]
        except OSError:
            tail = []
        text += "".join(f"\n    | {line}" for line in tail)
        out.append(text)
    return out
