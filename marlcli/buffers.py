"""Rollout storage: time-major tensors of one collection phase, kept on the env's device."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor

from marlcli.envs.base import TimeStep
from marlcli.errors import TrainingError


@dataclass
class Rollout:
    """T steps of B envs. Shapes: ``[T, B, N, ...]`` per agent, ``[T, B, ...]`` per env.

    ``obs/state/avail/alive`` are what the agents saw when acting; ``next_*`` is what came
    after the step (the final observation, masks and alive flags where the episode ended,
    before auto-reset; issue 15: never the next episode's). ``agent_truncated`` marks an
    agent that left by its own time limit while the episode went on (issue 25): it
    bootstraps from ``next_obs`` with the masks ``agent_final_avail`` (its ``next_avail``
    is off, as it does not act again), and its later rows are padding.
    """

    obs: Tensor  # [T, B, N, O]
    state: Tensor  # [T, B, S]
    avail: Tensor  # [T, B, N, A] bool
    alive: Tensor  # [T, B, N] bool: the agent acted (mask every per-agent loss with it)
    actions: Tensor  # [T, B, N] long or [T, B, N, A] float
    reward: Tensor  # [T, B, N]
    terminated: Tensor  # [T, B, N] bool
    truncated: Tensor  # [T, B] bool
    done: Tensor  # [T, B] bool
    next_obs: Tensor  # [T, B, N, O]
    next_state: Tensor  # [T, B, S]
    next_avail: Tensor  # [T, B, N, A] bool
    next_alive: Tensor  # [T, B, N] bool
    agent_truncated: Tensor | None = None  # [T, B, N] bool (None: all False)
    agent_final_avail: Tensor | None = None  # [T, B, N, A] bool (None: all False)

    def __post_init__(self) -> None:
        if self.agent_truncated is None:
            self.agent_truncated = torch.zeros_like(self.terminated)
        if self.agent_final_avail is None:
            self.agent_final_avail = torch.zeros_like(self.next_avail)

    def next_masks(self) -> Tensor:
        """``[T, B, N, A]``: the masks at ``next_obs`` to bootstrap with (an agent truncated alone: its last ones)."""
        return self.next_avail | self.agent_final_avail

    @staticmethod
    def from_steps(steps: list[tuple[TimeStep, Tensor, TimeStep]]) -> Rollout:
        """Stack ``(timestep acted on, actions, next timestep)`` triples along time."""
        cols: dict[str, list[Tensor]] = {f.name: [] for f in fields(Rollout)}
        for ts, act, nxt in steps:
            cols["obs"].append(ts.obs)
            cols["state"].append(ts.state)
            cols["avail"].append(ts.avail)
            cols["alive"].append(ts.alive)
            cols["actions"].append(act)
            cols["reward"].append(nxt.reward)
            cols["terminated"].append(nxt.terminated)
            cols["truncated"].append(nxt.truncated)
            cols["done"].append(nxt.done)
            cols["next_obs"].append(nxt.final_obs)
            cols["next_state"].append(nxt.final_state)
            cols["next_avail"].append(nxt.final_avail)
            cols["next_alive"].append(nxt.final_alive)
            cols["agent_truncated"].append(nxt.agent_truncated)
            cols["agent_final_avail"].append(nxt.agent_final_avail)
        return Rollout(**{k: torch.stack(v) for k, v in cols.items()})

    @property
    def num_steps(self) -> int:
        """Env steps in this rollout (T x B)."""
        return self.obs.shape[0] * self.obs.shape[1]


class TransitionReplay:
    """Ring buffer of single transitions for off-policy actor-critics (MADDPG).

    Filled from ``Rollout``s (``[T, B, ...]`` flattened to ``T*B`` rows) and kept on the
    env's device. Indices are drawn with the CPU generator that the trainer checkpoints,
    and ``state_dict`` holds the filled rows as tensors, so a resumed run samples exactly
    the same minibatches.
    """

    KEYS = ("obs", "state", "avail", "alive", "actions", "reward", "terminated",
            "next_obs", "next_state", "next_avail", "next_alive", "agent_truncated", "agent_final_avail")

    def __init__(self, capacity: int, device: torch.device) -> None:
        self.capacity, self.device = int(capacity), device
        self.data: dict[str, Tensor] = {}
        self.pos, self.size = 0, 0

    def add(self, r: Rollout) -> None:
        rows = {k: getattr(r, k).reshape(-1, *getattr(r, k).shape[2:]) for k in self.KEYS}
        if not self.data:
            self.data = {k: torch.zeros(self.capacity, *v.shape[1:], dtype=v.dtype, device=self.device)
                         for k, v in rows.items()}
        rows = {k: v[-self.capacity:] for k, v in rows.items()}  # more rows than capacity: keep the newest
        n = next(iter(rows.values())).shape[0]
        idx = (torch.arange(n, device=self.device) + self.pos) % self.capacity
        for k, v in rows.items():
            self.data[k][idx] = v
        self.pos = (self.pos + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def sample(self, batch: int) -> dict[str, Tensor]:
        """``batch`` rows drawn uniformly with replacement: ``{key: [batch, ...]}``."""
        idx = torch.randint(0, self.size, (batch,)).to(self.device)
        return {k: v[idx] for k, v in self.data.items()}

    def __len__(self) -> int:
        return self.size

    def state_dict(self) -> dict[str, Tensor]:
        out = {k: v[: self.size].clone() for k, v in self.data.items()}
        out["_pos"] = torch.tensor(self.pos)
        return out

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.pos = int(state["_pos"])
        rows = {k: v.to(self.device) for k, v in state.items() if k != "_pos"}
        if rows and "agent_truncated" not in rows:  # a checkpoint from before issue 25: no lone truncations
            rows["agent_truncated"] = torch.zeros_like(rows["terminated"])
            rows["agent_final_avail"] = torch.zeros_like(rows["next_avail"])
        self.size = next(iter(rows.values())).shape[0] if rows else 0
        self.data = {}
        if rows:
            self.data = {k: torch.zeros(self.capacity, *v.shape[1:], dtype=v.dtype, device=self.device)
                         for k, v in rows.items()}
            for k, v in rows.items():
                self.data[k][: self.size] = v


class EpisodeReplay:
    """Whole episodes (as in pymarl / EPyMARL), assembled from auto-reset rollouts.

    Every slot holds one episode in ``L + 1`` rows (``L = max_len``): row ``t < len`` is
    what the agents saw at step t plus the step's action, reward and termination; row
    ``len`` holds the final observation (before auto-reset), so truncated episodes
    bootstrap correctly. ``filled[t]`` marks the transition rows. Episodes can span
    rollouts: each env copy writes into its own staging slot until its episode ends,
    then the slot is copied into the ring buffer. All tensors live on ``device``; the
    only host sync is one per ``add`` (the number of episodes that ended at each step).
    An agent truncated alone at row t (``agent_truncated``) has its last observation in
    row t + 1 and its last masks in ``agent_final_avail`` of row t (issue 25).
    """

    def __init__(self, capacity: int, num_envs: int, max_len: int, n_agents: int, obs_dim: int,
                 state_dim: int, act_dim: int, device: torch.device) -> None:
        n, f, b, lg = n_agents, torch.float32, torch.bool, torch.long
        self.shapes: dict[str, tuple[tuple[int, ...], torch.dtype]] = {
            "obs": ((n, obs_dim), f), "state": ((state_dim,), f), "avail": ((n, act_dim), b),
            "alive": ((n,), b), "actions": ((n,), lg), "reward": ((n,), f), "terminated": ((n,), b),
            "agent_truncated": ((n,), b), "agent_final_avail": ((n, act_dim), b), "filled": ((), b)}
        self.capacity, self.max_len, self.size, self.ptr = capacity, max_len, 0, 0
        rows = max_len + 1  # slot ``capacity`` is scratch: unfinished envs are "copied" there
        self.data = {k: torch.zeros(capacity + 1, rows, *s, dtype=d, device=device) for k, (s, d) in self.shapes.items()}
        self.stage = {k: torch.zeros(num_envs, rows, *s, dtype=d, device=device) for k, (s, d) in self.shapes.items()}
        self.pos = torch.zeros(num_envs, dtype=torch.long, device=device)

    def add(self, r: Rollout) -> int:
        """Append a rollout ``[T, B, ...]``; commit the episodes that ended. Returns how many."""
        ends = r.done.sum(1).tolist()  # the one host sync per rollout (plus the overflow check below)
        ar = torch.arange(r.done.shape[1], device=self.pos.device)
        committed = 0
        overflow = torch.zeros((), dtype=torch.bool, device=self.pos.device)
        for t, n_end in enumerate(ends):
            overflow |= (self.pos >= self.max_len).any()
            p = self.pos.clamp(max=self.max_len - 1)  # keeps indices valid until the error is raised
            now = {"obs": r.obs[t], "state": r.state[t], "avail": r.avail[t], "alive": r.alive[t],
                   "actions": r.actions[t], "reward": r.reward[t], "terminated": r.terminated[t],
                   "agent_truncated": r.agent_truncated[t], "agent_final_avail": r.agent_final_avail[t],
                   "filled": torch.ones_like(r.done[t])}
            nxt = {"obs": r.next_obs[t], "state": r.next_state[t], "avail": r.next_avail[t], "alive": r.next_alive[t]}
            for k, v in now.items():
                self.stage[k][ar, p] = v
            for k, v in nxt.items():
                self.stage[k][ar, p + 1] = v
            self.pos = self.pos + 1  # an episode past max_len is reported below, never spliced
            if n_end:
                d = r.done[t]
                slot = torch.where(d, (self.ptr + d.long().cumsum(0) - 1) % self.capacity, self.capacity)
                for k in self.shapes:
                    self.data[k][slot] = self.stage[k]
                self.stage["filled"][d] = False
                self.pos = torch.where(d, 0, self.pos)
                self.ptr = (self.ptr + n_end) % self.capacity
                self.size = min(self.size + n_end, self.capacity)
                committed += n_end
        if bool(overflow):
            raise TrainingError(f"an episode ran longer than the episode limit of {self.max_len} steps, so episode "
                                "replay cannot hold it; set env.max_cycles to the env's longest episode")
        return committed

    def sample(self, batch: int) -> dict[str, Tensor]:
        """``batch`` episodes drawn uniformly with replacement: ``{field: [batch, L + 1, ...]}``."""
        idx = torch.randint(0, self.size, (batch,), device=self.pos.device)
        return {k: v[idx] for k, v in self.data.items()}

    def state_dict(self) -> dict[str, Tensor | int]:
        out: dict[str, Tensor | int] = {f"data.{k}": v[: self.size].clone() for k, v in self.data.items()}
        out.update({f"stage.{k}": v.clone() for k, v in self.stage.items()})
        out.update(pos=self.pos.clone(), size=self.size, ptr=self.ptr)
        return out

    def load_state_dict(self, state: dict[str, Tensor | int]) -> None:
        self.size, self.ptr = int(state["size"]), int(state["ptr"])
        for k in self.shapes:
            if f"data.{k}" not in state:  # a checkpoint from before issue 25: no lone truncations
                self.data[k].zero_()
                self.stage[k].zero_()
                continue
            self.data[k][: self.size] = state[f"data.{k}"]
            self.stage[k].copy_(state[f"stage.{k}"])
        self.pos.copy_(state["pos"])
