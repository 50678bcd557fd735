"""Self-play for games whose sides differ (tag: 3 predators vs 1 prey, other observation sizes).

The mirrored wrapper (``marlcli.selfplay.mirrored.SelfPlayVecEnv``) hides the opponents and
plays them through the learner's own architecture; that needs opponents shaped like the
learners. When the roles differ, ``RoleSelfPlayVecEnv`` keeps **every** agent visible
instead, so the learner's actor covers all roles (``sharing=role`` gives each role its own
network), and splits the env copies over the learning roles: copy ``b`` learns role
``copy_role[b] = learn_roles[b % len(learn_roles)]``, fixed for the run, so every role
learns all the time from an equal share of the copies.

In copy ``b`` the agents of the other roles act through a frozen snapshot of the **full
actor** (pool member ``member[b]``; copies facing one member are batched into one forward
pass by ``OpponentBank``). Their ``alive`` and ``final_alive`` flags are reported as False,
which is how every family already masks an agent out of its losses (PPO ratio and value
loss, advantage statistics, COMA critic and policy, MADDPG critic and actor, IQL TD errors):
a frozen agent's transitions train nothing, while its presence in the global state that a
centralized critic reads is fine. Each step's ``TimeStep.played`` holds the joint action that
was really executed (the frozen agents' actions in their slots), so critics over joint actions
(COMA, MADDPG) learn from what happened, not from what the learner would have done.

A finished episode is scored for the learning role with the env's outcome rule
(``marlcli.envs.outcome``) and reported to the league (``on_game``); the learner's score is
also an episode statistic (``selfplay_score``, the value at the last step), so ``marl eval``
and evaluation during training report it as ``eval/selfplay_score``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from marlcli.envs.base import TimeStep, VecEnv
from marlcli.envs.outcome import role_scores
from marlcli.selfplay.mirrored import OpponentBank, load_opponents_state, opponents_state

SCORE_STAT = "selfplay_score"


class RoleSelfPlayVecEnv:
    """All agents of ``inner``; in each copy, the roles that do not learn there act frozen."""

    def __init__(self, inner: VecEnv, learn_roles: list[int], bank: OpponentBank, draw: Callable[[int], Tensor],
                 on_game: Callable[[Tensor, Tensor], None] | None = None, league: Any = None) -> None:
        self.inner, self.bank, self.draw, self.on_game, self.league = inner, bank, draw, on_game, league
        spec = inner.spec
        self.spec = replace(spec, stats={**spec.stats, SCORE_STAT: "last"})
        self.num_envs, self.device = inner.num_envs, inner.device
        self.copy_role = torch.tensor([learn_roles[b % len(learn_roles)] for b in range(self.num_envs)])
        role_index = torch.tensor(spec.role_index)
        self.learning = (role_index[None, :] == self.copy_role[:, None]).to(self.device)  # [B, N]
        self.member = torch.zeros(self.num_envs, dtype=torch.long)
        self.opp_hidden = bank.template.initial_hidden(self.num_envs)
        self.ep_ret = torch.zeros(self.num_envs, spec.n_agents, device=self.device)
        self.ep_stats = {k: torch.zeros(self.num_envs, device=self.device) for k in spec.stats}
        self.full_ts: TimeStep | None = None
        self.played: Tensor | None = None  # the joint action last executed [B, N] (or [B, N, A]), as in TimeStep.played

    def _view(self, ts: TimeStep, score: Tensor | None = None, played: Tensor | None = None) -> TimeStep:
        info = dict(ts.info)
        info[SCORE_STAT] = score if score is not None else torch.zeros(self.num_envs, device=self.device)
        return replace(ts, alive=ts.alive & self.learning, final_alive=ts.final_alive & self.learning, info=info,
                       played=played)

    def _start(self, ts: TimeStep) -> TimeStep:
        self.full_ts = ts
        self.member = self.draw(self.num_envs)
        self.ep_ret.zero_()
        for v in self.ep_stats.values():
            v.zero_()
        self.opp_hidden = self.bank.template.initial_hidden(self.num_envs)
        return self._view(ts)

    def reset(self) -> TimeStep:
        return self._start(self.inner.reset())

    def step(self, actions: Tensor) -> TimeStep:
        assert self.full_ts is not None, "reset() first"
        ts = self.full_ts
        frozen, self.opp_hidden = self.bank.act(ts.obs, ts.avail, self.opp_hidden, self.member.to(self.device))
        mine = self.learning.view(*self.learning.shape, *([1] * (actions.dim() - 2)))
        self.played = torch.where(mine, actions, frozen.to(actions.dtype))
        ts = self.inner.step(self.played)
        self.full_ts = ts
        self.ep_ret += ts.reward
        for k, how in self.inner.spec.stats.items():
            v = ts.info[k].to(self.ep_stats[k].dtype)
            self.ep_stats[k] = self.ep_stats[k] + v if how == "sum" else v
        score = None
        if bool(ts.done.any()):  # one host sync per step; every copy that finished rates and redraws
            d = ts.done
            scores = role_scores(self.inner.spec, self.ep_ret, self.ep_stats)  # [B, R]
            score = scores.gather(1, self.copy_role.to(scores.device)[:, None]).squeeze(1)
            if self.on_game is not None:
                self.on_game(self.member[d.cpu()], score[d].cpu())
            score = score.to(ts.reward.dtype) * d
            self.member = torch.where(d.cpu(), self.draw(self.num_envs), self.member)
            self.ep_ret.masked_fill_(d[:, None], 0.0)
            for k in self.ep_stats:
                self.ep_stats[k] = self.ep_stats[k].masked_fill(d, 0.0)
            if self.opp_hidden is not None:
                self.opp_hidden = self.opp_hidden.masked_fill(d.view(-1, *([1] * (self.opp_hidden.dim() - 1))), 0.0)
        return self._view(ts, score, self.played)

    def state_dict(self) -> dict[str, Any]:
        return {**opponents_state(self), "ep_stats": {k: v.cpu().clone() for k, v in self.ep_stats.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> TimeStep:
        ts = load_opponents_state(self, state)
        self.ep_stats = {k: v.to(self.device).clone() for k, v in state["ep_stats"].items()}
        return self._view(ts)

    def close(self) -> None:
        self.inner.close()
