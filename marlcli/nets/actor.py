"""The input side of every actor, built in one place: observations -> per-agent features.

Every family (PPO/COMA, Q-learning, MADDPG) builds its actor as ``encoder -> head`` with the
encoder from :func:`make_encoder`, so an architecture option reaches all of them at once
(``conf/actor/*.yaml``, issue 17):

* ``actor=mlp`` (default): the observation as it is, plus a one-hot agent id when
  ``sharing=all`` and ``sharing.agent_id=true``. Its input size is the env's observation size
  (plus N with the id), so a shared actor without the id runs at any N whenever the
  observation size does not depend on N (neighbour-limited observations).
* ``actor=deepsets`` / ``actor=attention``: entity-based and permutation-invariant. The env
  declares its observation layout as entity groups (``EnvSpec.entities``: "self", the
  nearest landmarks, the nearest agents, ...); each slot of a group is embedded by one shared
  layer and the slots are pooled (masked mean for deep sets, Zaheer et al. 2017; scaled
  dot-product attention with the agent's own embedding as the query, as in entity-attention
  MARL actors). The feature size depends on the embedding width only, never on N or on how
  many slots a group has.

Slots whose features are all zero are padding (fewer entities than slots) and are masked.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from marlcli.envs.base import EnvSpec
from marlcli.errors import ConfigError
from marlcli.nets.comm import wrap
from marlcli.nets.mlp import GroupLinear, agent_groups, with_agent_id

ENCODERS = ("mlp", "deepsets", "attention")


def uses_agent_id(sharing: str, agent_id: bool) -> bool:
    """The one-hot id is appended only to one network shared by every agent (``sharing=all``)."""
    return sharing == "all" and bool(agent_id)


class ObsEncoder(nn.Module):
    """``obs [..., N, O] -> [..., N, out_dim]``: the observation, plus the one-hot id if used."""

    def __init__(self, spec: EnvSpec, add_id: bool, extra: int = 0) -> None:
        super().__init__()
        self.add_id = add_id
        self.out_dim = spec.obs_dim + extra + (spec.n_agents if add_id else 0)

    def forward(self, obs: Tensor, extra: Tensor | None = None) -> Tensor:
        """``extra`` (a family's own inputs, e.g. the last action) goes before the id."""
        x = torch.cat([obs, extra], -1) if extra is not None else obs
        return with_agent_id(x) if self.add_id else x


class EntityEncoder(nn.Module):
    """Permutation-invariant embedding of an observation made of entity groups.

    ``obs [..., N, O]`` -> ``[self embedding | pooled embedding per group] (+ one-hot id)``.
    Group ``g`` has ``K_g`` slots of ``f_g`` features (``EnvSpec.entities``); every slot of
    a group goes through the same layer, so any number of slots (and any N) fits.
    """

    def __init__(self, spec: EnvSpec, groups: list[int], embed: int, pool: str, add_id: bool, extra: int = 0) -> None:
        super().__init__()
        if not spec.entities:
            raise ConfigError(f"actor=deepsets/attention needs an env that declares its observation layout as entity "
                              f"groups; env={spec.name} does not (use actor=mlp)")
        self.pool, self.add_id, self.embed = pool, add_id, embed
        self.names = [g.name for g in spec.entities]
        self.embedders = nn.ModuleList()
        for i, g in enumerate(spec.entities):
            index = torch.tensor(g.slots, dtype=torch.long)  # [K, f]
            self.register_buffer(f"index_{i}", index, persistent=False)
            self.embedders.append(GroupLinear(index.shape[1], embed, groups))
        self.self_group = self.names.index("self") if "self" in self.names else None
        if pool == "attention":
            self.query = GroupLinear(embed, embed, groups, gain=1.0)
            self.key = GroupLinear(embed, embed, groups, gain=1.0)
        n_parts = len(spec.entities)
        self.out_dim = embed * n_parts + extra + (spec.n_agents if add_id else 0)

    def _slots(self, obs: Tensor, i: int) -> tuple[Tensor, Tensor]:
        """Embeddings ``[..., K, N, E]`` of group i's slots and their presence mask ``[..., K, N]``."""
        index: Tensor = getattr(self, f"index_{i}")
        x = obs[..., index]  # [..., N, K, f]
        present = (x != 0).any(-1)  # all-zero slots are padding
        e = torch.relu(self.embedders[i](x.transpose(-3, -2)))  # GroupLinear wants agents at dim -2
        return e, present.transpose(-2, -1)

    def forward(self, obs: Tensor, extra: Tensor | None = None) -> Tensor:
        parts: list[Tensor | None] = [None] * len(self.names)
        me = None
        if self.self_group is not None:
            e, _ = self._slots(obs, self.self_group)
            me = e.sum(-3)  # one slot
            parts[self.self_group] = me
        for i in range(len(self.names)):
            if i == self.self_group:
                continue
            e, present = self._slots(obs, i)  # [..., K, N, E], [..., K, N]
            m = present.unsqueeze(-1).to(e.dtype)
            if self.pool == "attention" and me is not None:
                q = self.query(me).unsqueeze(-3)  # [..., 1, N, E]
                score = (self.key(e) * q).sum(-1, keepdim=True) / math.sqrt(self.embed)  # [..., K, N, 1]
                score = score.masked_fill(m == 0, -1e9)
                w = torch.softmax(score, dim=-3) * m  # no slot present -> all weights 0
                parts[i] = (w * e).sum(-3)
            else:
                parts[i] = (e * m).sum(-3) / m.sum(-3).clamp(min=1.0)
        out = torch.cat([p for p in parts if p is not None] + ([extra] if extra is not None else []), -1)
        return with_agent_id(out) if self.add_id else out


def make_encoder(spec: EnvSpec, cfg: object, add_id: bool | None = None, extra: int = 0,
                 channel: bool = True) -> nn.Module:
    """The encoder ``cfg.actor`` asks for, with ``cfg.sharing``'s groups and agent-id rule.

    ``add_id`` overrides the sharing rule (a set critic never takes the id); ``extra`` is the
    width of a family's own per-agent inputs passed to ``forward(obs, extra)`` (the last action).
    With ``channel`` (actors), the features are wrapped by the message channel ``cfg.comm``
    asks for (``marlcli/nets/comm.py``; nothing for ``comm=none``); critics pass ``channel=False``.
    """
    base = _base_encoder(spec, cfg, add_id, extra)
    if not channel:
        return base
    return wrap(base, spec, cfg, agent_groups(str(cfg.sharing.mode), spec))  # type: ignore[attr-defined]


def _base_encoder(spec: EnvSpec, cfg: object, add_id: bool | None, extra: int) -> ObsEncoder | EntityEncoder:
    actor = getattr(cfg, "actor", None)
    kind = str(actor.type) if actor is not None else "mlp"
    sharing = str(cfg.sharing.mode)  # type: ignore[attr-defined]
    if add_id is None:
        add_id = uses_agent_id(sharing, bool(cfg.sharing.get("agent_id", True)))  # type: ignore[attr-defined]
    if kind == "mlp":
        return ObsEncoder(spec, add_id, extra)
    if kind in ("deepsets", "attention"):
        embed = int(actor.embed)  # type: ignore[union-attr]
        if embed < 1:
            raise ConfigError(f"actor.embed must be a positive integer, got {embed}")
        return EntityEncoder(spec, agent_groups(sharing, spec), embed, "mean" if kind == "deepsets" else "attention",
                             add_id, extra)
    raise ConfigError(f"unknown actor '{kind}': use one of {', '.join(ENCODERS)}")
