"""Data-parallel training over 2 gloo processes (issue 21).

One ``torch.multiprocessing`` spawn of 2 ranks does the in-process checks (a process start
costs seconds on 2 cores): every family keeps bitwise identical parameters on both ranks,
the sync check notices a rank that drifted, PPO and Q-learning gradients on 2 x B/2 equal
the single-process ones on B, and a 2-process MAPPO run resumes exactly. A real
``marl train dist.nproc_per_node=2`` subprocess checks the launcher and a killed rank.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import collect_rollout, make_cfg, strip_time

from marlcli import results
from marlcli.distributed import collectives as distributed
from marlcli.distributed.launch import train_or_launch
from marlcli.envs import make_env
from marlcli.errors import TrainingError
from marlcli.trainer import train

REPO = Path(__file__).resolve().parents[2]
BASE = ["env=spread", "env.backend=native", "env.num_envs=4", "device=cpu", "run=test", "logger.progress=false",
        "train.eval_episodes=4", "train.eval_envs=4", "train.log_interval=100", "train.checkpoint_interval=200",
        "train.eval_interval=10000", "train.total_steps=400"]
FAMILIES = {  # 400 global env steps = 4 rollouts of 2 env copies per rank; checkpoints (and sync checks) at 200, 400
    "mappo": ["algo=mappo", "algo.epochs=2", "algo.minibatches=2"],
    "vdn": ["algo=vdn", "algo.learning_starts=4", "algo.batch_episodes=4", "algo.buffer_episodes=50"],
    "maddpg": ["algo=maddpg", "env.continuous_actions=true", "algo.learning_starts=100", "algo.batch_size=32",
               "algo.buffer_size=1000", "algo.updates_per_rollout=3"],
    "coma": ["algo=coma", "train.checkpoint_interval=400"],  # first checkpoint at the last step (rank 0 decides)
}
PPO_GRAD = ["algo=mappo", "algo.epochs=1", "algo.minibatches=1", "env.num_envs=8", "device=cpu"]
Q_GRAD = ["algo=vdn", "env.num_envs=8", "device=cpu"]


def _capture(fn) -> list[torch.Tensor]:  # noqa: ANN001
    """The gradients of the first optimizer step inside ``fn()``, as averaged over the ranks."""
    seen: list[list[torch.Tensor]] = []
    orig = distributed.all_reduce_grads

    def spy(params):  # noqa: ANN001, ANN202
        params = list(params)
        orig(params)
        seen.append([p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params])

    distributed.all_reduce_grads = spy
    try:
        fn()
    finally:
        distributed.all_reduce_grads = orig
    return seen[0]


def _ppo_grads(ref: dict, envs: slice) -> list[torch.Tensor]:
    from marlcli.algos import ppo
    from marlcli.buffers import Rollout

    cfg = make_cfg(*PPO_GRAD)
    learner = ppo.make(ref["spec"], cfg, torch.device("cpu"))
    learner.actor.load_state_dict(ref["actor"])
    learner.critic.load_state_dict(ref["critic"])
    rollout = Rollout(**{k: v[:, envs] for k, v in ref["rollout"].items()})
    return _capture(lambda: learner.update(rollout, 0))


def _q_grads(ref: dict, episodes: slice) -> list[torch.Tensor]:
    from marlcli.algos import qlearning

    learner = qlearning.make(ref["spec"], make_cfg(*Q_GRAD), torch.device("cpu"))
    learner.actor.load_state_dict(ref["q_actor"])
    learner.target_actor.load_state_dict(ref["q_actor"])
    return _capture(lambda: learner.learn({k: v[episodes] for k, v in ref["batch"].items()}))


def _reference(path: Path) -> dict:
    """One process, batch B: a MAPPO rollout of 8 env copies and 8 VDN episodes, with initial networks."""
    from dataclasses import asdict

    from marlcli.algos import ppo, qlearning
    from marlcli.buffers import Rollout

    torch.manual_seed(0)
    cfg = make_cfg(*PPO_GRAD)
    env = make_env(cfg.env, 8, 0, torch.device("cpu"))
    learner = ppo.make(env.spec, cfg, torch.device("cpu"))
    rollout = collect_rollout(learner, env)
    q = qlearning.make(env.spec, make_cfg(*Q_GRAD), torch.device("cpu"))
    q.replay.add(Rollout(**{**asdict(rollout), "actions": rollout.actions}))  # 8 whole episodes
    batch = {k: v[:8] for k, v in q.replay.data.items()}
    ref = {"spec": env.spec, "actor": learner.actor.state_dict(), "critic": learner.critic.state_dict(),
           "rollout": asdict(rollout), "q_actor": q.actor.state_dict(), "batch": batch}
    torch.save(ref, path)
    ref["ppo_grads"] = _ppo_grads(ref, slice(0, 8))
    ref["q_grads"] = _q_grads(ref, slice(0, 8))
    return ref


def _worker(rank: int, world: int, tmp: str) -> None:
    """One rank: every family, the sync check, gradients on half the batch, resume of MAPPO."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rdzv", rank=rank, world_size=world,
                            timeout=timedelta(seconds=60))
    out: dict = {"digests": {}}
    orig = distributed.check_in_sync
    current = [""]

    def spy(algo) -> None:  # noqa: ANN001
        out["digests"].setdefault(current[0], []).append(distributed.digest(algo))
        orig(algo)

    distributed.check_in_sync = spy
    root = Path(tmp) / "runs"
    for name, overrides in FAMILIES.items():
        current[0] = name
        seed_dir = train(make_cfg(f"results_dir={root}", *BASE, *overrides))
    distributed.check_in_sync = orig

    # resume exactness: continue the MAPPO run from its step-200 checkpoint
    mappo_dir = root / "spread" / "mappo" / "test" / "seed_0"
    before = strip_time([json.loads(x) for x in (mappo_dir / "metrics.jsonl").read_text().splitlines()])
    dist.barrier()
    train(make_cfg(f"results_dir={root}", *BASE, *FAMILIES["mappo"], f"resume={mappo_dir}/checkpoints/step_200.pt"))
    dist.barrier()  # rank 0 has written its last line
    after = strip_time([json.loads(x) for x in (mappo_dir / "metrics.jsonl").read_text().splitlines()])
    out["resume"] = (before, after)

    # the sync check fails when one rank's parameters drift
    from marlcli.algos import ppo

    cfg = make_cfg(*PPO_GRAD)
    ref = torch.load(Path(tmp) / "ref.pt", weights_only=False)
    learner = ppo.make(ref["spec"], cfg, torch.device("cpu"))
    distributed.broadcast_modules(learner)
    if rank == 1:
        with torch.no_grad():
            next(learner.critic.parameters()).add_(1e-6)
    try:
        distributed.check_in_sync(learner)
        out["drift_caught"] = False
    except TrainingError:
        out["drift_caught"] = True

    half = slice(rank * 4, rank * 4 + 4)
    out["ppo_grads"] = _ppo_grads(ref, half)
    out["q_grads"] = _q_grads(ref, half)
    torch.save(out, Path(tmp) / f"rank{rank}.pt")
    del seed_dir
    dist.barrier()  # both ranks have written their results
    dist.destroy_process_group()
    distributed.quick_exit(0)  # as a real rank leaves: gloo's threads could std::terminate at interpreter exit


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, list[dict], Path]:
    tmp = tmp_path_factory.mktemp("dist")
    ref = _reference(tmp / "ref.pt")
    mp.spawn(_worker, args=(2, str(tmp)), nprocs=2, join=True)
    return ref, [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(2)], tmp


