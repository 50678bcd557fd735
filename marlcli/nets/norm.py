"""Running mean/std normalizer (value normalization, MAPPO paper section 4)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from marlcli.distributed import collectives as distributed


class RunningNorm(nn.Module):
    """Debiased exponential running mean/variance, as in MAPPO's ValueNorm.

    Value targets are normalized with it; value predictions are de-normalized before
    computing advantages, so the critic always regresses a unit-scale target.
    """

    def __init__(self, shape: tuple[int, ...] = (), beta: float = 0.99999, eps: float = 1e-5) -> None:
        super().__init__()
        self.beta, self.eps = beta, eps
        self.register_buffer("mean", torch.zeros(shape))
        self.register_buffer("mean_sq", torch.zeros(shape))
        self.register_buffer("debias", torch.zeros(()))

    def _stats(self) -> tuple[Tensor, Tensor]:
        d = self.debias.clamp(min=self.eps)
        mean = self.mean / d
        var = (self.mean_sq / d - mean**2).clamp(min=1e-2)
        return mean, var

    @torch.no_grad()
    def update(self, x: Tensor, mask: Tensor | None = None) -> None:
        """``x [..., *shape]``; ``mask`` (same leading shape) selects the entries that count.

        Under ``dist`` every rank must join the same collectives, also a rank whose rollout
        has no alive rows (a rank that returned early would leave the others waiting in
        theirs forever, issue 25): the row count is summed over all ranks first, and only
        when no rank has a row do all of them skip the update together. A rank without rows
        contributes zeros to the moments.
        """
        flat = x.reshape(-1, *self.mean.shape)
        if mask is not None:
            flat = flat[mask.reshape(-1)]
        rows = torch.tensor([float(flat.shape[0])], dtype=torch.float64, device=flat.device)
        distributed.all_sum(rows)  # every rank, with rows or without
        if rows.item() == 0:
            return
        mean, mean_sq = distributed.moments(flat)  # over all ranks' rows (issue 21); zero rows here add zeros
        self.mean.mul_(self.beta).add_(mean * (1 - self.beta))
        self.mean_sq.mul_(self.beta).add_(mean_sq * (1 - self.beta))
        self.debias.mul_(self.beta).add_(1 - self.beta)

    def normalize(self, x: Tensor) -> Tensor:
        mean, var = self._stats()
        return (x - mean) / var.sqrt()

    def denormalize(self, x: Tensor) -> Tensor:
        mean, var = self._stats()
        return x * var.sqrt() + mean
