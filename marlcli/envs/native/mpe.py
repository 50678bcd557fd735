"""Batched MPE physics shared by the native spread, tag and adversary envs.

A torch port of ``mpe2._mpe_utils.core.World.step`` for ``B`` worlds at once. Positions
are coordinate-major, ``pos[B, 2, E]`` (N agents then L landmarks): pairwise maths on a
contiguous ``[B, N, E]`` plane per coordinate is several times faster on CPU than
reducing over a trailing dimension of size 2. The offsets ``rel[B, 2, N, E] = p_e - p_i``
and distances ``dist[B, N, E]`` are computed once per step, after integration; they serve
this step's observations and rewards and the next step's contact forces.

``MPEEnv`` turns a scenario (spec, reset, observe, reward) into a ``VecEnv`` with
auto-reset; the scenario modules stay short and readable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from marlcli.envs.base import EnvSpec, TimeStep, empty_step
from marlcli.errors import CheckpointError

DT = 0.1  # mpe2 World.dt
DAMPING = 0.25  # mpe2 World.damping
CONTACT_FORCE = 1e2  # mpe2 World.contact_force
CONTACT_MARGIN = 1e-3  # mpe2 World.contact_margin
SENSITIVITY = 5.0  # mpe2 SimpleEnv._set_action default when agent.accel is None
# discrete action -> unit direction, as in SimpleEnv._set_action (no-op, -x, +x, -y, +y)
DIRECTIONS = ((0.0, 0.0), (-1.0, 0.0), (1.0, 0.0), (0.0, -1.0), (0.0, 1.0))


@dataclass
class Bodies:
    """Static entity properties, N agents then landmarks (agents move, landmarks don't, mass 1).

    Colliders must be a prefix (spread: agents; tag: all; adversary: none) so contact
    maths runs on the first ``n_colliders`` columns only."""

    n_agents: int
    sizes: list[float]  # per entity
    collide: list[bool]  # per entity
    accel: list[float | None] = field(default_factory=list)  # per agent; None -> 5.0
    max_speed: list[float | None] = field(default_factory=list)  # per agent
    agent_range: float = 1.0  # reset: agents uniform(-r, r)
    landmark_range: float = 1.0  # reset: landmarks uniform(-r, r)

    @property
    def n_entities(self) -> int:
        return len(self.sizes)

    @property
    def n_colliders(self) -> int:
        c = sum(self.collide)
        assert all(self.collide[:c]), "colliding entities must come first"
        return c


class World:
    """Physical state of B worlds plus the RNG that resets them."""

    def __init__(self, bodies: Bodies, num_envs: int, seed: int, device: torch.device,
                 dtype: torch.dtype) -> None:
        b, n, e, c = num_envs, bodies.n_agents, bodies.n_entities, bodies.n_colliders
        self.bodies, self.num_envs, self.n, self.e, self.c = bodies, b, n, e, c
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        self.pos = torch.zeros(b, 2, e, **kw)  # [B, 2, E]
        self.vel = torch.zeros(b, 2, n, **kw)  # [B, 2, N] (landmarks do not move)
        self.t = torch.zeros(b, dtype=torch.long, device=device)  # steps into the episode
        self.extra: dict[str, Tensor] = {}  # scenario state (adversary's goal landmark)
        self.gen = torch.Generator(device=device)
        self.gen.manual_seed(seed)
        accel = [SENSITIVITY if a is None else a for a in (bodies.accel or [None] * n)]
        self.accel = torch.tensor(accel, **kw)  # [N]
        dirs = torch.tensor(DIRECTIONS, **kw)  # [5, 2]
        # [N*5, 2]: row 5*i + a is agent i's force for discrete action a
        self.table = (dirs[None] * self.accel[:, None, None]).reshape(n * 5, 2).T.contiguous()
        self.offsets = torch.arange(n, device=device) * 5
        speeds = bodies.max_speed or [None] * n
        self.max_speed = None if all(s is None for s in speeds) else torch.tensor(
            [float("inf") if s is None else s for s in speeds], **kw)
        sizes = torch.tensor(bodies.sizes, **kw)
        self.dmin = sizes[:n, None] + sizes[None, :]  # [N, E] collision distance
        self.no_self = torch.zeros(n, c, **kw)  # [N, C]: +inf on i == j removes self-contact
        self.no_self[torch.arange(min(n, c)), torch.arange(min(n, c))] = float("inf")
        self.rel = torch.zeros(b, 2, n, e, **kw)
        self.dist = torch.zeros(b, n, e, **kw)

    def refresh(self) -> None:
        """Recompute ``rel = p_e - p_i`` [B, 2, N, E] and ``dist`` [B, N, E]."""
        torch.sub(self.pos[:, :, None, :], self.pos[:, :, : self.n, None], out=self.rel)
        x, y = self.rel[:, 0], self.rel[:, 1]
        torch.mul(x, x, out=self.dist)
        self.dist.addcmul_(y, y).sqrt_()

    def sample(self, idx: Tensor | None) -> None:
        """Reset the worlds ``idx`` (all if None): uniform positions, zero velocity."""
        bd, n = self.bodies, self.n
        k = self.num_envs if idx is None else int(idx.numel())
        p = torch.empty(k, 2, self.e, device=self.pos.device, dtype=self.pos.dtype)
        p[:, :, :n].uniform_(-bd.agent_range, bd.agent_range, generator=self.gen)
        p[:, :, n:].uniform_(-bd.landmark_range, bd.landmark_range, generator=self.gen)
        at: Tensor | slice = slice(None) if idx is None else idx
        self.pos[at], self.vel[at], self.t[at] = p, 0.0, 0

    def action_force(self, actions: Tensor, discrete: bool) -> Tensor:
        """Agent control force ``u`` [B, 2, N] as mpe2's ``_set_action`` (times accel)."""
        if discrete:
            return self.table[:, actions + self.offsets].transpose(0, 1)
        a = actions.to(self.pos.dtype).clamp(0.0, 1.0)  # ClipOutOfBoundsWrapper
        u = torch.stack((a[..., 2] - a[..., 1], a[..., 4] - a[..., 3]), 1)  # [B, 2, N]
        return u.mul_(self.accel)

    def physics(self, u: Tensor) -> None:
        """One ``World.step``: contact forces, semi-implicit Euler, speed clip; refresh.

        mpe2 moves positions with the old velocity, then damps the velocity and adds
        ``force / mass * dt`` (mass 1). The contact force on i from j is
        ``c * (p_i - p_j) / d * k * softplus(-(d - d_min) / k)``.
        """
        c = self.c
        if c:
            d = self.dist[:, :, :c] + self.no_self  # [B, N, C]; inf on self
            # clamp: past 50 margins the force (< 1e-22) would turn into slow CPU denormals
            pen = F.softplus(((self.dmin[:, :c] - d) / CONTACT_MARGIN).clamp_(min=-50.0))
            coef = pen.mul_(CONTACT_FORCE * CONTACT_MARGIN).div_(d)  # [B, N, C]
            rel = self.rel[:, :, :, :c]  # [B, 2, N, C] = p_j - p_i
            u = u - (rel * coef[:, None]).sum(-1)
        self.pos[:, :, : self.n].add_(self.vel, alpha=DT)
        self.vel.mul_(1.0 - DAMPING).add_(u, alpha=DT)
        if self.max_speed is not None:
            vx, vy = self.vel[:, 0], self.vel[:, 1]
            speed = (vx * vx + vy * vy).sqrt_()  # [B, N]
            scale = torch.where(speed > self.max_speed, self.max_speed / speed, 1.0)
            self.vel.mul_(scale[:, None])
        self.refresh()

    def state_dict(self) -> dict[str, Tensor]:
        out = {"pos": self.pos.clone(), "vel": self.vel.clone(), "t": self.t.clone()}
        out.update({f"extra.{k}": v.clone() for k, v in self.extra.items()})
        out["rng"] = self.gen.get_state()
        return out

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if "rng" not in state:
            raise CheckpointError("native env state has no 'rng'")
        for key in ("pos", "vel", "t", *(f"extra.{k}" for k in self.extra)):
            cur = getattr(self, key) if "." not in key else self.extra[key[6:]]
            if key not in state or tuple(state[key].shape) != tuple(cur.shape):
                raise CheckpointError(f"native env state '{key}' is missing or has the wrong shape")
            cur.copy_(state[key])
        self.gen.set_state(state["rng"].cpu())
        self.refresh()


class Scenario(Protocol):
    """What a scenario module provides to ``MPEEnv``."""

    spec: EnvSpec
    bodies: Bodies

    def reset(self, w: World, idx: Tensor | None) -> None:
        """Sample initial states of worlds ``idx`` (all if None)."""

    def observe(self, w: World) -> tuple[Tensor, Tensor]:
        """``obs`` [B, N, O] zero-padded and ``state`` [B, S] from the current world."""

    def reward(self, w: World) -> tuple[Tensor, dict[str, Tensor]]:
        """``reward`` [B, N] and per-step stats (each [B]) after the physics step."""

    def copy_extra_from_mpe2(self, w: World, b: int, mpe_world: Any) -> None:
        """Copy scenario state beyond positions (the adversary's goal) from mpe2."""


class MPEEnv:
    """B copies of an MPE scenario stepped as one, with auto-reset at ``max_cycles``."""

    def __init__(self, scenario: Scenario, num_envs: int, seed: int, device: torch.device,
                 dtype: torch.dtype = torch.float32) -> None:
        self.scenario = scenario
        self.spec: EnvSpec = scenario.spec
        self.num_envs = num_envs
        self.device = torch.device(device)
        self.world = World(scenario.bodies, num_envs, seed, self.device, dtype)
        scenario.reset(self.world, None)  # a valid world (and its extras) before reset()
        self.world.refresh()
        self.world.gen.manual_seed(seed)  # ...without shifting the seeded stream
        self._limit = self.spec.episode_limit
        self._mask = self.spec.action_mask().to(self.device)  # [N, A]

    def _avail(self) -> Tensor:
        return self._mask.expand(self.num_envs, -1, -1).clone()

    def _first(self) -> TimeStep:
        obs, state = self.scenario.observe(self.world)
        info = {k: torch.zeros(self.num_envs, device=self.device, dtype=obs.dtype)
                for k in self.spec.stats}
        return empty_step(self.spec, obs, state, self._avail(), info)

    def reset(self) -> TimeStep:
        self.scenario.reset(self.world, None)
        self.world.refresh()
        return self._first()

    def step(self, actions: Tensor) -> TimeStep:
        w, sc = self.world, self.scenario
        w.physics(w.action_force(actions, self.spec.discrete))
        w.t += 1
        reward, info = sc.reward(w)
        obs, state = sc.observe(w)
        done = w.t >= self._limit
        final_obs, final_state = obs, state
        if bool(done.any()):
            # obs is recomputed for every copy: unfinished ones get identical values
            sc.reset(w, None if bool(done.all()) else done.nonzero().squeeze(1))
            w.refresh()
            obs, state = sc.observe(w)
        b, n = reward.shape
        avail, alive = self._avail(), torch.ones(b, n, dtype=torch.bool, device=self.device)
        return TimeStep(
            obs=obs,
            state=state,
            avail=avail,
            reward=reward,
            terminated=torch.zeros(b, n, dtype=torch.bool, device=self.device),
            truncated=done,
            done=done.clone(),
            alive=alive,
            final_obs=final_obs,
            final_state=final_state,
            final_avail=avail,  # static masks; every agent is alive until truncation
            final_alive=alive,
            info=info,
        )

    def state_dict(self) -> dict[str, Tensor]:
        return self.world.state_dict()

    def load_state_dict(self, state: dict[str, Tensor]) -> TimeStep:
        self.world.load_state_dict(state)
        return self._first()

    def set_from_mpe2(self, b: int, raw_env: Any) -> None:
        """Copy env copy ``b``'s physical state from an mpe2 env (for equivalence tests)."""
        raw = getattr(raw_env, "unwrapped", raw_env)
        world, w = raw.world, self.world
        ents = world.agents + world.landmarks
        pos = torch.tensor([list(e.state.p_pos) for e in ents], dtype=w.pos.dtype)
        vel = torch.tensor([list(a.state.p_vel) for a in world.agents], dtype=w.pos.dtype)
        w.pos[b] = pos.T.to(self.device)
        w.vel[b] = vel.T.to(self.device)
        w.t[b] = int(raw.steps)
        self.scenario.copy_extra_from_mpe2(w, b, world)
        w.refresh()

    def close(self) -> None:
        return None


class Gather:
    """Static observation layout: each obs entry is one element of a flat source row.

    The source row of a world is ``[vel (2N) | agent pos (2N) | rel (2NE) | extras | 0]``
    in ``World``'s coordinate-major order; ``obs = src[:, index]`` builds every agent's
    mpe2-ordered, zero-padded observation with one gather.
    """

    def __init__(self, n: int, e: int, extras: dict[str, int] | None = None) -> None:
        self.n, self.e = n, e
        self.extra_at: dict[str, int] = {}
        at = 4 * n + 2 * n * e
        for name, k in (extras or {}).items():  # extra [B, 2, k]
            self.extra_at[name], at = at, at + 2 * k
        self.zero = at  # index of a constant 0 (padding)

    def vel(self, i: int) -> list[int]:
        return [i, self.n + i]

    def pos(self, i: int) -> list[int]:
        return [2 * self.n + i, 3 * self.n + i]

    def rel(self, i: int, j: int) -> list[int]:
        """Offset of entity j from agent i (``p_j - p_i``)."""
        base, plane = 4 * self.n, self.n * self.e
        return [base + i * self.e + j, base + plane + i * self.e + j]

    def extra(self, name: str, i: int, k: int) -> list[int]:
        return [self.extra_at[name] + i, self.extra_at[name] + k + i]

    def source(self, w: World, extras: tuple[Tensor, ...] = ()) -> Tensor:
        b = w.num_envs
        zero = w.pos.new_zeros(b, 1)
        parts = [w.vel.reshape(b, -1), w.pos[:, :, : w.n].reshape(b, -1), w.rel.reshape(b, -1)]
        return torch.cat([*parts, *(x.reshape(b, -1) for x in extras), zero], 1)


def build_index(rows: list[list[int]], width: int, zero: int, device: torch.device) -> Tensor:
    """Pad each agent's index list to ``width`` with the zero slot; flatten to [N*width]."""
    flat = [i for r in rows for i in r + [zero] * (width - len(r))]
    return torch.tensor(flat, dtype=torch.long, device=device)
