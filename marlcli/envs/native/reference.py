"""Reference: a batched speaker-listener game where only one agent sees the goal (issue 19).

Every step a goal ``g`` is drawn from ``K`` (``env.goals``) for each env copy. Agent 0, the
speaker, observes ``g`` (one-hot); the listeners (agents 1..N-1) observe nothing about it.
Each listener picks one of ``K`` actions; the team reward of the step is the fraction of
listeners that picked ``g`` (the speaker's own action does nothing). Observations:
``[is_speaker, one-hot goal (speaker only)]``.

Without a message channel a listener cannot beat chance: its expected reward is ``1/K`` per
step, ``T/K`` per episode of ``T`` steps (``env.max_cycles``). A channel that carries
``log2 K`` bits from the speaker makes ``T`` (every listener right every step) reachable:
the optimum. This is Lewis's signalling game (the referential games of Lazaridou et al.
2017, and MPE's speaker-listener without the navigation), batched as tensors so a short
test can show that the messages carry the goal.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from marlcli.envs.base import EnvSpec, TimeStep, empty_step
from marlcli.errors import ConfigError


def optimum(env_cfg: Any) -> tuple[float, float]:
    """Episode return ``(best with communication, best without)``: ``T`` and ``T / K``."""
    t, k = int(env_cfg.get("max_cycles", 10)), int(env_cfg.get("goals", 4))
    return float(t), t / k


class ReferenceEnv:
    """``num_envs`` copies of the reference game (``env=reference``)."""

    def __init__(self, env_cfg: Any, num_envs: int, seed: int, device: torch.device,
                 dtype: torch.dtype = torch.float32) -> None:
        n, k, t = int(env_cfg.get("N", 2)), int(env_cfg.get("goals", 4)), int(env_cfg.get("max_cycles", 10))
        if n < 2 or k < 2 or t < 1:
            raise ConfigError(f"env=reference needs N >= 2 agents, goals >= 2 and max_cycles >= 1 (got {n}, {k}, {t})")
        self.n, self.k, self.limit = n, k, t
        self.num_envs, self.device, self.dtype = num_envs, torch.device(device), dtype
        obs_dim = 1 + k
        self.spec = EnvSpec(name=str(env_cfg.get("name", "reference")), agents=[f"agent_{i}" for i in range(n)],
                            obs_dims=[obs_dim] * n, act_dims=[k] * n, discrete=True, state_dim=obs_dim * n,
                            episode_limit=t, stats={"correct": "sum"})
        self.gen = torch.Generator(device=self.device).manual_seed(int(seed))
        self.t = torch.zeros(num_envs, dtype=torch.long, device=self.device)
        self.goal = torch.zeros(num_envs, dtype=torch.long, device=self.device)

    def _draw(self) -> None:
        self.goal = torch.randint(self.k, (self.num_envs,), generator=self.gen, device=self.device)

    def _obs(self) -> tuple[Tensor, Tensor]:
        b = self.num_envs
        obs = torch.zeros(b, self.n, 1 + self.k, dtype=self.dtype, device=self.device)
        obs[:, 0, 0] = 1.0
        obs[torch.arange(b, device=self.device), 0, 1 + self.goal] = 1.0
        return obs, obs.reshape(b, -1)

    def _avail(self) -> Tensor:
        return torch.ones(self.num_envs, self.n, self.k, dtype=torch.bool, device=self.device)

    def reset(self) -> TimeStep:
        self.t.zero_()
        self._draw()
        obs, state = self._obs()
        return empty_step(self.spec, obs, state, self._avail(), {"correct": torch.zeros(self.num_envs,
                                                                                         device=self.device)})

    def step(self, actions: Tensor) -> TimeStep:
        b = self.num_envs
        right = (actions[:, 1:] == self.goal[:, None]).to(self.dtype).mean(-1)  # [B] fraction of listeners
        reward = right[:, None].expand(b, self.n).clone()
        self.t += 1
        done = self.t >= self.limit
        self.t = torch.where(done, 0, self.t)
        self._draw()  # a new goal every step; a truncated episode's last observation is the next one's first
        obs, state = self._obs()
        final_obs, final_state = obs, state
        alive = torch.ones(b, self.n, dtype=torch.bool, device=self.device)
        avail = self._avail()
        return TimeStep(obs=obs, state=state, avail=avail, reward=reward,
                        terminated=torch.zeros(b, self.n, dtype=torch.bool, device=self.device),
                        truncated=done.clone(), done=done, alive=alive, final_obs=final_obs, final_state=final_state,
                        final_avail=avail, final_alive=alive, info={"correct": right})

    def state_dict(self) -> dict[str, Tensor]:
        return {"t": self.t.clone(), "goal": self.goal.clone(), "rng": self.gen.get_state()}

    def load_state_dict(self, state: dict[str, Tensor]) -> TimeStep:
        self.t.copy_(state["t"])
        self.goal.copy_(state["goal"])
        self.gen.set_state(state["rng"])
        obs, s = self._obs()
        return empty_step(self.spec, obs, s, self._avail(), {"correct": torch.zeros(self.num_envs, device=self.device)})

    def close(self) -> None:
        return None
