"""Regression tests for issue 15: each one failed on the code before the fix it names."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import episode_rollout, make_cfg, strip_time, train_killed_after
from gymnasium import spaces
from pettingzoo import ParallelEnv

from marlcli import results
from marlcli.buffers import EpisodeReplay, Rollout
from marlcli.envs import make_env
from marlcli.envs.base import EnvSpec, empty_step
from marlcli.envs.pettingzoo import PettingZooVecEnv
from marlcli.errors import TrainingError
from marlcli.evaluate import run_episodes
from marlcli.returns import gae
from marlcli.trainer import train

CPU = torch.device("cpu")


# ----------------------------------------------------------------------------- item 1: factories without kwargs
@pytest.mark.parametrize("extra", [[], ["env.kwargs={continuous_actions:true}"]], ids=["discrete", "continuous"])
def test_pettingzoo_factory_without_kwargs_trains_and_evaluates(tmp_path: Path, extra: list[str]) -> None:
    """`env=pettingzoo env.factory=...` with no env.kwargs used to stop with 'Input cfg is not an OmegaConf config'."""
    from marlcli.cli import main

    cfg = make_cfg("algo=mappo", "env=pettingzoo", "env.factory=mpe2.simple_speaker_listener_v4:parallel_env",
                   "sharing=none", f"results_dir={tmp_path}", "run=kw", "env.num_envs=2", "train.total_steps=100",
                   "train.eval_episodes=2", "train.eval_envs=2", "logger.progress=false",
                   *[f"++{e}" for e in extra])
    out = train(cfg)
    assert (out / "done").exists()
    assert main(["eval", str(out), "episodes=2", "envs=2"]) == 0
    row = json.loads((out / "eval.json").read_text())
    assert {"return/speaker_0", "return/listener_0"} <= set(row)


# ----------------------------------------------------------------------------- item 2: s' after s on the adapter
def test_adapter_next_obs_is_the_post_step_observation() -> None:
    """Every copy that goes on gets next_obs[t] == obs[t+1]; the adapter used to hand back the pre-step obs."""
    env = make_env(make_cfg("env=spread", "env.backend=pettingzoo").env, 2, 0, CPU)
    ts = env.reset()
    steps = []
    for _ in range(3):
        nts = env.step(torch.randint(0, 5, (2, 3)))
        steps.append((ts, torch.zeros(2, 3, dtype=torch.long), nts))
        ts = nts
    r = Rollout.from_steps(steps)
    assert torch.equal(r.next_obs[:-1], r.obs[1:]) and torch.equal(r.next_state[:-1], r.state[1:])
    assert not torch.equal(r.next_obs[0], r.obs[0])  # the agents moved


# ----------------------------------------------------------------------------- item 3: GAE at an agent's own end
def test_gae_stops_at_an_agents_own_termination() -> None:
    """Agent 1 terminates after step 0; its padding rows must not leak into step 0 (was 0.18, must be 0.5)."""
    t, g, lam = 4, 0.9, 0.95
    rewards = torch.zeros(t, 1, 2)
    rewards[0] = 1.0
    values = torch.full((t, 1, 2), 0.5)
    values[1:, :, 1] = torch.tensor([3.0, -2.0, 7.0])[:, None]  # whatever the critic says on dead rows
    next_values = torch.full((t, 1, 2), 0.5)
    terminated = torch.zeros(t, 1, 2, dtype=torch.bool)
    terminated[0, 0, 1] = True
    done = torch.zeros(t, 1, dtype=torch.bool)
    adv = gae(rewards, values, next_values, terminated, done, g, lam)
    assert adv[0, 0, 1].item() == pytest.approx(1.0 - 0.5)
    # the agent that goes on still accumulates its later deltas
    d = [1.0 + g * 0.5 - 0.5] + [g * 0.5 - 0.5] * 3
    want = sum((g * lam) ** k * d[k] for k in range(t))
    assert adv[0, 0, 0].item() == pytest.approx(want)


# ----------------------------------------------------------------------------- item 4: episode replay overflow
def test_episode_replay_refuses_episodes_longer_than_the_limit() -> None:
    """A 5-step episode in a buffer built for 3 used to be spliced silently into its last row."""
    buf = EpisodeReplay(capacity=4, num_envs=1, max_len=3, n_agents=1, obs_dim=2, state_dim=2, act_dim=3, device=CPU)
    one = {"n_agents": 1, "obs_dim": 2, "n_actions": 3}
    assert buf.add(episode_rollout([[False], [False], [True]], **one)) == 1  # exactly the limit is fine
    with pytest.raises(TrainingError, match="env.max_cycles"):
        buf.add(episode_rollout([[False]] * 4 + [[True]], **one))


class _NoLimitEnv(ParallelEnv):
    """One agent, episodes of ``length`` steps, and no max_cycles attribute."""

    metadata = {"name": "no_limit"}

    def __init__(self, length: int = 30) -> None:
        self.possible_agents, self.length = ["a_0"], length
        self._o, self._a = spaces.Box(-1, 1, (1,)), spaces.Discrete(2)

    def observation_space(self, agent: str) -> spaces.Space:
        return self._o

    def action_space(self, agent: str) -> spaces.Space:
        return self._a

    def reset(self, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        self.agents, self.t = list(self.possible_agents), 0
        return {"a_0": np.zeros(1, np.float32)}, {"a_0": {}}

    def step(self, actions: dict) -> tuple[dict, dict, dict, dict, dict]:
        self.t += 1
        over = self.t >= self.length
        obs = {"a_0": np.full(1, self.t / 100, np.float32)}
        if over:
            self.agents = []
        return obs, {"a_0": 1.0}, {"a_0": over}, {"a_0": False}, {"a_0": {}}


def test_q_learning_on_an_env_longer_than_max_cycles_is_a_one_line_error() -> None:
    env = PettingZooVecEnv(_NoLimitEnv, {}, 1, 0, CPU, max_cycles=25)
    assert env.spec.episode_limit == 25  # no attribute: env.max_cycles is the limit
    from marlcli.algos import qlearning

    cfg = make_cfg("algo=vdn", "env.num_envs=1")
    learner = qlearning.make(env.spec, cfg, CPU)
    ts, steps = env.reset(), []
    for _ in range(30):
        nts = env.step(torch.zeros(1, 1, dtype=torch.long))
        steps.append((ts, torch.zeros(1, 1, dtype=torch.long), nts))
        ts = nts
    with pytest.raises(TrainingError, match="longer than the episode limit of 25"):
        learner.update(Rollout.from_steps(steps), 30)
    assert PettingZooVecEnv(_NoLimitEnv, {}, 1, 0, CPU, max_cycles=40).spec.episode_limit == 40


# ----------------------------------------------------------------------------- item 5: final masks and alive flags
class _MaskedEnv(ParallelEnv):
    """Two agents; the available actions change every step (``infos[agent]["action_mask"]``); 3 steps."""

    metadata = {"name": "masked"}

    def __init__(self) -> None:
        self.possible_agents = ["a_0", "a_1"]
        self._o, self._a = spaces.Box(-1, 10, (1,)), spaces.Discrete(3)

    def observation_space(self, agent: str) -> spaces.Space:
        return self._o

    def action_space(self, agent: str) -> spaces.Space:
        return self._a

    def _out(self) -> tuple[dict, dict]:
        mask = np.zeros(3, np.int8)
        mask[self.t % 3] = 1  # only action t mod 3 is available
        return ({a: np.full(1, self.t, np.float32) for a in self.possible_agents},
                {a: {"action_mask": mask.copy()} for a in self.possible_agents})

    def reset(self, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        self.agents, self.t = list(self.possible_agents), 0
        return self._out()

    def step(self, actions: dict) -> tuple[dict, dict, dict, dict, dict]:
        self.t += 1
        obs, infos = self._out()
        term = {a: a == "a_1" and self.t >= 3 for a in self.possible_agents}
        trunc = {a: a == "a_0" and self.t >= 3 for a in self.possible_agents}
        if self.t >= 3:
            self.agents = []
        return obs, {a: 0.0 for a in self.possible_agents}, term, trunc, infos


def test_final_masks_and_alive_flags_are_the_last_ones_not_the_reset_ones() -> None:
    env = PettingZooVecEnv(_MaskedEnv, {}, 1, 0, CPU)
    ts = env.reset()
    assert ts.avail[0, 0].tolist() == [True, False, False]
    for _ in range(3):
        ts = env.step(ts.avail.long().argmax(-1))
    assert ts.done.all() and ts.final_obs[0, 0, 0] == 3 and ts.obs[0, 0, 0] == 0
    assert ts.final_avail[0, 0].tolist() == [True, False, False]  # step 3's mask (3 mod 3 = 0)...
    assert ts.avail[0, 0].tolist() == [True, False, False]  # ...equals the reset's here, so check step 2 too
    assert ts.final_alive[0].tolist() == [True, False]  # a_0 truncated: bootstraps; a_1 terminated: does not
    assert ts.final_avail[0, 1].tolist() == [False, False, False]
    env = PettingZooVecEnv(_MaskedEnv, {}, 1, 0, CPU)
    env.reset()
    env.step(torch.zeros(1, 2, dtype=torch.long))
    ts = env.step(torch.ones(1, 2, dtype=torch.long))
    assert ts.final_avail[0, 0].tolist() == [False, False, True] == ts.avail[0, 0].tolist()  # not done: the same


# ----------------------------------------------------------------------------- item 6: resume mid-episode, SIGKILL
def test_pettingzoo_resume_is_exact_mid_episode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Checkpoints at step 40 of 4 copies x 10-step rollouts fall mid-episode (t=10 of 25)."""
    base = ["algo=mappo", "env=spread", "env.backend=pettingzoo", "env.num_envs=4", "algo.rollout_steps=10",
            "algo.epochs=1", "train.total_steps=160", "train.eval_interval=80", "train.checkpoint_interval=40",
            "train.log_interval=40", "train.eval_episodes=4", "train.eval_envs=4", "logger.progress=false",
            "device=cpu"]  # lr_schedule stays linear (the default): it must continue exactly too
    full = train(make_cfg(*base, f"results_dir={tmp_path / 'a'}", "run=r"))
    cut = train_killed_after(make_cfg(*base, f"results_dir={tmp_path / 'b'}", "run=r"), 40, monkeypatch)
    assert results.load_checkpoint(cut / "checkpoints" / "latest.pt")["env"]["actions.0"].shape[0] == 10
    resumed = train(make_cfg(*base, f"results_dir={tmp_path / 'b'}", "run=r", f"resume={cut}"))
    assert strip_time(results.read_metrics(resumed / "metrics.jsonl")) == \
        strip_time(results.read_metrics(full / "metrics.jsonl"))


