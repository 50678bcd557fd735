"""GRU agent with per-group weights (parameter sharing as in ``GroupLinear``).

The pymarl ``RNNAgent``: ``fc -> relu -> GRUCell -> fc``. Every matrix is a
``GroupLinear``, so sharing ``none``/``role`` gives each agent group its own GRU while
all agents still run in one batched matmul.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from marlcli.nets.mlp import GroupLinear


class GroupGRUCell(nn.Module):
    """``GRUCell`` per agent group: ``x [..., N, in]``, ``h [..., N, H]`` -> ``h' [..., N, H]``."""

    def __init__(self, in_dim: int, hidden: int, groups: list[int]) -> None:
        super().__init__()
        self.x2h = GroupLinear(in_dim, 3 * hidden, groups, gain=1.0)
        self.h2h = GroupLinear(hidden, 3 * hidden, groups, gain=1.0)

    def forward(self, x: Tensor, h: Tensor) -> Tensor:
        xr, xz, xn = self.x2h(x).chunk(3, -1)
        hr, hz, hn = self.h2h(h).chunk(3, -1)
        r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * hn)
        return (1 - z) * n + z * h


class AgentRNN(nn.Module):
    """``[..., N, in]`` + hidden ``[..., N, H]`` -> outputs ``[..., N, out]``, new hidden."""

    def __init__(self, in_dim: int, out_dim: int, groups: list[int], hidden: int = 64) -> None:
        super().__init__()
        self.hidden = hidden
        self.fc_in = GroupLinear(in_dim, hidden, groups)
        self.gru = GroupGRUCell(hidden, hidden, groups)
        self.fc_out = GroupLinear(hidden, out_dim, groups, gain=1.0)

    def forward(self, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        h = self.gru(torch.relu(self.fc_in(x)), h)
        return self.fc_out(h), h
