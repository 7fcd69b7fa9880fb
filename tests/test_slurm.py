"""The SLURM job graph (`run.sh slurm`): its shape, scripts and errors (fast, no SLURM needed), and a real
submission through a running cluster compared with a local run (marked `slurm`; start one with
`scripts/local_slurm.sh start`, then `./run.sh test -m slurm`)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import uuid
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pipeline.__main__ import main as cli
from pipeline.config import CONFIG_DIR, load_config, load_defaults
from pipeline.errors import ConfigError
from pipeline.paths import PROJECT_ROOT, RunPaths
from pipeline.slurm import Resources, build_plan, default_gpus, describe, log_file, render_script, sbatch_options
from pipeline.slurm_queue import Task, expand_ids, failures, parse_scontrol, write_files
from pipeline.tools.slurm import job_config

DEMO = str(CONFIG_DIR / "demo.yaml")


def _cfg(tmp_path, *overrides):
    return load_config(DEMO, [f"run.root={tmp_path / 'runs'}", "run.name=g", *overrides])


def test_demo_graph_groups_arrays_dependencies_and_commands(tmp_path):
    cfg = _cfg(tmp_path, "det.folds=[0,1]", "cls.folds=[1]")
    plan = build_plan(cfg, Resources(gpus=1))
    assert [j.name for j in plan.jobs] == ["prep", "det", "cls", "final"]
    prep, det, cls, final = plan.jobs
    # the demo trains its lung model and gate first: prepare screens its inputs with the gate
    assert prep.stages == ("segment", "screen", "prepare", "folds") and not prep.is_array and prep.after == ()
    assert det.stages == ("train_det", "predict") and det.folds == (0, 1) and det.after == ("prep",)
    assert cls.folds == (1,) and cls.after == ("prep",)
    assert final.after == ("det", "cls") and final.stages == ("fuse", "evaluate", "submit")
    config = str(RunPaths.from_config(cfg).slurm_config.resolve())
    run_sh = str(PROJECT_ROOT / "run.sh")
    assert prep.commands == tuple(f"{run_sh} {s} --config {config}" for s in ("segment", "screen", "prepare", "folds"))
    assert det.commands == (f'{run_sh} train_det --config {config} "det.folds=[${{FOLD}}]"',
                            f'{run_sh} predict --config {config} "det.folds=[${{FOLD}}]"')
    assert cls.commands == (f'{run_sh} train_cls --config {config} "cls.folds=[${{FOLD}}]"',)
    assert final.commands == (f"{run_sh} run --config {config} run.force=false",)
    # GPUs only where training happens; array ids are the folds themselves
    assert "--gres=gpu:1" in sbatch_options(plan, det) and "--array=0,1" in sbatch_options(plan, det)
    assert "--array=1" in sbatch_options(plan, cls)
    assert not any(o.startswith(("--gres", "--array")) for o in sbatch_options(plan, prep) + sbatch_options(plan, final))


def test_array_sizes_follow_the_configured_folds(tmp_path):
    plan = build_plan(_cfg(tmp_path, "folds.n_splits=5", "det.folds=[0,2,4]", "cls.folds=[3]"), Resources())
    assert plan.job("det").folds == (0, 2, 4) and plan.job("cls").folds == (3,)
    with pytest.raises(ConfigError, match=r"det.folds: 5 is not a fold of folds.n_splits=5"):
        build_plan(_cfg(tmp_path, "folds.n_splits=5", "det.folds=[1,5]"), Resources())
    with pytest.raises(ConfigError, match="cls.folds: fold 1 is listed twice"):
        build_plan(_cfg(tmp_path, "cls.folds=[1,1]"), Resources())


def test_stages_not_in_run_stages_get_no_job(tmp_path):
    plan = build_plan(_cfg(tmp_path, "run.stages=[prepare,folds,train_cls,evaluate]"), Resources())
    assert [j.name for j in plan.jobs] == ["prep", "cls", "final"]
    assert plan.job("final").after == ("cls",) and plan.job("final").stages == ("evaluate",)
    assert "train_det" not in describe(plan) and "predict" not in describe(plan)
    # only the detector, its data already prepared: one array, waiting for nothing, no final job
    plan = build_plan(_cfg(tmp_path, "run.stages=[train_det]"), Resources())
    assert [(j.name, j.stages, j.after) for j in plan.jobs] == [("det", ("train_det",), ())]
    with pytest.raises(ConfigError, match="no stage to submit"):
        build_plan(_cfg(tmp_path, "run.stages=[]"), Resources())


def test_resources_and_logs_in_the_script(tmp_path):
    cfg = _cfg(tmp_path)
    res = Resources(partition="gpu", cpu_partition="cpu", time="02:00:00", cpus=4, mem="16G", gpus=2,
                    extra=("--account=lab",))
    plan = build_plan(cfg, res)
    paths = RunPaths.from_config(cfg)
    det, prep = render_script(plan, plan.job("det")), render_script(plan, plan.job("prep"))
    for line in ("--partition=gpu", "--time=02:00:00", "--cpus-per-task=4", "--mem=16G", "--gres=gpu:2",
                 "--account=lab", "--kill-on-invalid-dep=yes", f"--chdir={PROJECT_ROOT}",
                 f"--output={paths.slurm_log('det', 'out').resolve()}",
                 f"--error={paths.slurm_log('det', 'err').resolve()}"):
        assert f"#SBATCH {line}\n" in det
    assert "#SBATCH --partition=cpu\n" in prep and "--gres" not in prep
    assert f"#SBATCH --output={paths.run_dir.resolve()}/slurm/prep_%j.out\n" in prep
    assert str(paths.run_dir.resolve() / "slurm" / "det_%A_%a.out") in det
    assert log_file(plan, plan.job("det"), "err", "77", 1) == paths.run_dir.resolve() / "slurm" / "det_77_1.err"
    for name in ("prep", "det", "cls", "final"):  # valid bash
        script = tmp_path / f"{name}.sh"
        script.write_text(render_script(plan, plan.job(name)))
        assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    with pytest.raises(ConfigError, match="--sbatch"):
        Resources(extra=("account=lab",))


def test_gpus_default_from_run_device():
    assert [default_gpus(d) for d in ("cpu", "auto", "0", "0,1", "cuda:0")] == [0, 1, 1, 2, 1]


def test_job_config_gives_threads_the_job_cpus(tmp_path):
    cfg = _cfg(tmp_path)
    if "threads" not in load_defaults()["run"]:
        pytest.skip("this version has no run.threads")
    assert job_config(cfg, 3).run.threads == 3 and cfg.run.threads == 0
    assert job_config(_cfg(tmp_path, "run.threads=2"), 8).run.threads == 2


def test_array_script_runs_the_cli_for_its_fold(tmp_path):
    """The written script, run by bash as slurmd would: it calls run.sh with the task's fold (the saved
    config.yaml of that invocation says det.folds [1]) and ends with the exit line --wait reads."""
    cfg = _cfg(tmp_path, "run.stages=[train_det]", "det.folds=[0,1]")
    plan = build_plan(cfg, Resources())
    scripts = write_files(plan, cfg)
    saved = load_config(plan.config)
    assert saved.to_dict() == cfg.to_dict()
    env = {**os.environ, "SLURM_ARRAY_TASK_ID": "1", "SLURM_JOB_ID": "99", "SLURM_CPUS_PER_TASK": "1"}
    env.pop("OMP_NUM_THREADS", None)
    proc = subprocess.run(["bash", str(scripts["det"])], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr  # no prepared data: the CLI's own error
    assert "error:" in proc.stderr and "Traceback" not in proc.stderr
    assert "(det fold 1)" in proc.stdout and "OMP_NUM_THREADS=1" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1].startswith("[slurm] exit status 2")
    ran = yaml.safe_load(RunPaths.from_config(cfg).config.read_text())
    assert ran["det"]["folds"] == [1]


def test_dry_run_prints_jobs_and_writes_nothing(tmp_path, capsys):
    assert cli(["slurm", "--config", DEMO, f"run.root={tmp_path / 'runs'}", "run.name=d", "--dry-run",
                "--partition", "gpu", "--gpus-per-job", "1", "cls.folds=[0]"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"job det: train_det, predict, array over folds \[0, 1\]", out)
    assert re.search(r"job cls: train_cls, array over folds \[0\]", out)
    assert "after:     det, cls (afterok)" in out and "--partition=gpu" in out and "--gres=gpu:1" in out
    assert not (tmp_path / "runs").exists()


def test_without_sbatch_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    assert cli(["slurm", "--config", DEMO, f"run.root={tmp_path / 'runs'}", "run.name=n"]) == 2
    err = capsys.readouterr().err
    assert "sbatch" in err and "scripts/local_slurm.sh start" in err and "--dry-run" in err
    assert cli(["slurm", "--config", DEMO, f"run.root={tmp_path / 'runs'}", "run.force=true", "--dry-run"]) == 2
    assert "--force" in capsys.readouterr().err


# `scontrol show job -o` lines as slurmctld 22.05 printed them (trimmed to the fields read).
SCONTROL = """\
JobId=4 ArrayJobId=4 ArrayTaskId=0-1 JobName=a.sh JobState=PENDING Reason=None Dependency=(null) ExitCode=0:0
JobId=4 ArrayJobId=4 ArrayTaskId=1 JobName=a.sh JobState=FAILED Reason=NonZeroExitCode Dependency=(null) ExitCode=3:0
JobId=2 JobName=wrap JobState=CANCELLED Reason=DependencyNeverSatisfied Dependency=afterok:1(failed) ExitCode=0:0
"""


def test_scontrol_records_and_array_ids():
    recs = parse_scontrol(SCONTROL)
    assert [r["JobState"] for r in recs] == ["PENDING", "FAILED", "CANCELLED"]
    assert recs[0]["ArrayTaskId"] == "0-1" and "ArrayTaskId" not in recs[2] and recs[1]["ExitCode"] == "3:0"
    assert expand_ids("0-1") == [0, 1] and expand_ids("0,2,5-7") == [0, 2, 5, 6, 7]
    assert expand_ids("1-9:4%2") == [1, 5, 9] and expand_ids("3") == [3]


def test_failures_name_the_job_its_log_and_its_error(tmp_path):
    cfg = _cfg(tmp_path)
    plan = build_plan(cfg, Resources())
    err = log_file(plan, plan.job("det"), "err", "14", 1)
    err.parent.mkdir(parents=True)
    err.write_text("[train_det] running\nerror: detection.csv not found; run prepare\n")
    tasks = [Task("det", "14", 0, "COMPLETED", "0:0"), Task("det", "14", 1, "FAILED", "2:0", "NonZeroExitCode"),
             Task("final", "16", None, "CANCELLED", "0:0", "DependencyNeverSatisfied")]
    text = failures(plan, tasks)
    assert len(text) == 2
    assert text[0].startswith("det fold 1 (SLURM job 14_1): FAILED, exit 2:0") and str(err) in text[0]
    assert "detection.csv not found" in text[0]
    assert text[1].startswith("final (SLURM job 16): not run: a job it waits for failed")


# ------------------------------------------------------------------------------------------------
# A real cluster: scripts/local_slurm.sh start (or any cluster whose nodes share this directory).

TINY = ["data.demo_n_train=40", "data.demo_n_test=10", "det.epochs=1", "cls.epochs=1", "det.imgsz=64",
        "cls.imgsz=64", "image.size=128",
        # The classifier's augmentation is an albumentations Compose without a seed: it draws from OS
        # entropy, so two runs of one config differ in any process (measured: p_abnormal 0.52 vs 0.20 for
        # the same image). Off, training is seeded end to end and repeats exactly; what is compared then
        # is the engine, not that randomness.
        "cls.augment={hflip: 0, shift_scale_rotate: 0, brightness_contrast: 0}"]


def _cluster_up() -> str | None:
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "no SLURM client (sinfo/sbatch) on PATH: start a local cluster with scripts/local_slurm.sh start"
    proc = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    states = proc.stdout.split()
    if proc.returncode != 0 or not any(s.rstrip("*~#") in ("idle", "mixed", "allocated", "completing") for s in states):
        return (f"no SLURM node is up (sinfo: {proc.stdout.strip() or proc.stderr.strip()}); "
                "start one with scripts/local_slurm.sh start")
    return None


def _run(args, env, timeout=1200):
    proc = subprocess.run([str(PROJECT_ROOT / "run.sh"), *args], cwd=PROJECT_ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"{args[0]} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


def _started(log: Path) -> float:
    m = re.search(r"started (\S+),", log.read_text())
    assert m, f"{log}: no start line"
    return datetime.fromisoformat(m.group(1)).timestamp()


@pytest.mark.slurm
def test_submission_through_slurm_equals_a_local_run(tmp_path):
    reason = _cluster_up()
    if reason:
        pytest.skip(reason)
    tag = uuid.uuid4().hex[:8]
    names = {"slurm": f"slurmtest_{tag}_slurm", "local": f"slurmtest_{tag}_local"}
    # one demo dataset for both runs; one compute thread in every process of both
    common = [f"run.root={tmp_path / 'runs'}", f"data.root={tmp_path / 'data'}", *TINY]
    if "threads" in load_defaults()["run"]:
        common.append("run.threads=1")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    paths = {k: RunPaths.from_config(load_config(DEMO, [*common, f"run.name={n}"])) for k, n in names.items()}
    try:
        submit = ["slurm", "--config", DEMO, *common, f"run.name={names['slurm']}", "--gpus-per-job", "0",
                  "--cpus-per-task", "1", "--mem", "1G", "--time", "00:30:00", "--wait", "--poll", "2"]
        out = _run(submit, env)
        assert "all 6 job(s) completed" in out, out
        jobs = json.loads(paths["slurm"].slurm_jobs.read_text())["jobs"]
        assert list(jobs) == ["prep", "det", "cls", "final"]
        assert jobs["det"]["folds"] == [0, 1] and jobs["final"]["after"] == ["det", "cls"]
        sdir = paths["slurm"].slurm_dir
        for name in ("prep", "final"):
            assert (sdir / f"{name}_{jobs[name]['id']}.out").is_file()
        for name in ("det", "cls"):
            for k in (0, 1):
                log = sdir / f"{name}_{jobs[name]['id']}_{k}.out"
                assert f"({name} fold {k})" in log.read_text() and log.with_suffix(".err").is_file()
        # the final job trained nothing: every fold's weights are older than its start
        run = paths["slurm"]
        weights = [run.det_weights("yolov8n", k) for k in (0, 1)] + \
                  [run.cls_weights("densenet121", k) for k in (0, 1)]
        final_start = _started(sdir / f"final_{jobs['final']['id']}.out")
        assert all(w.stat().st_mtime < final_start for w in weights)

        _run(["run", "--config", DEMO, *common, f"run.name={names['local']}"], env)

        a, b = paths["slurm"], paths["local"]
        for table in ("folds.csv", "boxes.csv"):
            pd.testing.assert_frame_equal(pd.read_csv(a.run_dir / table), pd.read_csv(b.run_dir / table))
        for k in (0, 1):
            for split in ("oof", "test"):
                pd.testing.assert_frame_equal(pd.read_csv(a.det_predictions("yolov8n", k, split)),
                                              pd.read_csv(b.det_predictions("yolov8n", k, split)))
        for split in ("oof", "test"):
            pd.testing.assert_frame_equal(pd.read_csv(a.cls_predictions("densenet121", split)),
                                          pd.read_csv(b.cls_predictions("densenet121", split)))
        assert a.submission.read_text() == b.submission.read_text()

        # resubmitting: every job runs again, every finished fold is skipped, the submission stays
        stamps = [w.stat().st_mtime_ns for w in weights]
        before = a.submission.read_text()
        out = _run(submit, env)
        assert "all 6 job(s) completed" in out, out
        assert [w.stat().st_mtime_ns for w in weights] == stamps
        assert a.submission.read_text() == before
    finally:
        for p in paths.values():
            p.submission.unlink(missing_ok=True)
