"""The payoff matrix of a self-play run's snapshots, for ``marl report``.

For every seed dir with a ``pool/`` (``selfplay=latest|pool``), up to ``MAX_SNAPSHOTS`` pool
members evenly spaced over training play each other: row member i plays the learning agents,
column member j the opponents, ``EPISODES`` episodes per cell with sampled actions (the
policies' own mixed strategies), the same evaluation episodes for every cell. A cell is the
row side's mean episode return. Written as ``payoff_<run>_seed<k>.md`` (a table) and
``payoff_<run>_seed<k>.png`` (a heat map) next to the report; a learner that improves shows
a lower triangle (late rows vs early columns) above zero. On asymmetric games (tag) the row
snapshot plays each learning role in an equal share of the episodes, the column snapshot the
other roles, and a cell is the row's score by the game's outcome rule (1 win, 0 loss).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from marlcli import results
from marlcli.algos import load_family
from marlcli.envs import make_env
from marlcli.evaluate import load_actor, run_episodes
from marlcli.selfplay import session as selfplay
from marlcli.selfplay.league import fit_elo, load_member
from marlcli.selfplay.mirrored import OpponentBank, SelfPlayVecEnv, sub_spec
from marlcli.selfplay.roles import SCORE_STAT, RoleSelfPlayVecEnv

MAX_SNAPSHOTS = 8
EPISODES = 200
EVAL_SEED = 9_001


def snapshots(pool: Path, k: int = MAX_SNAPSHOTS) -> list[dict[str, Any]]:
    """Up to ``k`` member files, evenly spaced by id (first and last included)."""
    files = sorted(pool.glob("member_*.pt"), key=lambda p: int(p.stem.rpartition("_")[2]))
    if len(files) > k:
        files = [files[i] for i in np.linspace(0, len(files) - 1, k).round().astype(int)]
    return [load_member(p) for p in files]


@torch.no_grad()
def payoff_matrix(sdir: Path, episodes: int = EPISODES) -> tuple[list[dict[str, Any]], np.ndarray]:
    """``(members, M)``: ``M[i, j]`` = mean return of member i (learning side) against member j."""
    payload = results.load_checkpoint(sdir)
    cfg = results.checkpoint_config(payload)
    members = snapshots(sdir / "pool")
    env = make_env(cfg.env, episodes, EVAL_SEED, torch.device("cpu"))
    try:
        roles = selfplay.learning_roles(cfg, env.spec)  # asymmetric: a cell is the row's score, every role
        learn = selfplay.learners(cfg, env.spec) if roles is None else list(range(env.spec.n_agents))
        spec = sub_spec(env.spec, learn)
        family = load_family(cfg.algo)
        out = np.zeros((len(members), len(members)))
        for j, col in enumerate(members):
            bank = OpponentBank(lambda: family.make_actor(spec, cfg), lambda _m, c=col: c["actor"], torch.device("cpu"))
            for i, row in enumerate(members):
                actor = load_actor(row, cfg, spec)
                draw = lambda n: torch.zeros(n, dtype=torch.long)  # noqa: E731
                wrapped = (SelfPlayVecEnv(env, learn, bank, draw) if roles is None
                           else RoleSelfPlayVecEnv(env, roles, bank, draw))
                torch.manual_seed(EVAL_SEED)  # the same sampled actions for every cell
                res = run_episodes(actor, wrapped, episodes, False)
                out[i, j] = float(res.returns.mean() if roles is None else res.stats[SCORE_STAT].mean())
    finally:
        env.close()
    return members, out


def _asymmetric(sdir: Path) -> bool:
    cfg = results.checkpoint_config(results.load_checkpoint(sdir))
    env = make_env(cfg.env, 1, 0, torch.device("cpu"))
    try:
        return selfplay.learning_roles(cfg, env.spec) is not None
    finally:
        env.close()


def write_payoff(sdir: Path, out_dir: Path) -> list[str]:
    """Table and heat map for one seed dir; returns the file names written."""
    import matplotlib  # deferred: heavy, and only a figure needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    members, m = payoff_matrix(sdir)
    if not members:
        return []
    name = f"payoff_{sdir.parent.name}_{sdir.name.replace('_', '')}"
    labels = [f"{d['step']:,}" if d.get("source", "self") == "self" else f"init {d['id']}" for d in members]
    asym = _asymmetric(sdir)
    what = "Score (1 win, 0 loss; the game's outcome rule)" if asym else "Mean return"
    lines = [f"{what} of the row snapshot (learning side) vs the column snapshot; {sdir}", "",
             "| row \\ column | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    lines += [f"| {labels[i]} | " + " | ".join(f"{v:+.2f}" for v in m[i]) + " |" for i in range(len(labels))]
    if asym:  # scores are wins: the snapshots' maximum-likelihood Elo from this matrix alone
        games = np.full(m.shape, float(EPISODES)) * (1.0 - np.eye(len(m)))
        elo = fit_elo(m * games, games)[0]
        lines += ["", f"Elo fitted to this matrix ({EPISODES} games per cell, the diagonal left out; "
                      "the first snapshot at 1000): " + ", ".join(f"{lab} {e:.0f}" for lab, e in zip(labels, elo, strict=True))]
    (out_dir / f"{name}.md").write_text("\n".join(lines) + "\n")
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * len(labels), 0.8 + 0.6 * len(labels)))
    lim = max(1e-9, float(np.abs(m).max()))
    im = ax.imshow(m, cmap="RdBu", vmin=0.0 if asym else -lim, vmax=1.0 if asym else lim)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_xlabel("opponent snapshot (env step)")
    ax.set_ylabel("learner snapshot (env step)")
    fig.colorbar(im, ax=ax, label=what.split(" (")[0].lower())
    ax.set_title(f"{sdir.parent.name}/{sdir.name}", fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / f"{name}.png", dpi=100)
    plt.close(fig)
    return [f"{name}.md", f"{name}.png"]


def write_all(seed_dirs: list[Path], out_dir: Path) -> list[str]:
    """Payoff files for every self-play seed dir among ``seed_dirs``."""
    written: list[str] = []
    for sdir in seed_dirs:
        if (sdir / "pool").is_dir() and (sdir / "checkpoints").is_dir():
            written += write_payoff(sdir, out_dir)
    return written
