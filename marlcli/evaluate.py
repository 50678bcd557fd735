"""Decentralized evaluation, the one home of it: the actor alone, each agent acting on its own observation.

``run_episodes`` plays an actor in a vector env; ``env_for_eval`` builds the evaluation envs
(the evaluation seed stream); ``load_actor`` builds a checkpoint's actor and restores its
weights (the one copy, for ``marl eval``, cross-play, payoff matrices, export and the
experiments); ``evaluate_path`` is ``marl eval PATH``. Self-play sits above this module, so a
self-play run's opponents come in as a parameter (``opponents=selfplay.opponents_for_eval``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from marlcli import results
from marlcli.algos import load_family
from marlcli.algos.base import Actor
from marlcli.cliutil import suggest
from marlcli.envs import make_env
from marlcli.envs.base import EnvSpec, Outcome, VecEnv, role_of
from marlcli.errors import CheckpointError, ConfigError
from marlcli.overrides import check_comm_override, check_env_value, parse_value, shown
from marlcli.runtime import resolve_device
from marlcli.stats import ci95

EVAL_SEED_OFFSET = 1_000_003  # evaluation envs never share episodes with training envs
# a self-play run's opponents: (cfg, env, payload, device, seed=) -> the env with its opponent slots played
Opponents = Callable[..., VecEnv]


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
            "eval/return_ci95": ci95(per_ep.numpy()),
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


def env_for_eval(cfg: DictConfig, num_envs: int, seed: int, device: torch.device) -> VecEnv:
    """Evaluation envs of ``cfg`` (same config, the evaluation seed stream ``seed + EVAL_SEED_OFFSET``)."""
    return make_env(cfg.env, num_envs, seed + EVAL_SEED_OFFSET, device)


def load_actor(payload: dict[str, Any], cfg: DictConfig, spec: EnvSpec, device: torch.device | str = "cpu",
               check: Callable[[Actor], None] | None = None) -> Actor:
    """The actor of ``payload`` (a checkpoint or a pool member: anything with ``"actor"`` weights), built for
    ``spec`` under ``cfg``, its weights restored, in eval mode; no critic is built or loaded.

    Weights that do not fit are one ``CheckpointError`` line. ``check(actor)`` runs on the
    built actor before its weights are loaded, so a caller's own, more telling refusal comes
    first (``marl eval env.N=12``: :func:`check_actor_fits`; ``marl export``: an actor kind it has
    no adapter for).
    """
    actor = load_family(cfg.algo).make_actor(spec, cfg).to(device)
    if check is not None:
        check(actor)
    results.restore(actor, payload["actor"], "actor", payload)
    return actor.eval()


def check_actor_fits(actor: Any, payload: dict[str, Any], cfg: DictConfig, spec: EnvSpec, moved: dict[str, str]) -> None:
    """One line, before loading, when the checkpoint's actor cannot run in the overridden env (issue 17).

    Its weights' shapes are compared with those of an actor built for the new env; a
    mismatch means its input or its network count depends on what changed, and the message
    says which option would have made it size-free.
    """
    saved = payload["actor"]
    wrong = [k for k, v in actor.state_dict().items() if k in saved and tuple(saved[k].shape) != tuple(v.shape)]
    if not wrong:
        return
    where = " ".join(f"{k}={v}" for k, v in moved.items())
    if str(cfg.sharing.mode) != "all":
        why = f"it has one network per agent or role (sharing={cfg.sharing.mode}); train with sharing=all"
    elif bool(cfg.sharing.get("agent_id", True)):
        why = "its input holds a one-hot agent id of length N; train with sharing.agent_id=false"
    else:
        why = (f"its input size depends on the env (observation size {spec.obs_dim} here); keep "
               "env.num_agent_neighbors and env.num_landmark_neighbors fixed, or use actor=deepsets")
    raise CheckpointError(f"the actor of {payload.get('_path')} cannot run with {where}: {why} "
                          f"(weights that do not fit: {', '.join(wrong[:3])})")


def check_counts(**counts: Any) -> None:
    """``episodes``/``envs`` of ``marl eval`` (and ``evaluate_path`` called from scripts) are integers >= 1."""
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive integer (1 or more), got {value!r}")


def check_eval_overrides(saved: DictConfig, given: dict[str, str]) -> None:
    """``env.KEY=VALUE`` / ``comm.KEY=VALUE`` of ``marl eval``, checked against the run's saved config (issue 25).

    A key the saved env config lacks names the closest ones; a value must have the type the
    key has there (``env.N=abc`` or ``env.N=1.5`` where N is 3) and be in range (``env.N=0``),
    so it fails here as one line instead of inside the env. ``env.num_envs`` is the training
    batch, which evaluation does not use (``envs=`` sets its copies): refused, not ignored.
    """
    env = OmegaConf.to_container(saved.env, resolve=False)
    assert isinstance(env, dict)
    for key, value in given.items():
        if key.startswith("comm."):
            check_comm_override(key, value)
            continue
        name = key.removeprefix("env.")
        if name == "factory":
            continue
        if name == "num_envs":
            raise ConfigError("env.num_envs is the training batch; marl eval steps envs=N copies (default 1000)")
        head, _, sub = name.partition(".")
        if head not in env:
            keys = [f"env.{k}" for k in env if k != "kwargs"]
            raise ConfigError(f"{key}: the run's env config has no key '{head}'{suggest(key, keys)} "
                              f"(its keys: {', '.join(k.removeprefix('env.') for k in keys)})")
        reference = env[head] if not sub else (env[head].get(sub) if isinstance(env[head], dict) else None)
        if sub and reference is None:  # a free-form factory argument the run did not set
            continue
        check_env_value(key, parse_value(value), reference,
                        f" (the run's env.{name} is {shown(reference)})" if reference is not None else "")


def _episodes(cfg: DictConfig, payload: dict[str, Any], episodes: int, envs: int, seed: int, dev: torch.device,
              deterministic: bool, moved: dict[str, str], opponents: Opponents | None) -> tuple[EvalResult, EnvSpec]:
    """The checkpoint's actor under ``cfg`` on ``episodes`` evaluation episodes: (EvalResult, EnvSpec)."""
    torch.manual_seed(seed)  # message dropout draws from torch's RNG: the same losses each time
    env = env_for_eval(cfg, min(episodes, envs), seed, dev)
    if opponents is not None:
        env = opponents(cfg, env, payload, dev, seed=seed)  # self-play runs: vs their pool
    try:
        fits = (lambda actor: check_actor_fits(actor, payload, cfg, env.spec, moved)) if moved else None
        actor = load_actor(payload, cfg, env.spec, dev, check=fits)
        return run_episodes(actor, env, episodes, deterministic), env.spec
    finally:
        env.close()


