"""Rollout storage: time-major tensors of one collection phase, kept on the env's device."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor

from marlcli.envs.base import TimeStep


@dataclass
class Rollout:
    """T steps of B envs. Shapes: ``[T, B, N, ...]`` per agent, ``[T, B, ...]`` per env.

    ``obs/state/avail/alive`` are what the agents saw when acting; ``next_*`` is what came
    after the step (the final observation where the episode ended, before auto-reset).
    """

    obs: Tensor  # [T, B, N, O]
    state: Tensor  # [T, B, S]
    avail: Tensor  # [T, B, N, A] bool
    alive: Tensor  # [T, B, N] bool: the agent acted (mask every per-agent loss with it)
    actions: Tensor  # [T, B, N] long or [T, B, N, A] float
    reward: Tensor  # [T, B, N]
    terminated: Tensor  # [T, B, N] bool
    truncated: Tensor  # [T, B] bool
    done: Tensor  # [T, B] bool
    next_obs: Tensor  # [T, B, N, O]
    next_state: Tensor  # [T, B, S]
    next_avail: Tensor  # [T, B, N, A] bool
    next_alive: Tensor  # [T, B, N] bool

    @staticmethod
    def from_steps(steps: list[tuple[TimeStep, Tensor, TimeStep]]) -> Rollout:
        """Stack ``(timestep acted on, actions, next timestep)`` triples along time."""
        cols: dict[str, list[Tensor]] = {f.name: [] for f in fields(Rollout)}
        for ts, act, nxt in steps:
            cols["obs"].append(ts.obs)
            cols["state"].append(ts.state)
            cols["avail"].append(ts.avail)
            cols["alive"].append(ts.alive)
            cols["actions"].append(act)
            cols["reward"].append(nxt.reward)
            cols["terminated"].append(nxt.terminated)
            cols["truncated"].append(nxt.truncated)
            cols["done"].append(nxt.done)
            cols["next_obs"].append(nxt.final_obs)
            cols["next_state"].append(nxt.final_state)
            cols["next_avail"].append(nxt.avail)
            cols["next_alive"].append(nxt.alive)
        return Rollout(**{k: torch.stack(v) for k, v in cols.items()})

    @property
    def num_steps(self) -> int:
        """Env steps in this rollout (T x B)."""
        return self.obs.shape[0] * self.obs.shape[1]
