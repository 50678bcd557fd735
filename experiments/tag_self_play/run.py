"""Tag (3 predators vs 1 prey): asymmetric self-play with a pool of past selves vs against the latest self,
plus independent Q-learners trained together (no self-play).

    python experiments/tag_self_play/run.py [results_dir=results/experiments/tag_self_play] [seeds=110,111,112,113,114]
        [steps=1024000] [iql_seeds=110,111,112] [iql_steps=1024000] [episodes=1000] [eval_seed=9000]
        [out=experiments/tag_self_play]

Trains MAPPO (``sharing=role``: one network for the predators, one for the prey) on the native
``env=tag`` through ``marl train`` itself, one process at a time, with ``selfplay=pool`` (every
snapshot kept) and ``selfplay=latest`` (the newest snapshot only), then measures, all on the
evaluation seed ``eval_seed`` with sampled actions:

* **catches per episode over training**: every pool snapshot (``pool/member_<id>.pt``, the full
  actor) plays itself (its predators vs its prey), ``episodes`` episodes;
* **Elo of the snapshots** fitted to every game of training and of the evaluations during training
  (``elo_fit`` and ``pairs`` in ``pool/league.json``): is it monotone in snapshot order (strictly
  increasing; no drop larger than twice its standard error; Spearman's rank correlation with the
  snapshot order), and the same for the online Elo;
* **cross-play** of the final actors: the predators of every run against the prey of every run
  (``marlcli.selfplay.crossplay.evaluate_vs``, the ``adversary`` side), the predators' win rate by tag's
  outcome rule (a catch in the episode) and the catches per episode;
* **IQL** (``algo=iql``, ``selfplay=none``) on tag: the predators' catch rate at each evaluation
  during training (``eval/win_rate/adversary`` in ``metrics.jsonl``), and cross-play of IQL's final
  actors with each other's and with the MAPPO runs' (IQL's Q-actors act greedily);
* **coordination** of every run's final predators (``coordination``): the team's catch rate against
  the run's own prey vs the union, episode by episode, of each predator hunting alone.

Writes ``summary.json``, ``table.md``, ``tag_self_play.png`` and ``raw/`` (per-run curves, Elo
tables and the cross-play rows) into ``out``.
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
import torch

from marlcli import results
from marlcli.cliutil import experiment_options
from marlcli.envs import make_env
from marlcli.evaluate import load_actor, run_episodes
from marlcli.selfplay.crossplay import SideBySide, evaluate_vs
from marlcli.selfplay.league import fit_elo, load_member
from marlcli.stats import t_interval

HERE = Path(__file__).resolve().parent
VARIANTS = ("pool", "latest")
# pool: a snapshot every 256,000 steps (5 with the untrained one; calibration seeds 0-4, tuning/: closer
# snapshots are no stronger than the untrained actor at first); latest: a fresh opponent every 51,200 (4 updates)
SNAPSHOT = {"pool": 256000, "latest": 51200}
MAPPO = ["env=tag", "env.backend=native", "algo=mappo", "sharing=role", "selfplay.pool_size=1000", "device=cpu",
         "logger.progress=false", "train.log_interval=51200",
         "train.eval_interval=102400", "train.eval_episodes=500", "train.eval_envs=500",
         "train.eval_deterministic=false", "train.checkpoint_interval=100000000", "selfplay.rate_eval=true"]
IQL = ["env=tag", "env.backend=native", "algo=iql", "selfplay=none", "device=cpu", "logger.progress=false",
       "train.log_interval=51200", "train.eval_interval=102400", "train.eval_episodes=500", "train.eval_envs=500",
       "train.checkpoint_interval=100000000"]


def parse(args: list[str]) -> dict[str, str]:
    opts = {"results_dir": "results/experiments/tag_self_play", "seeds": "110,111,112,113,114", "steps": "1024000",
            "iql_seeds": "110,111,112", "iql_steps": "1024000", "episodes": "1000", "eval_seed": "9000",
            "out": str(HERE)}
    return experiment_options(args, opts, Path(sys.argv[0]).name)


def seeds_of(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def train(algo: str, run: str, seed: int, steps: str, extra: list[str], opts: dict[str, str]) -> Path:
    """One ``marl train`` (niced, one thread); a finished seed dir is reused."""
    sdir = Path(opts["results_dir"]) / "tag" / algo / run / f"seed_{seed}"
    if (sdir / "done").exists():
        return sdir
    cmd = ["nice", "-n", "10", sys.executable, "-m", "marlcli.cli", "train", f"seed={seed}", f"run={run}",
           f"results_dir={opts['results_dir']}", f"train.total_steps={steps}", "resume=auto", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    t = time.time()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    print(f"  trained {algo}/{run}/seed_{seed} in {time.time() - t:.0f}s", flush=True)
    return sdir


def ci(values: list[float]) -> list[float]:
    return t_interval(values)


def spearman(x: list[float]) -> float:
    """Rank correlation of ``x`` with its order (ties get average ranks)."""
    from scipy.stats import spearmanr

    return float(spearmanr(np.arange(len(x)), x).statistic)


@torch.no_grad()
def snapshot_curve(sdir: Path, episodes: int, seed: int) -> dict[str, list[float]]:
    """Each pool member playing itself: catches per episode and the predators' catch rate."""
    cfg = results.checkpoint_config(results.load_checkpoint(sdir))
    env = make_env(cfg.env, episodes, seed, torch.device("cpu"))
    out: dict[str, list[float]] = {"step": [], "catches": [], "catch_rate": []}
    files = sorted((sdir / "pool").glob("member_*.pt"), key=lambda p: int(p.stem.rpartition("_")[2]))
    for f in files:
        m = load_member(f)
        actor = load_actor(m, cfg, env.spec)
        torch.manual_seed(seed)
        s = run_episodes(actor, env, episodes, False).summary()
        out["step"].append(int(m["step"]))
        out["catches"].append(s["eval/catches"])
        out["catch_rate"].append(s["eval/win_rate/adversary"])
    env.close()
    return out


