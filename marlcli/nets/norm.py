"""Running mean/std normalizer (value normalization, MAPPO paper section 4)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from marlcli import distributed


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
        """``x [..., *shape]``; ``mask`` (same leading shape) selects the entries that count."""
        flat = x.reshape(-1, *self.mean.shape)
        if mask is not None:
            flat = flat[mask.reshape(-1)]
        if flat.numel() == 0:
            return
        mean, mean_sq = distributed.moments(flat)  # over all ranks' rows (issue 21)
        self.mean.mul_(self.beta).add_(mean * (1 - self.beta))
        self.mean_sq.mul_(self.beta).add_(mean_sq * (1 - self.beta))
        self.debias.mul_(self.beta).add_(1 - self.beta)

    def normalize(self, x: Tensor) -> Tensor:
        mean, var = self._stats()
        return (x - mean) / var.sqrt()

    def denormalize(self, x: Tensor) -> Tensor:
        mean, var = self._stats()
        return x * var.sqrt() + mean
