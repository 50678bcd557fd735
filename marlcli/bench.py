"""``make bench``: env throughput and wall-clock time to a return, in one invocation.

Sections (``--sections``, comma separated; results merge into ``results/bench/bench.json``):

- ``env``: native spread env-steps/s vs B and vs N, against mpe2's ``parallel_env``.
- ``backends``: MAPPO and QMIX with their shipped defaults to ``eval/return_mean >= -16`` on spread,
  with the native backend and with the mpe2 backend (same settings; cut off at a time limit).
- ``ttr``: time to return for VDN, QMIX, IQL, MAPPO on spread, several seeds each: wall seconds
  (process start-up included) to reach -12, -10 and -8.5, mean and 95% CI, and learning curves
  against wall time (``time_to_return.png``). Each seed's final actor is also evaluated on one
  shared set of 2,000 episodes (``final_common``): each seed's training evals reuse that seed's own
  episodes, and with 100 of them the draw moved a seed's return by more than the policies differed.
- ``common``: only that shared-set evaluation, for the ``ttr`` runs already on disk.

Every training run is a real ``marl train`` subprocess with the shipped defaults.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

THRESHOLDS = (-12.0, -10.0, -8.5)
# The targets of issue 7, per algorithm: (return, within seconds; None = by the end of the default budget).
TARGETS: dict[str, list[tuple[float, float | None]]] = {
    "vdn": [(-10.0, 60.0), (-8.5, None)], "qmix": [(-10.0, 60.0), (-8.5, None)],
    "iql": [(-11.0, 180.0)], "mappo": [(-12.0, 180.0)],
}


def run_train(out: Path, name: str, overrides: list[str], time_limit: float) -> list[dict[str, Any]]:
    """One ``marl train`` subprocess; returns its eval records (time_s counts from launch)."""
    results_dir = out / "runs"
    cmd = [sys.executable, "-m", "marlcli.cli", "train", f"results_dir={results_dir}", f"run={name}",
           "logger.progress=false", *overrides]
    env = dict(os.environ, MARL_T0=repr(time.time()))
    try:
        subprocess.run(cmd, env=env, timeout=time_limit, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       check=False)
    except subprocess.TimeoutExpired:
        pass  # cut off: metrics.jsonl holds everything up to now
    return read_evals(results_dir, name)


def seed_dirs(results_dir: Path, name: str) -> list[Path]:
    """The seed dirs of run ``name`` under ``results_dir`` (any env and algo)."""
    return sorted(results_dir.glob(f"*/*/{name}/seed_*"))


def read_evals(results_dir: Path, name: str) -> list[dict[str, Any]]:
    """The eval records of run ``name`` under ``results_dir`` (empty if it never started)."""
    files = [d / "metrics.jsonl" for d in seed_dirs(results_dir, name) if (d / "metrics.jsonl").exists()]
    if not files:
        return []
    lines = [json.loads(ln) for ln in files[0].read_text().splitlines() if ln.strip()]
    return [r for r in lines if "eval/return_mean" in r]


def targets_met(algo: str, per_seed: list[list[dict[str, Any]]]) -> dict[str, int]:
    """Per issue-7 target of ``algo``: how many seeds' eval records reached it in time."""
    return {f"{ret} within {'budget' if sec is None else f'{sec:.0f}s'}":
            sum(any(r["eval/return_mean"] >= ret and (sec is None or r["time_s"] <= sec) for r in evals)
                for evals in per_seed)
            for ret, sec in TARGETS.get(algo, [])}


def first_time(evals: list[dict[str, Any]], threshold: float) -> float | None:
    for r in evals:
        if r["eval/return_mean"] >= threshold:
            return float(r["time_s"])
    return None


def mean_ci(xs: list[float]) -> tuple[float, float]:
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return m, 0.0
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))
    return m, 1.96 * sd / math.sqrt(len(xs))


def section_env(out: Path) -> dict[str, Any]:
    from marlcli.bench_envs import env_throughput

    return env_throughput()


def section_backends(out: Path, time_limit: float) -> dict[str, Any]:
    res: dict[str, Any] = {}
    for algo in ("mappo", "qmix"):
        for backend in ("native", "pettingzoo"):
            evals = run_train(out, f"backends-{algo}-{backend}", [f"algo={algo}", "env=spread",
                                                                   f"env.backend={backend}"], time_limit)
            best = max((r["eval/return_mean"] for r in evals), default=None)
            res[f"{algo}.{'mpe2' if backend == 'pettingzoo' else backend}"] = {
                "seconds_to_-16": first_time(evals, -16.0), "best_return": best,
                "steps": evals[-1]["step"] if evals else 0, "time_limit_s": time_limit}
            print(f"  {algo} {backend}: to -16 in {res[f'{algo}.' + ('mpe2' if backend == 'pettingzoo' else backend)]}")
    return res


