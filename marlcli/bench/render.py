"""Rendering of ``bench.json``: the markdown tables, the time-to-return plot, and publishing into docs/.

Every table is drawn from ``bench.json`` alone (never from the runs), so ``bench.md`` can be
re-rendered from a file measured elsewhere; a section absent from the file is simply left out.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from marlcli.bench.ttr import COMMON_EPISODES, THRESHOLDS, TUNING_EVAL_SEED, seed_list

BEGIN, END = "<!-- make bench: begin (generated from bench.json) -->", "<!-- make bench: end -->"


def _env(bench: dict[str, Any]) -> list[str]:
    env = bench.get("env_steps_per_s", {}).get("spread")
    if not env:
        return []
    lines = ["## Env throughput: spread N=3, random actions", "", "| backend | B | env-steps/s |", "|---|---|---|"]
    for b, v in env.get("native", {}).items():
        lines.append(f"| native | {b} | {v:,.0f} |")
    if "mpe2" in env:
        lines.append(f"| mpe2 parallel_env | 1 | {env['mpe2']:,.0f} |")
    return [*lines, ""]


def _vmas(bench: dict[str, Any]) -> list[str]:
    vm = bench.get("vmas_throughput")
    if not vm:
        return []
    load = vm.get("load_avg_1min")
    lines = [f"## VMAS vs native spread: env-steps/s, random actions (N=3, {vm.get('device', 'cpu')})", "",
             f"Through marlcli's adapter; at each B the three are timed in turn, best of {vm['repeats']}; "
             f"clock: {vm.get('clock', 'wall')}"
             + (f" (load average {load} when measured)" if load is not None else "") + ".", "",
             "| B | native spread | VMAS simple_spread | VMAS navigation (continuous, lidar) | native / VMAS spread |",
             "|---|---|---|---|---|"]
    for b, v in vm["env_steps_per_s"].items():
        lines.append(f"| {b} | {v['native_spread']:,.0f} | {v['vmas_simple_spread']:,.0f} | "
                     f"{v['vmas_navigation']:,.0f} | {v['native_spread'] / v['vmas_simple_spread']:.0f}x |")
    return [*lines, ""]


def _per_agent_count(bench: dict[str, Any]) -> list[str]:
    per_n = bench.get("per_agent_count")
    if not per_n:
        return []
    lines = ["## Cost per env-step as N grows (µs)", "", "| N | native | mpe2 |", "|---|---|---|"]
    nat, ref = per_n.get("native_us_per_env_step", {}), per_n.get("mpe2_us_per_env_step", {})
    for n in nat:
        lines.append(f"| {n} | {nat[n]:.2f} | {ref.get(n, float('nan')):,.1f} |")
    return [*lines, ""]


def _swarm(bench: dict[str, Any]) -> list[str]:
    sw = bench.get("swarm_scaling")
    if not sw:
        return []
    ns = list(next(iter(sw["us_per_env_step"].values())))
    lines = ["## Swarm spread: MAPPO training cost as N grows (µs per env-step; per agent-step in brackets)", "",
             f"{sw['num_envs']} env copies, {sw['updates']} updates per N, {sw['torch_threads']} torch thread(s); "
             "3 nearest agents and landmarks observed, `sharing.agent_id=false`, `critic=set`.", "",
             "| actor | " + " | ".join(f"N={n}" for n in ns) + " |", "|---|" + "---|" * len(ns)]
    for actor, per in sw["us_per_env_step"].items():
        lines.append(f"| {actor} | " + " | ".join(
            f"{per[n]:,.0f} ({sw['us_per_agent_step'][actor][n]:,.0f})" for n in ns) + " |")
    return [*lines, ""]


def _channel(bench: dict[str, Any]) -> list[str]:
    cc = bench.get("channel_cost")
    if not cc:
        return []
    lines = [f"## Cost of a message channel at N = {cc['N']} (issue 19)", "",
             f"Actor forward per env-step ({cc['copies']} spread copies, fastest of interleaved rounds) and the "
             f"whole MAPPO training loop per env-step on swarm spread; {cc['torch_threads']} torch thread(s).", "",
             "| comm | actor forward (ms) | x plain | training loop (µs/env-step) | x plain |", "|---|---|---|---|---|"]
    for c, ms in cc["act_ms"].items():
        ar, tr = cc["act_ratio"].get(c, 1.0), cc["train_ratio"].get(c, 1.0)
        lines.append(f"| {c} | {ms:.2f} | {ar:.2f} | {cc['train_us_per_env_step'][c]:,.0f} | {tr:.2f} |")
    return [*lines, ""]


def _backends(bench: dict[str, Any]) -> list[str]:
    be = bench.get("backends")
    if not be:
        return []
    lines = ["## Time to -16 on spread, native vs mpe2 backend (shipped defaults)", "",
             "| algo.backend | seed | seconds to -16 | best return | env steps | limit (s) |",
             "|---|---|---|---|---|---|"]
    for k, v in be.items():
        s = f"{v['seconds_to_-16']:.0f}" if v["seconds_to_-16"] is not None else "not reached"
        best = f"{v['best_return']:.2f}" if v["best_return"] is not None else "-"
        lines.append(f"| {k} | {v.get('seed', 0)} | {s} | {best} | {v['steps']:,} | {v['time_limit_s']:.0f} |")
    return [*lines, ""]


def _oracle(bench: dict[str, Any]) -> list[str]:
    oracle = bench.get("oracle")
    if not oracle:
        return []
    return ["## Scripted assignment controller on spread (`marlcli/bench/oracle.py`)", "",
            f"Coasting horizon {oracle['horizon']}, chosen on the {oracle['episodes']:,} episodes of evaluation "
            f"seed {oracle['tune_seed']}; reported on those of evaluation seed {oracle['eval_seed']}.", "",
            "| return_mean | ± 95% CI | landmarks covered | collisions per episode |", "|---|---|---|---|",
            f"| {oracle['return_mean']:.2f} | {oracle['return_ci95']:.2f} | {oracle['landmarks_covered']:.2f} "
            f"| {oracle['collisions']:.2f} |", ""]


def _seed_text(seeds: list[int]) -> str:
    contiguous = seeds == list(range(seeds[0], seeds[-1] + 1)) and len(seeds) > 2
    return f"{seeds[0]}–{seeds[-1]}" if contiguous else ", ".join(map(str, seeds))


def _returns(xs: list[float | None]) -> str:
    return ", ".join("-" if x is None else f"{x:.1f}" for x in xs)


def _time_to_return(bench: dict[str, Any]) -> list[str]:
    ttr = bench.get("time_to_return")
    if not ttr:
        return []
    held = {e.get("eval_seed", TUNING_EVAL_SEED) for e in ttr.values()}  # files before issue 16: seed 7
    one = len(held) == 1
    lines = ["## Time to return on spread (wall seconds, start-up included; mean ± 95% CI over seeds)", "",
             "| algo | seeds | to -12 | to -10 | to -8.5 | best ≤ 60 s | best ≤ 180 s | final |"
             f" final, {COMMON_EPISODES} episodes of "
             + (f"evaluation seed {held.pop()} |" if one else "the evaluation seed in brackets |"),
             "|---|---|---|---|---|---|---|---|---|"]
    for algo, e in ttr.items():
        n = len(seed_list(e["seeds"]))
        cells = []
        for t in THRESHOLDS:
            c = e[str(t)]
            if c["reached"] == 0:
                cells.append("not reached")
            else:
                cells.append(f"{c['seconds_mean']:.0f} ± {c['seconds_ci95']:.0f} ({c['reached']}/{n})")
        lines.append(f"| {algo} | {_seed_text(seed_list(e['seeds']))} | {' | '.join(cells)} | "
                     f"{_returns(e['best_within_60s'])} | {_returns(e['best_within_180s'])} | "
                     f"{_returns(e['final_return'])} | {_returns(e.get('final_common', []))}"
                     + ("" if one else f" ({e.get('eval_seed', TUNING_EVAL_SEED)})") + " |")
    cut = [f"{algo} seed {seed}" for algo, e in ttr.items()
           for seed, done in zip(seed_list(e["seeds"]), e.get("finished", []), strict=False) if not done]
    if cut:
        lines += ["", f"Cut off at the time limit before the end of the budget: {', '.join(cut)}."]
    lines += ["", "Targets (issue 7): seeds that reached the return within the time", "",
              "| algo | target | seeds |", "|---|---|---|"]
    for algo, e in ttr.items():
        for name, met in e.get("targets", {}).items():
            lines.append(f"| {algo} | ≥ {name} | {met}/{len(seed_list(e['seeds']))} |")
    return [*lines, "", "![time to return](time_to_return.png)", ""]


# One renderer per bench.json key, in the order of the page.
TABLES: tuple[Callable[[dict[str, Any]], list[str]], ...] = (
    _env, _vmas, _per_agent_count, _swarm, _channel, _backends, _oracle, _time_to_return)


def markdown(bench: dict[str, Any], title: bool = True) -> str:
    """The tables of every section present in ``bench`` (``title``: with the page's ``#`` heading)."""
    lines = ["# marlcli benchmarks", ""] if title else []
    lines += [f"Machine: {bench.get('machine', '?')}", ""]
    for table in TABLES:
        lines += table(bench)
    return "\n".join(lines)


def plot_curves(curves: dict[str, list[list[tuple[float, float]]]], path: Path, oracle: float | None = None) -> None:
    """``time_to_return.png``: one line per seed, coloured per algorithm, with the thresholds and references."""
    import matplotlib  # deferred: heavy, and only the plot needs it (the Agg backend must be chosen before pyplot)

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
    if oracle is not None:
        ax.axhline(oracle, color="black", ls="--", lw=0.8, label=f"scripted oracle {oracle:.1f}")
    ax.axhline(-26.4, color="red", ls="--", lw=0.8, label="random -26.4")
    ax.set_xlabel("wall time (s, start-up included)")
    ax.set_ylabel("eval/return_mean (spread, N=3)")
    ax.set_title("Time to return on spread, one line per seed")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def publish(out: Path, bench: dict[str, Any], dest: Path) -> None:
    """Copy bench.json and the plot into ``dest`` and put the tables between the markers of its bench.md.

    Text outside the markers (the protocol, the history) is kept; without markers the tables
    are appended.
    """
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "bench.json").write_text(json.dumps(bench, indent=2) + "\n")
    if (out / "time_to_return.png").exists() and (out / "time_to_return.png").resolve() != (
            dest / "time_to_return.png").resolve():
        shutil.copyfile(out / "time_to_return.png", dest / "time_to_return.png")
    md = dest / "bench.md"
    text = md.read_text() if md.exists() else "# marlcli benchmarks\n\n"
    tables = "\n".join("#" + ln if ln.startswith("## ") else ln for ln in markdown(bench, title=False).splitlines())
    block = f"{BEGIN}\n{tables}\n{END}"  # one level below the page's "## Current tables"
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + block + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    md.write_text(text)
