"""Decentralized evaluation: the actor alone, each agent acting on its own observation."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from marlcli.algos.base import Actor
from marlcli.envs.base import EnvSpec, Outcome, VecEnv, role_of


@dataclass
class EvalResult:
    """Per-episode outcomes of an evaluation."""

    agents: list[str]
    returns: torch.Tensor  # [E, N] episode return per agent
    stats: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> [E]
    outcome: Outcome | None = None  # the env's win rule (tag: predators win on a catch)

    def summary(self) -> dict[str, float]:
        """Flat ``eval/...`` metrics: return_mean = episode return averaged over agents and episodes."""
        per_ep = self.returns.mean(1)
        e = per_ep.numel()
        out = {
            "eval/return_mean": per_ep.mean().item(),
            "eval/return_std": per_ep.std().item() if e > 1 else 0.0,
            "eval/return_ci95": 1.96 * per_ep.std().item() / math.sqrt(e) if e > 1 else 0.0,
            "eval/episodes": float(e),
        }
        for i, a in enumerate(self.agents):
            out[f"eval/return/{a}"] = self.returns[:, i].mean().item()
        roles = list(dict.fromkeys(role_of(a) for a in self.agents))
        if len(roles) > 1:  # competitive/mixed games: report each side
            for r in roles:
                idx = [i for i, a in enumerate(self.agents) if role_of(a) == r]
                out[f"eval/return_role/{r}"] = self.returns[:, idx].mean().item()
        for k, v in self.stats.items():
            out[f"eval/{k}"] = v.mean().item()
        if self.outcome is not None and self.outcome.stat in self.stats:  # tag: the predators' catch rate
            won = self.stats[self.outcome.stat] >= self.outcome.threshold
            out[f"eval/win_rate/{self.outcome.winner}"] = won.double().mean().item()
        return out


@torch.no_grad()
def run_episodes(actor: Actor, env: VecEnv, episodes: int, deterministic: bool = True) -> EvalResult:
    """Run ``episodes`` episodes over the env copies: copy b runs its first ``quota[b]`` episodes.

    The quotas (``episodes // B`` each, one more for the first ``episodes % B`` copies) are
    fixed before anything runs, so which episodes count never depends on how long they
    last; keeping "the first episodes that finish" would favour short ones (issue 15).
    Episodes are returned in (copy, order) sequence.
    """
    spec: EnvSpec = env.spec
    b = env.num_envs
    ts = env.reset()
    dev = ts.obs.device
    quota = torch.full((b,), episodes // b, dtype=torch.long, device=dev)
    quota[: episodes % b] += 1
    count = torch.zeros(b, dtype=torch.long, device=dev)
    hidden = actor.initial_hidden(b)
    ep_ret = torch.zeros(b, spec.n_agents, device=dev)
    ep_stats = {k: torch.zeros(b, device=dev) for k in spec.stats}
    returns: list[torch.Tensor] = []
    stats: dict[str, list[torch.Tensor]] = {k: [] for k in spec.stats}
    order: list[torch.Tensor] = []  # copy * episodes + index of each kept episode, for a stable order
    while bool((count < quota).any()):
        actions, hidden = actor.act(ts.obs, ts.avail, hidden, deterministic)
        ts = env.step(actions)
        ep_ret += ts.reward
        for k, how in spec.stats.items():
            v = ts.info[k].to(ep_stats[k].dtype)
            ep_stats[k] = ep_stats[k] + v if how == "sum" else v
        if bool(ts.done.any()):
            d = ts.done
            keep = d & (count < quota)
            returns.append(ep_ret[keep].cpu())
            order.append((torch.arange(b, device=dev) * episodes + count)[keep].cpu())
            for k in spec.stats:
                stats[k].append(ep_stats[k][keep].cpu())
                ep_stats[k] = ep_stats[k].masked_fill(d, 0.0)
            count += d.long()
            ep_ret = ep_ret.masked_fill(d[:, None], 0.0)
            if hidden is not None:
                hidden = hidden.masked_fill(d.view(-1, *([1] * (hidden.dim() - 1))), 0.0)
    idx = torch.cat(order).argsort()
    return EvalResult(
        agents=list(spec.agents),
        returns=torch.cat(returns)[idx].double(),
        stats={k: torch.cat(v)[idx].double() for k, v in stats.items()},
        outcome=spec.outcome,
    )
