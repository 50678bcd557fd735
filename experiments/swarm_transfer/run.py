"""Train small, deploy large (issue 17): does a shared swarm actor trained at N = 4 work at N = 64?

    python experiments/swarm_transfer/run.py [results_dir=results/experiments/swarm_transfer] [seeds=5]
        [retrain_seeds=3] [train_ns=4,8,16] [eval_ns=4,8,16,32,64] [agent_steps=4000000] [episodes=500]
        [actor=mlp] [threads=2]

Swarm spread (native): N agents cover N landmarks; every agent sees its 3 nearest agents and its 3
nearest landmarks (so the observation size never depends on N), not its absolute position, in an
arena that grows as sqrt(N/3) (N = 3's density at any N); the global reward is the MEAN closest-agent
distance over landmarks, so a per-agent return means the same at every N. MAPPO, one actor shared by
every agent without a one-hot id (``sharing=all sharing.agent_id=false``).

1. Train at each N of ``train_ns``: ``seeds`` seeds at the first N (100, 101, ...: never used for
   tuning), ``retrain_seeds`` at the others. Every N gets the same number of agent-steps
   (``agent_steps``; env steps = agent_steps / N) and of PPO updates (env copies = 2048 / N).
2. Evaluate every trained actor zero-shot at every N of ``eval_ns`` (``marl eval PATH env.N=M``'s
   code path) and a uniform random policy at every N, on the same ``episodes`` episodes
   (evaluation seed 9000, never looked at while tuning).
3. Normalized transfer score at M: (zero-shot(M) - random(M)) / (retrained(M) - random(M)), with
   retrained(M) the mean over the seeds trained at M (only for M in train_ns); beyond the largest
   trained N the score is reported against the policies trained at that largest N instead.

Writes results.md (table), results.json (every figure, per seed), summary.json
(``{"transfer_score": {"<N>": mean over seeds}}`` and more) and transfer.png into results_dir.
Runs already finished under results_dir are reused (delete the dir to start over).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from marlcli import results
from marlcli.cliutil import experiment_options
from marlcli.config import compose
from marlcli.evaluate import env_for_eval, evaluate_path, run_episodes
from marlcli.stats import ci95
from marlcli.trainer import train

SWARM = ["env=spread", "env.num_agent_neighbors=3", "env.num_landmark_neighbors=3", "env.scale_arena=true",
         "env.observe_position=false", "env.global_reward=mean", "algo=mappo", "sharing=all",
         "sharing.agent_id=false"]
EVAL_SEED = 9000
MAX_CYCLES = 25

DEFAULTS: dict[str, Any] = {"results_dir": "results/experiments/swarm_transfer", "seeds": 5, "retrain_seeds": 3,
                            "train_ns": "4,8,16", "eval_ns": "4,8,16,32,64", "agent_steps": 4_000_000,
                            "episodes": 500, "actor": "mlp", "threads": 2, "first_seed": 100}


def parse(argv: list[str]) -> dict[str, Any]:
    return experiment_options(argv, DEFAULTS, "run.py")


class RandomActor:
    """Uniform random discrete actions: the floor of the transfer score."""

    def __init__(self, seed: int) -> None:
        self.gen = torch.Generator().manual_seed(seed)

    def initial_hidden(self, batch: int) -> None:
        return None

    def act(self, obs: torch.Tensor, avail: torch.Tensor, hidden: None, deterministic: bool) -> tuple[torch.Tensor, None]:
        return torch.randint(0, avail.shape[-1], avail.shape[:2], generator=self.gen), None


def measures(summary: dict[str, float], n: int) -> dict[str, float]:
    """Per-agent return, fraction of landmarks covered, collisions per agent-step.

    ``collisions`` counts touching pairs per step, summed over the episode; each pair is two
    agents in contact, so 2 * collisions / (N * T) is the fraction of agent-steps spent touching.
    """
    get = lambda k: summary.get(k, summary.get(f"eval/{k}"))  # noqa: E731
    return {"return": float(get("return_mean")), "covered": float(get("landmarks_covered")) / n,
            "collisions": 2.0 * float(get("collisions")) / (n * MAX_CYCLES)}


def train_all(o: dict[str, Any], root: Path) -> dict[int, list[Path]]:
    runs: dict[int, list[Path]] = {}
    ns = [int(x) for x in o["train_ns"].split(",")]
    for i, n in enumerate(ns):
        seeds = o["seeds"] if i == 0 else o["retrain_seeds"]
        envs = max(1, 2048 // n)
        steps = int(o["agent_steps"]) // n
        runs[n] = []
        for s in range(o["first_seed"], o["first_seed"] + seeds):
            cfg = compose([*SWARM, f"env.N={n}", f"actor={o['actor']}", f"seed={s}", f"results_dir={root / 'runs'}",
                           f"run=N{n}", f"env.num_envs={envs}", f"train.total_steps={steps}",
                           f"train.eval_interval={steps // 4}", f"train.checkpoint_interval={steps}",
                           f"train.log_interval={steps // 20}", "train.eval_episodes=200", "train.eval_envs=200",
                           "logger.progress=false", "device=cpu"])
            out = results.seed_dir(cfg)
            if not (out / results.DONE_FILE).exists():
                if results.holds_run(out):
                    results.clear_run(out)  # an interrupted run: start it again
                t0 = time.perf_counter()
                train(cfg)
                print(f"trained N={n} seed={s} ({steps:,} env steps, {envs} envs) in {time.perf_counter() - t0:.0f} s",
                      flush=True)
            runs[n].append(out)
    return runs


def evaluate_all(o: dict[str, Any], runs: dict[int, list[Path]]) -> dict[str, Any]:
    eval_ns = [int(x) for x in o["eval_ns"].split(",")]
    table: dict[str, Any] = {"random": {}, "trained": {}}
    for m in eval_ns:
        cfg = compose([*SWARM, f"env.N={m}"])
        env = env_for_eval(cfg, min(o["episodes"], 500), EVAL_SEED, torch.device("cpu"))  # marl eval's episodes
        res = run_episodes(RandomActor(EVAL_SEED), env, o["episodes"], deterministic=False).summary()
        table["random"][str(m)] = measures(res, m)
        print(f"random N={m}: {table['random'][str(m)]}", flush=True)
    for n, dirs in runs.items():
        for d in dirs:
            seed = d.name.removeprefix("seed_")
            for m in eval_ns:
                row = evaluate_path(d, episodes=o["episodes"], seed=EVAL_SEED, envs=500, overrides=[f"env.N={m}"],
                                    write=False)[0]
                table["trained"].setdefault(str(n), {}).setdefault(seed, {})[str(m)] = measures(row, m)
            print(f"evaluated N={n} seed={seed}: " + ", ".join(
                f"{m}: {table['trained'][str(n)][seed][str(m)]['return']:.2f}" for m in eval_ns), flush=True)
    return table


def summarize(o: dict[str, Any], table: dict[str, Any]) -> dict[str, Any]:
    train_ns = [int(x) for x in o["train_ns"].split(",")]
    eval_ns = [int(x) for x in o["eval_ns"].split(",")]
    small, large = str(train_ns[0]), max(train_ns)
    rand = table["random"]
    retrained = {str(n): float(np.mean([s[str(n)]["return"] for s in table["trained"][str(n)].values()]))
                 for n in train_ns if str(n) in eval_ns or n in eval_ns}
    out: dict[str, Any] = {"protocol": {k: o[k] for k in o}, "train_n": int(small), "transfer_score": {},
                           "transfer_score_ci95": {}, "reference_n": {}, "zero_shot": {}, "random": {}, "retrained": {}}
    for m in eval_ns:
        ref_n = m if m in train_ns else large
        ref = float(np.mean([s[str(m)]["return"] for s in table["trained"][str(ref_n)].values()]))
        scores = [(s[str(m)]["return"] - rand[str(m)]["return"]) / (ref - rand[str(m)]["return"])
                  for s in table["trained"][small].values()]
        out["transfer_score"][str(m)] = float(np.mean(scores))
        out["transfer_score_ci95"][str(m)] = ci95(scores)
        out["reference_n"][str(m)] = ref_n
        for key in ("return", "covered", "collisions"):
            zs = [s[str(m)][key] for s in table["trained"][small].values()]
            out["zero_shot"].setdefault(key, {})[str(m)] = [float(np.mean(zs)), ci95(zs)]
            out["random"].setdefault(key, {})[str(m)] = rand[str(m)][key]
            if m in train_ns:
                rt = [s[str(m)][key] for s in table["trained"][str(m)].values()]
                out["retrained"].setdefault(key, {})[str(m)] = [float(np.mean(rt)), ci95(rt)]
    del retrained
    return out


def write_outputs(o: dict[str, Any], root: Path, table: dict[str, Any], summary: dict[str, Any]) -> None:
    eval_ns = [int(x) for x in o["eval_ns"].split(",")]
    small = summary["train_n"]
    lines = [f"# Swarm spread: a shared actor trained at N = {small}, evaluated zero-shot at other N",
             "", f"MAPPO, `sharing=all sharing.agent_id=false actor={o['actor']}`, {o['agent_steps']:,} agent-steps "
             f"per training run; training seeds {o['first_seed']}+ ({o['seeds']} at N = {small}, {o['retrain_seeds']} "
             f"retrained at each other N), {o['episodes']} evaluation episodes of seed {EVAL_SEED} at every N; "
             "mean ± 95% CI over seeds.", "",
             "| N | zero-shot return | retrained return | random return | transfer score | covered (zero-shot / "
             "retrained / random) | collisions per agent-step (zero-shot / random) |",
             "|---|---|---|---|---|---|---|"]
    for m in eval_ns:
        k = str(m)
        zs, rnd = summary["zero_shot"], summary["random"]
        rt = summary["retrained"]
        rt_ret = f"{rt['return'][k][0]:.2f} ± {rt['return'][k][1]:.2f}" if k in rt.get("return", {}) else "—"
        rt_cov = f"{rt['covered'][k][0]:.2f}" if k in rt.get("covered", {}) else "—"
        ref = summary["reference_n"][k]
        score = f"{summary['transfer_score'][k]:.2f} ± {summary['transfer_score_ci95'][k]:.2f}" + \
            ("" if ref == m else f" (vs trained at {ref})")
        lines.append(f"| {m} | {zs['return'][k][0]:.2f} ± {zs['return'][k][1]:.2f} | {rt_ret} | {rnd['return'][k]:.2f} "
                     f"| {score} | {zs['covered'][k][0]:.2f} / {rt_cov} / {rnd['covered'][k]:.2f} "
                     f"| {zs['collisions'][k][0]:.3f} / {rnd['collisions'][k]:.3f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    results.atomic_write_text(root / "results.md", text)
    results.atomic_write_text(root / "results.json", json.dumps(table, indent=1) + "\n")
    results.atomic_write_text(root / "summary.json", json.dumps(summary, indent=1) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    ax = axes[0]
    for n, seeds in table["trained"].items():
        means = [np.mean([s[str(m)]["return"] for s in seeds.values()]) for m in eval_ns]
        ax.plot(eval_ns, means, "o-", label=f"trained at N={n}")
    ax.plot(eval_ns, [summary["random"]["return"][str(m)] for m in eval_ns], "k--", label="random")
    ax.set(xscale="log", xlabel="N at evaluation", ylabel="per-agent return", title="Swarm spread")
    ax.set_xticks(eval_ns, [str(m) for m in eval_ns])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.legend(fontsize=8)
    ax = axes[1]
    s = [summary["transfer_score"][str(m)] for m in eval_ns]
    e = [summary["transfer_score_ci95"][str(m)] for m in eval_ns]
    ax.errorbar(eval_ns, s, yerr=e, fmt="o-", capsize=3)
    ax.axhline(0.8, color="grey", ls=":", label="target 0.8")
    ax.set(xscale="log", xlabel="N at evaluation", ylabel="normalized transfer score",
           title=f"Zero-shot from N={small}")
    ax.set_xticks(eval_ns, [str(m) for m in eval_ns])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(root / "transfer.png", dpi=120)


def main(argv: list[str]) -> None:
    o = parse(argv)
    torch.set_num_threads(int(o["threads"]))
    root = Path(o["results_dir"])
    root.mkdir(parents=True, exist_ok=True)
    runs = train_all(o, root)
    table = evaluate_all(o, runs)
    write_outputs(o, root, table, summarize(o, table))


if __name__ == "__main__":
    main(sys.argv[1:])
