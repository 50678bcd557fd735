"""Native batched ``mpe2.simple_adversary_v3``: good agents guard a goal the adversary cannot see.

Agents are ``adversary_0`` then ``agent_0..agent_{N-1}``, N landmarks, no collisions.
One landmark per world is the goal (uniform at reset). Observations (as mpe2): the
adversary sees ``[landmark offsets, other-agent offsets]``; good agents see ``[goal
offset, landmark offsets, other-agent offsets]``, so the adversary's observation is
zero-padded by 2. Rewards use mpe2's defaults (shaped): the adversary gets minus its
distance to the goal; good agents get minus the closest good agent's distance plus the
adversary's distance.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from marlcli.envs.base import EnvSpec
from marlcli.envs.native.mpe import Bodies, Gather, MPEEnv, World, build_index
from marlcli.errors import ConfigError


class Adversary:
    """The adversary scenario for ``MPEEnv``."""

    def __init__(self, env_cfg: Any, device: torch.device) -> None:
        for key in ("num_agent_neighbors", "num_landmark_neighbors"):
            if env_cfg.get(key, None) is not None:
                raise ConfigError(f"env.{key} is not supported by native adversary; use env.backend=pettingzoo")
        nl = int(env_cfg.get("N", 2))
        n = nl + 1
        self.n, self.nl = n, nl
        g = Gather(n, n + nl, extras={"goal": n})
        rows = [([] if i == 0 else g.extra("goal", i, n))
                + [k for j in range(n, n + nl) for k in g.rel(i, j)]
                + [k for j in range(n) if j != i for k in g.rel(i, j)]
                for i in range(n)]
        dims = [len(r) for r in rows]
        self.spec = EnvSpec(
            name=str(env_cfg.get("name", "adversary")),
            agents=["adversary_0"] + [f"agent_{i}" for i in range(nl)],
            obs_dims=dims,
            act_dims=[5] * n,
            discrete=not bool(env_cfg.get("continuous_actions", False)),
            state_dim=sum(dims),
            episode_limit=int(env_cfg.get("max_cycles", 25)),
            act_low=0.0,
            act_high=1.0,
            stats={"adversary_goal_dist": "last", "good_goal_dist": "last"},
        )
        self.spec.teams = self.spec.role_index  # the adversary vs the good agents: two sides
        self.bodies = Bodies(n_agents=n, sizes=[0.15] * n + [0.08] * nl, collide=[False] * (n + nl))
        self.gather = g
        self.index = build_index(rows, self.spec.obs_dim, g.zero, device)
        self.state_index = build_index(rows, 0, g.zero, device)

    def reset(self, w: World, idx: Tensor | None) -> None:
        if "goal" not in w.extra:
            w.extra["goal"] = torch.zeros(w.num_envs, dtype=torch.long, device=w.pos.device)
        k = w.num_envs if idx is None else int(idx.numel())
        goal = torch.randint(self.nl, (k,), generator=w.gen, device=w.pos.device)
        if idx is None:
            w.extra["goal"].copy_(goal)
        else:
            w.extra["goal"][idx] = goal
        w.sample(idx)

    def copy_extra_from_mpe2(self, w: World, b: int, mpe_world: Any) -> None:
        goal = mpe_world.agents[0].goal_a
        w.extra["goal"][b] = next(i for i, lm in enumerate(mpe_world.landmarks) if lm is goal)

    def _goal(self, x: Tensor, w: World) -> Tensor:
        """Column ``n + goal`` of ``x[..., E]`` per world -> ``x[...]``."""
        col = (w.extra["goal"] + self.n).view(-1, *([1] * (x.dim() - 1)))
        return x.gather(-1, col.expand(*x.shape[:-1], 1)).squeeze(-1)

    def observe(self, w: World) -> tuple[Tensor, Tensor]:
        src = self.gather.source(w, (self._goal(w.rel, w),))  # goal offset [B, 2, N]
        obs = src.index_select(1, self.index).view(w.num_envs, self.n, -1)
        return obs, src.index_select(1, self.state_index)

    def reward(self, w: World) -> tuple[Tensor, dict[str, Tensor]]:
        d = self._goal(w.dist, w)  # [B, N] distance of each agent to the goal
        adv = d[:, 0]
        good_best = d[:, 1:].amin(1)
        reward = torch.cat([-adv[:, None], (-good_best + adv)[:, None].expand(-1, self.nl)], 1)
        return reward, {"adversary_goal_dist": adv, "good_goal_dist": good_best}


class AdversaryEnv(MPEEnv):
    """``VecEnv`` of B batched adversary worlds (binds the scenario; no behaviour added)."""

    def __init__(self, env_cfg: Any, num_envs: int, seed: int, device: torch.device,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__(Adversary(env_cfg, torch.device(device)), num_envs, seed, device, dtype)
