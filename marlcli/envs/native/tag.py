"""Native batched ``mpe2.simple_tag_v3``: slower predators chase faster prey among obstacles.

Agents are ``adversary_0..`` (predators, size 0.075, accel 3, max speed 1) then
``agent_0..`` (prey, size 0.05, accel 4, max speed 1.3); obstacles (size 0.2) start in
uniform(-0.9, 0.9). Observation of agent i (as mpe2): ``[vel, pos, obstacle offsets,
other-agent offsets, other prey velocities]``, so predators see one more velocity than
prey and prey observations are zero-padded. Rewards use mpe2's defaults (no shaping):
each predator gets +10 per (predator, prey) contact in the world, each prey -10 per
predator touching it and a penalty for leaving the [-0.9, 0.9] square.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from marlcli.envs.base import EnvSpec
from marlcli.envs.native.mpe import Bodies, Gather, MPEEnv, World, build_index
from marlcli.envs.outcome import OUTCOMES
from marlcli.errors import ConfigError


class Tag:
    """The tag scenario for ``MPEEnv``."""

    def __init__(self, env_cfg: Any, device: torch.device) -> None:
        for key in ("num_agent_neighbors", "num_landmark_neighbors"):
            if env_cfg.get(key, None) is not None:
                raise ConfigError(f"env.{key} is not supported by native tag; use env.backend=pettingzoo")
        na, ng = int(env_cfg.get("num_adversaries", 3)), int(env_cfg.get("num_good", 1))
        nl = int(env_cfg.get("num_obstacles", 2))
        n = na + ng
        self.na, self.ng, self.n = na, ng, n
        g = Gather(n, n + nl)
        rows = [g.vel(i) + g.pos(i)
                + [k for j in range(n, n + nl) for k in g.rel(i, j)]
                + [k for j in range(n) if j != i for k in g.rel(i, j)]
                + [k for j in range(na, n) if j != i for k in g.vel(j)]
                for i in range(n)]
        dims = [len(r) for r in rows]
        self.spec = EnvSpec(
            name=str(env_cfg.get("name", "tag")),
            agents=[f"adversary_{i}" for i in range(na)] + [f"agent_{i}" for i in range(ng)],
            obs_dims=dims,
            act_dims=[5] * n,
            discrete=not bool(env_cfg.get("continuous_actions", False)),
            state_dim=sum(dims),
            episode_limit=int(env_cfg.get("max_cycles", 25)),
            act_low=0.0,
            act_high=1.0,
            stats={"catches": "sum"},
            # predators win an episode when they touch the prey at least once, else the prey wins
            # (returns are not zero-sum: the prey also pays for leaving the square)
            outcome=OUTCOMES["tag"],
        )
        self.spec.teams = self.spec.role_index  # predators vs prey: two sides
        self.bodies = Bodies(
            n_agents=n,
            sizes=[0.075] * na + [0.05] * ng + [0.2] * nl,
            collide=[True] * (n + nl),
            accel=[3.0] * na + [4.0] * ng,
            max_speed=[1.0] * na + [1.3] * ng,
            landmark_range=0.9,
        )
        self.gather = g
        self.index = build_index(rows, self.spec.obs_dim, g.zero, device)
        self.state_index = build_index(rows, 0, g.zero, device)  # true sizes, concatenated

    def reset(self, w: World, idx: Tensor | None) -> None:
        w.sample(idx)

    def copy_extra_from_mpe2(self, w: World, b: int, mpe_world: Any) -> None:
        return None

    def observe(self, w: World) -> tuple[Tensor, Tensor]:
        src = self.gather.source(w)
        obs = src.index_select(1, self.index).view(w.num_envs, self.n, -1)
        return obs, src.index_select(1, self.state_index)

    def reward(self, w: World) -> tuple[Tensor, dict[str, Tensor]]:
        na, n = self.na, self.n
        contact = w.dist[:, :na, na:n] < w.dmin[:na, na:n]  # [B, predators, prey]
        caught = contact.sum(1).to(w.dist.dtype)  # [B, prey]: predators touching each prey
        catches = caught.sum(1)  # [B]
        x = w.pos[:, :, na:n].abs()  # [B, 2, prey]
        bound = torch.where(x < 0.9, 0.0,
                            torch.where(x < 1.0, (x - 0.9) * 10, torch.exp(2 * x - 2).clamp(max=10.0)))
        prey = -10.0 * caught - bound.sum(1)
        reward = torch.cat([(10.0 * catches)[:, None].expand(-1, na), prey], 1)
        return reward, {"catches": catches}


class TagEnv(MPEEnv):
    """``VecEnv`` of B batched tag worlds (binds the scenario; no behaviour added)."""

    def __init__(self, env_cfg: Any, num_envs: int, seed: int, device: torch.device,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__(Tag(env_cfg, torch.device(device)), num_envs, seed, device, dtype)
