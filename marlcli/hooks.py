"""What a capability adds to the training loop, without the loop knowing the capability: a :class:`Hook`.

The trainer holds a list of hooks and calls each at fixed points: ``start`` once the learner
exists, ``after_update`` after every update (metrics for that update's log line, averaged over
the ranks with the learner's), ``log_metrics`` at log lines only (where reading device values
costs no extra sync), ``wrap_eval`` around every evaluation env, ``state_dict`` into each
checkpoint (under the hook's ``name``; ``None`` saves nothing), ``load_state_dict`` on resume
(with ``None`` when the checkpoint has no state of that name) and ``write`` after each
checkpoint (files beside it, such as self-play's ``pool/``).

Hooks today: self-play and the matrix-game measures (``marlcli.selfplay.Session``) and the
message channel's statistics (:class:`CommStats`).
"""

from __future__ import annotations

from typing import Any, Protocol

from marlcli.envs.base import VecEnv
from marlcli.nets.comm import comm_stats


class Hook(Protocol):
    """The loop's extension points; subclass it for the no-op defaults, or match it structurally."""

    name: str  # its state's key in a checkpoint

    def start(self, algo: Any) -> None:
        """The learner is built (and, with several ranks, in sync): keep what later calls need."""

    def after_update(self, prev_step: int, step: int) -> dict[str, float]:
        """After the update that took the env step count from ``prev_step`` to ``step``: its metrics."""
        return {}

    def log_metrics(self) -> dict[str, float]:
        """Metrics for a log line only (read from the device there, not after every update)."""
        return {}

    def wrap_eval(self, env: VecEnv) -> VecEnv:
        """An evaluation env, as this capability plays it (self-play: against the pool)."""
        return env

    def state_dict(self) -> dict[str, Any] | None:
        """What a resumed run needs to continue exactly; ``None``: nothing."""
        return None

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Resume from ``state_dict()``'s output (``None``: the checkpoint holds none)."""

    def write(self) -> None:
        """After a checkpoint (rank 0 only): files of its own in the seed dir."""


class CommStats(Hook):
    """``comm/...`` metrics of the last messages the actor sent (per-dimension mean and std, bit entropy)."""

    name = "comm"

    def __init__(self) -> None:
        self.actor: Any = None

    def start(self, algo: Any) -> None:
        self.actor = algo.actor

    def log_metrics(self) -> dict[str, float]:
        return comm_stats(self.actor) if self.actor is not None else {}


def after_update(hooks: list[Hook], prev_step: int, step: int) -> dict[str, float]:
    """Every hook's ``after_update`` metrics, merged in hook order."""
    out: dict[str, float] = {}
    for hook in hooks:
        out.update(hook.after_update(prev_step, step))
    return out


def log_metrics(hooks: list[Hook]) -> dict[str, float]:
    out: dict[str, float] = {}
    for hook in hooks:
        out.update(hook.log_metrics())
    return out


def wrap_eval(hooks: list[Hook], env: VecEnv) -> VecEnv:
    for hook in hooks:
        env = hook.wrap_eval(env)
    return env