COMMON_EPISODES, COMMON_SEED = 2000, 7  # the shared evaluation set of every seed's final actor


def common_eval(out: Path, algo: str, seeds: int) -> list[float | None]:
    """Each seed's final checkpoint, decentralized and greedy, on the same 2,000 episodes."""
    from marlcli.cli import evaluate_path
    from marlcli.errors import MarlError

    returns: list[float | None] = []
    for seed in range(seeds):
        dirs = seed_dirs(out / "runs", f"ttr-{algo}-s{seed}")
        try:
            ret = evaluate_path(dirs[0], COMMON_EPISODES, COMMON_SEED, envs=COMMON_EPISODES)[0] if dirs else None
        except MarlError:  # cut off before its first checkpoint
            ret = None
        returns.append(ret["return_mean"] if ret else None)
    return returns


def section_ttr(out: Path, algos: list[str], seeds: int, time_limit: float) -> dict[str, Any]:
    res: dict[str, Any] = {}
    for algo in algos:
        per_seed = []
        for seed in range(seeds):
            evals = run_train(out, f"ttr-{algo}-s{seed}", [f"algo={algo}", "env=spread", f"seed={seed}"],
                              time_limit)
            per_seed.append(evals)
            print(f"  {algo} seed {seed}: " + ", ".join(
                f"{t}: {first_time(evals, t)}" for t in THRESHOLDS) +
                f", final {evals[-1]['eval/return_mean']:.2f}" if evals else "no evals")
        entry: dict[str, Any] = {"seeds": seeds}
        for t in THRESHOLDS:
            times = [first_time(e, t) for e in per_seed]
            reached = [x for x in times if x is not None]
            m, ci = mean_ci(reached) if reached else (None, None)
            entry[str(t)] = {"reached": len(reached), "seconds_mean": m, "seconds_ci95": ci,
                             "seconds": times}
        finals = [e[-1]["eval/return_mean"] for e in per_seed if e]
        bests = [max(r["eval/return_mean"] for r in e) for e in per_seed if e]
        within60 = [max((r["eval/return_mean"] for r in e if r["time_s"] <= 60), default=None) for e in per_seed]
        within180 = [max((r["eval/return_mean"] for r in e if r["time_s"] <= 180), default=None) for e in per_seed]
        entry["targets"] = targets_met(algo, per_seed)
        entry.update({"final_return": finals, "best_return": bests, "best_within_60s": within60,
                      "best_within_180s": within180,
                      "final_time_s": [e[-1]["time_s"] for e in per_seed if e],
                      "final_common": common_eval(out, algo, seeds)})
        res[algo] = entry
    return res


def ttr_curves(out: Path, ttr: dict[str, Any]) -> dict[str, list[list[tuple[float, float]]]]:
    """(wall s, return) per eval, per seed, per algorithm, read back from the runs' metrics."""
    return {algo: [[(r["time_s"], r["eval/return_mean"]) for r in read_evals(out / "runs", f"ttr-{algo}-s{seed}")]
                   for seed in range(e["seeds"])] for algo, e in ttr.items()}


