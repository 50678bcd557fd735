"""Decentralized evaluation: the actor alone, each agent acting on its own observation."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from marlcli.algos.base import Actor
from marlcli.envs.base import EnvSpec, VecEnv, role_of


@dataclass
class EvalResult:
    """Per-episode outcomes of an evaluation."""

    agents: list[str]
    returns: torch.Tensor  # [E, N] episode return per agent
    stats: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> [E]

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
        return out


@torch.no_grad()
def run_episodes(actor: Actor, env: VecEnv, episodes: int, deterministic: bool = True) -> EvalResult:
    """Run until ``episodes`` episodes finished across the env copies; keep the first ones."""
    spec: EnvSpec = env.spec
    ts = env.reset()
    hidden = actor.initial_hidden(env.num_envs)
    ep_ret = torch.zeros(env.num_envs, spec.n_agents, device=ts.obs.device)
    ep_stats = {k: torch.zeros(env.num_envs, device=ts.obs.device) for k in spec.stats}
    returns: list[torch.Tensor] = []
    stats: dict[str, list[torch.Tensor]] = {k: [] for k in spec.stats}
    finished = 0
    while finished < episodes:
        actions, hidden = actor.act(ts.obs, ts.avail, hidden, deterministic)
        ts = env.step(actions)
        ep_ret += ts.reward
        for k, how in spec.stats.items():
            v = ts.info[k].to(ep_stats[k].dtype)
            ep_stats[k] = ep_stats[k] + v if how == "sum" else v
        if ts.done.any():
            d = ts.done
            returns.append(ep_ret[d].cpu())
            for k in spec.stats:
                stats[k].append(ep_stats[k][d].cpu())
                ep_stats[k] = ep_stats[k].masked_fill(d, 0.0)
            finished += int(d.sum())
            ep_ret = ep_ret.masked_fill(d[:, None], 0.0)
            if hidden is not None:
                hidden = hidden.masked_fill(d.view(-1, *([1] * (hidden.dim() - 1))), 0.0)
    return EvalResult(
        agents=list(spec.agents),
        returns=torch.cat(returns)[:episodes].double(),
        stats={k: torch.cat(v)[:episodes].double() for k, v in stats.items()},
    )
