"""Shared test helpers: compose configs the way `marl train` does, with tiny budgets."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from marlcli import config, results
from marlcli.trainer import train

torch.set_num_threads(min(2, os.cpu_count() or 1))
os.environ.setdefault("WANDB_MODE", "disabled")  # tests never touch the network

TINY = ["env.num_envs=4", "train.eval_episodes=4", "train.eval_envs=4", "logger.progress=false"]


def make_cfg(*overrides: str) -> DictConfig:
    """Compose ``conf/config.yaml`` with overrides (no Hydra app, no output dirs)."""
    config.register()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config.CONF_DIR), version_base=None):
        return compose("config", overrides=list(overrides))


@pytest.fixture
def compose_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """``compose_cfg("algo=ippo", ...)`` -> a config writing into ``tmp_path`` with run name ``test``."""

    def _compose(*overrides: str) -> DictConfig:
        return make_cfg(f"results_dir={tmp_path}", "run=test", *TINY, *overrides)

    return _compose


def strip_time(records: list[dict]) -> list[dict]:
    """Metrics without wall-clock keys, for exact comparisons."""
    return [{k: v for k, v in r.items() if not k.startswith("time")} for r in records]


def quiet(tmp_path: Path, eval_episodes: int = 20, **train: object) -> list[str]:
    """Overrides for a quiet training run into ``tmp_path``: small evals, no checkpoints or logs between."""
    t = {"eval_episodes": eval_episodes, "eval_envs": eval_episodes, "checkpoint_interval": 10**9,
         "log_interval": 10**9, **train}
    return [f"results_dir={tmp_path}", "device=cpu", "logger.progress=false"] + [f"train.{k}={v}" for k, v in t.items()]


def eval_records(seed_dir: Path) -> list[dict]:
    """The evaluation lines of a run's metrics.jsonl."""
    lines = [json.loads(x) for x in (seed_dir / "metrics.jsonl").read_text().splitlines()]
    return [x for x in lines if "eval/return_mean" in x]



class Killed(Exception):
    """Stands in for SIGKILL in ``train_killed_after``."""


