"""The ``backends`` section: MAPPO and QMIX to ``eval/return_mean >= -16`` on spread, native vs mpe2 backend.

Same shipped defaults and seed for both backends, each a real ``marl train`` subprocess cut off at
the time limit, so the difference is the env implementation alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from marlcli.bench.runs import first_time, run_many


def section_backends(out: Path, time_limit: float, seed: int, jobs: int = 1) -> dict[str, Any]:
    """``{"<algo>.<native|mpe2>": {"seconds_to_-16", "best_return", "steps", "time_limit_s", "seed"}}``."""
    runs = {f"{algo}.{'mpe2' if backend == 'pettingzoo' else backend}":
            (f"backends-{algo}-{backend}", [f"algo={algo}", "env=spread", f"env.backend={backend}", f"seed={seed}"])
            for algo in ("mappo", "qmix") for backend in ("native", "pettingzoo")}
    evals = run_many(out, list(runs.values()), time_limit, jobs)
    res: dict[str, Any] = {}
    for key, (name, _) in runs.items():
        ev = evals[name]
        res[key] = {"seconds_to_-16": first_time(ev, -16.0), "best_return": max(r["eval/return_mean"] for r in ev),
                    "steps": ev[-1]["step"], "time_limit_s": time_limit, "seed": seed}
        print(f"  {key}: to -16 in {res[key]['seconds_to_-16']} s, best {res[key]['best_return']:.2f}")
    return res