@pytest.mark.parametrize("family", list(FAMILIES))
def test_parameters_bitwise_identical_on_both_ranks(two_ranks: tuple, family: str) -> None:
    _, ranks, _ = two_ranks
    d0, d1 = ranks[0]["digests"][family], ranks[1]["digests"][family]
    assert len(d0) >= (1 if family == "coma" else 2)  # checked at step 200 and at the end
    assert d0 == d1


def test_sync_check_catches_a_drifted_rank(two_ranks: tuple) -> None:
    assert all(r["drift_caught"] for r in two_ranks[1])


@pytest.mark.parametrize("which", ["ppo_grads", "q_grads"])
def test_same_global_batch_same_gradients(two_ranks: tuple, which: str) -> None:
    ref, ranks, _ = two_ranks
    for r in ranks:
        assert len(r[which]) == len(ref[which])
        for g, g_ref in zip(r[which], ref[which], strict=True):
            torch.testing.assert_close(g, g_ref, rtol=0, atol=1e-6)
    assert any(g.abs().max() > 1e-4 for g in ref[which])  # not vacuous


def test_two_process_run_resumes_exactly(two_ranks: tuple) -> None:
    before, after = two_ranks[1][0]["resume"]
    assert len(before) > 4
    assert after == before


def test_other_world_size_resumes_with_warning(two_ranks: tuple, capsys: pytest.CaptureFixture) -> None:
    _, _, tmp = two_ranks
    seed_dir = tmp / "runs" / "spread" / "mappo" / "test" / "seed_0"
    out = train(make_cfg(f"results_dir={tmp / 'runs'}", *BASE, *FAMILIES["mappo"], "train.total_steps=500",
                         f"resume={seed_dir}"))
    assert "written by 2 process(es), this run has 1" in capsys.readouterr().err
    assert (out / results.DONE_FILE).read_text().strip() == "500"


def _rank_pid(tag: str, rank: int) -> int | None:
    for pid in os.listdir("/proc"):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if f"MARL_TEST_TAG={tag}".encode() in env and f"RANK={rank}".encode() in env and b"marlcli.distributed" in cmd:
            return int(pid)
    return None