def plot_curves(curves: dict[str, list[list[tuple[float, float]]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (algo, runs) in enumerate(curves.items()):
        color = f"C{i}"
        for k, run in enumerate(runs):
            if run:
                ts, ys = zip(*run, strict=True)
                ax.plot(ts, ys, color=color, alpha=0.8, lw=1.2, label=algo if k == 0 else None)
    for t in THRESHOLDS:
        ax.axhline(t, color="grey", ls=":", lw=0.8)
    ax.axhline(-7.9, color="black", ls="--", lw=0.8, label="oracle -7.9")
    ax.axhline(-26.4, color="red", ls="--", lw=0.8, label="random -26.4")
    ax.set_xlabel("wall time (s, start-up included)")
    ax.set_ylabel("eval/return_mean (spread, N=3)")
    ax.set_title("Time to return on spread, one line per seed")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(bench: dict[str, Any]) -> str:
    lines = ["# marlcli benchmarks", "", f"Machine: {bench.get('machine', '?')}", ""]
    env = bench.get("env_steps_per_s", {}).get("spread")
    if env:
        lines += ["## Env throughput: spread N=3, random actions", "", "| backend | B | env-steps/s |", "|---|---|---|"]
        for b, v in env.get("native", {}).items():
            lines.append(f"| native | {b} | {v:,.0f} |")
        if "mpe2" in env:
            lines.append(f"| mpe2 parallel_env | 1 | {env['mpe2']:,.0f} |")
        lines.append("")
    per_n = bench.get("per_agent_count")
    if per_n:
        lines += ["## Cost per env-step as N grows (µs)", "", "| N | native | mpe2 |", "|---|---|---|"]
        nat, ref = per_n.get("native_us_per_env_step", {}), per_n.get("mpe2_us_per_env_step", {})
        for n in nat:
            lines.append(f"| {n} | {nat[n]:.2f} | {ref.get(n, float('nan')):,.1f} |")
        lines.append("")
    be = bench.get("backends")
    if be:
        lines += ["## Time to -16 on spread, native vs mpe2 backend (shipped defaults)", "",
                  "| algo.backend | seconds to -16 | best return | env steps | limit (s) |", "|---|---|---|---|---|"]
        for k, v in be.items():
            s = f"{v['seconds_to_-16']:.0f}" if v["seconds_to_-16"] is not None else "not reached"
            best = f"{v['best_return']:.2f}" if v["best_return"] is not None else "-"
            lines.append(f"| {k} | {s} | {best} | {v['steps']:,} | {v['time_limit_s']:.0f} |")
        lines.append("")
    ttr = bench.get("time_to_return")
    if ttr:
        lines += ["## Time to return on spread (wall seconds, start-up included; mean ± 95% CI over seeds)", "",
                  "| algo | seeds | to -12 | to -10 | to -8.5 | best ≤ 60 s | best ≤ 180 s | final |"
                  f" final, {COMMON_EPISODES} shared episodes |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for algo, e in ttr.items():
            cells = []
            for t in THRESHOLDS:
                c = e[str(t)]
                if c["reached"] == 0:
                    cells.append("not reached")
                else:
                    cells.append(f"{c['seconds_mean']:.0f} ± {c['seconds_ci95']:.0f} ({c['reached']}/{e['seeds']})")
            fmt = lambda xs: ", ".join("-" if x is None else f"{x:.1f}" for x in xs)  # noqa: E731
            lines.append(f"| {algo} | {e['seeds']} | {' | '.join(cells)} | {fmt(e['best_within_60s'])} | "
                         f"{fmt(e['best_within_180s'])} | {fmt(e['final_return'])} | "
                         f"{fmt(e.get('final_common', []))} |")
        lines += ["", "Targets (issue 7): seeds that reached the return within the time", "",
                  "| algo | target | seeds |", "|---|---|---|"]
        for algo, e in ttr.items():
            for name, met in e.get("targets", {}).items():
                lines.append(f"| {algo} | ≥ {name} | {met}/{e['seeds']} |")
        lines += ["", "![time to return](time_to_return.png)", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m marlcli.bench", description=__doc__.split("\n")[0])
    p.add_argument("--out", default="results/bench", help="output folder")
    p.add_argument("--sections", default="env,backends,ttr", help="env, backends, ttr, common (comma separated)")
    p.add_argument("--algos", default="vdn,qmix,iql,mappo", help="algorithms of the ttr section")
    p.add_argument("--seeds", type=int, default=5, help="seeds per algorithm in the ttr section")
    p.add_argument("--time-limit", type=float, default=360.0, help="seconds before a training run is cut off")
    a = p.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "bench.json"
    bench: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    bench["machine"] = f"{os.cpu_count()} CPU cores, torch {__import__('torch').__version__}"
    sections = set(a.sections.split(","))
    if "env" in sections:
        print("env throughput ...")
        bench.update(section_env(out))
    if "backends" in sections:
        print("native vs mpe2 backend, time to -16 ...")
        bench["backends"] = section_backends(out, a.time_limit)
    if "ttr" in sections:
        print("time to return ...")
        # merged per algorithm, so `--algos iql` re-measures one without dropping the others
        bench["time_to_return"] = {**bench.get("time_to_return", {}),
                                   **section_ttr(out, a.algos.split(","), a.seeds, a.time_limit)}
        plot_curves(ttr_curves(out, bench["time_to_return"]), out / "time_to_return.png")
    if "common" in sections and "ttr" not in sections:
        print(f"final actors on {COMMON_EPISODES} shared episodes ...")
        for algo, e in bench.get("time_to_return", {}).items():
            e["final_common"] = common_eval(out, algo, int(e["seeds"]))
    path.write_text(json.dumps(bench, indent=2) + "\n")
    (out / "bench.md").write_text(markdown(bench))
    print(markdown(bench))
    print(f"saved {path} and {out / 'bench.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
