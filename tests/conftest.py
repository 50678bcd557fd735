"""Shared test helpers: the tiers, compose configs the way `marl train` does, with tiny budgets.

The tests live in four folders, and the folder sets the marker (``pytest -m unit`` ...), so a
test's tier is where it is, never a decorator someone forgot (docs/testing.md):

- ``tests/unit``: one function or class, no training loop (seconds);
- ``tests/envs``: the environment contract, native/testbed/VMAS backends (short runs);
- ``tests/integration``: ``train()``/``marl`` end to end on tiny budgets (resume, eval, export, ...);
- ``tests/learning``: the learning tests, marked ``slow`` (minutes, fixed seeds, margins;
  ``--break-learner`` must turn them red). A ``slow`` test outside it, or a test in it
  without ``slow``, is a collection error: ``--break-learner`` only sabotages ``slow`` tests.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from marlcli import config, results
from marlcli.algos import coma, maddpg, ppo, qlearning
from marlcli.buffers import Rollout
from marlcli.envs import make_env
from marlcli.evaluate import run_episodes
from marlcli.trainer import EVAL_SEED_OFFSET, train

TESTS = Path(__file__).resolve().parent
TIERS = ("unit", "envs", "integration", "learning")
SCHEDULE = ("learning", "integration", "envs", "unit")  # the slowest tier first (under pytest-xdist)

# Two threads per process, or this process's share of the cores when pytest-xdist runs several
# workers (`make test` uses -n 2): two workers of two threads each on 2 cores spin against each other.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // _WORKERS)))
os.environ.setdefault("WANDB_MODE", "disabled")  # tests never touch the network


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test with its folder's tier; refuse a learning test outside tests/learning (and back)."""
    misplaced, tier_of = [], {}
    for item in items:
        path = Path(item.path).resolve()
        if TESTS not in path.parents:  # a path given on the command line outside tests/: no tier
            continue
        rel = path.relative_to(TESTS).parts
        tier = tier_of[item.nodeid] = rel[0] if len(rel) > 1 and rel[0] in TIERS else None
        if tier is None:
            misplaced.append(f"{item.nodeid} (not in tests/{{{','.join(TIERS)}}})")
            continue
        item.add_marker(getattr(pytest.mark, tier))
        if (item.get_closest_marker("slow") is not None) != (tier == "learning"):
            misplaced.append(f"{item.nodeid} ({'marked slow outside tests/learning' if tier != 'learning' else 'in tests/learning without @pytest.mark.slow'})")
    if misplaced:
        raise pytest.UsageError("tests in the wrong tier (docs/testing.md): " + "; ".join(misplaced))
    if _WORKERS > 1:  # xdist deals the first tests out one by one: the minute-long learning tests first spread
        items.sort(key=lambda item: SCHEDULE.index(tier_of.get(item.nodeid) or "unit"))  # over the workers, not at the end on one


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread for the test (``pytestmark = pytest.mark.usefixtures("one_thread")``): these nets
    are tiny, and a second thread only adds contention on a shared 2-core box (10x slower there)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def episode_rollout(done: list[list[bool]], n_agents: int = 2, obs_dim: int = 3, n_actions: int = 4) -> Rollout:
    """A hand-made rollout for the episode replay: ``done[t][b]`` ends env ``b``'s episode at step ``t``.

    Observations count the steps (``obs[t] = t``, the final observation ``t + 100``), so a test can
    read which step landed where; every reward is 1 and an episode's end is a termination.
    """
    t, b, n, o = len(done), len(done[0]), n_agents, obs_dim
    d = torch.tensor(done)
    step = torch.arange(t, dtype=torch.float32).view(t, 1, 1, 1).expand(t, b, n, o)
    return Rollout(obs=step, state=step[:, :, 0], avail=torch.ones(t, b, n, n_actions, dtype=torch.bool),
                   alive=torch.ones(t, b, n, dtype=torch.bool), actions=torch.zeros(t, b, n, dtype=torch.long),
                   reward=torch.ones(t, b, n), terminated=d[..., None].expand(t, b, n).clone(), truncated=d & False,
                   done=d, next_obs=step + 100, next_state=step[:, :, 0] + 100,
                   next_avail=torch.ones(t, b, n, n_actions, dtype=torch.bool),
                   next_alive=torch.ones(t, b, n, dtype=torch.bool))

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
# The learning tests live in tests/learning and are marked ``slow`` (``pytest -m slow`` or
# ``pytest tests/learning`` runs exactly them). Two options
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


def actor_outputs(actor: torch.nn.Module, obs: torch.Tensor, avail: torch.Tensor) -> torch.Tensor:
    """Each agent's differentiable decision ``[B, N, A]``: logits, Q-values or pre-activations (any family)."""
    if hasattr(actor, "dist"):
        return actor.dist(obs, avail).logits
    if hasattr(actor, "q"):
        return actor.q(obs, actor.initial_hidden(obs.shape[0]))[0]
    return actor.raw(obs)


def collect_rollout(algo, env, steps: int = 25) -> Rollout:
    """``steps`` steps of ``algo`` acting in ``env`` (no hidden state) from a reset, as one ``Rollout``."""
    ts, out = env.reset(), []
    for _ in range(steps):
        actions, _ = algo.act(ts, None, 0)
        nts = env.step(actions)
        out.append((ts, actions, nts))
        ts = nts
    return Rollout.from_steps(out)
