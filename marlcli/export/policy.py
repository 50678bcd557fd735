"""The exported module: one agent's step through the family's own actor, as one file holds it.

Each file is a thin :class:`GroupPolicy` around the family's own actor (``PolicyActor.dist``,
``QActor.q``, ``DeterministicActor.raw/squash``): nothing is re-implemented, so the file acts
as ``actor.act(deterministic=True)`` does (``verify`` checks it on recorded episodes).

A file's interface (one agent's step, batch ``B``; shapes and sizes are in the manifest)::

    inputs   obs          float32 [B, obs_size]  the agent's own raw observation (no normalization
                                                 in marlcli); smaller ones zero-padded at the end
             agent_index  int64   [B]            files serving several agents: the agent's position
                                                 in manifest["agents"] (one-hot id / bounds inside)
             mask         bool    [B, act_size]  discrete only, optional: available actions
                                                 (ONNX: omit it = all available)
             hidden       float32 [B, W]         recurrent only: zeros at episode start
    outputs  action       int64 [B] (argmax) | float32 [B, act_size] (mean or squash, in bounds)
             logits       float32 [B, act_size]  discrete only: the masked scores argmax is taken of
             hidden_out   float32 [B, W]         recurrent only: feed back as ``hidden`` next step
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from marlcli.algos.maddpg import DeterministicActor
from marlcli.algos.ppo import PolicyActor
from marlcli.algos.qlearning import QActor
from marlcli.errors import MarlError
from marlcli.nets.comm import CommEncoder


class ExportError(MarlError):
    """An actor that cannot be exported, a missing exporter or runtime, a failed parity check."""


@dataclass
class Group:
    """One exported file: its name and the agents (env indices) it serves."""

    name: str
    agents: list[int]


def groups_of(sharing: str, spec: Any) -> list[Group]:
    """The files of an export follow the actor's parameter groups: ``sharing=all`` one file, ``none``
    one per agent, ``role`` one per role."""
    if sharing == "all":
        return [Group("all", list(range(spec.n_agents)))]
    if sharing == "none":
        return [Group(a, [i]) for i, a in enumerate(spec.agents)]
    idx = spec.role_index
    return [Group(r, [i for i in range(spec.n_agents) if idx[i] == g]) for g, r in enumerate(spec.roles)]


def actor_kind(actor: nn.Module) -> str:
    """Which family adapter serves ``actor`` (``policy``, ``q`` or ``deterministic``)."""
    if any(isinstance(m, CommEncoder) for m in actor.modules()):
        raise ExportError("cannot export a communicating actor (comm=commnet/tarmac) one file per agent: each agent's "
                          "action depends on the other agents' messages; evaluate it with marl eval")
    for cls, kind in ((PolicyActor, "policy"), (QActor, "q"), (DeterministicActor, "deterministic")):
        if isinstance(actor, cls):
            return kind
    raise ExportError(f"cannot export an actor of type {type(actor).__name__}: marl export knows PolicyActor "
                      "(IPPO/MAPPO/COMA), QActor (IQL/VDN/QMIX) and DeterministicActor (MADDPG)")


class GroupPolicy(nn.Module):
    """One agent's deterministic step through the family's own actor, on that agent's own inputs.

    The agent's observation is padded to the env's padded size and given to every row of an
    ``[B, N, O]`` batch; the actor runs as in training (GroupLinear picks each row's weights,
    ``with_agent_id`` appends the one-hot id) and the agent's row is kept. So the one-hot id,
    parameter groups and per-agent bounds come from the actor itself, at N times the (tiny) cost.
    """

    def __init__(self, actor: nn.Module, spec: Any, group: Group) -> None:
        super().__init__()
        self.actor, self.kind = actor, actor_kind(actor)
        self.n, self.o, self.a, self.discrete = spec.n_agents, spec.obs_dim, spec.act_dim, spec.discrete
        self.obs_size = max(spec.obs_dims[i] for i in group.agents)
        self.act_size = max(spec.act_dims[i] for i in group.agents)
        self.indexed = len(group.agents) > 1  # takes agent_index; a one-agent file has it baked in
        self.fixed = group.agents[0]
        self.hidden_size = 0
        h = actor.initial_hidden(1)
        if h is not None:
            self.hidden_size = int(h.shape[-1])
        low, high = spec.bounds()
        self.register_buffer("low", low, persistent=False)  # [N, A]
        self.register_buffer("high", high, persistent=False)
        self.register_buffer("act_mask", spec.action_mask(), persistent=False)

    @property
    def input_names(self) -> list[str]:
        return ["obs"] + ["agent_index"] * self.indexed + ["mask"] * self.discrete + ["hidden"] * bool(self.hidden_size)

    @property
    def output_names(self) -> list[str]:
        return ["action"] + ["logits"] * self.discrete + ["hidden_out"] * bool(self.hidden_size)

    def signature(self) -> dict[str, list[dict[str, Any]]]:
        """Inputs and outputs with dtype and shape, for the manifest."""
        a, h = ["batch", self.act_size], ["batch", self.hidden_size]
        spec = {"obs": ("float32", ["batch", self.obs_size]), "agent_index": ("int64", ["batch"]),
                "mask": ("bool", a), "hidden": ("float32", h), "hidden_out": ("float32", h), "logits": ("float32", a),
                "action": ("int64", ["batch"]) if self.discrete else ("float32", a)}
        row = lambda n: {"name": n, "dtype": spec[n][0], "shape": spec[n][1]}  # noqa: E731
        ins = [row(n) | ({"optional": True, "default": "all true"} if n == "mask" else {}) for n in self.input_names]
        return {"inputs": ins, "outputs": [row(n) for n in self.output_names]}

    def forward(self, obs: Tensor, *rest: Tensor) -> tuple[Tensor, ...]:
        given = dict(zip(self.input_names[1:], rest, strict=True))
        b = obs.shape[0]
        idx = given["agent_index"] if self.indexed else torch.full((b,), self.fixed, dtype=torch.long,
                                                                    device=obs.device)
        x = F.pad(obs, (0, self.o - self.obs_size)) if self.obs_size < self.o else obs
        x = x.unsqueeze(1).expand(b, self.n, self.o).contiguous()
        avail = self.act_mask[idx]  # [B, A]: the agent's real actions
        if "mask" in given:  # expand: the ONNX default mask is [1, act_size]
            mask = given["mask"].expand(b, self.act_size)
            avail = avail & (F.pad(mask, (0, self.a - self.act_size), value=False) if self.act_size < self.a else mask)
        avail = avail.unsqueeze(1).expand(b, self.n, self.a)
        # contiguous: a stride-0 (expanded) input sends torch's linear to a very slow bmm path
        hidden = given["hidden"].unsqueeze(1).expand(b, self.n, self.hidden_size).contiguous() if self.hidden_size \
            else None
        action, logits, hidden_out = getattr(self, f"_{self.kind}")(x, avail, hidden)
        row = lambda t: t.gather(1, idx.view(b, 1, *[1] * (t.dim() - 2)).expand(b, 1, *t.shape[2:])).squeeze(1)  # noqa: E731
        action = row(action)
        if not self.discrete:  # the env clips into each agent's bounds (mpe2 ClipOutOfBoundsWrapper)
            action = torch.minimum(torch.maximum(action, self.low[idx]), self.high[idx])[:, : self.act_size]
        out = [action] + ([row(logits)[:, : self.act_size]] if self.discrete else [])
        return tuple(out + ([row(hidden_out)] if self.hidden_size else []))

    # Each adapter is the family's act(deterministic=True), keeping the scores it argmaxes.
    def _policy(self, x: Tensor, avail: Tensor, hidden: Tensor | None) -> tuple[Tensor, Tensor | None, None]:
        d = self.actor.dist(x, avail)
        return (d.probs.argmax(-1), d.logits, None) if self.discrete else (d.mean, None, None)

    def _q(self, x: Tensor, avail: Tensor, hidden: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
        q, h = self.actor.q(x, hidden)
        action = q.masked_fill(~avail, float("-inf")).argmax(-1)
        last = F.one_hot(action, self.actor.n_act).to(x.dtype) if self.actor.last_action else None
        parts = [p for p in (h, last) if p is not None]
        return action, q.masked_fill(~avail, -1e9), (torch.cat(parts, -1) if parts else None)

    def _deterministic(self, x: Tensor, avail: Tensor, hidden: Tensor | None) -> tuple[Tensor, Tensor | None, None]:
        raw = self.actor.raw(x)
        if self.discrete:
            logits = raw.masked_fill(~avail, -1e9)
            return logits.argmax(-1), logits, None
        return self.actor.squash(raw), None, None

    def example(self, batch: int = 2) -> tuple[Tensor, ...]:
        ins = [torch.zeros(batch, self.obs_size)]
        if self.indexed:
            ins.append(torch.zeros(batch, dtype=torch.long))
        if self.discrete:
            ins.append(torch.ones(batch, self.act_size, dtype=torch.bool))
        if self.hidden_size:
            ins.append(torch.zeros(batch, self.hidden_size))
        return tuple(ins)


class AllInputs(nn.Module):
    """:class:`GroupPolicy` with all four inputs and three outputs (empty where unused), for tracing."""

    def __init__(self, policy: GroupPolicy) -> None:
        super().__init__()
        self.policy = policy

    def forward(self, obs: Tensor, agent_index: Tensor, mask: Tensor, hidden: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        p = self.policy
        given = {"agent_index": agent_index, "mask": mask, "hidden": hidden}
        out = dict(zip(p.output_names, p(obs, *[given[n] for n in p.input_names[1:]]), strict=True))
        empty = obs.new_zeros(0)
        return out["action"], out.get("logits", empty), out.get("hidden_out", empty)


class TorchScriptPolicy(nn.Module):
    """The traced policy behind one signature with defaults: ``policy(obs, agent_index=None, mask=None,
    hidden=None) -> {"action", ["logits"], ["hidden_out"]}`` (scripted, loads without marlcli)."""

    def __init__(self, core: torch.jit.ScriptModule, policy: GroupPolicy) -> None:
        super().__init__()
        self.core = core
        self.indexed, self.discrete, self.recurrent = policy.indexed, policy.discrete, bool(policy.hidden_size)
        self.fixed, self.act_size, self.hidden_size = policy.fixed, policy.act_size, max(1, policy.hidden_size)

    def forward(self, obs: Tensor, agent_index: Tensor | None = None, mask: Tensor | None = None,
                hidden: Tensor | None = None) -> dict[str, Tensor]:
        b = obs.shape[0]
        if agent_index is None:
            if self.indexed:
                raise RuntimeError("this file serves several agents: pass agent_index")
            agent_index = torch.full([b], self.fixed, dtype=torch.long, device=obs.device)
        if mask is None:
            mask = torch.ones([b, self.act_size], dtype=torch.bool, device=obs.device)
        if hidden is None:
            hidden = torch.zeros([b, self.hidden_size], device=obs.device)
        action, logits, hidden_out = self.core(obs, agent_index, mask, hidden)
        out = {"action": action}
        if self.discrete:
            out["logits"] = logits
        if self.recurrent:
            out["hidden_out"] = hidden_out
        return out
