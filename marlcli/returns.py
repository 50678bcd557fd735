"""Return and advantage estimators: pure tensor functions over time-major rollouts."""

from __future__ import annotations

import torch
from torch import Tensor


def gae(
    rewards: Tensor,
    values: Tensor,
    next_values: Tensor,
    terminated: Tensor,
    done: Tensor,
    gamma: float,
    lam: float,
) -> Tensor:
    """Generalized advantage estimation (Schulman et al. 2016) with auto-reset envs.

    rewards, values, next_values, terminated: ``[T, B, N]``; done: ``[T, B]``.
    ``next_values[t]`` is V of the observation after step t, i.e. of the *final*
    observation where the episode was truncated, so truncation bootstraps and only
    ``terminated`` cuts the value. ``done`` stops the recursion at episode ends.
    Returns advantages ``[T, B, N]``.
    """
    not_term = (~terminated).to(rewards.dtype)
    cont = (~done).to(rewards.dtype)[..., None].expand_as(rewards)
    deltas = rewards + gamma * next_values * not_term - values
    adv = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[0])
    for t in range(rewards.shape[0] - 1, -1, -1):
        last = deltas[t] + gamma * lam * cont[t] * last
        adv[t] = last
    return adv