def increasing(x: list[float]) -> bool:
    return bool(all(b > a for a, b in zip(x, x[1:], strict=False)))


def elo_table(sdir: Path) -> dict[str, Any]:
    """A run's Elo tables: the fitted one (``elo_fit``, with each step's difference and its standard
    error) and the online one (``elo``), and whether each rises strictly in snapshot order."""
    table = json.loads((sdir / "pool" / "league.json").read_text())
    members = table["members"]
    n = 1 + max([len(members) - 1, *(max(i, j) for i, j, _, _ in table["pairs"])])
    games, score = np.zeros((n, n)), np.zeros((n, n))
    for i, j, g, sc in table["pairs"]:
        games[int(i), int(j)], score[int(i), int(j)] = g, sc
    fit, cov = fit_elo(score, games)
    k = len(members)
    diff = [float(fit[i + 1] - fit[i]) for i in range(k - 1)]
    se = [float(np.sqrt(cov[i, i] + cov[i + 1, i + 1] - 2 * cov[i, i + 1])) for i in range(k - 1)]
    elo, elo_fit = [m["elo"] for m in members], [m["elo_fit"] for m in members]
    return {"step": [m["step"] for m in members], "elo_fit": elo_fit, "elo": elo, "games": [m["games"] for m in members],
            "step_diff": diff, "step_diff_se": se,
            "strictly_increasing": increasing(elo_fit), "online_strictly_increasing": increasing(elo),
            "significant_inversions": int(sum(d < -2 * e for d, e in zip(diff, se, strict=True))),
            "spearman": spearman(elo_fit), "online_spearman": spearman(elo), "learner_elo": table["learner_elo"],
            "learner_elo_fit": table["learner_elo_fit"]}


def crossplay(runs: list[tuple[str, int, Path]], episodes: int, seed: int) -> tuple[np.ndarray, np.ndarray, list]:
    """``win[i, j]``, ``catches[i, j]``: the predators of run i vs the prey of run j."""
    n = len(runs)
    win, catches, rows = np.zeros((n, n)), np.zeros((n, n)), []
    for i, (_, _, a) in enumerate(runs):
        for j, (_, _, b) in enumerate(runs):
            torch.manual_seed(seed)
            r = next(x for x in evaluate_vs(a, b, episodes=episodes, seed=seed, deterministic=False, envs=episodes)
                     if x["side"] == "adversary")
            win[i, j], catches[i, j] = r["win_rate"], r["catches"]
            rows.append({"predators": f"{runs[i][0]}/{runs[i][1]}", "prey": f"{runs[j][0]}/{runs[j][1]}",
                         "win_rate": r["win_rate"], "catches": r["catches"], "return_role": {
                             k.removeprefix("return_role/"): v for k, v in r.items() if k.startswith("return_role/")}})
    return win, catches, rows


