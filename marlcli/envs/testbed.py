"""Testbed: a small PettingZoo ParallelEnv made of the cases that break MARL code (issue 15).

Agents ``agent_0 .. agent_{n-1}`` (``n_agents``, default 3) differ in every size:

* discrete (default): agent i has ``Discrete(K_i)``, ``K_i = 3 + i``, and observes
  ``O_i = 3 + 2 K_i`` floats ``[t / max_cycles, episode code, progress, target one-hot
  (K_i), action mask (K_i)]``. The mask is redrawn every step: the target is always
  available, every other action with probability 1/2. It reaches the learner as a
  ``Dict`` observation ``{"observation", "action_mask"}`` (``mask_in="obs"``, PettingZoo's
  classic convention) or as ``infos[agent]["action_mask"]`` (``mask_in="info"``).
* continuous (``continuous_actions=True``): agent i has ``Box(i - 1, i + 1, (1 + i,))``
  (agent 0 acts in [-1, 1], agent 1 in [0, 2] with two dims, ...) and observes
  ``3 + (1 + i)`` floats ``[t / max_cycles, episode code, progress, target point]``.

``t`` is the number of steps taken in the episode (0 right after reset) and the episode
code is an id drawn at reset, uniform in ``[1, 2**16)``, observed as ``id / 2**16``
(exact in float32), so a test can tell which episode and step an observation is from.

Reward and termination. Each step every live agent gets a fresh target (its target
action, or a uniform point of its box) from the env's RNG and scores ``1`` for picking
it (discrete; an unavailable action scores 0) or ``max(0, 1 - ||a - c|| / (radius *
sqrt(dim)))`` (continuous). At reset agent i draws ``need_i`` uniform in ``[need_low,
need_high]``; its progress is ``min(score sum, need_i) / need_i``, its reward each step
is the increase of its progress, and it terminates (and leaves ``agents``) once its
score sum reaches ``need_i``. The episode ends when every agent has terminated, or by
truncation of those still live at ``max_cycles`` steps, so agents finish at seed- and
action-dependent steps and both endings occur.

Lone truncation (``agent_cycles``, default none): agent i still live after
``agent_cycles[i]`` steps is truncated alone (``truncations`` true for it only) and
leaves, with its observation of that step, while the others go on, as a PettingZoo env
with per-agent time limits does; a shorter list leaves the rest at ``max_cycles``. It is
a truncation, not a termination: the agent's future is cut by the clock, so learners
must bootstrap it. (The optimum below assumes every agent has ``need_high`` steps.)

Optimum: an agent's episode return is its final progress, at most 1. Always picking the
target gets exactly 1 for every agent (``need_high <= max_cycles``): the best episode
return is 1 per agent (``n_agents`` for the team, 1.0 for the agent mean that
``eval/return_mean`` reports), and the best episodes end by termination after
``max_i need_i`` steps. A uniform policy over the available actions gets well below it
(with the defaults: about 0.8 per agent, 83% of episodes truncated; continuous,
uniform in the box: about 0.3, nearly always truncated).

``state()`` is every agent's observation vector followed by the alive flags; an agent
that finished before the last step shows zeros (one that finished in it still shows its
final observation, so a truncated agent's critic bootstraps from a real state).
Everything is drawn from one ``numpy`` generator seeded by ``reset(seed=...)``, so an
episode is a function of its seed and the actions (PettingZoo's seed test).
``strict=True`` raises on an unavailable or out-of-bounds action, an action for an agent
that is not live, or a missing one: marlcli's training must never send one.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
from gymnasium import spaces
from pettingzoo import ParallelEnv

from marlcli.errors import ConfigError

ID_SCALE = 2**16  # episode ids are integers in [1, ID_SCALE), observed as id / ID_SCALE


class TestbedEnv(ParallelEnv):
    """Per-agent sizes, early termination, per-step masks; see the module docstring."""

    metadata = {"name": "testbed_v0", "render_modes": []}

    def __init__(self, n_agents: int = 3, max_cycles: int = 8, need_low: int = 2, need_high: int = 6,
                 continuous_actions: bool = False, mask_in: str = "obs", radius: float = 0.5,
                 strict: bool = False, agent_cycles: list[int] | None = None) -> None:
        if int(n_agents) < 1:
            raise ConfigError(f"env.n_agents={n_agents} must be >= 1")
        if not 1 <= int(need_low) <= int(need_high) <= int(max_cycles):
            raise ConfigError(f"testbed needs 1 <= need_low ({need_low}) <= need_high ({need_high}) "
                              f"<= max_cycles ({max_cycles})")
        if mask_in not in ("obs", "info"):
            raise ConfigError(f"env.mask_in='{mask_in}': use obs or info")
        if float(radius) <= 0:
            raise ConfigError(f"env.radius={radius} must be positive")
        self.n, self.max_cycles = int(n_agents), int(max_cycles)
        cycles = [] if agent_cycles is None else list(agent_cycles)
        if len(cycles) > self.n or not all(1 <= int(c) <= self.max_cycles for c in cycles):
            raise ConfigError(f"env.agent_cycles={cycles}: at most n_agents ({self.n}) per-agent limits, "
                              f"each in [1, max_cycles ({self.max_cycles})]")
        # the step count at which each agent still live is truncated (alone, if the others go on)
        self.limits = [int(c) for c in cycles] + [self.max_cycles] * (self.n - len(cycles))
        self.need_low, self.need_high = int(need_low), int(need_high)
        self.continuous, self.mask_in = bool(continuous_actions), str(mask_in)
        self.radius, self.strict = float(radius), bool(strict)
        self.render_mode = None
        self.possible_agents = [f"agent_{i}" for i in range(self.n)]
        self.agents: list[str] = []
        # per agent: discrete action count, or continuous dims and bounds
        self.sizes = [1 + i if self.continuous else 3 + i for i in range(self.n)]
        self.low = [float(i - 1) for i in range(self.n)]
        self.high = [float(i + 1) for i in range(self.n)]
        self.obs_dims = [3 + k if self.continuous else 3 + 2 * k for k in self.sizes]
        self.state_space = spaces.Box(
            np.concatenate([self._obs_box(i).low for i in range(self.n)] + [np.zeros(self.n, np.float32)]),
            np.concatenate([self._obs_box(i).high for i in range(self.n)] + [np.ones(self.n, np.float32)]),
            dtype=np.float32)
        self._rng = np.random.default_rng()
        self._alloc()

    def _alloc(self) -> None:
        """Episode variables (also valid before the first reset)."""
        self.t, self.episode_id = 0, 0
        self.need = np.ones(self.n, dtype=np.int64)
        self.score = np.zeros(self.n)  # score sum per agent
        self.alive = np.zeros(self.n, dtype=bool)
        self.shown = np.zeros(self.n, dtype=bool)  # agents given an observation by the last reset/step
        self.target: list[Any] = [0] * self.n  # action index (discrete) or point (continuous)
        self.mask = [np.ones(k, dtype=np.int8) for k in self.sizes]

    def _obs_box(self, i: int) -> spaces.Box:
        k = self.sizes[i]
        if self.continuous:
            low = np.array([0.0, 0.0, 0.0] + [self.low[i]] * k, np.float32)
            high = np.array([1.0, 1.0, 1.0] + [self.high[i]] * k, np.float32)
            return spaces.Box(low, high, dtype=np.float32)
        return spaces.Box(0.0, 1.0, (self.obs_dims[i],), np.float32)

    @functools.cache  # noqa: B019 -- the same space object every call (PettingZoo API test)
    def observation_space(self, agent: str) -> spaces.Space:
        i = self.possible_agents.index(agent)
        box = self._obs_box(i)
        if self.continuous or self.mask_in == "info":
            return box
        return spaces.Dict({"observation": box, "action_mask": spaces.Box(0, 1, (self.sizes[i],), np.int8)})

    @functools.cache  # noqa: B019
    def action_space(self, agent: str) -> spaces.Space:
        i = self.possible_agents.index(agent)
        if self.continuous:
            return spaces.Box(self.low[i], self.high[i], (self.sizes[i],), np.float32)
        return spaces.Discrete(self.sizes[i])

    def _draw(self) -> None:
        """Fresh targets (and masks) for every agent: a fixed number of draws per step."""
        for i, k in enumerate(self.sizes):
            if self.continuous:
                self.target[i] = self._rng.uniform(self.low[i], self.high[i], k).astype(np.float32)
            else:
                mask = (self._rng.random(k) < 0.5).astype(np.int8)
                self.target[i] = int(self._rng.integers(k))
                mask[self.target[i]] = 1
                self.mask[i] = mask

    def _vector(self, i: int) -> np.ndarray:
        """Agent i's observation vector (the ``observation`` part)."""
        head = [self.t / self.max_cycles, self.episode_id / ID_SCALE, min(self.score[i], self.need[i]) / self.need[i]]
        if self.continuous:
            return np.concatenate([np.array(head, np.float32), self.target[i]]).astype(np.float32)
        onehot = np.zeros(self.sizes[i], np.float32)
        onehot[self.target[i]] = 1.0
        return np.concatenate([np.array(head, np.float32), onehot, self.mask[i].astype(np.float32)])

    def _observe(self, i: int) -> Any:
        v = self._vector(i)
        if self.continuous or self.mask_in == "info":
            return v
        return {"observation": v, "action_mask": self.mask[i].copy()}

    def _info(self, i: int) -> dict[str, Any]:
        return {"action_mask": self.mask[i].copy()} if not self.continuous and self.mask_in == "info" else {}

    def state(self) -> np.ndarray:
        parts = [self._vector(i) if self.shown[i] else np.zeros(d, np.float32) for i, d in enumerate(self.obs_dims)]
        return np.concatenate(parts + [self.alive.astype(np.float32)])

    def reset(self, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        self._alloc()
        self.episode_id = int(self._rng.integers(1, ID_SCALE))
        self.need = self._rng.integers(self.need_low, self.need_high + 1, self.n)
        self.alive[:] = self.shown[:] = True
        self.agents = list(self.possible_agents)
        self._draw()
        return ({a: self._observe(i) for i, a in enumerate(self.possible_agents)},
                {a: self._info(i) for i, a in enumerate(self.possible_agents)})

    def _score(self, i: int, action: Any) -> float:
        if self.continuous:
            a = np.asarray(action, dtype=np.float64).reshape(-1)
            if a.shape != (self.sizes[i],):
                raise ValueError(f"testbed: agent_{i} needs {self.sizes[i]} action dims, got shape {a.shape}")
            if self.strict and ((a < self.low[i] - 1e-6).any() or (a > self.high[i] + 1e-6).any()):
                raise ValueError(f"testbed (strict): agent_{i} action {a} outside [{self.low[i]}, {self.high[i]}]")
            a = np.clip(a, self.low[i], self.high[i])
            dist = float(np.linalg.norm(a - self.target[i]))
            return max(0.0, 1.0 - dist / (self.radius * np.sqrt(self.sizes[i])))
        act = int(np.asarray(action).reshape(()))
        if not (0 <= act < self.sizes[i] and self.mask[i][act]):
            if self.strict:
                raise ValueError(f"testbed (strict): agent_{i} took unavailable action {act} "
                                 f"(mask {self.mask[i].tolist()}) at step {self.t}")
            return 0.0
        return float(act == self.target[i])

    def step(self, actions: dict[str, Any]) -> tuple[dict, dict, dict, dict, dict]:
        live = [i for i, a in enumerate(self.possible_agents) if a in self.agents]
        if self.strict:
            extra = set(actions) - set(self.agents)
            missing = set(self.agents) - set(actions)
            if extra or missing:
                raise ValueError(f"testbed (strict): actions for {sorted(extra)} (not live), "
                                 f"none for {sorted(missing)} (live)")
        # score every action before changing anything, so a rejected step leaves the env as it was
        scores = {i: 0.0 if actions.get(self.possible_agents[i]) is None else
                  self._score(i, actions[self.possible_agents[i]]) for i in live}
        progress = np.minimum(self.score, self.need) / self.need
        for i, s in scores.items():
            self.score[i] += s
        reward_vec = np.minimum(self.score, self.need) / self.need - progress
        self.t += 1
        done_now = {i for i in live if self.score[i] >= self.need[i] - 1e-9}
        cut_now = {i for i in live if self.t >= self.limits[i]}  # max_cycles, or the agent's own limit
        self._draw()
        names = self.possible_agents
        obs = {names[i]: self._observe(i) for i in live}
        rew = {names[i]: float(reward_vec[i]) for i in live}
        term = {names[i]: i in done_now for i in live}
        trunc = {names[i]: i in cut_now and i not in done_now for i in live}
        infos = {names[i]: self._info(i) for i in live}
        self.shown[:] = False
        for i in live:
            self.shown[i] = True
            if i in done_now or i in cut_now:
                self.alive[i] = False
        self.agents = [names[i] for i in range(self.n) if self.alive[i]]
        return obs, rew, term, trunc, infos

    def close(self) -> None:
        return None


def parallel_env(**kwargs: Any) -> TestbedEnv:
    """Factory for ``env.backend=pettingzoo`` (``env.factory: marlcli.envs.testbed:parallel_env``)."""
    return TestbedEnv(**kwargs)
