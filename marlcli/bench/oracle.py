"""A scripted assignment controller on spread: the reference line of the time-to-return plots.

It sees every position (each agent's full observation holds its own velocity and position
and the offsets of all landmarks), assigns agents to landmarks by the permutation with the
smallest total distance, and each agent takes the discrete action whose predicted coasting
point lies closest to its landmark. The prediction follows the native env's physics
(``marlcli/envs/native/mpe.py``): the position moves with the old velocity, then
``v' = (1 - damping) v + dt * 5 * direction``; coasting ``horizon`` more steps covers
``dt * v' * (1 - 0.75**horizon) / 0.25``. ``horizon`` is the rule's one parameter, tuned on a
tuning evaluation set and reported on a different one (``oracle_study``).

It is scored by ``marlcli.evaluate.run_episodes``, the function behind ``marl eval``, so its
``return_mean`` is on marlcli's scale (each agent's episode return, averaged over agents and
episodes) and the episodes are those of ``marl eval PATH seed=S episodes=E envs=E``.
"""

from __future__ import annotations

import itertools
import json
import math
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import Tensor

from marlcli.envs.native.mpe import DAMPING, DIRECTIONS, DT, SENSITIVITY
from marlcli.evaluate import env_for_eval, run_episodes

SPREAD = {"name": "spread", "backend": "native", "N": 3, "local_ratio": 0.5, "max_cycles": 25,
          "continuous_actions": False}
HORIZONS: tuple[float, ...] = (1, 2, 3, 4, 6, 8, math.inf)  # searched on the tuning set
TUNE_SEED = 8000  # evaluation seed of the tuning set (never used to report)


class AssignmentController:
    """``Actor`` for spread with full observability (obs = vel, pos, landmark offsets, ...)."""

    def __init__(self, n: int, horizon: float = 4.0) -> None:
        if n > 7:
            raise ValueError(f"N={n}: the permutation search is for small N (at most 7)")
        self.n, self.horizon = n, horizon
        self.perms = torch.tensor(list(itertools.permutations(range(n))))  # [P, N]
        decay = 1.0 - DAMPING
        self.coast = DT / DAMPING if math.isinf(horizon) else DT * (1 - decay**horizon) / DAMPING
        self.dirs = torch.tensor(DIRECTIONS) * SENSITIVITY * DT  # [5, 2] velocity change per action

    def initial_hidden(self, batch: int) -> None:
        return None

    def assign(self, offsets: Tensor) -> Tensor:
        """``offsets [B, N, L, 2]`` (landmark l from agent i) -> landmark per agent ``[B, N]``."""
        dist = offsets.norm(dim=-1)  # [B, N, L]
        b, n = dist.shape[:2]
        perms = self.perms.to(dist.device)
        chosen = dist[:, torch.arange(n, device=dist.device)[None, :], perms]  # [B, P, N]
        return perms[chosen.sum(-1).argmin(1)]  # [B, N]

    def act(self, obs: Tensor, avail: Tensor, hidden: None, deterministic: bool = True) -> tuple[Tensor, None]:
        b, n = obs.shape[:2]
        vel = obs[..., 0:2]  # [B, N, 2]
        offsets = obs[..., 4: 4 + 2 * n].reshape(b, n, n, 2)  # [B, N, L, 2]
        target = offsets.gather(2, self.assign(offsets)[..., None, None].expand(b, n, 1, 2)).squeeze(2)
        dirs = self.dirs.to(obs)
        new_vel = (1.0 - DAMPING) * vel[:, :, None] + dirs  # [B, N, 5, 2]
        rest = DT * vel[:, :, None] + self.coast * new_vel  # displacement until (nearly) at rest
        miss = (target[:, :, None] - rest).norm(dim=-1)  # [B, N, 5]
        return miss.argmin(-1), None


def evaluate(horizon: float, episodes: int, eval_seed: int, n: int = 3, device: str = "cpu") -> dict[str, float]:
    """The controller on the ``episodes`` episodes of ``marl eval ... seed=eval_seed envs=episodes``."""
    cfg = OmegaConf.create({"env": {**SPREAD, "N": n}})
    env = env_for_eval(cfg, episodes, eval_seed, torch.device(device))
    res = run_episodes(AssignmentController(n, horizon), env, episodes)
    return {k.removeprefix("eval/"): v for k, v in res.summary().items()}


def oracle_study(episodes: int = 2000, eval_seed: int = 9000, tune_seed: int = TUNE_SEED,
                 horizons: tuple[float, ...] = HORIZONS) -> dict[str, Any]:
    """Tune ``horizon`` on the tuning set (``tune_seed``), then report it on ``eval_seed``'s set."""
    tuning = {str(h): evaluate(h, episodes, tune_seed)["return_mean"] for h in horizons}
    best = max(horizons, key=lambda h: tuning[str(h)])
    held_out = evaluate(best, episodes, eval_seed)
    return {"horizon": str(best), "tuning_returns": tuning, "tune_seed": tune_seed, "eval_seed": eval_seed,
            "episodes": episodes, "env": SPREAD, "return_mean": held_out["return_mean"],
            "return_ci95": held_out["return_ci95"], "landmarks_covered": held_out["landmarks_covered"],
            "collisions": held_out["collisions"]}


if __name__ == "__main__":
    print(json.dumps(oracle_study(), indent=2))