def iql_crossplay(iql: list[tuple[int, Path]], runs: list[tuple[str, int, Path]], episodes: int,
                  seed: int) -> dict[str, Any]:
    """IQL's final predators vs every run's prey (IQL's and MAPPO's), and every MAPPO run's predators vs
    IQL's prey: the predators' win rate per pair (``evaluate_vs`` rows ``side=adversary`` / ``agent``)."""
    rows = []
    others = [(f"iql/{s}", d) for s, d in iql] + [(f"{v}/{s}", d) for v, s, d in runs]
    for s, a in iql:
        for name, b in others:
            torch.manual_seed(seed)
            for r in evaluate_vs(a, b, episodes=episodes, seed=seed, deterministic=False, envs=episodes):
                mine = r["side"] == "adversary"  # IQL's predators vs b's prey, else b's predators vs IQL's prey
                rows.append({"predators": f"iql/{s}" if mine else name, "prey": name if mine else f"iql/{s}",
                             "predators_win_rate": r["win_rate"] if mine else 1.0 - r["win_rate"],
                             "catches": r["catches"]})
    cells: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        if r["predators"] == r["prey"]:  # a run against itself is not cross-play
            continue
        key = (r["predators"].split("/")[0], r["prey"].split("/")[0])
        cells.setdefault(key, []).append(r["predators_win_rate"])
    table: dict[str, dict[str, float]] = {}
    for (pred, prey), w in sorted(cells.items()):
        table.setdefault(pred, {})[prey] = float(np.mean(w))
    return {"rows": rows, "predators_win_rate": table}


class StillExcept(torch.nn.Module):
    """``actor`` plays; the predators not in ``keep`` stand still (discrete action 0, the no-op)."""

    def __init__(self, actor: torch.nn.Module, still: list[int]) -> None:
        super().__init__()
        self.actor, self.still = actor, still

    def initial_hidden(self, batch: int) -> torch.Tensor | None:
        return self.actor.initial_hidden(batch)

    def act(self, obs, avail, hidden, deterministic):  # noqa: ANN001, ANN201
        actions, hidden = self.actor.act(obs, avail, hidden, deterministic)
        actions = actions.clone()
        actions[:, self.still] = 0
        return actions, hidden


@torch.no_grad()
def coordination(sdir: Path, episodes: int, seed: int) -> dict[str, Any]:
    """Do a run's final predators hunt together? Against the run's own final prey, from the same
    ``episodes`` start layouts: the team's catch rate, each predator's catch rate alone (the other
    two standing still), and the team's gain over the union of the three solo hunts, episode by
    episode (``team - mean(max_i alone_i)``: above 0, together they catch prey none of them
    catches alone; below 0, they get in each other's way or chase the same line)."""
    payload = results.load_checkpoint(sdir)
    cfg = results.checkpoint_config(payload)

    def caught(still: list[int]) -> torch.Tensor:
        env = make_env(cfg.env, episodes, seed, torch.device("cpu"))  # one episode per copy: same layouts
        actor = load_actor(payload, cfg, env.spec)
        torch.manual_seed(seed)
        out = run_episodes(StillExcept(actor, still), env, episodes, False).stats["catches"] >= 1
        env.close()
        return out.double()

    spec_env = make_env(cfg.env, 1, seed, torch.device("cpu"))
    predators = [i for i, a in enumerate(spec_env.spec.agents) if a.startswith("adversary")]
    spec_env.close()
    team = caught([])
    alone = [caught([j for j in predators if j != i]) for i in predators]
    union = torch.stack(alone).amax(0)
    return {"team": float(team.mean()), "alone": [float(a.mean()) for a in alone], "union_of_alone": float(union.mean()),
            "gain": float(team.mean() - union.mean())}


