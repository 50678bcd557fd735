"""Throughput of data-parallel training (issue 21): 1 process x T threads vs K processes x T/K threads.

``python -m marlcli.bench.dist`` (``make bench-dist``) trains MAPPO and VDN on spread with their
shipped defaults for a short budget, once per layout, through ``marl train`` itself (so process
start, rendezvous and the gradient all-reduce are all counted), and writes one JSON record per
run: env steps/s over all ranks and learner updates/s (optimizer steps, read from the final
checkpoint's Adam state), both over the training loop's time (``time_s`` of the last log line),
plus the wall time of the whole command and the final evaluation return.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

LAYOUTS = ((1, 2), (2, 1), (1, 1))  # (processes, threads per process); 1 x 1 is the reference
BUDGETS = {"mappo": 256_000, "vdn": 64_000}  # env steps: 20 MAPPO updates (512 x 25 each), 40 VDN rollouts


def run_one(algo: str, steps: int, procs: int, threads: int, seed: int, root: Path) -> dict[str, Any]:
    run = f"{algo}_{procs}x{threads}_s{seed}_{int(time.time())}"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "WANDB_MODE": "disabled"}
    cmd = [sys.executable, "-c", "from marlcli.cli import entry; entry()", "train", f"algo={algo}", "env=spread",
           f"seed={seed}", f"train.total_steps={steps}", f"train.log_interval={steps // 8}",
           "train.eval_interval=1000000000", "train.checkpoint_interval=1000000000", "train.eval_episodes=500",
           "train.eval_envs=500", f"dist.nproc_per_node={procs}", "device=cpu", "logger.progress=false",
           f"results_dir={root}", f"run={run}"]
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    seed_dir = root / "spread" / algo / run / f"seed_{seed}"
    lines = [json.loads(x) for x in (seed_dir / "metrics.jsonl").read_text().splitlines()]
    logs = [x for x in lines if "time/sps" in x]
    evals = [x for x in lines if "eval/return_mean" in x]
    learner = torch.load(seed_dir / "checkpoints" / "latest.pt", weights_only=True)["learner"]
    updates = int(next(iter(learner["optim"]["state"].values()))["step"])
    loop_s = float(logs[-1]["time_s"])
    return {"algo": algo, "processes": procs, "threads_per_process": threads, "seed": seed,
            "env_steps": int(logs[-1]["step"]), "updates": updates, "loop_s": round(loop_s, 2),
            "env_steps_per_s": round(logs[-1]["step"] / loop_s, 1), "updates_per_s": round(updates / loop_s, 2),
            "command_wall_s": round(wall, 2), "load_avg_1min_before": round(load, 2),
            "final_eval_return": round(float(evals[-1]["eval/return_mean"]), 3)}


def table(records: list[dict[str, Any]]) -> str:
    """Markdown: one row per algo x layout, each round's figure listed (no averaging hides the drift)."""
    rows = ["| algo | processes x threads | env steps/s | updates/s | load avg before | final return (500 ep.) |",
            "|---|---|---|---|---|---|"]
    keys = sorted({(r["algo"], r["processes"], r["threads_per_process"]) for r in records},
                  key=lambda k: (k[0], -k[1], -k[2]))
    for algo, procs, threads in keys:
        rs = [r for r in records if (r["algo"], r["processes"], r["threads_per_process"]) == (algo, procs, threads)]

        def cell(key: str, fmt: str, rs: list[dict[str, Any]] = rs) -> str:
            return ", ".join(format(r[key], fmt) for r in rs)

        rows.append(f"| {algo} | {procs} x {threads} | {cell('env_steps_per_s', ',.0f')} | {cell('updates_per_s', '.2f')} "
                    f"| {cell('load_avg_1min_before', '.1f')} | {cell('final_eval_return', '.2f')} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="docs/bench_dist.json", help="JSON file to write")
    p.add_argument("--root", default="results/bench_dist", help="results_dir of the benchmark runs")
    p.add_argument("--algos", default="mappo,vdn")
    p.add_argument("--seeds", default="0", help="comma-separated seeds")
    p.add_argument("--scale", type=float, default=1.0, help="multiply the step budgets")
    p.add_argument("--layouts", default=",".join(f"{p}x{t}" for p, t in LAYOUTS),
                   help="PROCESSESxTHREADS, comma-separated")
    p.add_argument("--repeats", type=int, default=1, help="rounds over the layouts (every other round reversed)")
    a = p.parse_args(argv)
    layouts = [tuple(int(x) for x in lay.split("x")) for lay in a.layouts.split(",")]
    records = []
    for algo in a.algos.split(","):
        for seed in (int(s) for s in a.seeds.split(",")):
            for rep in range(a.repeats):
                for procs, threads in layouts[::-1] if rep % 2 else layouts:
                    rec = run_one(algo, int(BUDGETS[algo] * a.scale), procs, threads, seed, Path(a.root))
                    print(json.dumps({**rec, "round": rep}), flush=True)
                    records.append({**rec, "round": rep})
    meta = {"machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}",
            "gpu": "not measured (no GPU lent to this task)", "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "note": "one run at a time; the VM's 2 cores were shared with other work (see load_avg_1min_before), "
                    "so figures drift between runs"}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"meta": meta, "runs": records}, indent=1) + "\n")
    print(table(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
