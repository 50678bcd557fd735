"""Coordination game: independent learners vs value decomposition, with and without optimism.

    python experiments/coordination_game/run.py [results_dir=results/experiments/coordination_game] [seeds=20]

Trains marlcli's own IQL, VDN and QMIX (``marlcli.algos.qlearning`` on the native batched
``env=coordination``) over ``seeds`` seeds for penalties -10 and -30, with and without
hysteretic optimism, sweeps the negative-TD weight from 0 to 1 (= the normal rate), and
reproduces the tabular reference of seed-studies section 1 (independent learners vs
VDN + optimism). Prints a markdown table and saves ``table.md`` and ``results.json``.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from marlcli import config
from marlcli.algos import load_family
from marlcli.buffers import Rollout
from marlcli.envs import make_env
from marlcli.envs.matrix import coordination_payoff
from marlcli.runtime import seed_everything

EPISODES = 8000  # as the tabular reference: 8,000 one-step episodes per seed
NUM_ENVS = 100  # episodes collected per update
# ε(t) = max(0.1, 1 - t/4000), as the reference: linear from 1 to 0.1 over 3,600 episodes
DEEP = ["env=coordination", "env.backend=native", f"env.num_envs={NUM_ENVS}", "device=cpu",
        "algo.rollout_steps=1", "algo.eps_start=1.0", "algo.eps_end=0.1", "algo.eps_anneal_steps=3600",
        "algo.batch_episodes=128", "algo.learning_starts=128", "algo.replay_ratio=2.56", "algo.lr=0.003",
        "algo.hidden=32", "algo.layers=1", "algo.max_grad_norm=10.0",
        "algo.mixer_embed=32", "algo.hypernet_hidden=64"]  # pinned: independent of spread-tuned defaults


def deep_cfg(algo: str, penalty: float, neg_td_scale: float | None) -> DictConfig:
    opt = [] if neg_td_scale is None else ["algo.optimism=true", f"algo.neg_td_scale={neg_td_scale}"]
    with initialize_config_dir(config_dir=str(config.CONF_DIR), version_base=None):
        return compose("config", overrides=[f"algo={algo}", f"env.penalty={penalty}", *DEEP, *opt])


def run_deep(cfg: DictConfig, seed: int) -> tuple[int, int]:
    """Train one seed through marlcli's learner; return the greedy joint action."""
    seed_everything(seed)
    device = torch.device("cpu")
    env = make_env(cfg.env, NUM_ENVS, seed, device)
    algo = load_family(cfg.algo).make(env.spec, cfg, device)
    ts, hidden, step = env.reset(), None, 0
    while step < EPISODES:
        steps = []
        for _ in range(algo.rollout_steps):
            actions, hidden = algo.act(ts, hidden, step)
            nxt = env.step(actions)
            steps.append((ts, actions, nxt))
            ts = nxt
        rollout = Rollout.from_steps(steps)
        step += rollout.num_steps
        algo.update(rollout, step)
    with torch.no_grad():
        first = env.reset()
        greedy, _ = algo.actor.act(first.obs[:1], first.avail[:1], None, deterministic=True)
    return int(greedy[0, 0]), int(greedy[0, 1])


def run_tabular(method: str, penalty: float, seed: int, alpha: float = 0.05, beta: float = 0.005) -> tuple[int, int]:
    """The reference learners of seed-studies section 1 (three utilities per agent)."""
    r = coordination_payoff(penalty)[..., 0]
    rng = np.random.default_rng(seed)
    q = np.zeros((2, 3))
    for t in range(EPISODES):
        eps = max(0.1, 1 - t / 4000)
        a = [int(rng.integers(3)) if rng.random() < eps else int(np.argmax(q[i])) for i in range(2)]
        reward = r[a[0], a[1]]
        if method == "independent":
            for i in range(2):
                q[i, a[i]] += alpha * (reward - q[i, a[i]])
        else:  # additive decomposition with optimism: one shared TD error, rate β when it is <= 0
            delta = reward - (q[0, a[0]] + q[1, a[1]])
            rate = alpha if delta > 0 else beta
            for i in range(2):
                q[i, a[i]] += rate * delta
    return int(np.argmax(q[0])), int(np.argmax(q[1]))