@torch.no_grad()
def first_snapshot_roles(sdir: Path, episodes: int, seed: int) -> dict[str, float]:
    """Why the first snapshot is barely stronger than the untrained actor: the four pairings of the
    untrained (0) and the first snapshot's (1) predators and prey, each pairing's catch rate and
    the prey's mean return (``predK_preyL``)."""
    cfg = results.checkpoint_config(results.load_checkpoint(sdir))
    env = make_env(cfg.env, episodes, seed, torch.device("cpu"))
    predators = [a.startswith("adversary") for a in env.spec.agents]
    actors = [load_actor(load_member(sdir / "pool" / f"member_{i}.pt"), cfg, env.spec) for i in (0, 1)]
    env.close()
    out: dict[str, float] = {}
    for p in (0, 1):
        for q in (0, 1):
            env = make_env(cfg.env, episodes, seed, torch.device("cpu"))
            torch.manual_seed(seed)
            r = run_episodes(SideBySide(actors[p], actors[q], predators), env, episodes, False)
            env.close()
            out[f"pred{p}_prey{q}_catch_rate"] = float((r.stats["catches"] >= 1).double().mean())
            out[f"pred{p}_prey{q}_prey_return"] = float(r.returns[:, [not x for x in predators]].mean())
    return out


def eval_curve(sdir: Path) -> dict[str, list[float]]:
    rows = [json.loads(x) for x in (sdir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    rows = [r for r in rows if "eval/win_rate/adversary" in r]
    return {"step": [r["step"] for r in rows], "catch_rate": [r["eval/win_rate/adversary"] for r in rows],
            "catches": [r["eval/catches"] for r in rows]}


def main(args: list[str]) -> None:
    torch.set_num_threads(1)
    opts = parse(args)
    seeds, iql_seeds = seeds_of(opts["seeds"]), seeds_of(opts["iql_seeds"])
    episodes, eval_seed = int(opts["episodes"]), int(opts["eval_seed"])
    out = Path(opts["out"])
    (out / "raw").mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    runs: list[tuple[str, int, Path]] = []
    for v in VARIANTS:
        for s in seeds:
            extra = [f"selfplay={v}", f"selfplay.snapshot_interval={SNAPSHOT[v]}", *MAPPO]
            runs.append((v, s, train("mappo", v, s, opts["steps"], extra, opts)))
    iql = [train("iql", "iql", s, opts["iql_steps"], IQL, opts) for s in iql_seeds]
    train_s = time.time() - t0
    curves = {f"{v}/{s}": snapshot_curve(d, episodes, eval_seed) for v, s, d in runs}
    elos = {f"{v}/{s}": elo_table(d) for v, s, d in runs}
    win, catches, rows = crossplay(runs, episodes, eval_seed)
    iql_curves = {str(s): eval_curve(d) for s, d in zip(iql_seeds, iql, strict=True)}
    iql_x = iql_crossplay(list(zip(iql_seeds, iql, strict=True)), runs, episodes, eval_seed)
    coord = {f"{v}/{s}": coordination(d, episodes, eval_seed) for v, s, d in runs}
    coord.update({f"iql/{s}": coordination(d, episodes, eval_seed) for s, d in zip(iql_seeds, iql, strict=True)})
    first = {f"pool/{s}": first_snapshot_roles(d, episodes, eval_seed) for v, s, d in runs if v == "pool"}
    for name, data in (("snapshot_curves", curves), ("elo", elos), ("crossplay", rows), ("iql", iql_curves),
                       ("iql_crossplay", iql_x["rows"]), ("coordination", coord), ("first_snapshot_roles", first)):
        (out / "raw" / f"{name}.json").write_text(json.dumps(data, indent=1) + "\n")

    n = len(seeds)
    idx = {v: list(range(k * n, (k + 1) * n)) for k, v in enumerate(VARIANTS)}
    summary: dict[str, Any] = {"steps": int(opts["steps"]), "seeds": seeds, "eval_seed": eval_seed,
                               "episodes_per_cell": episodes, "config": MAPPO, "snapshot_interval": SNAPSHOT, "iql_config": IQL,
                               "iql_seeds": iql_seeds, "iql_steps": int(opts["iql_steps"]), "variants": {}}
    for v in VARIANTS:
        me = idx[v]
        per_seed = {f"vs_{w}_prey": [float(win[i, idx[w]].mean()) for i in me] for w in VARIANTS}
        per_seed["vs_all_prey"] = [float(win[i].mean()) for i in me]
        prey = {f"vs_{w}_predators": [float(1 - win[idx[w], j].mean()) for j in me] for w in VARIANTS}
        e = [elos[f"{v}/{s}"] for s in seeds]
        c = [curves[f"{v}/{s}"] for s in seeds]
        summary["variants"][v] = {
            "predators_win_rate": {k: float(np.mean(x)) for k, x in per_seed.items()},
            "predators_win_rate_ci95": {k: ci(x) for k, x in per_seed.items()},
            "predators_win_rate_per_seed": per_seed,
            "prey_win_rate": {k: float(np.mean(x)) for k, x in prey.items()},
            "prey_win_rate_ci95": {k: ci(x) for k, x in prey.items()},
            "crossplay_catches_vs_all_prey": float(catches[me].mean()),
            "final_self_play_catches": [x["catches"][-1] for x in c],
            "final_self_play_catch_rate": [x["catch_rate"][-1] for x in c],
            "elo_strictly_increasing_seeds": int(sum(x["strictly_increasing"] for x in e)),
            "elo_no_significant_inversion_seeds": int(sum(x["significant_inversions"] == 0 for x in e)),
            "online_elo_strictly_increasing_seeds": int(sum(x["online_strictly_increasing"] for x in e)),
            "elo_spearman": [x["spearman"] for x in e],
            "elo_spearman_above_0.9_seeds": int(sum(x["spearman"] > 0.9 for x in e)),
        }
    fin = [x["catch_rate"][-1] for x in iql_curves.values()]
    summary["iql"] = {"final_catch_rate": fin, "final_catch_rate_mean": float(np.mean(fin)), "final_ci95": ci(fin),
                      "first_catch_rate": [x["catch_rate"][0] for x in iql_curves.values()],
                      "final_catches": [x["catches"][-1] for x in iql_curves.values()],
                      "crossplay_predators_win_rate": iql_x["predators_win_rate"]}
    summary["coordination"] = {}
    for v in (*VARIANTS, "iql"):
        cs = [x for k, x in coord.items() if k.startswith(v + "/")]
        summary["coordination"][v] = {k: float(np.mean([c[k] for c in cs])) for k in ("team", "union_of_alone", "gain")}
        summary["coordination"][v]["gain_ci95"] = ci([c["gain"] for c in cs])
        summary["coordination"][v]["alone_mean"] = float(np.mean([np.mean(c["alone"]) for c in cs]))
    summary["first_snapshot_roles"] = {k: float(np.mean([x[k] for x in first.values()])) for k in next(iter(first.values()))}
    summary["train_s"] = round(train_s, 1)
    summary["wall_s"] = round(time.time() - t0, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    table = write_table(summary)
    (out / "table.md").write_text(table)
    print(table)
    plot(runs, curves, elos, win, iql_curves, out / "tag_self_play.png")


def write_table(s: dict[str, Any]) -> str:
    f = lambda m, c: f"{m:.3f} [{c[0]:.3f}, {c[1]:.3f}]"  # noqa: E731
    lines = ["| predators of | vs pool prey | vs latest prey | vs all prey | fitted Elo strictly increasing | "
             "no inversion beyond 2 SE | online Elo strictly increasing | fitted Elo Spearman (per seed) |",
             "|---|---|---|---|---|---|---|---|"]
    for v in VARIANTS:
        x = s["variants"][v]
        w, c = x["predators_win_rate"], x["predators_win_rate_ci95"]
        lines.append(f"| {v} | {f(w['vs_pool_prey'], c['vs_pool_prey'])} | {f(w['vs_latest_prey'], c['vs_latest_prey'])}"
                     f" | {f(w['vs_all_prey'], c['vs_all_prey'])} | {x['elo_strictly_increasing_seeds']}/{len(s['seeds'])}"
                     f" | {x['elo_no_significant_inversion_seeds']}/{len(s['seeds'])}"
                     f" | {x['online_elo_strictly_increasing_seeds']}/{len(s['seeds'])}"
                     f" | {', '.join(f'{r:.2f}' for r in x['elo_spearman'])} |")
    lines += ["", "| prey of | win rate vs pool predators | vs latest predators |", "|---|---|---|"]
    for v in VARIANTS:
        x = s["variants"][v]
        w, c = x["prey_win_rate"], x["prey_win_rate_ci95"]
        lines.append(f"| {v} | {f(w['vs_pool_predators'], c['vs_pool_predators'])} | "
                     f"{f(w['vs_latest_predators'], c['vs_latest_predators'])} |")
    q = s["iql"]
    lines += ["", f"IQL (selfplay=none, {len(q['final_catch_rate'])} seeds): predators' catch rate "
              f"{', '.join(f'{r:.3f}' for r in q['first_catch_rate'])} at step 0 -> "
              f"{', '.join(f'{r:.3f}' for r in q['final_catch_rate'])} at the end "
              f"(mean {f(q['final_catch_rate_mean'], q['final_ci95'])})", "",
              "Cross-play with IQL's final actors (predators' win rate; rows predators, columns prey; "
              "IQL vs IQL: other seeds only):", "", "| predators \\ prey | iql | pool | latest |", "|---|---|---|---|"]
    x = q["crossplay_predators_win_rate"]
    lines.append("| iql | " + " | ".join(f"{x['iql'][k]:.3f}" for k in ("iql", *VARIANTS)) + " |")
    for v in VARIANTS:
        lines.append(f"| {v} | {x[v]['iql']:.3f} | | |")
    lines += ["", "Coordination of the final predators against their own run's final prey (catch rate; alone = one "
              "predator hunts, the other two stand still; gain = team - union of the three solo hunts, per episode):",
              "", "| predators of | team | one alone (mean) | union of solo hunts | gain |", "|---|---|---|---|---|"]
    for v, c in s["coordination"].items():
        lines.append(f"| {v} | {c['team']:.3f} | {c['alone_mean']:.3f} | {c['union_of_alone']:.3f} | "
                     f"{f(c['gain'], c['gain_ci95'])} |")
    return "\n".join(lines) + "\n"


def plot(runs: list, curves: dict, elos: dict, win: np.ndarray, iql: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(22, 4.5))
    colors = {"pool": "tab:blue", "latest": "tab:red"}
    ax = axes[0]
    for v in VARIANTS:
        ks = [k for k in curves if k.startswith(v + "/")]
        n = min(len(curves[k]["step"]) for k in ks)
        step = np.array(curves[ks[0]]["step"][:n])
        y = np.array([curves[k]["catches"][:n] for k in ks])
        ax.plot(step, y.mean(0), color=colors[v], label=f"selfplay={v} (mean of {len(ks)} seeds)")
        ax.fill_between(step, y.min(0), y.max(0), color=colors[v], alpha=0.15)
    ax.set_title("catches per episode: each snapshot vs itself")
    ax.set_xlabel("env steps")
    ax.legend(fontsize=8)
    ax = axes[1]
    for k, e in elos.items():
        v = k.split("/")[0]
        ax.plot(e["step"], e["elo_fit"], color=colors[v], alpha=0.7, ls="-" if v == "pool" else "--")
    ax.set_title("fitted Elo of the snapshots (training + evaluation games; solid pool, dashed latest)", fontsize=9)
    ax.set_xlabel("snapshot (env step)")
    ax = axes[2]
    im = ax.imshow(win, cmap="RdBu_r", vmin=0, vmax=1)
    labels = [f"{v[0]}{s}" for v, s, _ in runs]
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_xlabel("prey of run (p = pool, l = latest)")
    ax.set_ylabel("predators of run")
    ax.set_title("cross-play: predators' win rate (a catch)")
    fig.colorbar(im, ax=ax)
    ax = axes[3]
    for s, c in iql.items():
        ax.plot(c["step"], c["catch_rate"], label=f"seed {s}")
    ax.set_ylim(0, 1)
    ax.set_title("IQL on tag: predators' catch rate (eval)")
    ax.set_xlabel("env steps")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main(sys.argv[1:])
