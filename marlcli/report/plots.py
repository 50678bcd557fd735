"""``marl report``'s learning curves: per configuration (and role) the mean eval return and its 95% bootstrap band."""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

import numpy as np

from marlcli.stats import bootstrap_ci, mean

if TYPE_CHECKING:
    from pathlib import Path

    from marlcli.report import Key, SeedResult


def curve(seeds: list[SeedResult], role: str | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mean eval return (of one role, if given) and 95% bootstrap band at every eval step: (steps, mean, lo, hi)."""
    by_step: dict[int, list[float]] = defaultdict(list)
    for s in seeds:
        values = s.eval_returns if role is None else s.role_returns.get(role, [])
        for st, r in zip(s.eval_steps, values, strict=False):
            by_step[st].append(r)
    steps = np.array(sorted(by_step))
    stats = [(mean(by_step[st]), *bootstrap_ci(by_step[st], resamples=2_000)) for st in steps]
    m, lo, hi = (np.array(c) for c in zip(*stats, strict=True)) if stats else (np.array([]),) * 3
    return steps, m, lo, hi


def plot_curves(groups: dict[Key, list[SeedResult]], path: Path) -> None:
    """One panel per env; per configuration (and role) the mean eval return and its 95% bootstrap band."""
    import matplotlib  # deferred: heavy, and only a figure needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    envs = sorted({k[0] for k in groups})
    runs_per_pair = defaultdict(set)
    for env, algo, run, _variant in groups:
        runs_per_pair[(env, algo)].add(run)
    fig, axes = plt.subplots(1, len(envs), figsize=(6.5 * len(envs), 4.5), squeeze=False)
    for ax, env in zip(axes[0], envs, strict=True):
        for (e, algo, run, variant), seeds in groups.items():
            done = [s for s in seeds if s.done]
            if e != env or not done:
                continue
            label = algo + (f" ({run})" if len(runs_per_pair[(env, algo)]) > 1 else "") + (f" {variant}" if variant
                                                                                          else "")
            roles = list(dict.fromkeys(r for s in done for r in s.role_returns))
            for role in roles or [None]:
                steps, m, lo, hi = curve(done, role)
                if steps.size == 0:
                    continue
                line, = ax.plot(steps, m, label=f"{label}{f' [{role}]' if role else ''}, {len(done)} seeds")
                ax.fill_between(steps, lo, hi, color=line.get_color(), alpha=0.25, linewidth=0)
        ax.set_title(env)
        ax.set_xlabel("env steps")
        ax.set_ylabel("eval return (mean, 95% CI)")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
