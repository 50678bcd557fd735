"""Self-play at the env boundary: frozen opponents act inside the env.

``SelfPlayVecEnv`` wraps any ``VecEnv`` whose agents split into the **learning** agents and
the **opponents**. It presents only the learning agents to the algorithm (a smaller
``EnvSpec``: the learner never knows it plays against itself) and steps the opponents
through frozen actors held by an ``OpponentBank``. Each env copy faces its own opponent
(``member[b]``); copies facing the same member are batched into one forward pass. When a
copy's episode ends, the wrapper reports the game (``on_game(ids, scores)``) and draws the
copy's next opponent (``draw(B)``: the pool's sampling, see ``marlcli.selfplay.league``).

The opponents play through the learner's own architecture (the game is symmetric: as many
opponent agents as learning ones, of the same sizes), opponent ``j`` in learner slot ``j``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from marlcli.envs.base import EnvSpec, TimeStep, VecEnv


def sub_spec(spec: EnvSpec, idx: list[int]) -> EnvSpec:
    """The spec of agents ``idx`` alone (global state unchanged)."""
    pick = lambda v: [v[i] for i in idx] if isinstance(v, (list, tuple)) else v  # noqa: E731
    return replace(spec, agents=pick(spec.agents), obs_dims=pick(spec.obs_dims), act_dims=pick(spec.act_dims),
                   act_low=pick(spec.act_low), act_high=pick(spec.act_high), stats=dict(spec.stats),
                   teams=pick(spec.teams) if spec.teams else [])


class OpponentBank:
    """Frozen opponent actors by member id, built on demand from their weights."""

    def __init__(self, make_actor: Callable[[], nn.Module], weights: Callable[[int], dict[str, Tensor]],
                 device: torch.device) -> None:
        self.make_actor, self.weights, self.device = make_actor, weights, device
        self.deterministic = False  # training: opponents sample their mixed strategies
        self.actors: dict[int, nn.Module] = {}
        self.template = self._build()

    def _build(self) -> nn.Module:
        """A fresh actor, built without touching the global RNG (its init would draw from it,
        and a resumed run, whose cache starts empty, would then sample other actions)."""
        with torch.random.fork_rng(devices=[]):
            return self.make_actor().to(self.device)

    def actor(self, member: int) -> nn.Module:
        if member not in self.actors:
            a = self._build()
            a.load_state_dict(self.weights(member))
            a.eval().requires_grad_(False)
            self.actors[member] = a
        return self.actors[member]

    def forget(self, keep: set[int]) -> None:
        """Free the actors of members no longer drawn."""
        for k in [k for k in self.actors if k not in keep]:
            del self.actors[k]

    @torch.no_grad()
    def act(self, obs: Tensor, avail: Tensor, hidden: Tensor | None, member: Tensor) -> tuple[Tensor, Tensor | None]:
        """Opponent actions for every copy, each copy from its own member (batched per member)."""
        out: Tensor | None = None
        new_hidden = hidden.clone() if hidden is not None else None
        for k in member.unique().tolist():
            rows = (member == k).nonzero().squeeze(1)
            h = hidden[rows] if hidden is not None else None
            a, h2 = self.actor(int(k)).act(obs[rows], avail[rows], h, self.deterministic)
            if out is None:
                out = a.new_zeros((obs.shape[0], *a.shape[1:]))
            out[rows] = a
            if new_hidden is not None and h2 is not None:
                new_hidden[rows] = h2
        assert out is not None
        return out, new_hidden


class SelfPlayVecEnv:
    """The learning agents' view of ``inner``; the opponents act inside ``step``."""

    def __init__(self, inner: VecEnv, learn: list[int], bank: OpponentBank, draw: Callable[[int], Tensor],
                 on_game: Callable[[Tensor, Tensor], None] | None = None, league: Any = None) -> None:
        self.inner, self.learn, self.bank, self.draw, self.on_game = inner, learn, bank, draw, on_game
        self.league = league  # saved with the env state, so resume draws and rates as before
        self.opp = [i for i in range(inner.spec.n_agents) if i not in learn]
        self.spec = sub_spec(inner.spec, learn)
        self.num_envs, self.device = inner.num_envs, inner.device
        self.member = torch.zeros(self.num_envs, dtype=torch.long)
        self.opp_hidden = bank.template.initial_hidden(self.num_envs)
        self.ep_ret = torch.zeros(self.num_envs, inner.spec.n_agents, device=self.device)
        self.full_ts: TimeStep | None = None

    def _view(self, ts: TimeStep) -> TimeStep:
        o, a, idx = self.spec.obs_dim, self.spec.act_dim, self.learn
        return replace(ts, obs=ts.obs[:, idx, :o], avail=ts.avail[:, idx, :a], reward=ts.reward[:, idx],
                       terminated=ts.terminated[:, idx], alive=ts.alive[:, idx], final_obs=ts.final_obs[:, idx, :o],
                       final_avail=ts.final_avail[:, idx, :a], final_alive=ts.final_alive[:, idx],
                       agent_truncated=ts.agent_truncated[:, idx], agent_final_avail=ts.agent_final_avail[:, idx, :a])

    def _start(self, ts: TimeStep) -> TimeStep:
        self.full_ts = ts
        self.member = self.draw(self.num_envs)
        self.ep_ret.zero_()
        self.opp_hidden = self.bank.template.initial_hidden(self.num_envs)
        return self._view(ts)

    def reset(self) -> TimeStep:
        return self._start(self.inner.reset())

    def step(self, actions: Tensor) -> TimeStep:
        assert self.full_ts is not None, "reset() first"
        o, a = self.spec.obs_dim, self.spec.act_dim
        ts = self.full_ts
        opp_act, self.opp_hidden = self.bank.act(ts.obs[:, self.opp, :o], ts.avail[:, self.opp, :a],
                                                 self.opp_hidden, self.member.to(self.device))
        n = self.inner.spec.n_agents
        full = actions.new_zeros((self.num_envs, n, *([self.inner.spec.act_dim] if actions.dim() == 3 else [])))
        full[:, self.learn, ...] = actions if actions.dim() == 2 else torch.nn.functional.pad(
            actions, (0, self.inner.spec.act_dim - a))
        full[:, self.opp, ...] = opp_act.to(full.dtype) if actions.dim() == 2 else torch.nn.functional.pad(
            opp_act, (0, self.inner.spec.act_dim - a))
        ts = self.inner.step(full)
        self.full_ts = ts
        self.ep_ret += ts.reward
        if bool(ts.done.any()):  # one host sync per step; every copy that finished rates and redraws
            d = ts.done
            mine, theirs = self.ep_ret[:, self.learn].mean(1), self.ep_ret[:, self.opp].mean(1)
            score = (mine > theirs).double() + 0.5 * (mine == theirs).double()
            if self.on_game is not None:
                self.on_game(self.member[d.cpu()], score[d].cpu())
            self.member = torch.where(d.cpu(), self.draw(self.num_envs), self.member)
            self.ep_ret.masked_fill_(d[:, None], 0.0)
            if self.opp_hidden is not None:
                self.opp_hidden = self.opp_hidden.masked_fill(d.view(-1, *([1] * (self.opp_hidden.dim() - 1))), 0.0)
        return self._view(ts)

    def state_dict(self) -> dict[str, Any]:
        return opponents_state(self)

    def load_state_dict(self, state: dict[str, Any]) -> TimeStep:
        return self._view(load_opponents_state(self, state))

    def close(self) -> None:
        self.inner.close()


def opponents_state(env: Any) -> dict[str, Any]:
    """What a self-play wrapper needs to continue exactly: the inner env, who plays whom, the
    running returns, the opponents' hidden state and the league (shared by both wrappers)."""
    out: dict[str, Any] = {"inner": env.inner.state_dict(), "member": env.member.clone(),
                           "ep_ret": env.ep_ret.cpu().clone()}
    if env.opp_hidden is not None:
        out["opp_hidden"] = env.opp_hidden.cpu().clone()
    if env.league is not None:
        out["league"] = env.league.state_dict()
    return out


def load_opponents_state(env: Any, state: dict[str, Any]) -> TimeStep:
    """Restore :func:`opponents_state`; returns the inner env's full time step."""
    if env.league is not None:
        env.league.load_state_dict(state["league"])
        env.bank.actors.clear()
    ts = env.inner.load_state_dict(state["inner"])
    env.full_ts = ts
    env.member = state["member"].clone().long()
    env.ep_ret = state["ep_ret"].to(env.device).clone()
    if env.opp_hidden is not None:
        env.opp_hidden = state["opp_hidden"].to(env.device).clone()
    return ts
