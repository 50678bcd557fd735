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
from omegaconf import OmegaConf

from marlcli import cliutil, config, sweep
from marlcli.cli import hydra_task, main
from marlcli.errors import TrainingError
from marlcli.results import read_metrics
from marlcli.trainer import check_finite, resolve_device, train

TINY = ["env=spread", "env.backend=native", "env.num_envs=4", "algo.rollout_steps=25", "algo.epochs=1",
        "train.total_steps=300", "train.eval_interval=100", "train.eval_episodes=4", "train.eval_envs=4",
        "train.checkpoint_interval=100", "train.log_interval=100", "logger.progress=false",
        "hydra.launcher.n_jobs=2"]


# ----------------------------------------------------------------------------- launcher configs
def test_local_launcher_composes() -> None:
    launcher = config.compose([], hydra=True).hydra.launcher
    assert launcher._target_.endswith("JoblibLauncher")
    assert launcher.n_jobs == sweep.parallel_jobs(1)  # no GPU here: one job per core


def test_slurm_launcher_composes() -> None:
    cfg = config.compose(["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=30"],
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
    assert (tmp_path / "spread" / "mappo" / "s" / "algo.lr=0.0007" / "seed_0" / "done").exists()
    assert not (tmp_path / "spread" / "mappo" / "s" / "algo.lr=-1" / "seed_0" / "done").exists()


def test_killed_job_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_run = subprocess.run

    def killed(cmd: list[str], **kw):  # noqa: ANN003, ANN202 - the child dies of SIGKILL
        return real_run([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"], **kw)

    monkeypatch.setattr(sweep.subprocess, "run", killed)
    cfg = config.compose(["run=k", f"results_dir={tmp_path}", *TINY[:-1]])
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


@pytest.mark.usefixtures("one_thread")
def test_interrupted_sweep_resumes_to_the_same_metrics(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    for seed in (0, 1):  # the uninterrupted sweep (same train() the jobs run)
        train(config.compose([f"seed={seed}", "run=r", f"results_dir={ref}", *TINY[:-1]]))
        train(config.compose([f"seed={seed}", "run=r", f"results_dir={cut}", *TINY[:-1]]))
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


# ----------------------------------------------------------------------------- one dir per configuration (issue 16)
def test_comparison_sweep_gets_one_dir_per_configuration(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The acceptance sweep: 4 configurations x 2 seeds -> 8 complete seed dirs, and report prints 4 rows."""
    rc = main(["train", "-m", "critic=centralized,independent", "sharing=all,none", "seed=0,1",
               f"results_dir={tmp_path}", "run=cmp", *TINY])
    err = capsys.readouterr().err
    assert rc == 0, err
    run = tmp_path / "spread" / "mappo" / "cmp"
    dirs = sorted(p.relative_to(run).as_posix() for p in run.glob("*/seed_*"))
    assert dirs == [f"critic={c},sharing={s}/seed_{k}" for c in ("centralized", "independent")
                    for s in ("all", "none") for k in (0, 1)]
    for d in run.glob("*/seed_*"):
        assert (d / "done").exists()
        evals = [r["step"] for r in read_metrics(d / "metrics.jsonl") if "eval/return_mean" in r]
        assert evals == [0, 100, 200, 300]  # complete: no job unlinked another's metrics
        saved = OmegaConf.load(d / "config.yaml")  # records the dir, so resume=<seed dir> lands in it again
        assert saved.variant == d.parent.name and f"critic={saved.critic.type}" in d.parent.name
    assert {Path(r["seed_dir"]).relative_to(run).as_posix() for r in sweep.read_statuses(tmp_path / ".sweeps" / "cmp")}\
        == set(dirs)
    assert main(["report", str(run)]) == 0
    out = capsys.readouterr().out
    rows = [ln for ln in (run / "report.md").read_text().splitlines() if ln.startswith("| spread |")]
    assert len(rows) == 4 and all("| 2/2 |" in ln for ln in rows), rows
    assert "critic" in out and "sharing" in out


def test_hyperparameter_sweep_gets_two_dirs(tmp_path: Path) -> None:
    assert main(["train", "-m", "algo.lr=1e-3,3e-3", "seed=0", f"results_dir={tmp_path}", "run=lr",
                 "launcher.isolate=false", *TINY]) == 0
    run = tmp_path / "spread" / "mappo" / "lr"
    assert sorted(p.relative_to(run).as_posix() for p in run.glob("*/seed_*")) == \
        ["algo.lr=0.001/seed_0", "algo.lr=0.003/seed_0"]  # Hydra's canonical spelling of each value
    assert OmegaConf.load(run / "algo.lr=0.003" / "seed_0" / "config.yaml").algo.lr == 3e-3
    # the parent's plan computed the same dirs the jobs wrote (so its duplicate check means something)
    over = ["algo.lr=1e-3,3e-3", "seed=0", f"results_dir={tmp_path}", "run=lr", "launcher.isolate=false", *TINY]
    assert sweep.job_seed_dirs(over, cliutil.hidden_keys(over)) == \
        [Path(r["seed_dir"]) for r in sweep.read_statuses(tmp_path / ".sweeps" / "lr")]


def test_variant_names() -> None:
    over = ["-m", "critic=centralized,independent", "sharing=all,none", "seed=0,1", "algo.lr=1e-3", "run=x"]
    over = over[1:]
    hidden = cliutil.hidden_keys(over)
    assert cliutil.variant_keys(over) == ["critic", "sharing"]
    assert {"seed", "run", "algo.lr", "env", "algo"} <= set(hidden)
    job = ["critic=independent", "sharing=none", "seed=1", "algo.lr=1e-3", "run=x"]
    assert cliutil.variant_name(job, hidden) == "critic=independent,sharing=none"
    assert cliutil.variant_name(["sharing=none", "critic=independent"], hidden) == "critic=independent,sharing=none"
    assert cliutil.variant_name(["++env.kwargs.N=3", "env.kwargs.x='a b/c'"], ["seed"]) == \
        "env.kwargs.N=3,env.kwargs.x=_a_b_c_"
    assert cliutil.safe_name("..") == "_.."
    # a sweep of the env or algo group, or of seeds only, keeps the single-run layout
    assert cliutil.variant_keys(["env=spread,tag", "algo=mappo,qmix", "seed=0,1"]) == []


def test_default_run_names_are_unique_within_a_second() -> None:
    names = {cliutil.default_run_name() for _ in range(50)}
    assert len(names) == 50
    assert all(len(n.rsplit("_", 1)[1]) == 6 for n in names)


def test_plan_refuses_jobs_that_share_a_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["train", "-m", "seed=0,0", f"results_dir={tmp_path}", "run=dup", *TINY])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and "would both write" in err and "seed_0" in err
    assert not (tmp_path / "spread").exists()  # nothing ran
    rc = main(["train", "-m", "variant=same", "algo.lr=1e-3,2e-3", f"results_dir={tmp_path}", "run=dup", *TINY])
    assert rc == 2 and "would both write" in capsys.readouterr().err


def test_full_product_is_validated_before_anything_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """qmix is discrete-only: [qmix, continuous] must be caught although each value alone is fine."""
    combos = cliutil.combinations(["algo=mappo,qmix", "env.continuous_actions=false,true"])
    assert ["algo=qmix", "env.continuous_actions=True"] in combos and len(combos) == 4
    rc = main(["train", "-m", "algo=mappo,qmix", "env.continuous_actions=false,true", f"results_dir={tmp_path}",
               "run=v", *[o for o in TINY if not o.startswith("algo.")]])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and "qmix" in err and "continuous" in err
    assert not (tmp_path / "spread").exists()


def test_large_sweeps_validate_every_env_algo_combination() -> None:
    big = ["algo=mappo,qmix", "env.continuous_actions=false,true", "algo.lr=" + ",".join(str(i) for i in range(1, 80)),
           "seed=0,1"]
    combos = cliutil.combinations(big, limit=100)
    structural = {(c[0], c[1]) for c in combos}
    assert len(structural) == 4 and len(combos) == 4 + 78 + 1
    assert cliutil.n_jobs(big) == 2 * 2 * 79 * 2


def test_rerunning_a_sweep_without_resume_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["train", "-m", "seed=0", f"results_dir={tmp_path}", "run=again", "launcher.isolate=false", *TINY]
    assert main(args) == 0
    metrics = tmp_path / "spread" / "mappo" / "again" / "seed_0" / "metrics.jsonl"
    before = metrics.read_text()
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "already holds a run" in err and "resume=auto" in err and "run=" in err
    assert metrics.read_text() == before
    assert main([*args, "resume=auto"]) == 0  # the documented way on: every job is skipped
    assert [r["status"] for r in sweep.read_statuses(tmp_path / ".sweeps" / "again")] == ["skipped"]


def test_makefile_train_twice_uses_fresh_run_names(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    (tmp_path / "pyproject.toml").touch()
    stamp = tmp_path / "stamp"  # newer than pyproject.toml: make sees the venv as installed and prints only
    stamp.touch()
    names = []
    for _ in range(2):
        out = subprocess.run(["make", "-s", "-n", "-C", str(root), "train", f"STAMP={stamp}"], capture_output=True,
                             text=True, check=True).stdout
        [train_line] = [ln for ln in out.splitlines() if " train " in ln]
        [run] = [a.split("=", 1)[1] for a in train_line.split() if a.startswith("run=")]
        [eval_line] = [ln for ln in out.splitlines() if " eval " in ln]
        assert f"results/spread/mappo/{run}" in eval_line
        names.append(run)
    assert names[0] != names[1] and all(n.startswith("quickstart_") for n in names)
    (tmp_path / "results" / "spread" / "mappo" / "quickstart_2020-01-01_00-00-00_aaaa").mkdir(parents=True)
    newest = tmp_path / "results" / "spread" / "mappo" / "quickstart_2030-01-01_00-00-00_bbbb"
    newest.mkdir()
    out = subprocess.run(["make", "-s", "-n", "-f", str(root / "Makefile"), "eval", f"STAMP={stamp}"], cwd=tmp_path,
                         capture_output=True, text=True, check=True).stdout
    assert "results/spread/mappo/quickstart_2030-01-01_00-00-00_bbbb" in out
