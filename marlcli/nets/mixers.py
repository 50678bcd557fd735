"""Value-decomposition mixers: per-agent utilities ``[..., N]`` -> joint value ``[..., 1]``.

VDN (Sunehag et al. 2018) sums the utilities. QMIX (Rashid et al. 2018) mixes them with
a two-layer network whose weights come from hypernetworks on the global state, made
non-negative by ``abs``: Q_tot is monotonic in every utility, so the argmax of Q_tot is
each agent's own argmax and decentralized greedy execution is consistent.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from marlcli.errors import ConfigError


class VDNMixer(nn.Module):
    """``Q_tot = sum_i Q_i`` (the state is ignored)."""

    def forward(self, q: Tensor, state: Tensor) -> Tensor:
        return q.sum(-1, keepdim=True)


class QMixer(nn.Module):
    """Monotonic mixer: ``Q_tot = w2 . elu(w1 . q + b1) + b2`` with ``w1, w2 >= 0`` from the state."""

    def __init__(self, n_agents: int, state_dim: int, embed: int = 32, hyper_hidden: int = 64) -> None:
        super().__init__()
        self.n, self.embed = n_agents, embed
        self.hyper_w1 = nn.Sequential(nn.Linear(state_dim, hyper_hidden), nn.ReLU(),
                                      nn.Linear(hyper_hidden, n_agents * embed))
        self.hyper_b1 = nn.Linear(state_dim, embed)
        self.hyper_w2 = nn.Sequential(nn.Linear(state_dim, hyper_hidden), nn.ReLU(), nn.Linear(hyper_hidden, embed))
        self.hyper_b2 = nn.Sequential(nn.Linear(state_dim, embed), nn.ReLU(), nn.Linear(embed, 1))

    def weights(self, state: Tensor) -> tuple[Tensor, Tensor]:
        """Non-negative mixing weights ``w1 [..., N, E]``, ``w2 [..., E, 1]``."""
        w1 = self.hyper_w1(state).abs().view(*state.shape[:-1], self.n, self.embed)
        w2 = self.hyper_w2(state).abs().view(*state.shape[:-1], self.embed, 1)
        return w1, w2

    def forward(self, q: Tensor, state: Tensor) -> Tensor:
        """``q [..., N]``, ``state [..., S]`` -> ``[..., 1]``."""
        w1, w2 = self.weights(state)
        # elementwise products instead of [1, N] @ [N, E] matmuls: far cheaper for small N on CPU
        h = F.elu((q.unsqueeze(-1) * w1).sum(-2) + self.hyper_b1(state))  # [..., E]
        return (h * w2.squeeze(-1)).sum(-1, keepdim=True) + self.hyper_b2(state)


class SetQMixer(nn.Module):
    """Monotonic mixer over the SET of agents (any N; ``critic.arch=set``, issue 17).

    Instead of a flat state whose size depends on N, it reads every agent's observation:
    ``e_i = relu(phi(o_i))`` and ``m = mean_i e_i``. Agent i's first-layer weights come from
    ``[e_i, m]`` (``w1_i = |H1(e_i, m)| [E]``), the rest from ``m``; ``abs`` keeps Q_tot
    monotonic in every utility, as in QMIX. Summing over agents makes it size-free.
    """

    def __init__(self, obs_dim: int, embed: int = 32, hyper_hidden: int = 64) -> None:
        super().__init__()
        self.phi = nn.Linear(obs_dim, hyper_hidden)
        self.hyper_w1 = nn.Linear(2 * hyper_hidden, embed)
        self.hyper_b1 = nn.Linear(hyper_hidden, embed)
        self.hyper_w2 = nn.Linear(hyper_hidden, embed)
        self.hyper_b2 = nn.Sequential(nn.Linear(hyper_hidden, embed), nn.ReLU(), nn.Linear(embed, 1))

    def forward(self, q: Tensor, obs: Tensor) -> Tensor:
        """``q [..., N]``, ``obs [..., N, O]`` -> ``[..., 1]``."""
        e = F.relu(self.phi(obs))  # [..., N, H]
        m = e.mean(-2)  # [..., H]
        w1 = self.hyper_w1(torch.cat([e, m.unsqueeze(-2).expand_as(e)], -1)).abs()  # [..., N, E]
        h = F.elu((q.unsqueeze(-1) * w1).sum(-2) + self.hyper_b1(m))  # [..., E]
        return (h * self.hyper_w2(m).abs()).sum(-1, keepdim=True) + self.hyper_b2(m)


def make_mixer(kind: str, n_agents: int, state_dim: int, embed: int = 32, hyper_hidden: int = 64,
               set_obs_dim: int | None = None) -> nn.Module | None:
    """``none`` (independent learners) -> None, ``vdn`` or ``qmix`` (over the agents' observations when
    ``set_obs_dim`` is given: ``critic.arch=set``)."""
    if kind == "none":
        return None
    if kind == "vdn":
        return VDNMixer()
    if kind == "qmix":
        if set_obs_dim is not None:
            return SetQMixer(set_obs_dim, embed, hyper_hidden)
        return QMixer(n_agents, state_dim, embed, hyper_hidden)
    raise ConfigError(f"unknown algo.mixer '{kind}': use none, vdn or qmix")
