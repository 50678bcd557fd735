"""The pool of frozen past selves: snapshots, opponent sampling (PFSP), Elo, and its files.

A self-play run keeps, besides the learner, a list of **members**: frozen copies of the
learner's actor taken every ``selfplay.snapshot_interval`` env steps (plus the untrained
actor at step 0 and any actors given by ``selfplay.init``). Training episodes are played
against members drawn from the newest ``selfplay.pool_size`` snapshots (the window); with
probability ``selfplay.latest_prob`` the newest one. ``selfplay=latest`` is a window of 1.
With ``selfplay.pfsp=true`` a member is drawn with weight ``(1 - w)^p`` where ``w`` is the
learner's score against it so far (prioritized fictitious self-play, Vinyals et al. 2019,
"Grandmaster level in StarCraft II"): opponents the learner still loses to come up more.

**Elo.** A snapshot starts at the learner's rating when it is taken. After every update the
results of the finished games against each member count as one Elo game per member, scored
by the learner's mean score (1 win, 0.5 draw, 0 loss; a win = a higher episode return than
the opponent side's), and both ratings move by ``K * (score - expected)``. One game per member
and update (not per episode) keeps the K-factor meaningful however many env copies run.

**Fitted Elo.** The online rating is order-dependent and noisy (a snapshot's rating only moves
while the learner plays it, and the learner keeps changing). The league therefore also keeps
the whole pairwise record, every game counted, with the learner of each phase standing for the
snapshot it becomes at the end of that phase (the learner between snapshots k and k+1 is player
k+1), and ``table()`` reports ``elo_fit``: the maximum-likelihood (Bradley-Terry) ratings of
all players from that record (``fit_elo``), the untrained snapshot at 1000.

Everything here is plain tensors and floats, drawn from the league's own ``torch.Generator``,
so ``state_dict()`` in the checkpoint makes a resumed run draw and rate exactly as an
uninterrupted one. The results tree gets ``pool/member_<id>.pt`` (one loadable actor and
its step each) and ``pool/league.json`` (the Elo table), both written atomically.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from marlcli import results
from marlcli.errors import CheckpointError

MEMBER_FORMAT = "marlcli-pool-member-v1"
SEED_OFFSET = 7_919  # the league's draws never share a stream with the env or the learner


@dataclass
class Member:
    """One frozen opponent: its actor weights, the step it was taken at, and its record."""

    id: int
    step: int
    actor: dict[str, Tensor]
    elo: float
    games: float = 0.0  # games the learner played against it
    score: float = 0.0  # the learner's summed score in those games
    source: str = "self"  # "self" or the path an init member came from
    pinned: bool = False  # init members stay in the window for good


class League:
    """Members, who plays whom, and the Elo table (see the module docstring)."""

    def __init__(self, sp: Any, seed: int) -> None:
        self.window, self.latest_prob = int(sp.pool_size), float(sp.latest_prob)
        self.pfsp, self.pfsp_power, self.k = bool(sp.pfsp), float(sp.pfsp_power), float(sp.elo_k)
        self.members: list[Member] = []
        self.learner_elo = 1000.0
        self.gen = torch.Generator().manual_seed(int(seed) + SEED_OFFSET)
        self.pending: list[tuple[Tensor, Tensor]] = []  # (member ids, scores) of games not yet rated
        # the pairwise record: row = the learner's player id (len(members) while it plays), column = member
        self.pair_games = torch.zeros(0, 0, dtype=torch.float64)
        self.pair_score = torch.zeros(0, 0, dtype=torch.float64)

    # ------------------------------------------------------------------ membership
    def add(self, step: int, actor_state: dict[str, Tensor], source: str = "self", pinned: bool = False) -> Member:
        """Freeze a copy of ``actor_state`` as a new member rated like the learner now."""
        state = {k: v.detach().to("cpu", copy=True) for k, v in actor_state.items()}
        m = Member(len(self.members), int(step), state, self.learner_elo, source=source, pinned=pinned)
        self.members.append(m)
        return m

    def prune(self, in_use: set[int]) -> None:
        """Drop the weights of members out of the window that no env copy still plays (records stay)."""
        keep = {m.id for m in self.active()} | in_use
        for m in self.members:
            if m.id not in keep:
                m.actor = {}

    def active(self) -> list[Member]:
        """Members opponents are drawn from: the pinned ones and the newest ``pool_size`` snapshots."""
        own = [m for m in self.members if not m.pinned][-self.window:]
        return [m for m in self.members if m.pinned] + own

    def sample(self, n: int) -> Tensor:
        """Member ids ``[n]`` for ``n`` env copies (latest with ``latest_prob``, else window / PFSP)."""
        act = self.active()
        ids = torch.tensor([m.id for m in act])
        if self.pfsp:
            w = torch.tensor([1.0 - (m.score + 0.5) / (m.games + 1.0) for m in act], dtype=torch.float64)
            w = w.clamp(min=1e-3) ** self.pfsp_power
        else:
            w = torch.ones(len(act), dtype=torch.float64)
        pick = ids[torch.multinomial(w, n, replacement=True, generator=self.gen)]
        latest = torch.rand(n, generator=self.gen) < self.latest_prob
        return torch.where(latest, self.members[-1].id, pick)

    # ------------------------------------------------------------------ results and Elo
    def record(self, ids: Tensor, scores: Tensor) -> None:
        """Queue finished games (device tensors; no host sync until ``rate``)."""
        self.pending.append((ids, scores))

    def rate(self) -> dict[str, float]:
        """Apply the queued games to the records and the Elo table; returns ``selfplay/...`` metrics."""
        if not self.pending:
            return {}
        ids = torch.cat([i for i, _ in self.pending]).cpu()
        scores = torch.cat([s for _, s in self.pending]).cpu().double()
        self.pending = []
        if ids.numel() == 0:
            return {}
        n = len(self.members)
        games = torch.bincount(ids, minlength=n).double()
        total = torch.zeros(n, dtype=torch.float64).index_add_(0, ids, scores)
        self._grow(n + 1)
        self.pair_games[n, :n] += games
        self.pair_score[n, :n] += total
        for m in self.members:
            g = float(games[m.id])
            if g == 0:
                continue
            s = float(total[m.id])
            m.games, m.score = m.games + g, m.score + s
            expected = 1.0 / (1.0 + 10.0 ** ((m.elo - self.learner_elo) / 400.0))
            delta = self.k * (s / g - expected)
            self.learner_elo += delta
            m.elo -= delta
        return {"selfplay/learner_elo": self.learner_elo, "selfplay/win_rate": float(scores.mean()),
                "selfplay/pool_size": float(len(self.active()))}

    def _grow(self, n: int) -> None:
        """Pad the pairwise record to ``n`` players."""
        old = len(self.pair_games)
        if n > old:
            for name in ("pair_games", "pair_score"):
                grown = torch.zeros(n, n, dtype=torch.float64)
                grown[:old, :old] = getattr(self, name)
                setattr(self, name, grown)

    def fitted(self) -> list[float]:
        """Maximum-likelihood Elo of players 0..len(members) (the last one: the learner now)."""
        n = len(self.members)
        if n == 0:
            return []
        games, score = np.zeros((n + 1, n + 1)), np.zeros((n + 1, n + 1))
        k = min(len(self.pair_games), n + 1)  # the record holds the players that have played so far
        games[:k, :k], score[:k, :k] = self.pair_games[:k, :k].numpy(), self.pair_score[:k, :k].numpy()
        return fit_elo(score, games)[0].tolist()

    # ------------------------------------------------------------------ state and files
    def state_dict(self) -> dict[str, Any]:
        return {"learner_elo": self.learner_elo, "gen": self.gen.get_state(),
                "pair_games": self.pair_games.clone(), "pair_score": self.pair_score.clone(),
                "members": [{"id": m.id, "step": m.step, "actor": m.actor, "elo": m.elo, "games": m.games,
                             "score": m.score, "source": m.source, "pinned": m.pinned} for m in self.members]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.learner_elo = float(state["learner_elo"])
        self.gen.set_state(state["gen"])
        self.members = [Member(int(d["id"]), int(d["step"]), dict(d["actor"]), float(d["elo"]), float(d["games"]),
                               float(d["score"]), str(d["source"]), bool(d["pinned"])) for d in state["members"]]
        self.pending = []
        empty = torch.zeros(0, 0, dtype=torch.float64)  # checkpoints from before the fitted Elo
        self.pair_games = state.get("pair_games", empty).clone()
        self.pair_score = state.get("pair_score", empty).clone()

    def table(self) -> dict[str, Any]:
        """The Elo table as JSON-ready data (``pool/league.json``)."""
        fit = self.fitted()
        g, sc = self.pair_games, self.pair_score
        return {"learner_elo": self.learner_elo, "learner_elo_fit": fit[-1] if fit else None,
                "members": [{"id": m.id, "step": m.step, "elo": m.elo, "elo_fit": fit[m.id], "games": m.games,
                             "score": m.score, "source": m.source, "active": bool(m.actor)} for m in self.members],
                # the record elo_fit comes from: [player, member, games, score]; player len(members) = the learner
                "pairs": [[i, j, float(g[i, j]), float(sc[i, j])] for i, j in torch.nonzero(g).tolist()]}

    def write(self, pool_dir: Path) -> None:
        """Write new members' files and the Elo table; drop files of members past this league (resume)."""
        pool_dir.mkdir(parents=True, exist_ok=True)
        for m in self.members:
            path = pool_dir / f"member_{m.id}.pt"
            if m.actor and not path.exists():
                data = {"format": MEMBER_FORMAT, "id": m.id, "step": m.step, "source": m.source, "actor": m.actor}
                results._atomic_write(path, lambda f, d=data: torch.save(d, f))
        for path in pool_dir.glob("member_*.pt"):
            tail = path.stem.rpartition("_")[2]
            if tail.isdigit() and int(tail) >= len(self.members):
                path.unlink()
        results.atomic_write_text(pool_dir / "league.json", json.dumps(self.table(), indent=1) + "\n")


