"""The ``ttr`` and ``common`` sections: wall-clock time to a return on spread, and the held-out evaluation.

``ttr`` trains VDN, QMIX, IQL and MAPPO with their shipped defaults, several seeds each, and
reports the wall seconds (process start-up included) to reach -12, -10 and -8.5 (mean and 95% CI
over the seeds that reached it), the issue-7 targets met, and the best and final returns. Each
seed's final actor is also scored, decentralized and greedy, on one held-out set of
``COMMON_EPISODES`` episodes (``final_common``); ``common`` redoes only that for runs on disk.

Held out: the defaults were tuned on training seeds 0-4 and on evaluation seed ``TUNING_EVAL_SEED``;
the bench reports training seeds ``SEEDS`` and evaluation seed ``EVAL_SEED``, never looked at while
tuning.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from marlcli.bench.runs import first_time, read_evals, run_many, seed_dirs
from marlcli.errors import MarlError
from marlcli.evaluate import evaluate_path
from marlcli.stats import ci95

THRESHOLDS = (-12.0, -10.0, -8.5)
# The targets of issue 7, per algorithm: (return, within seconds; None = by the end of the default budget).
TARGETS: dict[str, list[tuple[float, float | None]]] = {
    "vdn": [(-10.0, 60.0), (-8.5, None)], "qmix": [(-10.0, 60.0), (-8.5, None)],
    "iql": [(-11.0, 180.0)], "mappo": [(-12.0, 180.0)],
}
SEEDS = "100-104"  # training seeds of the report; the defaults were tuned on 0-4
COMMON_EPISODES, EVAL_SEED = 2000, 9000  # the held-out evaluation set of every seed's final actor
TUNING_EVAL_SEED = 7  # the shared set the tuning looked at (docs/tuning.md): never report on it


def seed_list(seeds: int | list[int]) -> list[int]:
    """Seeds of a ``time_to_return`` entry; files written before issue 16 hold a count (seeds 0..k-1)."""
    return list(range(seeds)) if isinstance(seeds, int) else [int(x) for x in seeds]


def targets_met(algo: str, per_seed: list[list[dict[str, Any]]]) -> dict[str, int]:
    """Per issue-7 target of ``algo``: how many seeds' eval records reached it in time."""
    return {f"{ret} within {'budget' if sec is None else f'{sec:.0f}s'}":
            sum(any(r["eval/return_mean"] >= ret and (sec is None or r["time_s"] <= sec) for r in evals)
                for evals in per_seed)
            for ret, sec in TARGETS.get(algo, [])}


def mean_ci(xs: list[float]) -> tuple[float, float]:
    """Mean and 95% half-width over seeds: ``stats.ci95``, the normal approximation every marlcli table uses."""
    return sum(xs) / len(xs), ci95(xs)


def common_eval(out: Path, algo: str, seeds: list[int], eval_seed: int = EVAL_SEED) -> list[float | None]:
    """Each seed's final checkpoint, decentralized and greedy, on the same 2,000 episodes.

    The episodes are those of ``marl eval PATH seed=<eval_seed> episodes=2000 envs=2000``.
    """
    returns: list[float | None] = []
    for seed in seeds:
        dirs = seed_dirs(out / "runs", f"ttr-{algo}-s{seed}")
        try:
            ret = evaluate_path(dirs[0], COMMON_EPISODES, eval_seed, envs=COMMON_EPISODES)[0] if dirs else None
        except MarlError:  # cut off before its first checkpoint
            ret = None
        returns.append(ret["return_mean"] if ret else None)
    return returns


def section_ttr(out: Path, algos: list[str], seeds: list[int], time_limit: float, eval_seed: int,
                jobs: int = 1) -> dict[str, Any]:
    """One ``time_to_return`` entry per algorithm (the keys are listed in docs/bench.md)."""
    runs = [(f"ttr-{algo}-s{seed}", [f"algo={algo}", "env=spread", f"seed={seed}"]) for algo in algos for seed in seeds]
    evals = run_many(out, runs, time_limit, jobs)
    res: dict[str, Any] = {}
    for algo in algos:
        per_seed = [evals[f"ttr-{algo}-s{seed}"] for seed in seeds]
        for seed, ev in zip(seeds, per_seed, strict=True):
            print(f"  {algo} seed {seed}: " + ", ".join(f"{t}: {first_time(ev, t)}" for t in THRESHOLDS)
                  + f", final {ev[-1]['eval/return_mean']:.2f}")
        entry: dict[str, Any] = {"seeds": seeds, "eval_seed": eval_seed, "eval_episodes": COMMON_EPISODES}
        for t in THRESHOLDS:
            times = [first_time(e, t) for e in per_seed]
            reached = [x for x in times if x is not None]
            m, ci = mean_ci(reached) if reached else (None, None)
            entry[str(t)] = {"reached": len(reached), "seconds_mean": m, "seconds_ci95": ci,
                             "seconds": times}
        entry["targets"] = targets_met(algo, per_seed)
        entry.update({"final_return": [e[-1]["eval/return_mean"] for e in per_seed],
                      "best_return": [max(r["eval/return_mean"] for r in e) for e in per_seed],
                      "best_within_60s": [max((r["eval/return_mean"] for r in e if r["time_s"] <= 60), default=None)
                                          for e in per_seed],
                      "best_within_180s": [max((r["eval/return_mean"] for r in e if r["time_s"] <= 180),
                                               default=None) for e in per_seed],
                      "final_time_s": [e[-1]["time_s"] for e in per_seed],
                      "finished": [any((d / "done").exists() for d in seed_dirs(out / "runs", f"ttr-{algo}-s{seed}"))
                                   for seed in seeds],  # False: cut off at the time limit
                      "final_common": common_eval(out, algo, seeds, eval_seed)})
        res[algo] = entry
    return res


def section_common(out: Path, ttr: dict[str, Any], eval_seed: int) -> None:
    """Re-score the final actors of the ``ttr`` runs on disk on ``eval_seed``'s episodes, in place."""
    for algo, e in ttr.items():
        e["final_common"] = common_eval(out, algo, seed_list(e["seeds"]), eval_seed)
        e.update(eval_seed=eval_seed, eval_episodes=COMMON_EPISODES)


def ttr_curves(out: Path, ttr: dict[str, Any]) -> dict[str, list[list[tuple[float, float]]]]:
    """(wall s, return) per eval, per seed, per algorithm, read back from the runs' metrics."""
    return {algo: [[(r["time_s"], r["eval/return_mean"]) for r in read_evals(out / "runs", f"ttr-{algo}-s{seed}")]
                   for seed in seed_list(e["seeds"])] for algo, e in ttr.items()}
