"""``marl eval PATH vs=OTHER``: cross-play of two runs' actors, side by side.

Each side plays through its own run's actor only (loaded with ``weights_only``, no critic):

* a **self-play run** (``selfplay=latest|pool``) has one actor for the learning agents; PATH's
  actor plays the learning slots and OTHER's actor (a self-play run of the same game) the
  mirrored opponent slots, through the same env wrapper as training;
* a **plain run** has an actor for every agent; for each side (each role when the env has
  several, ``adversary`` vs ``agent`` on tag; else each agent) PATH's actor plays that side and
  OTHER's actor all the others. Agent i's action depends on agent i's observation only, so
  running both actors on the full observation and keeping each one's own agents is exact.

Rows are ``eval/...`` summaries plus ``side`` (what PATH played) and ``vs``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from marlcli import results
from marlcli.algos import load_family
from marlcli.envs.base import role_of
from marlcli.errors import CheckpointError
from marlcli.evaluate import run_episodes


class SideBySide(nn.Module):
    """Agents in ``mine`` act with actor ``a``, every other agent with actor ``b``."""

    def __init__(self, a: nn.Module, b: nn.Module, mine: list[bool]) -> None:
        super().__init__()
        self.a, self.b = a, b
        self.register_buffer("mine", torch.tensor(mine))

    def initial_hidden(self, batch: int) -> Any:
        return (self.a.initial_hidden(batch), self.b.initial_hidden(batch))

    def act(self, obs: Tensor, avail: Tensor, hidden: Any, deterministic: bool) -> tuple[Tensor, Any]:
        hidden = hidden if isinstance(hidden, tuple) else (None, None)
        xa, ha = self.a.act(obs, avail, hidden[0], deterministic)
        xb, hb = self.b.act(obs, avail, hidden[1], deterministic)
        m = self.mine.view(1, -1, *([1] * (xa.dim() - 2)))
        return torch.where(m, xa, xb), (ha, hb)


def _actor(payload: dict[str, Any], spec: Any, cfg: Any, dev: torch.device) -> nn.Module:
    actor = load_family(cfg.algo).make_actor(spec, cfg).to(dev)
    results.restore(actor, payload["actor"], "actor", payload)
    return actor.eval()


def evaluate_vs(path: Path, other: Path, episodes: int = 1000, seed: int = 0, deterministic: bool = True,
                device: str = "cpu", envs: int = 1000) -> list[dict[str, Any]]:
    """Cross-play every checkpoint at ``path`` against ``other``'s (newest) checkpoint."""
    from marlcli import selfplay
    from marlcli.trainer import env_for_eval, resolve_device

    dev = resolve_device(device)
    theirs = results.load_checkpoint(other)
    their_cfg = results.checkpoint_config(theirs)
    targets = [path] if path.is_file() else results.find_seed_dirs(path)
    if not targets:
        raise CheckpointError(f"no checkpoints under {path} (expected seed_*/checkpoints/latest.pt)")
    rows = []
    for target in targets:
        payload = results.load_checkpoint(target)
        cfg = results.checkpoint_config(payload)
        if str(cfg.env.name) != str(their_cfg.env.name) or str(cfg.selfplay.mode == "none") != str(
                their_cfg.selfplay.mode == "none"):
            raise CheckpointError(f"vs={other}: cross-play needs two runs of one env, both self-play or both not "
                                  f"({cfg.env.name} vs {their_cfg.env.name})")
        base = {"env": str(cfg.env.name), "algo": str(cfg.algo.name), "run": str(cfg.run), "seed": int(cfg.seed),
                "step": int(payload["step"]), "checkpoint": str(target), "vs": str(other), "eval_seed": seed}
        env = env_for_eval(cfg, min(episodes, envs), seed, dev)
        try:
            if str(cfg.selfplay.mode) != "none":
                wrapped = selfplay.opponents_for_eval(cfg, env, payload, dev, vs=theirs, seed=seed,
                                                              deterministic=deterministic)
                mine = _actor(payload, wrapped.spec, cfg, dev)
                res = run_episodes(mine, wrapped, episodes, deterministic)
                rows.append({**base, "side": ",".join(wrapped.spec.agents), **_strip(res.summary())})
                continue
            spec = env.spec
            a, b = _actor(payload, spec, cfg, dev), _actor(theirs, spec, their_cfg, dev)
            sides = spec.roles if len(spec.roles) > 1 else list(spec.agents)
            for side in sides:
                mask = [(role_of(x) if len(spec.roles) > 1 else x) == side for x in spec.agents]
                res = run_episodes(SideBySide(a, b, mask), env, episodes, deterministic)
                rows.append({**base, "side": side, **_strip(res.summary())})
        finally:
            env.close()
    return rows


def _strip(summary: dict[str, float]) -> dict[str, float]:
    return {k.removeprefix("eval/"): v for k, v in summary.items()}
