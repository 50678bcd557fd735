"""``marl eval PATH vs=OTHER``: cross-play of two runs' actors, side by side.

Each side plays through its own run's actor only (loaded with ``weights_only``, no critic):

* a **self-play run** (``selfplay=latest|pool``) has one actor for the learning agents; PATH's
  actor plays the learning slots and OTHER's actor (a self-play run of the same game) the
  mirrored opponent slots, through the same env wrapper as training;
* a **plain run**, or an **asymmetric self-play run** (tag: its actor covers every role), has an
  actor for every agent; for each side (each role when the env has
  several, ``adversary`` vs ``agent`` on tag; else each agent) PATH's actor plays that side and
  OTHER's actor all the others. Without a message channel agent i's action depends on agent i's
  observation only; with one (``comm``), on its own team's messages, and a team is a role
  (``marlcli.nets.comm.same_team``: tag's predators talk to predators only). So when the sides
  are roles, running both actors on the full observation and keeping each one's own agents is
  exact. When the sides are single agents of one team (spread), PATH's agent would hear messages
  that PATH's actor makes up for OTHER's agents: such runs with a channel are refused (one line).

Rows are ``eval/...`` summaries plus ``side`` (what PATH played) and ``vs``; on games with several
roles also ``win_rate``, PATH's side's score by the env's outcome rule (``marlcli.envs.outcome``;
tag: PATH's predators vs OTHER's prey win on a catch).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from marlcli import results
from marlcli.envs.base import role_of
from marlcli.envs.outcome import role_scores
from marlcli.errors import CheckpointError, ConfigError
from marlcli.evaluate import env_for_eval, load_actor, run_episodes
from marlcli.runtime import resolve_device
from marlcli.selfplay import session as selfplay


class SideBySide(nn.Module):
    """Agents in ``mine`` act with actor ``a``, every other agent with actor ``b``."""

    def __init__(self, a: nn.Module, b: nn.Module, mine: list[bool]) -> None:
        super().__init__()
        self.a, self.b = a, b
        self.register_buffer("mine", torch.tensor(mine))

    def initial_hidden(self, batch: int) -> Tensor | None:
        """Both actors' hidden states flattened into one ``[B, H_a + H_b]`` tensor (None when both are
        feed-forward), so ``run_episodes`` can zero it at episode ends like any actor's."""
        parts = [self.a.initial_hidden(batch), self.b.initial_hidden(batch)]
        self.shapes = [None if h is None else h.shape[1:] for h in parts]
        if all(h is None for h in parts):
            return None
        return torch.cat([h.reshape(batch, -1) for h in parts if h is not None], 1)

    def _split(self, hidden: Tensor | None) -> list[Tensor | None]:
        out: list[Tensor | None] = []
        at = 0
        for shape in getattr(self, "shapes", [None, None]):
            if shape is None or hidden is None:
                out.append(None)
                continue
            n = int(torch.Size(shape).numel())
            out.append(hidden[:, at:at + n].reshape(hidden.shape[0], *shape))
            at += n
        return out

    def act(self, obs: Tensor, avail: Tensor, hidden: Tensor | None, deterministic: bool) -> tuple[Tensor, Any]:
        ha, hb = self._split(hidden)
        xa, ha = self.a.act(obs, avail, ha, deterministic)
        xb, hb = self.b.act(obs, avail, hb, deterministic)
        m = self.mine.view(1, -1, *([1] * (xa.dim() - 2)))
        new = [h.reshape(h.shape[0], -1) for h in (ha, hb) if h is not None]
        return torch.where(m, xa, xb), (torch.cat(new, 1) if new else None)


def evaluate_vs(path: Path, other: Path, episodes: int = 1000, seed: int = 0, deterministic: bool = True,
                device: str = "cpu", envs: int = 1000) -> list[dict[str, Any]]:
    """Cross-play every checkpoint at ``path`` against ``other``'s (newest) checkpoint."""
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
        if str(cfg.env.name) != str(their_cfg.env.name):
            raise CheckpointError(f"vs={other}: cross-play needs two runs of one env ({cfg.env.name} vs "
                                  f"{their_cfg.env.name})")
        base = {"env": str(cfg.env.name), "algo": str(cfg.algo.name), "run": str(cfg.run), "seed": int(cfg.seed),
                "step": int(payload["step"]), "checkpoint": str(target), "vs": str(other), "eval_seed": seed}
        env = env_for_eval(cfg, min(episodes, envs), seed, dev)
        try:
            mirrored = _mirrored(cfg, env.spec)
            if mirrored != _mirrored(their_cfg, env.spec):
                raise CheckpointError(f"vs={other}: cross-play needs two runs whose actors cover the same agents: both "
                                      "mirrored self-play (the learning side only) or both not")
            if mirrored:
                wrapped = selfplay.opponents_for_eval(cfg, env, payload, dev, vs=theirs, seed=seed,
                                                              deterministic=deterministic)
                mine = load_actor(payload, cfg, wrapped.spec, dev)
                res = run_episodes(mine, wrapped, episodes, deterministic)
                rows.append({**base, "side": ",".join(wrapped.spec.agents), **_strip(res.summary())})
                continue
            spec = env.spec
            sides = spec.roles if len(spec.roles) > 1 else list(spec.agents)
            talking = [c for c in (cfg, their_cfg) if str(c.get("comm", {}).get("type", "none")) != "none"]
            if talking and len(spec.roles) == 1 and spec.n_agents > 1:
                raise ConfigError(f"vs={other}: cross-play on env={spec.name} puts single agents of one team side by "
                                  f"side, and with comm={talking[0].comm.type} each would hear messages its own actor "
                                  "makes up for the other run's agents; cross-play runs without a channel")
            a, b = load_actor(payload, cfg, spec, dev), load_actor(theirs, their_cfg, spec, dev)
            for side in sides:
                mask = [(role_of(x) if len(spec.roles) > 1 else x) == side for x in spec.agents]
                res = run_episodes(SideBySide(a, b, mask), env, episodes, deterministic)
                row = {**base, "side": side, **_strip(res.summary())}
                if len(spec.roles) > 1:  # the game's outcome rule (tag: predators win on a catch)
                    row["win_rate"] = float(role_scores(spec, res.returns, res.stats)[:, spec.roles.index(side)].mean())
                rows.append(row)
        finally:
            env.close()
    return rows


def _mirrored(cfg: Any, spec: Any) -> bool:
    """A mirrored self-play run: its actor covers the learning agents only."""
    return str(cfg.selfplay.mode) != "none" and selfplay.learning_roles(cfg, spec) is None


def _strip(summary: dict[str, float]) -> dict[str, float]:
    return {k.removeprefix("eval/"): v for k, v in summary.items()}
