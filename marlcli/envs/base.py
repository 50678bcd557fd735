"""The one environment interface every algorithm sees.

Algorithms never touch PettingZoo dicts: every backend (the PettingZoo adapter, the
native batched torch envs, the matrix games) steps ``B`` environment copies at once and
returns fixed-order tensors ``[B, N, ...]``. Agents with different observation or action
sizes share one tensor: observations are zero-padded to the largest size and the
missing discrete actions are marked unavailable (as EPyMARL does).

Episodes auto-reset: when ``done[b]`` is true, ``obs[b]`` already belongs to the next
episode and ``final_obs[b]`` / ``final_state[b]`` / ``final_avail[b]`` / ``final_alive[b]``
hold the last observation, masks and alive flags of the finished one, so learners
bootstrap correctly on truncation (mpe2 episodes end by truncation at ``max_cycles``) and
never with the next episode's masks. Where ``done[b]`` is false the ``final_*`` fields
equal the plain ones, so ``next_obs[t] == obs[t + 1]`` holds for every copy that goes on
(``tests/envs/test_contract.py`` checks this for every backend).

An agent can also leave while its episode goes on: by termination (``terminated[b, i]``:
no bootstrap) or by its own time limit (``agent_truncated[b, i]``, PettingZoo's
``truncations[agent]`` for one agent while others continue). A lone truncation is not a
termination: learners bootstrap from ``final_obs[b, i]`` (its last observation, which
PettingZoo returns before the agent leaves) with its last masks ``agent_final_avail[b, i]``,
and stop their recursions there, since the rows after it are padding. ``final_alive`` and
``final_avail`` stay off for it (it does not act at ``obs[t + 1]``), so the continuity
above still holds. Backends that never truncate an agent alone leave both at their
default (all False).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor


def role_of(agent: str) -> str:
    """Agent group: the name before a trailing ``_<digits>`` (``adversary_0`` -> ``adversary``)."""
    head, sep, tail = agent.rpartition("_")
    return head if sep and tail.isdigit() else agent


@dataclass
class EntityGroup:
    """One group of an observation's entities, for entity-based networks (``marlcli/nets/actor.py``).

    ``slots[k]`` lists the observation indices of slot k's features (every slot of a group has
    the same number); all-zero slots are padding. ``name == "self"`` marks the agent's own
    features (one slot). Indices need not be contiguous (mpe2 lists offsets and comm apart).
    """

    name: str
    slots: list[list[int]]


@dataclass
class Outcome:
    """Who wins an episode of a competitive game, when higher return is not the answer.

    Role ``winner`` wins when the episode statistic ``stat`` (``EnvSpec.stats``, summed or
    last over the episode) is at least ``threshold``; otherwise every other role wins.
    Envs without one are scored by return (``marlcli.envs.outcome``).
    """

    stat: str
    winner: str
    threshold: float = 1.0


@dataclass
class EnvSpec:
    """Static description of a (batched) environment."""

    name: str
    agents: list[str]
    obs_dims: list[int]  # true observation size per agent
    act_dims: list[int]  # number of discrete actions, or continuous action size, per agent
    discrete: bool
    state_dim: int
    episode_limit: int  # longest possible episode (steps)
    # continuous action bounds (ignored when discrete): one float for every agent and dim,
    # a float per agent, or a list per agent (one bound per action dim); see ``bounds()``
    act_low: float | list[float] | list[list[float]] = -1.0
    act_high: float | list[float] | list[list[float]] = 1.0
    # episode statistics the env reports in TimeStep.info: name -> "sum" | "last"
    stats: dict[str, str] = field(default_factory=dict)
    # observation layout as entity groups (the same for every agent); [] = not declared
    entities: list[EntityGroup] = field(default_factory=list)
    # observation indices of the agent's own absolute position (e.g. [2, 3]); [] = not observed.
    # Communication graphs by range (comm.neighbors=nearest|radius) are computed from them.
    position: list[int] = field(default_factory=list)
    # competitive games: who won an episode (None = the role with the higher mean return)
    outcome: Outcome | None = None
    # who plays with whom: a team index per agent ([] = one team of every agent, a cooperative
    # game at any N). A message channel joins teammates only (``marlcli.nets.comm.same_team``).
    teams: list[int] = field(default_factory=list)

    @property
    def n_agents(self) -> int:
        return len(self.agents)

    @property
    def obs_dim(self) -> int:
        return max(self.obs_dims)

    @property
    def act_dim(self) -> int:
        return max(self.act_dims)

    @property
    def roles(self) -> list[str]:
        """Distinct agent groups, in first-appearance order."""
        return list(dict.fromkeys(role_of(a) for a in self.agents))

    @property
    def role_index(self) -> list[int]:
        """For each agent, the index of its group in ``roles``."""
        roles = self.roles
        return [roles.index(role_of(a)) for a in self.agents]

    @property
    def team_index(self) -> list[int]:
        """For each agent, its team (``teams``, or 0 for all when the game is cooperative)."""
        return list(self.teams) if self.teams else [0] * self.n_agents

    def bounds(self) -> tuple[Tensor, Tensor]:
        """Continuous action bounds ``low, high`` as ``[N, A]`` tensors (padded dims: 0, 0)."""
        out = []
        for spec in (self.act_low, self.act_high):
            t = torch.zeros(self.n_agents, self.act_dim)
            for i, d in enumerate(self.act_dims):
                v = spec[i] if isinstance(spec, (list, tuple)) else spec
                t[i, :d] = torch.as_tensor(v, dtype=torch.float32).expand(d)
            out.append(t)
        return out[0], out[1]

    def action_mask(self) -> Tensor:
        """``[N, A]`` bool: the actions (or continuous dims) each agent really has."""
        mask = torch.zeros(self.n_agents, self.act_dim, dtype=torch.bool)
        for i, d in enumerate(self.act_dims):
            mask[i, :d] = True
        return mask


@dataclass
class TimeStep:
    """What one ``reset``/``step`` returns for all ``B`` env copies.

    Shapes: B envs, N agents, O = spec.obs_dim, S = spec.state_dim, A = spec.act_dim.
    """

    obs: Tensor  # [B, N, O] float, zero-padded; already the next episode where done
    state: Tensor  # [B, S] global state (env.state() or concatenated observations)
    avail: Tensor  # [B, N, A] bool, available actions (continuous: real action dims)
    reward: Tensor  # [B, N] float, reward of the step just taken (zeros after reset)
    terminated: Tensor  # [B, N] bool, agent's episode ended for good: do not bootstrap
    truncated: Tensor  # [B] bool, episode cut by the time limit: bootstrap from final_obs
    done: Tensor  # [B] bool, episode over (terminated for all or truncated); auto-reset
    alive: Tensor  # [B, N] bool, agent is active in ``obs`` and acts next (early finishers: False)
    final_obs: Tensor  # [B, N, O] last observation of the finished episode (== obs where not done)
    final_state: Tensor  # [B, S]
    final_avail: Tensor  # [B, N, A] available actions at final_obs (== avail where not done)
    # [B, N] agent still has a value at final_obs (== alive where not done; at done: acted
    # and not terminated, so a truncated agent bootstraps and a terminated one does not)
    final_alive: Tensor
    info: dict[str, Tensor] = field(default_factory=dict)  # per-step stats, each [B]
    # [B, N] bool, the agent left by its own time limit in this step while the episode goes on:
    # bootstrap from final_obs and stop there (False where done: ``truncated`` covers that); None -> all False
    agent_truncated: Tensor | None = None
    # [B, N, A] bool, the env's masks at final_obs for those agents (final_avail is off for them:
    # they do not act again); all False elsewhere; None -> all False
    agent_final_avail: Tensor | None = None
    # [B, N] long (or [B, N, A] float): the joint action the env really executed in this step, where it
    # differs from the one given to ``step`` (asymmetric self-play: the frozen agents' actions in their
    # slots), so critics over joint actions learn from what happened; None = the actions given
    played: Tensor | None = None

    def __post_init__(self) -> None:
        if self.agent_truncated is None:
            self.agent_truncated = torch.zeros_like(self.terminated)
        if self.agent_final_avail is None:
            self.agent_final_avail = torch.zeros_like(self.final_avail)


class VecEnv(Protocol):
    """B copies of an environment stepped as one."""

    spec: EnvSpec
    num_envs: int
    device: torch.device

    def reset(self) -> TimeStep:
        """Reset every copy (seeded at construction) and return the first observations."""
        ...

    def step(self, actions: Tensor) -> TimeStep:
        """Discrete: ``actions`` is ``[B, N]`` long. Continuous: ``[B, N, A]`` float."""
        ...

    def state_dict(self) -> dict[str, Tensor]:
        """Everything needed to continue exactly (positions, RNG, counters) as tensors."""
        ...

    def load_state_dict(self, state: dict[str, Tensor]) -> TimeStep:
        """Restore ``state_dict()`` and return the current observations."""
        ...

    def close(self) -> None: ...


def empty_step(
    spec: EnvSpec, obs: Tensor, state: Tensor, avail: Tensor, info: dict[str, Tensor] | None = None
) -> TimeStep:
    """A TimeStep right after reset: zero reward, nothing done, everyone alive."""
    b, n = obs.shape[:2]
    dev = obs.device
    alive = torch.ones(b, n, device=dev, dtype=torch.bool)
    return TimeStep(
        obs=obs,
        state=state,
        avail=avail,
        reward=torch.zeros(b, n, device=dev, dtype=obs.dtype),
        terminated=torch.zeros(b, n, device=dev, dtype=torch.bool),
        truncated=torch.zeros(b, device=dev, dtype=torch.bool),
        done=torch.zeros(b, device=dev, dtype=torch.bool),
        alive=alive,
        final_obs=obs,
        final_state=state,
        final_avail=avail,
        final_alive=alive,
        info=info or {},
    )
