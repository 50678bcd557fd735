"""Learned communication between agents (issue 19): CommNet and TarMAC channels inside the actor.

A channel wraps the actor's encoder (:func:`marlcli.nets.actor.make_encoder`), so it reaches
every family at once. Per step, ``rounds`` times: each agent ``j`` computes a message from its
own features and what it received in the previous round; each agent ``i`` aggregates the
messages of the agents it hears (``neighbors``); the actor's head then sees
``[own features | received]``. Execution stays decentralized: agent ``i``'s output depends on
the other agents only through their messages (and, for ``neighbors=nearest|radius``, their
positions, i.e. who is in radio range).

Messages stay within a team (issue 25). A team is a role (``EnvSpec.roles``, the agent-name
prefix: tag's ``adversary`` predators and ``agent`` prey; adversary's ``adversary`` and its
``agent`` team), the sides marlcli already evaluates, self-plays and cross-plays apart. Without
that, the predators' loss back-propagated through the prey's messages into the prey's sender
(the prey learnt to leak its observation to its hunters). With it, every team's outputs depend
on its own members only, which also makes the joint forward exact where one actor computes
messages for agents another actor plays: the frozen roles of asymmetric self-play (their
messages, like their actions, come from the snapshot's own forward) and a whole role in
cross-play. ``marlcli.selfplay.crossplay`` refuses a channel when its sides are single agents of one
team; the matrix games whose players are opponents of one role (prisoners, rps) refuse a
channel in ``marlcli.algos.check_compatible``.

* ``comm=commnet`` (Sukhbaatar et al. 2016): the mean of the received messages.
* ``comm=tarmac`` (Das et al. 2019): each sender emits a key and a value, each receiver a
  query; the received message is the attention-weighted sum of the values. With ``bits = k``
  the key **is** the k-bit value (a receiver attends over the bits it hears with its own,
  continuous, query): a sender transmits k bits in all, as with CommNet. A separate continuous
  key, as in the paper and before issue 25, let a sender signal far more than k bits through the
  attention weights (3 agents, 1 bit: thousands of distinct received values instead of 3).

Because the messages flow inside the actor's forward over all N agents, PPO's ratio is over
the joint forward and a TD loss back-propagates into the senders, with no change to the
families. Replay stores the observations, which is all a message is computed from.

``bits > 0`` makes messages discrete: the forward pass always emits hard bits, at training and
at evaluation, and the backward pass uses the tanh's gradient (straight-through estimator,
Bengio et al. 2013). A bit is sent as -1 or +1, so that silence (a lost message, or nobody in
range) reads 0 and a listener can tell "no message" from either bit value; with {0, 1} bits a
lost message read as bit 0. The bit logits start near zero (the message layer's weights scaled
by 0.01): with the usual init a random code often sent one value for two goals, and the
straight-through gradient, damped by tanh' at |logit| ~ 1, needed ~100 updates to flip a bit (on
env=reference with 2 goals and one bit at 20% dropout, 2 of 5 seeds left chance in 6,400 steps;
5 of 5 reach the best possible with the small init, in 25,600). No Gumbel noise: a fresh draw at collection, at PPO's old and at
its new log-probabilities would compare three different channels in the ratio (on env=reference
logistic noise made 2-bit runs worse: 2.4-5.2 against 5.1-7.5 without, 3 seeds).
``dropout`` drops each sender->receiver message with probability p, at training and at
evaluation, in every round independently (each round draws its own losses over the links the
graph has, so every round delivers a share 1 - p; before issue 25 round r reused the earlier
rounds' losses and delivered (1 - p)^r). ``cut`` zeroes every received message (the
``marl eval PATH comm=off`` ablation).
Losses are drawn afresh at every forward, so with ``dropout > 0`` PPO's old and new
log-probabilities see different losses (the channel's noise enters the ratio, like any other
noise the policy does not control); replayed episodes also get fresh losses.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from marlcli.envs.base import EnvSpec
from marlcli.errors import ConfigError
from marlcli.nets.mlp import GroupLinear

CHANNELS = ("none", "commnet", "tarmac")
NEIGHBORS = ("all", "nearest", "radius")


def check(comm: Any, spec: EnvSpec) -> None:
    """One-line errors for a channel that cannot run (bad keys, or no positions for a range graph)."""
    kind = str(comm.type)
    if kind not in CHANNELS:
        raise ConfigError(f"unknown comm '{kind}': use one of {', '.join(CHANNELS)}")
    if int(comm.size) < 1 or int(comm.rounds) < 1 or int(comm.bits) < 0:
        raise ConfigError(f"comm.size and comm.rounds must be >= 1 and comm.bits >= 0 "
                          f"(got {comm.size}, {comm.rounds}, {comm.bits})")
    if not 0.0 <= float(comm.dropout) <= 1.0:
        raise ConfigError(f"comm.dropout={comm.dropout} must lie in [0, 1]")
    nb = str(comm.neighbors)
    if nb not in NEIGHBORS:
        raise ConfigError(f"unknown comm.neighbors '{nb}': use one of {', '.join(NEIGHBORS)}")
    if nb != "all" and not spec.position:
        raise ConfigError(f"comm.neighbors={nb} needs agent positions in the observation; env={spec.name} declares "
                          f"none (use comm.neighbors=all, or env.observe_position=true on spread)")
    if nb == "nearest" and int(comm.k) < 1:
        raise ConfigError(f"comm.k={comm.k} must be a positive integer")


def same_team(spec: EnvSpec, n: int, device: torch.device) -> Tensor:
    """``[N, N]`` booleans: agents i and j are on one side (``EnvSpec.team_index``), never an agent with itself.

    A cooperative game (no ``teams`` declared: spread, reference, speaker_listener) is one team at
    any N, so a shared actor runs at other team sizes; competitive games declare their sides
    (tag: predators and prey; prisoners, rps: each player alone; ``marlcli.envs.outcome.SIDES``).
    """
    eye = torch.eye(n, dtype=torch.bool, device=device)
    if not spec.teams:
        return ~eye
    team = torch.tensor(spec.team_index, device=device)
    return (team[:, None] == team[None, :]) & ~eye


def links(obs: Tensor, spec: EnvSpec, comm: Any) -> Tensor:
    """Who hears whom: ``[..., N_receiver, N_sender]`` booleans, only within a team, never an agent to itself.

    ``nearest``: the ``k`` closest teammates (fewer when the team is smaller); ``radius``: every
    teammate within ``radius`` (positions from ``EnvSpec.position``, the observation indices of
    the agent's own position).
    """
    n = obs.shape[-2]
    mates = same_team(spec, n, obs.device)
    nb = str(comm.neighbors)
    if nb == "all":
        return mates.expand(*obs.shape[:-2], n, n)
    pos = obs[..., list(spec.position)]  # [..., N, 2]
    dist = torch.cdist(pos, pos).masked_fill(~mates, math.inf)
    if nb == "radius":
        return (dist <= float(comm.radius)) & mates
    k = min(int(comm.k), n - 1)
    near = dist.topk(k, dim=-1, largest=False).indices
    return torch.zeros_like(dist, dtype=torch.bool).scatter(-1, near, True) & mates  # an infinite pick is no mate


class CommEncoder(nn.Module):
    """``obs [..., N, O] -> [..., N, F + size]``: the base encoder's features plus the received message."""

    def __init__(self, base: nn.Module, spec: EnvSpec, comm: Any, groups: list[int]) -> None:
        super().__init__()
        check(comm, spec)
        self.base, self.spec, self.comm = base, spec, comm
        self.bits, self.dropout = int(comm.bits), float(comm.dropout)
        self.kind, self.rounds = str(comm.type), int(comm.rounds)
        self.size = self.bits or int(comm.size)  # a discrete message is `bits` bits
        self.cut = bool(comm.get("cut", False))
        f = int(base.out_dim)  # type: ignore[arg-type]
        # round r's message from [own features | received in round r-1] (zeros in round 1); tarmac's
        # value, key and query come from one layer (one matmul instead of three: the channel's cost).
        # With bits the key is the value's bits (the sender transmits k bits in all): value and query only.
        width = self.size * ((2 if self.bits else 3) if self.kind == "tarmac" else 1)
        self.message = nn.ModuleList(GroupLinear(f + self.size, width, groups, gain=1.0) for _ in range(self.rounds))
        if self.bits:  # bit logits start near 0: an initial code that sends one value for two goals is
            for layer in self.message:  # flipped by small steps (at |logit| ~ 1 it took ~100 updates)
                layer.weight.data[..., :self.size] *= 0.01
        self.out_dim = f + self.size
        self.last_sent: Tensor | None = None  # the latest messages (detached), for comm/... statistics
        self.last_heard: list[Tensor] = []  # the latest forward's delivered links per round [..., N_recv, N_send]

    def emit(self, h: Tensor, r: int) -> Tensor:
        """Messages ``[..., N, size]`` of every sender in round r from ``h = [features | received]``."""
        return self._signal(self.message[r](h)[..., :self.size])

    def _signal(self, logits: Tensor) -> Tensor:
        """Message logits -> messages: tanh-bounded, or hard bits."""
        if not self.bits:
            return torch.tanh(logits)
        soft = torch.tanh(logits)
        hard = torch.where(logits > 0, 1.0, -1.0).to(logits.dtype)
        return hard + (soft - soft.detach())  # exact ±1 bits forward, tanh gradient

    def forward(self, obs: Tensor, extra: Tensor | None = None) -> Tensor:
        x = self.base(obs, extra)
        received = x.new_zeros(*x.shape[:-1], self.size)
        if self.cut:
            return torch.cat([x, received], -1)
        graph = links(obs, self.spec, self.comm).to(x.dtype)  # [..., N_recv, N_send]
        self.last_heard = []
        for r in range(self.rounds):
            hear = graph
            if self.dropout > 0:  # each message lost on its own, in every round afresh, also at evaluation
                hear = graph * (torch.rand_like(graph) >= self.dropout).to(graph.dtype)
            self.last_heard.append(hear.detach())
            out = self.message[r](torch.cat([x, received], -1))
            sent = self._signal(out[..., :self.size])
            self.last_sent = sent.detach()
            if self.kind == "commnet":
                received = hear @ sent / hear.sum(-1, keepdim=True).clamp(min=1.0)
            else:  # tarmac: softmax over the senders a receiver hears
                query = out[..., -self.size:]  # the receiver's own, never sent
                key = sent if self.bits else out[..., self.size:2 * self.size]  # k bits: the key is the bits
                score = query @ key.transpose(-1, -2) / math.sqrt(self.size)
                w = torch.softmax(score.masked_fill(hear == 0, -1e9), -1) * hear  # nobody heard -> zeros
                received = w @ sent
        return torch.cat([x, received], -1)


def comm_stats(actor: nn.Module) -> dict[str, float]:
    """``comm/...`` metrics of the latest messages: per-dimension mean and std, bit entropy when discrete."""
    out: dict[str, float] = {}
    for m in actor.modules():
        if isinstance(m, CommEncoder) and m.last_sent is not None:
            sent = m.last_sent.reshape(-1, m.size).float()
            mean, std = sent.mean(0), sent.std(0) if sent.shape[0] > 1 else torch.zeros(m.size)
            for d in range(m.size):
                out[f"comm/mean_{d}"] = float(mean[d])
                out[f"comm/std_{d}"] = float(std[d])
            if m.bits:
                p = ((mean + 1) / 2).clamp(1e-6, 1 - 1e-6)  # share of +1 bits
                ent = -(p * p.log2() + (1 - p) * (1 - p).log2())
                out["comm/bit_entropy"] = float(ent.mean())
            break
    return out


def wrap(encoder: nn.Module, spec: EnvSpec, cfg: object, groups: list[int]) -> nn.Module:
    """``encoder`` with the channel ``cfg.comm`` asks for (unchanged for ``comm=none`` or no comm group)."""
    comm = getattr(cfg, "comm", None)
    if comm is None or str(comm.type) == "none":
        return encoder
    return CommEncoder(encoder, spec, comm, groups)