def train_killed_after(cfg: DictConfig, step: int, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Train ``cfg`` and stop it dead right after its step-``step`` checkpoint; returns its seed dir.

    Unlike a shorter budget, this interrupts the same run, so everything that depends on
    ``train.total_steps`` (learning-rate schedules) must also continue exactly on resume.
    """
    real = results.save_checkpoint

    def save_then_die(ckpt_dir: Path, at: int, payload: dict, keep: int = 0) -> Path:
        path = real(ckpt_dir, at, payload, keep)
        if at >= step:
            raise Killed
        return path

    with monkeypatch.context() as m:
        m.setattr(results, "save_checkpoint", save_then_die)
        with pytest.raises(Killed):
            train(cfg)
    return results.seed_dir(cfg)


# ----------------------------------------------------------------------------- learning tests (issue 15)
# The learning tests are marked ``slow`` (``pytest -m slow`` runs exactly them). Two options
# make them checkable:
#
#   --break-learner=rewards    every rollout reaches the learner with its rewards zeroed
#                              (``Rollout.from_steps``); evaluation still scores the true reward.
#   --break-learner=bootstrap  every return estimator drops the value of what came next: the
#                              next values passed to ``gae`` (PPO, COMA), ``td_lambda`` /
#                              ``nstep_returns`` (IQL/VDN/QMIX) are zeros, and MADDPG's target
#                              critic outputs zeros, so y = r (a myopic learner).
#   --learn-seed=N             run every learning test with seed N instead of its own (calibration).
#
# A learning test that stays green under ``--break-learner`` cannot tell a working learner from a
# broken one. Both options only touch tests marked ``slow``.

BREAKS = ("rewards", "bootstrap")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--break-learner", choices=BREAKS, default=None,
                     help="sabotage the learner in the learning tests (marked slow); each should then fail")
    parser.addoption("--learn-seed", type=int, default=None, help="seed for every learning test (calibration)")


def _zero_arg(fn: Callable, index: int) -> Callable:
    """``fn`` with its positional argument ``index`` (the next values) replaced by zeros."""

    def cut(*args: object, **kwargs: object) -> object:
        args = list(args)
        args[index] = torch.zeros_like(args[index])
        return fn(*args, **kwargs)

    return cut


@pytest.fixture(autouse=True)
def break_learner(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str | None:
    """Apply ``--break-learner`` to tests marked ``slow``; returns the mode (or None)."""
    mode = request.config.getoption("--break-learner")
    if mode is None or request.node.get_closest_marker("slow") is None:
        return None
    from marlcli.algos import coma, maddpg, ppo, qlearning
    from marlcli.buffers import Rollout

    if mode == "rewards":
        real = Rollout.from_steps

        def no_rewards(steps: list) -> Rollout:
            r = real(steps)
            r.reward = torch.zeros_like(r.reward)
            return r

        monkeypatch.setattr(Rollout, "from_steps", staticmethod(no_rewards))
    else:
        for module in (ppo, coma):
            monkeypatch.setattr(module, "gae", _zero_arg(module.gae, 2))
        monkeypatch.setattr(qlearning, "td_lambda", _zero_arg(qlearning.td_lambda, 1))
        monkeypatch.setattr(qlearning, "nstep_returns", _zero_arg(qlearning.nstep_returns, 1))
        real_make = maddpg.make

        def myopic(*args: object, **kwargs: object) -> maddpg.MADDPG:
            algo = real_make(*args, **kwargs)
            forward = algo.critic_target.forward
            algo.critic_target.forward = lambda *a: torch.zeros_like(forward(*a))
            return algo

        monkeypatch.setattr(maddpg, "make", myopic)
    return mode


@pytest.fixture
def learn_seed(request: pytest.FixtureRequest) -> Callable[[int], int]:
    """``learn_seed(1)``: the test's own seed, or ``--learn-seed`` when given."""
    override = request.config.getoption("--learn-seed")
    return lambda default: default if override is None else int(override)


class _StandStill:
    """Every agent always takes action 0 (discrete) or the zero vector (continuous): no movement in MPE."""

    def __init__(self, n_agents: int, act_dim: int, discrete: bool) -> None:
        self.n, self.a, self.discrete = n_agents, act_dim, discrete

    def initial_hidden(self, batch: int) -> None:
        return None

    def act(self, obs: torch.Tensor, avail: torch.Tensor, hidden: None, deterministic: bool) -> tuple[torch.Tensor, None]:
        b = obs.shape[0]
        return (torch.zeros(b, self.n, dtype=torch.long) if self.discrete else torch.zeros(b, self.n, self.a)), None


def stand_still_return(cfg: DictConfig) -> float:
    """``eval/return_mean`` of standing still on exactly the episodes ``train(cfg)`` evaluates on.

    Same env config, number of copies and seed stream as the trainer's evaluation, so a
    learning test compares the learner with doing nothing on the same episodes (issue 15:
    standing still scores about -24 on spread, so "beats random" proves nothing).
    """
    from marlcli.envs import make_env
    from marlcli.evaluate import run_episodes
    from marlcli.trainer import EVAL_SEED_OFFSET

    t = cfg.train
    env = make_env(cfg.env, min(int(t.eval_episodes), int(t.eval_envs)), int(cfg.seed) + EVAL_SEED_OFFSET,
                   torch.device("cpu"))
    try:
        spec = env.spec
        return run_episodes(_StandStill(spec.n_agents, spec.act_dim, spec.discrete), env,
                            int(t.eval_episodes)).summary()["eval/return_mean"]
    finally:
        env.close()


def learned_and_still(cfg: DictConfig) -> tuple[float, float]:
    """Train ``cfg``; return its final ``eval/return_mean`` and standing still's on the same episodes."""
    final = eval_records(train(cfg))[-1]["eval/return_mean"]
    still = stand_still_return(cfg)
    print(f"\nlearning: {cfg.env.name} {cfg.algo.name} seed={cfg.seed} final={final:.2f} stand-still={still:.2f} "
          f"margin={final - still:.2f}")
    return final, still
