"""The small algorithm interface the trainer and ``marl eval`` rely on.

An algorithm family is one module in ``marlcli/algos/`` exposing::

    CAPS: Capabilities                      # checked against the env before anything runs
    make(spec, cfg, device) -> Algorithm    # the learner (actor + critics + optimizers)
    make_actor(spec, cfg) -> Actor          # the decentralized policy alone, for eval

and one yaml in ``conf/algo/`` whose ``family`` key names the module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from marlcli.buffers import Rollout
from marlcli.distributed import collectives as distributed
from marlcli.envs.base import TimeStep
from marlcli.errors import ConfigError


@dataclass(frozen=True)
class Capabilities:
    """What an algorithm supports; a bad env/algo pair fails at start-up."""

    discrete: bool = True
    continuous: bool = True
    on_policy: bool = True
    cooperative_only: bool = False  # needs one shared team reward (value decomposition)
    set_critic: bool = False  # supports critic.arch=set (critic / mixer over the set of agents, any N)


class Actor(Protocol):
    """Decentralized policy: agent i's action depends on agent i's observation only."""

    def initial_hidden(self, batch: int) -> Tensor | None: ...

    def act(
        self, obs: Tensor, avail: Tensor, hidden: Tensor | None, deterministic: bool
    ) -> tuple[Tensor, Tensor | None]:
        """``obs [B, N, O]``, ``avail [B, N, A]`` -> actions ``[B, N]`` (or ``[B, N, A]``), hidden."""
        ...


class Algorithm(Protocol):
    """A learner: exploratory acting during collection and one update per rollout."""

    actor: nn.Module  # implements Actor; saved separately so eval loads no critic
    rollout_steps: int  # T: env steps per copy collected before each update

    def act(self, ts: TimeStep, hidden: Tensor | None, step: int) -> tuple[Tensor, Tensor | None]:
        """Exploratory actions for collection (``step`` = env steps so far, for schedules)."""
        ...

    def update(self, rollout: Rollout, step: int) -> dict[str, float | Tensor]:
        """Learn from one rollout; returns ``loss/...`` and other metrics (tensors allowed)."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Everything but the actor: critics, targets, optimizers, normalizers, buffers."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def linear(start: float, end: float, step: int, steps: int) -> float:
    """``start`` at step 0 moving linearly to ``end`` at ``steps``, then held (ε and lr schedules)."""
    return start + min(1.0, step / max(1, steps)) * (end - start)


def adam(params: Any, lr: float, eps: float = 1e-8) -> torch.optim.Adam:
    """The one optimizer of every family: Adam with the fused kernel.

    Fused is one kernel over all parameters instead of a chain of foreach ops: 5% off a
    VDN gradient step on 2 CPU cores (issue 7), and it runs on CUDA as well.
    """
    return torch.optim.Adam(params, lr=lr, eps=eps, fused=True)


def schedule_lr(optim: torch.optim.Optimizer, a: Any, step: int, total_steps: int) -> float:
    """Set the learning rate for env step ``step`` from ``algo.lr_schedule`` and return it.

    ``constant`` keeps ``algo.lr``; ``linear`` falls from ``algo.lr`` to ``algo.lr_end`` at
    ``train.total_steps`` (late updates refine instead of undoing a good policy). A function
    of the step alone, so resuming from a checkpoint continues the same schedule.
    """
    if a.lr_schedule == "constant":
        lr = float(a.lr)
    elif a.lr_schedule == "linear":
        lr = linear(float(a.lr), float(a.lr_end), step, total_steps)
    else:
        raise ConfigError(f"unknown algo.lr_schedule '{a.lr_schedule}': use constant or linear")
    for group in optim.param_groups:
        group["lr"] = lr
    return lr


def optimizer_step(optim: torch.optim.Optimizer, params: Any, max_grad_norm: float) -> Tensor:
    """The one optimizer step of every family: average gradients over the ranks, clip, step.

    With several processes (``dist.nproc_per_node``, issue 21) the gradients are all-reduced
    first, so every rank clips the same global gradient and takes the same step; with one
    process this is ``clip_grad_norm_`` then ``optim.step()``. Returns the gradient norm.
    """
    params = list(params)
    distributed.all_reduce_grads(params)
    norm = nn.utils.clip_grad_norm_(params, max_grad_norm)
    optim.step()
    return norm