def _marl_train(*args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    return subprocess.Popen([sys.executable, "-m", "marlcli.cli", "train", *args, "logger.progress=false"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("backend", ["native", "pettingzoo"])
def test_sigkill_after_the_first_checkpoint_then_resume_ends_exactly(tmp_path: Path, backend: str) -> None:
    """A real `marl train` killed with SIGKILL, resumed with resume=<seed dir>: the same metrics as uninterrupted.

    The default (linear) learning-rate schedule; on the PettingZoo backend the kill falls mid-episode.
    """
    n = 8 if backend == "native" else 2
    total, ckpt = (40_000, 4_000) if backend == "native" else (3_000, 500)
    common = ["algo=mappo", "env=spread", f"env.backend={backend}", f"env.num_envs={n}", "algo.rollout_steps=10",
              "algo.epochs=2", f"train.total_steps={total}", f"train.eval_interval={total // 2}",
              f"train.checkpoint_interval={ckpt}", f"train.log_interval={ckpt}", "train.eval_episodes=8",
              "train.eval_envs=8", "device=cpu", "run=r"]
    ref = _marl_train(*common, f"results_dir={tmp_path / 'ref'}")
    victim = _marl_train(*common, f"results_dir={tmp_path / 'cut'}")
    seed_dir = tmp_path / "cut" / "spread" / "mappo" / "r" / "seed_0"
    deadline = time.time() + 240
    while not (seed_dir / "checkpoints" / "latest.pt").exists() and victim.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL, "the run ended before it could be killed: raise its budget"
    assert not (seed_dir / "done").exists()
    resumed = subprocess.run([sys.executable, "-m", "marlcli.cli", "train", f"resume={seed_dir}", "logger.progress=false"],
                             env={**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}, capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-1000:]
    assert ref.wait(timeout=300) == 0, ref.stderr.read()[-1000:] if ref.stderr else ""
    a = strip_time(results.read_metrics(tmp_path / "ref" / "spread" / "mappo" / "r" / "seed_0" / "metrics.jsonl"))
    b = strip_time(results.read_metrics(seed_dir / "metrics.jsonl"))
    assert a == b and a[-1]["step"] == total


# ----------------------------------------------------------------------------- item 7: eval, bounds, rendezvous
class _UnevenEnv:
    """Copy b's episodes last 1 + 4b steps and return 1 per step: short episodes finish first."""

    def __init__(self, num_envs: int) -> None:
        self.num_envs, self.device = num_envs, CPU
        self.spec = EnvSpec("uneven", ["a_0"], [1], [2], True, 1, 9)
        self.t = torch.zeros(num_envs, dtype=torch.long)
        self.length = 1 + 4 * torch.arange(num_envs)

    def _ts(self) -> object:
        obs = torch.zeros(self.num_envs, 1, 1)
        return empty_step(self.spec, obs, obs[:, 0], torch.ones(self.num_envs, 1, 2, dtype=torch.bool))

    def reset(self) -> object:
        self.t.zero_()
        return self._ts()

    def step(self, actions: torch.Tensor) -> object:
        self.t += 1
        done = self.t >= self.length
        self.t[done] = 0
        ts = self._ts()
        ts.reward, ts.done, ts.truncated = torch.ones(self.num_envs, 1), done, done.clone()
        return ts


def test_eval_does_not_favour_short_episodes() -> None:
    """4 episodes over copies of length 1 and 5: two of each (mean 3), not the first four to finish (mean 1)."""
    from marlcli.algos.ppo import PolicyActor

    env = _UnevenEnv(2)
    actor = PolicyActor(env.spec, make_cfg(), 8, 1, "relu")
    res = run_episodes(actor, env, 4)
    assert res.returns[:, 0].tolist() == [1.0, 1.0, 5.0, 5.0]
    assert res.summary()["eval/return_mean"] == 3.0


class _BoundsEnv(ParallelEnv):
    """Two agents with different Box bounds; records the actions it receives."""

    metadata = {"name": "bounds"}
    received: list[dict] = []

    def __init__(self) -> None:
        self.possible_agents = ["a_0", "b_0"]
        self._a = {"a_0": spaces.Box(-1.0, 1.0, (2,)), "b_0": spaces.Box(np.array([0.0], np.float32), np.array([5.0], np.float32))}
        self._o = spaces.Box(-1, 1, (1,))

    def observation_space(self, agent: str) -> spaces.Space:
        return self._o

    def action_space(self, agent: str) -> spaces.Space:
        return self._a[agent]

    def reset(self, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        self.agents = list(self.possible_agents)
        return {a: np.zeros(1, np.float32) for a in self.agents}, {}

    def step(self, actions: dict) -> tuple[dict, dict, dict, dict, dict]:
        _BoundsEnv.received.append({k: np.asarray(v).copy() for k, v in actions.items()})
        z = {a: False for a in self.agents}
        return {a: np.zeros(1, np.float32) for a in self.agents}, {a: 0.0 for a in self.agents}, z, dict(z), {}


def test_adapter_clips_each_agent_to_its_own_bounds() -> None:
    """The adapter used to apply the last agent's bounds to every agent."""
    env = PettingZooVecEnv(_BoundsEnv, {}, 1, 0, CPU)
    low, high = env.spec.bounds()
    assert low.tolist() == [[-1.0, -1.0], [0.0, 0.0]] and high.tolist() == [[1.0, 1.0], [5.0, 0.0]]
    env.reset()
    _BoundsEnv.received.clear()
    env.step(torch.tensor([[[4.0, -3.0], [4.0, 9.0]]]))
    got = _BoundsEnv.received[-1]
    assert got["a_0"].tolist() == [1.0, -1.0] and got["b_0"].tolist() == [4.0]


@pytest.mark.parametrize("backend", ["native", "pettingzoo"])
def test_rendezvous_ends_by_termination(backend: str) -> None:
    """A one-shot game is over after its step: learners must not bootstrap past it."""
    env = make_env(make_cfg("env=rendezvous", f"env.backend={backend}").env, 3, 0, CPU)
    env.reset()
    ts = env.step(torch.zeros(3, 4, 1))
    assert ts.done.all() and ts.terminated.all() and not ts.truncated.any() and not ts.final_alive.any()
