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
    agent_truncated: Tensor | None = None,
) -> Tensor:
    """Generalized advantage estimation (Schulman et al. 2016) with auto-reset envs.

    rewards, values, next_values, terminated, agent_truncated: ``[T, B, N]``; done: ``[T, B]``.
    ``next_values[t]`` is V of the observation after step t, i.e. of the *final*
    observation where the episode was truncated, so truncation bootstraps and only
    ``terminated`` cuts the value. ``done`` stops the recursion at episode ends, and an
    agent's own ``terminated`` stops it for that agent: the rows after an agent finished
    early are padding whose deltas must not leak into its last real step (issue 15).
    An agent truncated alone (``agent_truncated``, its own time limit while the episode
    goes on) is a truncated episode for that agent: the recursion stops there too, but its
    delta still bootstraps from ``next_values`` (its final observation; issue 25).
    Returns advantages ``[T, B, N]``.
    """
    not_term = (~terminated).to(rewards.dtype)
    cont = (~done).to(rewards.dtype)[..., None] * not_term
    if agent_truncated is not None:
        cont = cont * (~agent_truncated).to(rewards.dtype)
    deltas = rewards + gamma * next_values * not_term - values
    adv = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[0])
    for t in range(rewards.shape[0] - 1, -1, -1):
        last = deltas[t] + gamma * lam * cont[t] * last
        adv[t] = last
    return adv


def td_lambda(
    rewards: Tensor, next_values: Tensor, terminated: Tensor, cont: Tensor, gamma: float, lam: float
) -> Tensor:
    """TD(λ) targets (λ-returns, Sutton & Barto 12.1) bootstrapped from target-network values.

    rewards, next_values, terminated, cont: ``[T, B, K]`` (K = agents, or 1 for a mixed Q_tot).
    ``next_values[t]`` is the value of what followed step t (the final observation where the
    episode was truncated); ``terminated`` cuts it; ``cont[t]`` is 1 where step t+1 belongs
    to the same episode (0 at its last step and beyond). λ = 0 gives one-step targets.
    ``G_t = r_t + γ (1 - term_t) ((1 - λ c_t) V_{t+1} + λ c_t G_{t+1})``. Returns ``[T, B, K]``.
    """
    nt = (~terminated).to(rewards.dtype)
    c = cont.to(rewards.dtype).clone()
    c[-1] = 0.0  # the last step bootstraps fully from its next value
    # G_t = y_t + a_t G_{t+1}: unrolled, G = M y with M[t, k] = prod_{t <= j < k} a_j (k >= t).
    # One batched matrix product instead of a T-step Python loop: the learner calls this
    # every gradient step, where the loop's ~200 tiny ops cost more than the network.
    y = rewards + gamma * nt * (1.0 - lam * c) * next_values
    a = (gamma * lam) * nt * c
    y, a = y.movedim(0, -1), a.movedim(0, -1)  # [B, K, T]
    steps = rewards.shape[0]
    upper = torch.ones(steps, steps, dtype=torch.bool, device=rewards.device).triu()  # [t, j]: j >= t
    prods = torch.where(upper, a[..., None, :], 1.0).cumprod(-1)  # [t, j] = prod_{t <= j' <= j} a_j'
    m = torch.cat([torch.ones_like(prods[..., :1]), prods[..., :-1]], -1) * upper  # [t, k] = prod_{t <= j < k}
    return (m @ y[..., None]).squeeze(-1).movedim(-1, 0)


def nstep_returns(
    rewards: Tensor, next_values: Tensor, terminated: Tensor, cont: Tensor, gamma: float, n: int
) -> Tensor:
    """n-step targets ``sum_{k<n} γ^k r_{t+k} + γ^n V_{t+n}``, cut at the episode's end.

    Same arguments and shapes as ``td_lambda`` (``[T, B, K]``). Where the episode ends
    within n steps, the sum stops there and bootstraps from the final observation's value
    (zero if terminated). Returns ``[T, B, K]``.
    """
    nt = (~terminated).to(rewards.dtype)
    c = cont.to(rewards.dtype)

    def shift(x: Tensor, k: int) -> Tensor:
        return torch.cat([x[k:], torch.zeros_like(x[:k])]) if k else x

    out = torch.zeros_like(rewards)
    run = torch.ones_like(rewards)  # 1 while steps t..t+k are all in the episode and not terminated
    for k in range(n):
        r_k, v_k, nt_k, c_k = shift(rewards, k), shift(next_values, k), shift(nt, k), shift(c, k)
        out += gamma**k * run * r_k
        stop = run if k == n - 1 else run * (1 - c_k * nt_k)
        out += gamma ** (k + 1) * stop * nt_k * v_k
        run = run * c_k * nt_k
    return out
