"""Rendezvous: n agents each emit one scalar; one step; a shared quadratic team reward.

    R(a) = -( sum_i (a_i - target)^2 + coupling * sum_{i<j} (a_i - a_j)^2 )

The coupling term makes every agent's reward depend on what the others did, which is
what a critic that sees the joint action can explain away (``experiments/
rendezvous_variance``). Every observation is a constant (one zero), so the game is
about credit assignment alone. Two implementations: ``RendezvousParallelEnv`` (a
PettingZoo ParallelEnv, ``env.backend=pettingzoo``) and ``RendezvousEnv`` (native
batched tensors, ``env.backend=native``); both use ``rendezvous_reward``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from pettingzoo import ParallelEnv
from torch import Tensor

from marlcli.envs.base import EnvSpec, TimeStep, empty_step
from marlcli.errors import ConfigError


def rendezvous_reward(actions: Tensor, target: float, coupling: float) -> Tensor:
    """Team reward ``[...]`` of joint actions ``[..., n]``."""
    own = (actions - target).pow(2).sum(-1)
    n = actions.shape[-1]
    # sum_{i<j} (a_i - a_j)^2 = n * sum_i a_i^2 - (sum_i a_i)^2
    pairs = n * actions.pow(2).sum(-1) - actions.sum(-1).pow(2)
    return -(own + coupling * pairs)


def _check(n: int, bound: float) -> None:
    if n < 1:
        raise ConfigError(f"env.n={n} must be a positive number of agents")
    if bound <= 0:
        raise ConfigError(f"env.bound={bound} must be positive (actions lie in [-bound, bound])")


class RendezvousParallelEnv(ParallelEnv):
    """PettingZoo ParallelEnv version (one copy; actions ``Box(-bound, bound, (1,))``)."""

    metadata = {"name": "rendezvous_v0", "render_modes": []}

    def __init__(self, n: int = 4, target: float = 0.7, coupling: float = 1.0, bound: float = 2.0) -> None:
        _check(int(n), float(bound))
        self.n, self.target, self.coupling, self.bound = int(n), float(target), float(coupling), float(bound)
        self.possible_agents = [f"agent_{i}" for i in range(self.n)]
        self.agents: list[str] = []
        self.render_mode = None  # nothing to render (PettingZoo's API test asks)
        self._obs_space = spaces.Box(-1.0, 1.0, (1,), dtype=np.float32)
        self._act_space = spaces.Box(-self.bound, self.bound, (1,), dtype=np.float32)
        self.max_cycles = 1

    def observation_space(self, agent: str) -> Any:
        return self._obs_space

    def action_space(self, agent: str) -> Any:
        return self._act_space

    def _obs(self) -> dict[str, np.ndarray]:
        return {a: np.zeros(1, dtype=np.float32) for a in self.agents}

    def reset(self, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        self.agents = list(self.possible_agents)
        return self._obs(), {a: {} for a in self.agents}

    def step(self, actions: dict[str, Any]) -> tuple[dict, dict, dict, dict, dict]:
        a = torch.tensor([float(np.asarray(actions[x]).ravel()[0]) for x in self.possible_agents], dtype=torch.float64)
        r = float(rendezvous_reward(a.clamp(-self.bound, self.bound), self.target, self.coupling))
        obs = self._obs()
        rew = {x: r for x in self.agents}
        term = {x: True for x in self.agents}  # the one-shot game is over: nothing to bootstrap (issue 15)
        trunc = {x: False for x in self.agents}
        infos = {x: {} for x in self.agents}
        self.agents = []
        return obs, rew, term, trunc, infos

    def close(self) -> None:
        return None


def parallel_env(**kwargs: Any) -> RendezvousParallelEnv:
    """Factory for ``env.backend=pettingzoo`` (``env.factory: marlcli.envs.rendezvous:parallel_env``)."""
    return RendezvousParallelEnv(**kwargs)


class RendezvousEnv:
    """Native batched version: ``B`` one-step episodes per ``step`` (registered as ``rendezvous``)."""

    def __init__(self, env_cfg: Any, num_envs: int, seed: int, device: torch.device,
                 dtype: torch.dtype = torch.float32) -> None:
        n, bound = int(env_cfg.get("n", 4)), float(env_cfg.get("bound", 2.0))
        _check(n, bound)
        self.n, self.bound = n, bound
        self.target, self.coupling = float(env_cfg.get("target", 0.7)), float(env_cfg.get("coupling", 1.0))
        self.num_envs, self.device, self.dtype = num_envs, torch.device(device), dtype
        self.spec = EnvSpec(name=str(env_cfg.get("name", "rendezvous")), agents=[f"agent_{i}" for i in range(n)],
                            obs_dims=[1] * n, act_dims=[1] * n, discrete=False, state_dim=1, episode_limit=1,
                            act_low=-bound, act_high=bound)
        self.episodes = torch.zeros((), dtype=torch.long)

    def _first(self) -> TimeStep:
        obs = torch.zeros(self.num_envs, self.n, 1, device=self.device, dtype=self.dtype)
        state = torch.zeros(self.num_envs, 1, device=self.device, dtype=self.dtype)
        avail = torch.ones(self.num_envs, self.n, 1, device=self.device, dtype=torch.bool)
        return empty_step(self.spec, obs, state, avail)

    def reset(self) -> TimeStep:
        return self._first()

    def step(self, actions: Tensor) -> TimeStep:
        a = actions.reshape(self.num_envs, self.n).to(self.dtype).clamp(-self.bound, self.bound)
        r = rendezvous_reward(a, self.target, self.coupling)
        ts = self._first()
        ts.reward = r[:, None].expand(-1, self.n).clone()
        ts.terminated = torch.ones(self.num_envs, self.n, dtype=torch.bool, device=self.device)  # game over
        ts.done = torch.ones(self.num_envs, dtype=torch.bool, device=self.device)
        ts.final_alive = ~ts.terminated
        ts.final_avail = ts.avail & ts.final_alive[..., None]  # no actions left at the end (as the adapter)
        self.episodes += 1
        return ts

    def state_dict(self) -> dict[str, Tensor]:
        return {"episodes": self.episodes.clone()}

    def load_state_dict(self, state: dict[str, Tensor]) -> TimeStep:
        self.episodes = state["episodes"].clone()
        return self._first()

    def close(self) -> None:
        return None
