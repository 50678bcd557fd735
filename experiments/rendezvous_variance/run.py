"""Rendezvous study (seed-studies section 2): does a critic that sees the joint behaviour
lower the variance of the policy gradient?

    python experiments/rendezvous_variance/run.py [results_dir=...] [seeds=30]

Gaussian policies a_i ~ N(mu_i, sigma^2), REINFORCE for 400 steps on marlcli's
rendezvous team reward (``marlcli.envs.rendezvous.rendezvous_reward``), with baselines:

- central:        the batch mean of the team reward R (every agent: R - mean(R))
- independent:    agent i's running average b_i += 0.02 (mean(R) - b_i), blind to the others
- state:          a critic of the state only, V(s); the state is constant in a one-step game,
                  so V is one learned number: the same running average as ``independent``
- counterfactual: (extra) COMA's baseline E_{a_i ~ pi_i} R(a_i, a_-i), exact for the quadratic
                  reward: a critic that really sees the other agents' actions

Writes results.md, results.json and variance.png into results_dir.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from marlcli.envs.rendezvous import rendezvous_reward

SIGMA, STEPS, BATCH, LR, BASE_LR, TARGET = 0.25, 400, 32, 0.02, 0.02, 0.7
PUBLISHED = {"central": 18.8079, "independent": 29.3406, "ratio": 1.56, "outcome_ratio": 1.26,
             "final_mean": {"central": -0.0127, "independent": -0.0137},
             "final_std": {"central": 0.0174, "independent": 0.0196}}
CRITICS = ("central", "independent", "state", "counterfactual")


def reward(a: np.ndarray, coupling: float) -> np.ndarray:
    return rendezvous_reward(torch.from_numpy(a), TARGET, coupling).numpy()


def run_seed(seed: int, n: int, coupling: float, critic: str) -> tuple[float, float]:
    """One training run -> (gradient-noise scale averaged over steps, final team reward of mu)."""
    rng = np.random.default_rng(1000 + seed)
    mu = rng.normal(0.0, 0.5, n)
    b = np.zeros(n)  # independent: one running average per agent
    v = 0.0  # state critic: V(s) of the one constant state
    noise = []
    for _ in range(STEPS):
        a = mu + SIGMA * rng.standard_normal((BATCH, n))
        r = reward(a, coupling)
        if critic == "central":
            adv = np.repeat((r - r.mean())[:, None], n, 1)
        elif critic == "independent":
            adv = r[:, None] - b[None]
            b += BASE_LR * (r.mean() - b)
        elif critic == "state":
            adv = np.repeat((r - v)[:, None], n, 1)
            v += BASE_LR * (r.mean() - v)
        else:  # counterfactual: E over a_i' ~ N(mu_i, sigma^2) of R(a_i', a_-i), in closed form
            s = a.sum(1, keepdims=True)
            others = s - a  # sum of the others' actions
            q = (a**2).sum(1, keepdims=True) - a**2  # sum of the others' squares
            # R = -( sum_j (a_j-t)^2 + c (n sum_j a_j^2 - (sum_j a_j)^2) ); E[a_i'] = mu_i, E[a_i'^2] = mu_i^2 + s^2
            m1, m2 = mu[None], mu[None] ** 2 + SIGMA**2
            own_t = ((a - TARGET) ** 2).sum(1, keepdims=True) - (a - TARGET) ** 2 + m2 - 2 * TARGET * m1 + TARGET**2
            pairs = n * (q + m2) - (others**2 + 2 * others * m1 + m2)
            adv = r[:, None] + own_t + coupling * pairs
        g = adv * (a - mu) / SIGMA**2  # per-sample gradient [batch, n]
        noise.append(g.var(axis=0).mean())
        mu = mu + LR * g.mean(0)
    return float(np.mean(noise)), float(reward(mu[None], coupling)[0])


def study(n: int, coupling: float, seeds: int, critics: tuple[str, ...] = CRITICS) -> dict[str, dict[str, float]]:
    out = {}
    for c in critics:
        res = np.array([run_seed(s, n, coupling, c) for s in range(seeds)])
        out[c] = {"grad_var": float(res[:, 0].mean()), "final_mean": float(res[:, 1].mean()),
                  "final_std": float(res[:, 1].std())}  # population std, as published
    return out


def cell(row: dict[str, float], num: str, den: str) -> str:
    """A ratio, or ``diverged`` where lr 0.02 is past the stability limit (lr * 2(1 + coupling n) > 2)."""
    a, b = row[num], row[den]
    if not (np.isfinite(a) and np.isfinite(b)) or max(a, b) > 1e6:
        return "diverged"
    return f"{a / b:.2f}"


def main(argv: list[str]) -> None:
    opts = {"results_dir": "results/experiments/rendezvous_variance", "seeds": "30"}
    for arg in argv:
        k, _, v = arg.partition("=")
        if k not in opts or not v:
            sys.exit(f"run.py: unknown argument '{arg}'; use results_dir=DIR seeds=N")
        opts[k] = v
    warnings.filterwarnings("ignore", category=RuntimeWarning)  # overflow in the diverging sweep cells
    out, seeds = Path(opts["results_dir"]), int(opts["seeds"])
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    main_res = study(4, 1.0, seeds)
    c, i = main_res["central"], main_res["independent"]
    lines = [f"# Rendezvous variance study ({seeds} seeds, n=4, coupling 1)", "",
             "| | central | independent | state-only V(s) | counterfactual (COMA) | published central | published independent |",
             "|---|---|---|---|---|---|---|"]
    for key, label in (("grad_var", "policy-gradient variance"), ("final_mean", "final team reward mean"),
                       ("final_std", "final team reward std")):
        pub = ((PUBLISHED["central"], PUBLISHED["independent"]) if key == "grad_var"
               else (PUBLISHED[key]["central"], PUBLISHED[key]["independent"]))
        lines.append(f"| {label} | " + " | ".join(f"{main_res[k][key]:.4f}" for k in CRITICS)
                     + f" | {pub[0]:.4f} | {pub[1]:.4f} |")
    ratio, oratio = i["grad_var"] / c["grad_var"], (i["final_std"] / c["final_std"]) ** 2
    lines += ["", f"Gradient-variance ratio independent/central: **{ratio:.2f}x** (published {PUBLISHED['ratio']}x); "
              f"outcome-variance ratio (final team reward): **{oratio:.2f}x** (published {PUBLISHED['outcome_ratio']}x).", ""]
    ns, cs = (2, 4, 8, 16), (0.25, 1.0, 4.0)
    sweep: dict[str, dict[str, float]] = {}
    for n in ns:
        for cp in cs:
            sweep[f"n={n},coupling={cp}"] = {k: v["grad_var"] for k, v in study(n, cp, seeds).items()}
    for num, label in (("independent", "independent / central"), ("state", "state-only / central"),
                       ("central", "central / counterfactual")):
        den = "counterfactual" if num == "central" else "central"
        lines += [f"### Gradient-variance ratio {label}", "", "| n \\ coupling | " + " | ".join(map(str, cs)) + " |",
                  "|---" * (len(cs) + 1) + "|"]
        for n in ns:
            lines.append(f"| {n} | " + " | ".join(cell(sweep[f"n={n},coupling={cp}"], num, den) for cp in cs) + " |")
        lines.append("")
    lines.append(f"_{time.perf_counter() - t0:.0f} s on {torch.get_num_threads()} CPU thread(s)._")
    text = "\n".join(lines)
    print(text)
    (out / "results.md").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps({"seeds": seeds, "n4_coupling1": main_res, "ratio": ratio,
                                                  "outcome_ratio": oratio, "published": PUBLISHED,
                                                  "sweep_grad_var": sweep}, indent=2) + "\n")
    plot(sweep, ns, cs, out / "variance.png")
    print(f"\nwrote {out}/results.md, results.json, variance.png")


def plot(sweep: dict[str, dict[str, float]], ns: tuple[int, ...], cs: tuple[float, ...], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for cp in cs:
        get = lambda k, n, cp=cp: sweep[f"n={n},coupling={cp}"][k]  # noqa: E731
        ok = [n for n in ns if all(np.isfinite(get(k, n)) and get(k, n) < 1e6 for k in CRITICS)]  # drop diverged
        axes[0].plot(ok, [get("independent", n) / get("central", n) for n in ok], "o-", label=f"coupling {cp}")
        axes[1].plot(ok, [get("central", n) / get("counterfactual", n) for n in ok], "o-", label=f"coupling {cp}")
    for ax, title in zip(axes, ("independent / central (batch-mean baseline)",
                                "central / counterfactual (sees a_-i)"), strict=True):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("agents n")
        ax.set_ylabel("policy-gradient variance ratio")
        ax.set_title(title, fontsize=10)
        ax.axhline(1.0, color="grey", lw=0.5)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main(sys.argv[1:])
