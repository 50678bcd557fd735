"""MAPPO on VMAS navigation and balance against a random policy and standing still.

    python experiments/vmas_mappo/run.py [seeds=100,101,102] [scenarios=navigation,balance] [out=experiments/vmas_mappo]

Trains marlcli's MAPPO (``env=vmas``, the budgets and settings in ``SETTINGS``) and compares
its final greedy evaluation with a uniformly random policy and with standing still
(action 0 / the zero vector), each on exactly the episodes the trainer evaluates on (same
env config, copies and seed). Seeds 0-2 were used to choose the settings; the README
reports seeds 100-102. Writes ``results_<scenarios>.json`` (seeds 100-102; other seeds:
``tuning_<scenarios>.json``) with every run and the means, after every run, and a markdown table.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from marlcli import config
from marlcli.evaluate import env_for_eval, run_episodes
from marlcli.trainer import train

EVAL = ["train.eval_episodes=200", "train.eval_envs=200", "train.eval_interval=1000000000",
        "train.checkpoint_interval=1000000000", "train.log_interval=1000000000", "logger.progress=false", "device=cpu"]
SETTINGS: dict[str, list[str]] = {  # env.max_steps = algo.rollout_steps: one episode per update and copy
    "navigation": ["env.scenario=navigation", "env.n_agents=3", "env.max_steps=100", "env.continuous_actions=true",
                   "env.num_envs=64", "algo.rollout_steps=100", "train.total_steps=128000"],
    "balance": ["env.scenario=balance", "env.n_agents=3", "env.max_steps=100", "env.continuous_actions=true",
                "env.num_envs=64", "algo.rollout_steps=100", "train.total_steps=256000"],
}


class Baseline:
    """Uniform random available actions (``random``) or action 0 / the zero vector (``still``)."""

    def __init__(self, env: Any, kind: str, seed: int) -> None:
        self.spec, self.kind = env.spec, kind
        self.low, self.high = env.spec.bounds()
        self.gen = torch.Generator().manual_seed(seed)

    def initial_hidden(self, batch: int) -> None:
        return None

    def act(self, obs: torch.Tensor, avail: torch.Tensor, hidden: None, deterministic: bool) -> tuple[torch.Tensor, None]:
        b, n = obs.shape[:2]
        if self.spec.discrete:
            if self.kind == "still":
                return torch.zeros(b, n, dtype=torch.long), None
            probs = avail.float().flatten(0, 1)
            return torch.multinomial(probs, 1, generator=self.gen).view(b, n), None
        if self.kind == "still":
            return torch.zeros(b, n, self.spec.act_dim), None
        u = torch.rand(b, n, self.spec.act_dim, generator=self.gen)
        return self.low + (self.high - self.low) * u, None


def make_cfg(*overrides: str) -> DictConfig:
    config.register()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config.CONF_DIR), version_base=None):
        return compose("config", overrides=list(overrides))


def baseline_return(cfg: DictConfig, kind: str) -> float:
    """``eval/return_mean`` of a baseline on the trainer's evaluation episodes of ``cfg``."""
    t = cfg.train
    env = env_for_eval(cfg, min(int(t.eval_episodes), int(t.eval_envs)), int(cfg.seed), torch.device("cpu"))
    return run_episodes(Baseline(env, kind, int(cfg.seed)), env, int(t.eval_episodes)).summary()["eval/return_mean"]


def run(scenario: str, seed: int, root: Path) -> dict[str, Any]:
    cfg = make_cfg("algo=mappo", "env=vmas", f"seed={seed}", f"results_dir={root}", f"run={scenario}",
                   *EVAL, *SETTINGS[scenario])
    t0 = time.time()
    seed_dir = train(cfg)
    lines = [json.loads(x) for x in (seed_dir / "metrics.jsonl").read_text().splitlines()]
    final = [x for x in lines if "eval/return_mean" in x][-1]["eval/return_mean"]
    row = {"scenario": scenario, "seed": seed, "mappo": final, "random": baseline_return(cfg, "random"),
           "still": baseline_return(cfg, "still"), "train_s": round(time.time() - t0, 1),
           "env_steps": int(cfg.train.total_steps)}
    print(json.dumps(row), flush=True)
    return row


def main(argv: list[str]) -> None:
    args = dict(a.split("=", 1) for a in argv)
    seeds = [int(s) for s in args.get("seeds", "100,101,102").split(",")]
    scenarios = args.get("scenarios", "navigation,balance").split(",")
    out = Path(args.get("out", Path(__file__).parent))
    torch.set_num_threads(1)
    rows: list[dict[str, Any]] = []
    name = f"{'results' if seeds == [100, 101, 102] else 'tuning'}_{'_'.join(scenarios)}"
    done = {(r["scenario"], r["seed"]): r for r in (json.loads((out / f"{name}.json").read_text())["runs"]
                                                     if (out / f"{name}.json").exists() else [])}
    with tempfile.TemporaryDirectory() as tmp:
        for sc in scenarios:
            for s in seeds:  # runs already in the file are kept (delete it to start over)
                rows.append(done.get((sc, s)) or run(sc, s, Path(tmp)))
                mean = {c: {k: sum(r[k] for r in rows if r["scenario"] == c) / sum(r["scenario"] == c for r in rows)
                            for k in ("mappo", "random", "still")} for c in dict.fromkeys(r["scenario"] for r in rows)}
                result = {"seeds": seeds, "settings": {c: SETTINGS[c] + EVAL for c in scenarios}, "runs": rows,
                          "mean": mean}
                (out / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")  # after every run
    table = ["| scenario | MAPPO | random | stand still | per seed (MAPPO / random) |", "|---|---|---|---|---|"]
    for sc in scenarios:
        per = ", ".join(f"{r['mappo']:.2f} / {r['random']:.2f}" for r in rows if r["scenario"] == sc)
        m = mean[sc]
        table.append(f"| {sc} | {m['mappo']:.2f} | {m['random']:.2f} | {m['still']:.2f} | {per} |")
    (out / f"table_{name}.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main(sys.argv[1:])