def _running_two_ranks(tmp_path: Path, timeout: int) -> tuple[subprocess.Popen, Path, int]:
    """A long 2-rank MAPPO run, once it has written its first checkpoint: (process, latest.pt, rank 1's pid)."""
    tag = f"{os.getpid()}-{time.time()}"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MARL_TEST_TAG": tag}
    cmd = [sys.executable, "-c", "from marlcli.cli import entry; entry()", "train", f"results_dir={tmp_path}",
           *BASE, "algo=mappo", "train.total_steps=100000000", "dist.nproc_per_node=2", f"dist.timeout={timeout}"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    latest = tmp_path / "spread" / "mappo" / "test" / "seed_0" / "checkpoints" / "latest.pt"
    deadline = time.time() + 90
    while not latest.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    pid = _rank_pid(tag, 1)
    assert pid is not None, proc.communicate(timeout=5)
    return proc, latest, pid


def test_killed_rank_ends_the_run_with_one_line(tmp_path: Path) -> None:
    proc, latest, pid = _running_two_ranks(tmp_path, 30)
    os.kill(pid, signal.SIGKILL)
    killed = time.time()
    _, err = proc.communicate(timeout=60)
    assert time.time() - killed < 30  # well within dist.timeout: the agent stops the others at once
    assert proc.returncode != 0
    last = err.strip().splitlines()[-1]
    assert last.startswith("marl train: error: rank 1 of 2 killed by signal 9; the run stopped"), err[-2000:]
    assert "Traceback" not in err
    results.load_checkpoint(latest, results.RESUME_KEYS)  # a usable last checkpoint


def test_hung_rank_ends_the_run_after_dist_timeout(tmp_path: Path) -> None:
    """A rank that stops answering (SIGSTOP: alive, silent) makes the others' next collective fail after
    dist.timeout; the run then ends with one line that says so, instead of hanging forever."""
    proc, _, pid = _running_two_ranks(tmp_path, 4)
    os.kill(pid, signal.SIGSTOP)
    try:
        _, err = proc.communicate(timeout=90)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert proc.returncode != 0
    assert "hung past dist.timeout" in err, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("marl train: error: rank 1 of 2 stopped answering (no reply within dist.timeout=4s)"), last
    assert "Traceback" not in err


def test_slurm_job_step_trains_like_the_launcher(tmp_path: Path) -> None:
    """Two tasks of a Slurm job step (SLURM_* variables, no RANK: what submitit's tasks_per_node=2 starts)
    join one group through submitit's mapping and write the same metrics as dist.nproc_per_node=2."""
    pytest.importorskip("submitit")
    cmd = [sys.executable, "-c", "from marlcli.cli import entry; entry()", "train", *BASE, *FAMILIES["mappo"]]
    slurm = {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": str(1000 + os.getpid() % 100_000), "SLURM_NTASKS": "2",
             "SLURM_JOB_NUM_NODES": "1", "SLURM_NODEID": "0", "SLURM_JOB_NODELIST": "localhost"}
    base_env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_PORT", "MASTER_ADDR")}
    tasks = [subprocess.Popen([*cmd, f"results_dir={tmp_path / 'slurm'}"], cwd=tmp_path, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env={**base_env, **slurm, "SLURM_PROCID": str(r), "SLURM_LOCALID": str(r),
                                   "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}) for r in range(2)]
    errs = [t.communicate(timeout=240)[1] for t in tasks]
    assert [t.returncode for t in tasks] == [0, 0], errs
    launched = subprocess.run([*cmd, f"results_dir={tmp_path / 'launch'}", "dist.nproc_per_node=2"], cwd=tmp_path,
                              env={**base_env, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}, text=True,
                              capture_output=True, timeout=240)
    assert launched.returncode == 0, launched.stderr[-2000:]

    def metrics(root: Path) -> list[dict]:
        lines = (root / "spread" / "mappo" / "test" / "seed_0" / "metrics.jsonl").read_text().splitlines()
        return strip_time([json.loads(x) for x in lines])

    assert metrics(tmp_path / "slurm") == metrics(tmp_path / "launch")


def test_the_killed_rank_is_named_whatever_the_others_died_of() -> None:
    """Peers of a killed rank fail in the same monitor tick (code 2, SIGABRT, SIGTERM): name the killed one."""
    from types import SimpleNamespace

    from marlcli.distributed.launch import _root_cause

    def failures(**codes: int) -> SimpleNamespace:
        return SimpleNamespace(failures={int(r[1:]): SimpleNamespace(exitcode=c, timestamp=7) for r, c in codes.items()})

    assert _root_cause(failures(r0=-6, r1=-9))[0] == 1
    assert _root_cause(failures(r0=-15, r1=2, r2=-11))[0] == 2
    assert _root_cause(failures(r0=2, r1=1))[0] == 1  # a crash (code 1) before a rank's one-line error
    assert _root_cause(failures(r0=2, r1=2))[0] == 0


def test_env_copies_must_split_over_the_ranks(tmp_path: Path) -> None:
    from marlcli.errors import ConfigError

    with pytest.raises(ConfigError, match="env.num_envs=3 does not split over dist.nproc_per_node=2"):
        train_or_launch(make_cfg(f"results_dir={tmp_path}", *BASE, "algo=mappo", "env.num_envs=3", "dist.nproc_per_node=2"))
