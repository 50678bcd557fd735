"""``make bench``: env throughput and wall-clock time to a return, in one invocation.

Sections (``--sections``, comma separated; results merge into ``<out>/bench.json``):

- ``env``: native spread env-steps/s vs B and vs N, against mpe2's ``parallel_env`` (``marlcli/bench/envs.py``).
- ``vmas``: VMAS simple_spread and navigation against native spread, interleaved (``marlcli/bench/envs.py``).
- ``backends``: MAPPO and QMIX with their shipped defaults to ``eval/return_mean >= -16`` on spread,
  with the native backend and with the mpe2 backend (same settings; cut off at a time limit;
  ``marlcli/bench/backends.py``).
- ``ttr``: time to return for VDN, QMIX, IQL, MAPPO on spread, several seeds each: wall seconds
  (process start-up included) to reach -12, -10 and -8.5, mean and 95% CI, and learning curves
  against wall time (``time_to_return.png``). Each seed's final actor is also evaluated on one
  held-out set of 2,000 episodes (``final_common``, ``--eval-seed``; ``marlcli/bench/ttr.py``).
- ``common``: only that held-out evaluation, for the ``ttr`` runs already on disk.
- ``swarm``: MAPPO training cost per env-step on swarm spread at N = 3, 10, 30, 100
  (``marlcli/bench/swarm.py``; issue 17: linear in N with neighbour-limited observations).
- ``comm``: the cost of a message channel (commnet, tarmac) against none at N = 10: actor forward and
  training loop per env-step (``marlcli/bench/swarm.py``, issue 19).
- ``oracle``: the scripted assignment controller (``marlcli/bench/oracle.py``) on the same
  held-out episodes, its one parameter tuned on a separate tuning set.

Held out: the defaults were tuned on training seeds 0-4 (whose training evaluations use env
seeds ``seed + EVAL_SEED_OFFSET``) and on the 2,000 episodes of evaluation seed 7. The bench
reports training seeds 100-104 (so their training evaluations are new episodes too) and
evaluates the final actors on evaluation seed 9000, never looked at while tuning.

Every training run is a real ``marl train`` subprocess with the shipped defaults, in a freshly
emptied run dir. A run that exits non-zero, or leaves no evaluation record, stops the bench
with its last stderr lines and exit code 1; nothing is written then (``marlcli/bench/runs.py``).
The tables and the plot are drawn from bench.json by ``marlcli/bench/render.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

from marlcli.bench.backends import section_backends
from marlcli.bench.envs import env_throughput, vmas_throughput
from marlcli.bench.oracle import oracle_study
from marlcli.bench.render import markdown, plot_curves, publish
from marlcli.bench.runs import RunFailed
from marlcli.bench.swarm import channel_cost, swarm_scaling
from marlcli.bench.ttr import COMMON_EPISODES, EVAL_SEED, SEEDS, TUNING_EVAL_SEED, section_common, section_ttr, ttr_curves


def parse_seeds(text: str) -> list[int]:
    """``"100-104"`` or ``"100,102,7"`` (ranges and single seeds, comma separated) -> seeds."""
    seeds: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        seeds += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
    return seeds


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m marlcli.bench", description=__doc__.split("\n")[0])
    p.add_argument("--out", default="results/bench", help="output folder (runs/, logs/, bench.json, bench.md)")
    p.add_argument("--sections", default="env,vmas,backends,oracle,ttr",
                   help="env, vmas, swarm, comm, backends, oracle, ttr, common (comma separated)")
    p.add_argument("--algos", default="vdn,qmix,iql,mappo", help="algorithms of the ttr section")
    p.add_argument("--seeds", default=SEEDS, help="training seeds, e.g. 100-104 or 100,101 (tuning used 0-4)")
    p.add_argument("--eval-seed", type=int, default=EVAL_SEED,
                   help=f"evaluation seed of the {COMMON_EPISODES} held-out episodes (tuning looked at "
                        f"{TUNING_EVAL_SEED})")
    p.add_argument("--time-limit", type=float, default=360.0, help="seconds before a training run is cut off")
    p.add_argument("--jobs", type=int, default=1,
                   help="training runs at a time (1: each run gets every core; more: one thread share each)")
    p.add_argument("--publish", default=None, metavar="DIR",
                   help="also write bench.json, the plot and the tables of DIR/bench.md (e.g. docs)")
    return p


def run_sections(bench: dict[str, Any], sections: set[str], out: Path, a: argparse.Namespace) -> None:
    """Measure the chosen sections into ``bench``, in a fixed order (raises ``RunFailed``)."""
    seeds = parse_seeds(a.seeds)
    if "env" in sections:
        print("env throughput ...")
        bench.update(env_throughput())
    if "swarm" in sections:
        print("swarm spread: training cost per env-step vs N ...")
        bench["swarm_scaling"] = swarm_scaling()
    if "comm" in sections:
        print("cost of a message channel at N = 10 ...")
        bench["channel_cost"] = channel_cost()
    if "vmas" in sections:
        print("VMAS vs native spread throughput ...")
        bench["vmas_throughput"] = vmas_throughput()
    if "backends" in sections:
        print("native vs mpe2 backend, time to -16 ...")
        bench["backends"] = section_backends(out, a.time_limit, seeds[0], a.jobs)
    if "oracle" in sections:
        print(f"scripted oracle on {COMMON_EPISODES} episodes of evaluation seed {a.eval_seed} ...")
        bench["oracle"] = oracle_study(COMMON_EPISODES, a.eval_seed)
    if "ttr" in sections:
        print(f"time to return, seeds {a.seeds} ...")
        # merged per algorithm, so `--algos iql` re-measures one without dropping the others
        bench["time_to_return"] = {**bench.get("time_to_return", {}),
                                   **section_ttr(out, a.algos.split(","), seeds, a.time_limit, a.eval_seed, a.jobs)}
    if "common" in sections and "ttr" not in sections:
        print(f"final actors on {COMMON_EPISODES} episodes of evaluation seed {a.eval_seed} ...")
        section_common(out, bench.get("time_to_return", {}), a.eval_seed)


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "bench.json"
    bench: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    bench["machine"] = f"{os.cpu_count()} CPU cores, torch {torch.__version__}"
    sections = set(a.sections.split(","))
    try:
        run_sections(bench, sections, out, a)
    except RunFailed as exc:
        print(f"make bench: {exc}", file=sys.stderr)
        print("make bench: stopped; bench.json and bench.md were not written", file=sys.stderr)
        return 1
    if "time_to_return" in bench and sections & {"ttr", "oracle"}:
        plot_curves(ttr_curves(out, bench["time_to_return"]), out / "time_to_return.png",
                    bench.get("oracle", {}).get("return_mean"))
    path.write_text(json.dumps(bench, indent=2) + "\n")
    (out / "bench.md").write_text(markdown(bench))
    if a.publish:
        publish(out, bench, Path(a.publish))
    print(markdown(bench))
    print(f"saved {path} and {out / 'bench.md'}" + (f"; published to {a.publish}/" if a.publish else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
