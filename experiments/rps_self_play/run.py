"""Rock-paper-scissors: self-play against the latest self vs against a pool of past selves.

    python experiments/rps_self_play/run.py [results_dir=results/experiments/rps_self_play] [seeds=5]
                                            [steps=600000] [out=experiments/rps_self_play]

Trains IPPO on the native ``env=rps`` with ``selfplay=latest`` and ``selfplay=pool`` (every
snapshot kept: ``selfplay.pool_size=1000``) through ``marl train`` itself, ``seeds`` seeds each,
then reads each seed's ``metrics.jsonl``: the exact exploitability of the latest policy
(``matrix/exploitability``) and of the time-averaged policy (``matrix/exploitability_avg``),
logged after every update, and the action distribution over training. Writes into ``out``:
``summary.json`` (final exploitabilities per variant, mean and 95% t-interval over seeds, and
per seed), ``table.md``, ``rps_self_play.png`` (action probabilities over training of seed 0
per variant, and both exploitabilities, mean over seeds).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from marlcli.cliutil import experiment_options
from marlcli.stats import t_interval

HERE = Path(__file__).resolve().parent
VARIANTS = ("latest", "pool")
COMMON = ["env=rps", "env.backend=native", "env.num_envs=64", "algo=ippo", "algo.lr_schedule=constant",
          "algo.lr=0.001", "algo.ent_coef=0.2", "selfplay.snapshot_interval=16000", "selfplay.pool_size=1000",
          "device=cpu", "logger.progress=false", "train.log_interval=16000", "train.eval_interval=100000000",
          "train.checkpoint_interval=100000000", "train.eval_episodes=100", "train.eval_envs=100"]


def parse(args: list[str]) -> dict[str, str]:
    opts = {"results_dir": "results/experiments/rps_self_play", "seeds": "5", "steps": "600000", "out": str(HERE)}
    return experiment_options(args, opts, Path(sys.argv[0]).name)


def train(variant: str, seed: int, opts: dict[str, str]) -> Path:
    sdir = Path(opts["results_dir"]) / "rps" / "ippo" / variant / f"seed_{seed}"
    if (sdir / "done").exists():
        return sdir
    cmd = [sys.executable, "-m", "marlcli.cli", "train", f"selfplay={variant}", f"seed={seed}", f"run={variant}",
           f"results_dir={opts['results_dir']}", f"train.total_steps={opts['steps']}", "resume=auto", *COMMON]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    return sdir


def curves(sdir: Path) -> dict[str, np.ndarray]:
    rows = [json.loads(x) for x in (sdir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    rows = [r for r in rows if "matrix/exploitability" in r]
    out = {"step": np.array([r["step"] for r in rows]),
           "latest": np.array([r["matrix/exploitability"] for r in rows]),
           "avg": np.array([r["matrix/exploitability_avg"] for r in rows]),
           "policy": np.array([[r[f"matrix/policy/player_0/{a}"] for a in range(3)] for r in rows])}
    return out


def ci(values: list[float]) -> list[float]:
    return t_interval(values)


def argmax_switches(policy: np.ndarray) -> int:
    """How often the most likely action changes over training (cycling shows as many switches)."""
    top = policy.argmax(1)
    return int((top[1:] != top[:-1]).sum())


def main(args: list[str]) -> None:
    opts = parse(args)
    seeds = range(int(opts["seeds"]))
    out = Path(opts["out"])
    t0 = time.time()
    data: dict[str, list[dict[str, np.ndarray]]] = {}
    for v in VARIANTS:
        data[v] = []
        for s in seeds:
            data[v].append(curves(train(v, s, opts)))
            print(f"{v} seed {s}: done ({time.time() - t0:.0f}s)", flush=True)
    summary: dict[str, Any] = {"steps": int(opts["steps"]), "seeds": len(seeds), "config": COMMON, "variants": {}}
    for v in VARIANTS:
        fin_avg = [float(c["avg"][-1]) for c in data[v]]
        fin_latest = [float(c["latest"][-1]) for c in data[v]]
        # the latest policy over the second half of training: does it stay exploitable?
        late = [float(c["latest"][len(c["latest"]) // 2:].mean()) for c in data[v]]
        summary["variants"][v] = {
            "exploitability": {"time_averaged": float(np.mean(fin_avg)), "latest": float(np.mean(fin_latest))},
            "exploitability_ci95": {"time_averaged": ci(fin_avg), "latest": ci(fin_latest)},
            "latest_second_half_mean": float(np.mean(late)),
            "argmax_switches": [argmax_switches(c["policy"]) for c in data[v]],
            "per_seed": {"time_averaged": fin_avg, "latest": fin_latest},
        }
    # the headline figures in one place for scripts: {"pool": {"time_averaged": ., "latest": .}, "latest": {...}}
    summary["exploitability"] = {v: summary["variants"][v]["exploitability"] for v in VARIANTS}
    summary["wall_s"] = round(time.time() - t0, 1)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = ["| variant | exploitability, time-averaged policy (95% CI) | latest policy (95% CI) | "
             "latest, mean over 2nd half | argmax switches per seed |", "|---|---|---|---|---|"]
    for v in VARIANTS:
        s = summary["variants"][v]
        e, c = s["exploitability"], s["exploitability_ci95"]
        lines.append(f"| {v} | {e['time_averaged']:.3f} [{c['time_averaged'][0]:.3f}, {c['time_averaged'][1]:.3f}] | "
                     f"{e['latest']:.3f} [{c['latest'][0]:.3f}, {c['latest'][1]:.3f}] | "
                     f"{s['latest_second_half_mean']:.3f} | {s['argmax_switches']} |")
    table = "\n".join(lines) + "\n"
    (out / "table.md").write_text(table)
    print(table)
    plot(data, out / "rps_self_play.png")


def plot(data: dict[str, list[dict[str, np.ndarray]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, v in zip(axes[:2], VARIANTS, strict=True):
        c = data[v][0]
        for a, name in enumerate(("rock", "paper", "scissors")):
            ax.plot(c["step"], c["policy"][:, a], label=name)
        ax.set_title(f"selfplay={v}: latest policy, seed 0")
        ax.set_xlabel("env steps")
        ax.set_ylabel("action probability")
        ax.set_ylim(0, 1)
        ax.legend()
    ax = axes[2]
    for v, color in zip(VARIANTS, ("tab:red", "tab:blue"), strict=True):
        n = min(len(c["step"]) for c in data[v])
        step = data[v][0]["step"][:n]
        for key, style in (("latest", "-"), ("avg", "--")):
            m = np.mean([c[key][:n] for c in data[v]], 0)
            ax.plot(step, m, style, color=color, label=f"{v}: {'latest' if key == 'latest' else 'time-averaged'}")
    ax.axhline(0.05, color="gray", lw=0.8, ls=":")
    ax.set_title(f"exploitability (mean over {len(data[VARIANTS[0]])} seeds)")
    ax.set_xlabel("env steps")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1:])
