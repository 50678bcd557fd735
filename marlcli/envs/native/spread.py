"""Native batched ``mpe2.simple_spread_v3``: N agents cover N landmarks without colliding.

Observation of agent i (as mpe2): ``[vel, pos, landmark offsets, other-agent offsets,
other agents' comm]``; agents are silent, so comm is zeros. With partial observability
only the nearest ``num_landmark_neighbors`` landmarks / ``num_agent_neighbors`` agents
are listed, closest first, zero-padded (``mpe2/_mpe_utils/partial_observability.py``).
Reward: ``(1 - local_ratio) * global + local_ratio * local`` with ``global = -sum over
landmarks of the closest agent's distance`` and ``local = -(other agents in contact)``.

Swarm options (issue 17; off by default, so the default stays equal to mpe2): with
``num_agent_neighbors`` / ``num_landmark_neighbors`` the observation size does not depend
on N; ``scale_arena`` spreads agents and landmarks over ``sqrt(N / 3)`` times mpe2's square
(N = 3's density at any N); ``observe_position=false`` drops the absolute position (it grows
with the arena, so a policy trained small would see positions it never met);
``global_reward=mean`` averages the landmark distances instead of summing them, so a
per-agent return means the same at every N. The observation layout is declared as entity
groups for the entity-based actors (``marlcli/nets/actor.py``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from marlcli.envs.base import EntityGroup, EnvSpec
from marlcli.envs.native.mpe import Bodies, Gather, MPEEnv, World, build_index
from marlcli.errors import ConfigError

AGENT_SIZE = 0.15
CAPTURE_RADIUS = 0.1  # landmark counts as covered (mpe2 CAPTURE_RADIUS / benchmark_data)


class Spread:
    """The spread scenario for ``MPEEnv``."""

    def __init__(self, env_cfg: Any, device: torch.device) -> None:
        n = int(env_cfg.get("N", 3))
        self.n, self.local_ratio = n, float(env_cfg.get("local_ratio", 0.5))
        if not 0.0 <= self.local_ratio <= 1.0:
            raise ConfigError(f"env.local_ratio={self.local_ratio} must lie in [0, 1]")
        self.na: int | None = env_cfg.get("num_agent_neighbors", None)
        self.nl: int | None = env_cfg.get("num_landmark_neighbors", None)
        for key, v in (("num_agent_neighbors", self.na), ("num_landmark_neighbors", self.nl)):
            if v is not None and int(v) <= 0:
                raise ConfigError(f"env.{key}={v} must be a positive integer or null")
        # swarm options (issue 17); the defaults are mpe2's task, bit for bit
        self.see_pos = bool(env_cfg.get("observe_position", True))
        self.reduce = str(env_cfg.get("global_reward", "sum"))
        if self.reduce not in ("sum", "mean"):
            raise ConfigError(f"env.global_reward={self.reduce!r}: use sum (mpe2) or mean")
        span = math.sqrt(n / 3.0) if bool(env_cfg.get("scale_arena", False)) else 1.0  # N=3's density at any N
        n_lm = n if self.nl is None else int(self.nl)
        n_ag = n - 1 if self.na is None else int(self.na)
        own = 4 if self.see_pos else 2
        obs_dim = own + 2 * n_lm + 4 * n_ag
        self.spec = EnvSpec(
            name=str(env_cfg.get("name", "spread")),
            agents=[f"agent_{i}" for i in range(n)],
            obs_dims=[obs_dim] * n,
            act_dims=[5] * n,
            discrete=not bool(env_cfg.get("continuous_actions", False)),
            state_dim=obs_dim * n,
            episode_limit=int(env_cfg.get("max_cycles", 25)),
            act_low=0.0,
            act_high=1.0,
            stats={"collisions": "sum", "landmarks_covered": "last"},
            position=[2, 3] if self.see_pos else [],
            entities=[  # [vel, (pos)] | landmark offsets | other agents' offsets + their (silent) comm
                EntityGroup("self", [list(range(own))]),
                EntityGroup("landmark", [[own + 2 * j, own + 2 * j + 1] for j in range(n_lm)]),
                EntityGroup("agent", [[own + 2 * n_lm + 2 * j, own + 2 * n_lm + 2 * j + 1,
                                       own + 2 * n_lm + 2 * n_ag + 2 * j, own + 2 * n_lm + 2 * n_ag + 2 * j + 1]
                                      for j in range(n_ag)]),
            ],
        )
        self.bodies = Bodies(n_agents=n, sizes=[AGENT_SIZE] * n + [0.05] * n,
                             collide=[True] * n + [False] * n, agent_range=span, landmark_range=span)
        g = Gather(n, 2 * n)
        rows = [g.vel(i) + (g.pos(i) if self.see_pos else [])
                + [k for j in range(n, 2 * n) for k in g.rel(i, j)]
                + [k for j in range(n) if j != i for k in g.rel(i, j)]
                for i in range(n)]  # comm slots fall into the zero padding
        self.gather, self.index = g, build_index(rows, obs_dim, g.zero, device)

    def reset(self, w: World, idx: Tensor | None) -> None:
        w.sample(idx)

    def copy_extra_from_mpe2(self, w: World, b: int, mpe_world: Any) -> None:
        return None

    def observe(self, w: World) -> tuple[Tensor, Tensor]:
        b, n = w.num_envs, self.n
        if self.na is None and self.nl is None:
            obs = self.gather.source(w).index_select(1, self.index).view(b, n, -1)
            return obs, obs.view(b, -1)
        own = [w.vel.transpose(1, 2)] + ([w.pos[:, :, :n].transpose(1, 2)] if self.see_pos else [])
        obs = torch.cat([*own,
                         self._nearest(w, n, 2 * n, self.nl, exclude_self=False),
                         self._nearest(w, 0, n, self.na, exclude_self=True)], 2)
        obs = torch.cat([obs, obs.new_zeros(b, n, self.spec.obs_dim - obs.shape[2])], 2)
        return obs, obs.view(b, -1)

    def _nearest(self, w: World, lo: int, hi: int, k: int | None, exclude_self: bool) -> Tensor:
        """Offsets [B, N, 2k] of the k nearest entities in ``lo:hi``, closest first.

        A stable sort keeps entity order on ties, like mpe2's ``np.argsort`` on its
        small (insertion-sorted) arrays; self is pushed last with +inf and never taken.
        """
        b, n = w.num_envs, self.n
        dist = w.dist[:, :, lo:hi]
        count = hi - lo
        if exclude_self:
            dist = dist + w.no_self[:, :count]
            count -= 1
        k = count if k is None else int(k)
        order = torch.sort(dist, dim=2, stable=True).indices[:, :, : min(k, count)]
        rel = w.rel[:, :, :, lo:hi].gather(3, order[:, None].expand(b, 2, n, -1))
        out = rel.permute(0, 2, 3, 1).reshape(b, n, -1)
        if k > count:
            out = torch.cat([out, out.new_zeros(b, n, 2 * (k - count))], 2)
        return out

    def reward(self, w: World) -> tuple[Tensor, dict[str, Tensor]]:
        n = self.n
        closest = w.dist[:, :, n:].amin(1)  # [B, L] closest agent per landmark
        glob = -(closest.sum(1) if self.reduce == "sum" else closest.mean(1))  # [B]
        touching = (w.dist[:, :, :n] < 2 * AGENT_SIZE).sum(2) - 1  # [B, N] minus self
        touching = touching.to(closest.dtype)
        reward = (glob * (1.0 - self.local_ratio))[:, None] - touching * self.local_ratio
        info = {"collisions": touching.sum(1) * 0.5,
                "landmarks_covered": (closest < CAPTURE_RADIUS).sum(1).to(closest.dtype)}
        return reward, info


class SpreadEnv(MPEEnv):
    """``VecEnv`` of B batched spread worlds (binds the scenario; no behaviour added)."""

    def __init__(self, env_cfg: Any, num_envs: int, seed: int, device: torch.device,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__(Spread(env_cfg, torch.device(device)), num_envs, seed, device, dtype)
