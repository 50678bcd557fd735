"""Per-agent MLPs where parameter sharing is a grouping of agents.

One ``GroupLinear`` holds ``G`` weight matrices ``[G, in, out]`` and applies to agent
``i`` the matrix of its group ``g(i)``. Sharing ``all`` is ``G = 1`` (plus a one-hot
agent id in the input), ``none`` is one group per agent, ``role`` one group per agent
role. All agents are still computed in one batched matmul, so unshared networks cost
about the same as a shared one. Padded observation entries are zero, so an agent's
network behaves as one of its true input size.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from marlcli.envs.base import EnvSpec
from marlcli.errors import ConfigError

SHARING = ("all", "none", "role")


def agent_groups(sharing: str, spec: EnvSpec) -> list[int]:
    """Group index per agent for a sharing mode."""
    if sharing == "all":
        return [0] * spec.n_agents
    if sharing == "none":
        return list(range(spec.n_agents))
    if sharing == "role":
        return spec.role_index
    raise ConfigError(f"unknown sharing '{sharing}': use one of {', '.join(SHARING)}")


def with_agent_id(x: Tensor) -> Tensor:
    """Append a one-hot agent id: ``[..., N, D] -> [..., N, D + N]``."""
    n = x.shape[-2]
    eye = torch.eye(n, device=x.device, dtype=x.dtype).expand(*x.shape[:-2], n, n)
    return torch.cat([x, eye], dim=-1)


class GroupLinear(nn.Module):
    """``G`` independent linear maps; agent ``i`` uses map ``groups[i]``."""

    def __init__(self, in_dim: int, out_dim: int, groups: list[int], gain: float = math.sqrt(2)) -> None:
        super().__init__()
        n_groups = max(groups) + 1
        self.weight = nn.Parameter(torch.empty(n_groups, in_dim, out_dim))
        self.bias = nn.Parameter(torch.zeros(n_groups, out_dim))
        self.register_buffer("groups", torch.tensor(groups, dtype=torch.long), persistent=False)
        self.single = n_groups == 1
        for g in range(n_groups):  # orthogonal init (MAPPO paper, Yu et al. 2022)
            nn.init.orthogonal_(self.weight.data[g].T, gain=gain)

    def forward(self, x: Tensor) -> Tensor:
        """``x [..., N, in] -> [..., N, out]``."""
        if self.single:  # [out, in] weight for the GEMM: 2x faster than [in, out] for narrow outputs (CPU)
            return F.linear(x, self.weight[0].T.contiguous(), self.bias[0])
        w, b = self.weight[self.groups], self.bias[self.groups]
        lead = x.shape[:-2]
        xn = x.reshape(-1, *x.shape[-2:]).transpose(0, 1)  # [N, M, in]
        out = torch.bmm(xn, w).transpose(0, 1) + b  # [M, N, out]
        return out.reshape(*lead, *out.shape[-2:])


class AgentMLP(nn.Module):
    """``[..., N, in] -> [..., N, out]`` MLP with per-group weights."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        groups: list[int],
        hidden: int = 64,
        layers: int = 2,
        activation: str = "relu",
        out_gain: float = 1.0,
    ) -> None:
        super().__init__()
        act = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}.get(activation)
        if act is None:
            raise ConfigError(f"unknown activation '{activation}': use relu, tanh or gelu")
        mods: list[nn.Module] = []
        d = in_dim
        for _ in range(layers):
            mods += [GroupLinear(d, hidden, groups), act()]
            d = hidden
        mods.append(GroupLinear(d, out_dim, groups, gain=out_gain))
        self.net = nn.Sequential(*mods)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
