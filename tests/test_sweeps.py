"""Sweeps (issue 6): launcher configs, GPU/thread assignment, failure isolation, resume=auto."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import cloudpickle
import pytest
import torch

from marlcli import config, sweep
from marlcli.cli import hydra_task, main
from marlcli.errors import TrainingError
from marlcli.results import read_metrics
from marlcli.trainer import check_finite, resolve_device, train

TINY = ["env=spread", "env.backend=native", "env.num_envs=4", "algo.rollout_steps=25", "algo.epochs=1",
        "train.total_steps=300", "train.eval_interval=100", "train.eval_episodes=4", "train.eval_envs=4",
        "train.checkpoint_interval=100", "train.log_interval=100", "logger.progress=false",
        "hydra.launcher.n_jobs=2"]


def compose(overrides: list[str], hydra: bool = False):  # noqa: ANN201
    config.register()
    return sweep._compose(overrides, hydra=hydra)


# ----------------------------------------------------------------------------- launcher configs
def test_local_launcher_composes() -> None:
    launcher = compose([], hydra=True).hydra.launcher
    assert launcher._target_.endswith("JoblibLauncher")
    assert launcher.n_jobs == sweep.parallel_jobs(1)  # no GPU here: one job per core


def test_slurm_launcher_composes() -> None:
    cfg = compose(["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=30"],
                  hydra=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.partition, launcher.timeout_min, launcher.gpus_per_node) == ("gpu", 30, 1)
    for key in ("cpus_per_task", "mem_gb", "array_parallelism"):
        assert isinstance(launcher[key], int)


def test_job_function_is_picklable() -> None:
    """submitit ships the task to the nodes with cloudpickle: it must round-trip."""
    assert cloudpickle.loads(cloudpickle.dumps(hydra_task)) is hydra_task
    assert cloudpickle.loads(cloudpickle.dumps(sweep.run_job)) is sweep.run_job


def test_parallel_jobs_and_threads() -> None:
    assert sweep.parallel_jobs(1, gpus=0, cores=2) == 2
    assert sweep.parallel_jobs(3, gpus=2, cores=16) == 6
    assert sweep.parallel_jobs(1, gpus=0, cores=0) == 1
    assert sweep.threads_per_job(2, cores=2) == 1
    assert sweep.threads_per_job(4, cores=16) == 4
    assert sweep.threads_per_job(8, cores=2) == 1  # never 0
    assert sweep.threads_per_job(6, cores=16) == 2


def test_device_round_robin_over_fake_gpus() -> None:
    assert [str(resolve_device("auto", job_num=k, gpus=3)) for k in range(5)] == \
        ["cuda:0", "cuda:1", "cuda:2", "cuda:0", "cuda:1"]
    assert str(resolve_device("auto", gpus=2)) == "cuda"  # a single run: the default GPU
    assert str(resolve_device("auto", job_num=3, gpus=0)) == "cpu"
    assert str(resolve_device("cpu", job_num=3, gpus=4)) == "cpu"  # an explicit device is kept


def test_nan_loss_stops_the_run() -> None:
    check_finite({"step": 10, "loss/value": 1.0, "train/return_mean": math.nan})  # only losses count
    with pytest.raises(TrainingError, match="loss/value is nan at step 10"):
        check_finite({"step": 10, "loss/policy": 0.1, "loss/value": math.nan})


# ----------------------------------------------------------------------------- failures
def test_sweep_with_a_failing_job(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """algo.lr=-1 passes composition but the optimizer rejects it in the job: that job fails alone."""
    rc = main(["train", "-m", "seed=0", "algo.lr=0.0007,-1", f"results_dir={tmp_path}", "run=s", *TINY])
    err = capsys.readouterr().err
    assert rc == 1
    rows = sweep.read_statuses(tmp_path / ".sweeps" / "s")
    assert [r["status"] for r in rows] == ["finished", "failed"]
    assert "Invalid learning rate: -1" in rows[1]["error"]
    assert "sweep: 1 finished, 1 failed" in err and "Invalid learning rate" in err
    assert (tmp_path / "spread" / "mappo" / "s" / "seed_0" / "done").exists()


def test_killed_job_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_run = subprocess.run

    def killed(cmd: list[str], **kw):  # noqa: ANN003, ANN202 - the child dies of SIGKILL
        return real_run([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"], **kw)

    monkeypatch.setattr(sweep.subprocess, "run", killed)
    cfg = compose(["run=k", f"results_dir={tmp_path}", *TINY[:-1]])
    assert sweep._run_child(cfg, tmp_path, 0, 1) == "killed by SIGKILL"


def test_summary_counts_dead_and_missing_jobs(tmp_path: Path) -> None:
    for num, status in enumerate(["finished", "running", "skipped"]):
        (tmp_path / str(num)).mkdir()
        (tmp_path / str(num) / sweep.STATUS_FILE).write_text(json.dumps(
            {"job": num, "overrides": [f"seed={num}"], "seed_dir": "x", "status": status, "error": None,
             "wall_s": 1.0}))
    plan = sweep.SweepPlan(tmp_path, 2, expected=4, launcher="JoblibLauncher")
    assert sweep.summarize(plan, launcher_error="TerminatedWorkerError") == 1
    ok = sweep.SweepPlan(tmp_path, 2, expected=3, launcher="JoblibLauncher")
    (tmp_path / "1" / sweep.STATUS_FILE).unlink()
    assert sweep.summarize(ok) == 1  # job 1 never recorded -> not run
    ok.expected = 2
    assert sweep.summarize(ok) == 0


# ----------------------------------------------------------------------------- resume=auto
def _strip_time(path: Path) -> list[dict]:
    return [{k: v for k, v in ln.items() if not k.startswith("time")} for ln in read_metrics(path)]


def test_interrupted_sweep_resumes_to_the_same_metrics(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.set_num_threads(1)
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    for seed in (0, 1):  # the uninterrupted sweep (same train() the jobs run)
        train(compose([f"seed={seed}", "run=r", f"results_dir={ref}", *TINY[:-1]]))
        train(compose([f"seed={seed}", "run=r", f"results_dir={cut}", *TINY[:-1]]))
    # interrupt seed 1 just after its step-100 checkpoint: no done file, latest.pt = step 100
    s1 = cut / "spread" / "mappo" / "r" / "seed_1"
    (s1 / "done").unlink()
    shutil.copy(s1 / "checkpoints" / "step_100.pt", s1 / "checkpoints" / "latest.pt")
    for later in ("step_200.pt", "step_300.pt"):
        (s1 / "checkpoints" / later).unlink()
    done0 = (cut / "spread" / "mappo" / "r" / "seed_0" / "metrics.jsonl").stat().st_mtime_ns
    # re-run the same sweep command with resume=auto and no run=: it continues run "r"
    rc = main(["train", "-m", "seed=0,1", "resume=auto", f"results_dir={cut}", *TINY])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "continuing run 'r'" in err
    assert [r["status"] for r in sweep.read_statuses(cut / ".sweeps" / "r")] == ["skipped", "resumed"]
    assert (cut / "spread" / "mappo" / "r" / "seed_0" / "metrics.jsonl").stat().st_mtime_ns == done0
    for seed in (0, 1):
        a = _strip_time(ref / "spread" / "mappo" / "r" / f"seed_{seed}" / "metrics.jsonl")
        b = _strip_time(cut / "spread" / "mappo" / "r" / f"seed_{seed}" / "metrics.jsonl")
        assert a == b
    assert (s1 / "done").exists()
