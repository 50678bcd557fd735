"""Iterated prisoner's dilemma: two independent learners, cooperation rate over training.

    python experiments/iterated_prisoners/run.py [results_dir=results/experiments/iterated_prisoners]
                                                 [seeds=3] [steps=100000] [out=experiments/iterated_prisoners]

Trains IPPO with one network per agent (``sharing=none``, independent critics, no self-play)
on the native ``env=prisoners`` (10 rounds, each agent observes the last joint action) through
``marl train``, ``seeds`` seeds. The cooperation rate is read from ``metrics.jsonl``:
``matrix/action_rate/<agent>/0``, the exact expected fraction of rounds in which the agent
cooperates under the current policies (computed from the policy tables, not sampled), logged
after every update, with the exact exploitability of the joint policy. Writes ``summary.json``,
``table.md`` and ``iterated_prisoners.png`` into ``out``.
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

HERE = Path(__file__).resolve().parent
COMMON = ["env=prisoners", "env.backend=native", "env.num_envs=64", "algo=ippo", "sharing=none",
          "algo.lr_schedule=constant", "algo.lr=0.001", "algo.rollout_steps=10", "device=cpu", "logger.progress=false",
          "train.log_interval=2560", "train.eval_interval=100000000", "train.checkpoint_interval=100000000",
          "train.eval_episodes=100", "train.eval_envs=100"]
AGENTS = ("player_0", "player_1")


def parse(args: list[str]) -> dict[str, str]:
    opts = {"results_dir": "results/experiments/iterated_prisoners", "seeds": "3", "steps": "100000",
            "out": str(HERE)}
    return experiment_options(args, opts, Path(sys.argv[0]).name)


def train(seed: int, opts: dict[str, str]) -> Path:
    sdir = Path(opts["results_dir"]) / "prisoners" / "ippo" / "ipd" / f"seed_{seed}"
    if not (sdir / "done").exists():
        cmd = [sys.executable, "-m", "marlcli.cli", "train", f"seed={seed}", "run=ipd", "resume=auto",
               f"results_dir={opts['results_dir']}", f"train.total_steps={opts['steps']}", *COMMON]
        subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL)
    return sdir


def curves(sdir: Path) -> dict[str, np.ndarray]:
    rows = [json.loads(x) for x in (sdir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    rows = [r for r in rows if "matrix/exploitability" in r]
    return {"step": np.array([r["step"] for r in rows]),
            "coop": np.array([[r[f"matrix/action_rate/{a}/0"] for a in AGENTS] for r in rows]),
            "expl": np.array([r["matrix/exploitability"] for r in rows]),
            "ret": np.array([r.get("train/return_mean", np.nan) for r in rows])}


def main(args: list[str]) -> None:
    opts = parse(args)
    t0 = time.time()
    data = []
    for s in range(int(opts["seeds"])):
        data.append(curves(train(s, opts)))
        print(f"seed {s}: done ({time.time() - t0:.0f}s)", flush=True)
    final = [float(c["coop"][-1].mean()) for c in data]
    summary: dict[str, Any] = {
        "steps": int(opts["steps"]), "seeds": len(data), "config": COMMON,
        "final_cooperation_rate": {"mean": float(np.mean(final)), "per_seed": final},
        "final_cooperation_rate_per_agent": [c["coop"][-1].tolist() for c in data],
        "peak_cooperation_rate_per_seed": [float(c["coop"].mean(1).max()) for c in data],
        "final_exploitability_per_seed": [float(c["expl"][-1]) for c in data],
        "final_train_return_per_seed": [float(c["ret"][-1]) for c in data],
        "wall_s": round(time.time() - t0, 1),
    }
    out = Path(opts["out"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = ["| seed | cooperation rate at the end (player_0, player_1) | peak (mean of both) | exploitability at the end "
             "| training return per round |", "|---|---|---|---|---|"]
    for s, c in enumerate(data):
        lines.append(f"| {s} | {c['coop'][-1][0]:.3f}, {c['coop'][-1][1]:.3f} | {c['coop'].mean(1).max():.3f} | "
                     f"{c['expl'][-1]:.2f} | {c['ret'][-1] / 10:.2f} |")
    table = "\n".join(lines) + "\n"
    (out / "table.md").write_text(table)
    print(table)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for s, c in enumerate(data):
        ax.plot(c["step"], c["coop"].mean(1), label=f"seed {s}")
    ax.set_xlabel("env steps")
    ax.set_ylabel("cooperation rate (exact, both agents)")
    ax.set_ylim(0, 1)
    ax.set_title("Iterated prisoner's dilemma, independent IPPO learners")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "iterated_prisoners.png", dpi=110)


if __name__ == "__main__":
    main(sys.argv[1:])