def summarize(label: dict[str, Any], joints: list[tuple[int, int]], penalty: float) -> dict[str, Any]:
    r = coordination_payoff(penalty)[..., 0]
    rewards = [float(r[a0, a1]) for a0, a1 in joints]
    common, count = Counter(joints).most_common(1)[0]
    return {**label, "penalty": penalty, "greedy_joint": f"({common[0]},{common[1]}) x{count}",
            "mean_reward": round(float(np.mean(rewards)), 2),
            "optimum_share": round(float(np.mean([x == 10.0 for x in rewards])), 2), "joints": joints}


def table(rows: list[dict[str, Any]]) -> str:
    head = "| method | penalty | negative-TD weight | greedy joint action (most common) | mean reward | optimum reached |"
    lines = [head, "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['penalty']:g} | {r['neg']} | {r['greedy_joint']} | "
                     f"{r['mean_reward']:.2f} | {100 * r['optimum_share']:.0f}% |")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    args = dict(a.split("=", 1) for a in argv)
    out = Path(args.get("results_dir", "results/experiments/coordination_game"))
    seeds = range(int(args.get("seeds", 20)))
    torch.set_num_threads(1)
    config.register()
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for penalty in (-10.0, -30.0):  # tabular reference
        rows.append(summarize({"method": "tabular independent", "neg": "1 (α)"},
                              [run_tabular("independent", penalty, s) for s in seeds], penalty))
        rows.append(summarize({"method": "tabular VDN + optimism", "neg": "0.1 (β=0.005)"},
                              [run_tabular("vdn", penalty, s) for s in seeds], penalty))
    for penalty in (-10.0, -30.0):  # deep, through marlcli
        for algo in ("iql", "vdn", "qmix"):
            for neg in (None, 0.1):
                cfg = deep_cfg(algo, penalty, neg)
                rows.append(summarize({"method": f"marlcli {algo}" + (" + optimism" if neg else ""),
                                       "neg": "1 (off)" if neg is None else f"{neg:g}"},
                                      [run_deep(cfg, s) for s in seeds], penalty))
                print(f"  {algo} penalty={penalty:g} optimism={neg is not None}: {time.perf_counter() - start:.0f}s",
                      file=sys.stderr)
    sweep: list[dict[str, Any]] = []
    for penalty in (-10.0, -30.0):  # negative-TD weight from 0 to the normal rate
        for beta in (0.0, 0.005, 0.01, 0.02, 0.03, 0.04, 0.05):
            sweep.append(summarize({"method": "tabular VDN", "neg": f"{beta / 0.05:g} (β={beta:g})"},
                                   [run_tabular("vdn", penalty, s, beta=beta) for s in seeds], penalty))
        for neg in (0.0, 0.05, 0.1, 0.2, 0.5, 1.0):  # 0.1 and 1 (= off) were run for the main table
            done = [r for r in rows if r["method"].startswith("marlcli vdn") and r["penalty"] == penalty
                    and r["neg"].split()[0] == f"{neg:g}"]
            joints = done[0]["joints"] if done else [run_deep(deep_cfg("vdn", penalty, neg), s) for s in seeds]
            sweep.append(summarize({"method": "marlcli vdn + optimism", "neg": f"{neg:g}"}, joints, penalty))
        print(f"  sweep penalty={penalty:g}: {time.perf_counter() - start:.0f}s", file=sys.stderr)
    text = (f"## Coordination game, {len(seeds)} seeds, {EPISODES} episodes each\n\n{table(rows)}\n\n"
            f"## Sweep of the negative-TD weight (β/α; 1 = no optimism)\n\n{table(sweep)}\n")
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(text)
    (out / "results.json").write_text(json.dumps({"main": rows, "sweep": sweep, "seeds": len(seeds),
                                                  "episodes": EPISODES, "wall_s": time.perf_counter() - start},
                                                 indent=1))
    print(f"saved {out / 'table.md'} and {out / 'results.json'} ({time.perf_counter() - start:.0f}s)")


if __name__ == "__main__":
    main(sys.argv[1:])