def evaluate_path(path: Path, episodes: int = 1000, seed: int = 0, deterministic: bool = True,
                  device: str = "cpu", envs: int = 1000, overrides: list[str] | None = None,
                  write: bool = True, opponents: Opponents | None = None) -> list[dict[str, Any]]:
    """``marl eval PATH``: every checkpoint at ``path`` decentralized; writes ``eval.json`` per seed dir (if ``write``).

    ``overrides`` (``env.factory=pkg.mod:make``) replace keys of each checkpoint's config; an
    ``env.factory`` given here is trusted, any other foreign one is refused (issue 16).
    A self-play run plays the opponents training would play: ``marl eval`` passes
    ``opponents=marlcli.selfplay.opponents_for_eval``; without it such a run is refused, never
    evaluated against something else.
    """
    check_counts(episodes=episodes, envs=envs)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist; give a seed dir, a run dir or a .pt file")
    targets = [path] if path.is_file() else results.find_seed_dirs(path)
    if not targets:
        raise CheckpointError(f"no checkpoints under {path} (expected seed_*/checkpoints/latest.pt)")
    given = dict(o.split("=", 1) for o in overrides or [])
    dev = resolve_device(device)
    rows = []
    moved = {k: v for k, v in given.items() if k.startswith("env.") and k != "env.factory"}  # env keys changed
    channel = {k: v for k, v in given.items() if k.startswith("comm.")}  # message-channel ablation (issue 19)
    for target in targets:
        payload = results.load_checkpoint(target)
        factory = {k: v for k, v in given.items() if k == "env.factory"}  # a factory given here is trusted
        check_eval_overrides(results.checkpoint_config(payload, overrides=factory), given)
        cfg = results.checkpoint_config(payload, overrides=given)
        if opponents is None and str(cfg.get("selfplay", {}).get("mode", "none")) != "none":
            raise ConfigError(f"{target} is a self-play run (selfplay={cfg.selfplay.mode}): evaluate it against its "
                              "pool with evaluate_path(..., opponents=marlcli.selfplay.opponents_for_eval) or marl eval")
        res, spec = _episodes(cfg, payload, episodes, envs, seed, dev, deterministic, moved, opponents)
        summary = {k.removeprefix("eval/"): v for k, v in res.summary().items()}
        row = {"env": str(cfg.env.name), "algo": str(cfg.algo.name), "run": str(cfg.run), "seed": int(cfg.seed),
               "step": int(payload["step"]), "checkpoint": str(target), "deterministic": deterministic,
               "eval_seed": seed, **summary}
        if cfg.get("variant"):
            row["variant"] = str(cfg.variant)
        if moved:  # evaluated somewhere else than trained: say where
            row["env_overrides"] = moved
            row["n_agents"] = spec.n_agents
        if channel:  # the ablation beside the intact channel, on the same episodes
            row["comm_overrides"] = channel
            intact, _ = _episodes(results.checkpoint_config(
                payload, overrides={k: v for k, v in given.items() if not k.startswith("comm.")}), payload, episodes,
                envs, seed, dev, deterministic, moved, opponents)
            whole = intact.summary()
            row["return_mean_intact"], row["return_ci95_intact"] = whole["eval/return_mean"], whole["eval/return_ci95"]
        row["env_config"] = {k: v for k, v in OmegaConf.to_container(cfg.env, resolve=True).items() if k != "kwargs"}
        sdir = target if target.is_dir() else (target.parent.parent if target.parent.name == "checkpoints"
                                                else target.parent)
        if write and (sdir / "config.yaml").exists():
            name = "eval_comm.json" if channel else "eval.json"  # an ablation never replaces the plain evaluation
            results.atomic_write_text(sdir / name, json.dumps(row, indent=2) + "\n")
        rows.append(row)
    return rows