def fit_elo(score: np.ndarray, games: np.ndarray, prior: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Maximum-likelihood Elo ratings (Bradley-Terry) of a pairwise record, player 0 at 1000.

    ``games[i, j]`` games of player i against player j, in which i scored ``score[i, j]`` in all
    (1 win, 0.5 draw, 0 loss). Each player also plays ``prior`` virtual draws against a fixed
    player (BayesElo's prior): it keeps the ratings of players with no games, or only wins,
    finite, and weighs nothing next to thousands of real games. Newton's method on the
    strictly concave log-likelihood, steps capped at 400 Elo. Returns the ratings and their
    covariance (Elo squared; the inverse Fisher information), from which the standard error of
    a difference ``r_i - r_j`` is ``sqrt(C_ii + C_jj - 2 C_ij)``.
    """
    g = np.asarray(games, dtype=np.float64)
    s = np.asarray(score, dtype=np.float64)
    n = len(g)
    pairs = g + g.T
    wins = s.sum(1) + (g - s).sum(0) + prior  # as the row player, as the column player, the virtual half
    theta = np.zeros(n)  # natural log-strengths; the virtual opponent sits at 0
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(theta[None, :] - theta[:, None]))  # P(i beats j)
        p0 = 1.0 / (1.0 + np.exp(-theta))
        grad = wins - (pairs * p).sum(1) - 2.0 * prior * p0
        w = pairs * p * (1.0 - p)
        hess = np.diag(w.sum(1) + 2.0 * prior * p0 * (1.0 - p0)) - w  # the negative Hessian
        step = np.linalg.solve(hess, grad)
        step *= min(1.0, np.log(10.0) / max(np.abs(step).max(), 1e-300))
        theta += step
        if np.abs(step).max() < 1e-10:
            break
    scale = 400.0 / np.log(10.0)
    elo = theta * scale
    return elo - elo[0] + 1000.0, np.linalg.inv(hess) * scale**2


def load_member(path: Path) -> dict[str, Any]:
    """A ``pool/member_<id>.pt`` file (weights only; no code runs) -> its dict."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001
        raise CheckpointError(f"{path} is not a readable pool member") from None
    if not isinstance(data, dict) or data.get("format") != MEMBER_FORMAT or not isinstance(data.get("actor"), dict):
        raise CheckpointError(f"{path} is not a marlcli pool member (format tag missing)")
    return data
