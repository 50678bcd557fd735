"""Self-play and matrix-game measures, as the trainer sees them: one ``Session`` per run.

``Session(cfg, env, device, out)`` wraps the env when ``selfplay.mode`` is ``latest`` or
``pool`` (``marlcli.selfplay.mirrored``), keeps the pool (``marlcli.selfplay.league``), snapshots the
learner's actor every ``selfplay.snapshot_interval`` env steps, rates the games after every
update, and on the matrix games measures the exact exploitability of the current and of the
time-averaged policy (``marlcli.selfplay.exploitability``), with or without self-play. With
``selfplay=none`` on any other env it does nothing. When the sides differ (tag: predators vs
prey), the learner keeps every agent and each env copy learns one role against frozen
snapshots of the full actor in the others (``learning_roles``, ``marlcli.selfplay.roles``). The trainer
sees it as a :class:`marlcli.hooks.Hook`: ``start`` (after the learner is built), ``load_state_dict``
(resume), ``after_update``, ``wrap_eval`` and ``state_dict``/``write`` (checkpoints).
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor

from marlcli import results
from marlcli.algos import load_family
from marlcli.envs.base import EnvSpec, VecEnv, role_of
from marlcli.envs.matrix import GAMES
from marlcli.errors import CheckpointError, ConfigError
from marlcli.hooks import Hook
from marlcli.selfplay import exploitability as ex
from marlcli.selfplay.league import League, load_member
from marlcli.selfplay.mirrored import OpponentBank, SelfPlayVecEnv, sub_spec
from marlcli.selfplay.roles import RoleSelfPlayVecEnv

EVAL_DRAW_SEED = 4_241  # evaluation opponents: their own stream, the same draws at every evaluation


def learners(cfg: DictConfig, spec: EnvSpec) -> list[int]:
    """Indices of the learning agents; checks that the opponents mirror them (one-line errors).

    ``selfplay.learn`` names agents or roles; empty = the first agent when every agent has one
    role (``rps``: ``player_0``), else the agents of the first role.
    """
    names = list(cfg.selfplay.learn)
    if names:
        unknown = [x for x in names if x not in spec.agents and x not in spec.roles]
        if unknown:
            raise ConfigError(f"selfplay.learn names '{unknown[0]}', which is neither an agent nor a role of "
                              f"env={spec.name} (agents: {', '.join(spec.agents)})")
        idx = [i for i, a in enumerate(spec.agents) if a in names or role_of(a) in names]
    elif len(spec.roles) == 1:
        idx = [0]
    else:
        idx = [i for i, a in enumerate(spec.agents) if role_of(a) == spec.roles[0]]
    opp = [i for i in range(spec.n_agents) if i not in idx]
    same = len(opp) == len(idx) and all(spec.obs_dims[o] == spec.obs_dims[i] and spec.act_dims[o] == spec.act_dims[i]
                                        for o, i in zip(opp, idx, strict=False))
    if not opp or not same:
        raise ConfigError(f"selfplay needs opponents that mirror the learners (as many, same sizes); on env={spec.name} "
                          f"learning {[spec.agents[i] for i in idx]} leaves {[spec.agents[i] for i in opp]}; "
                          "set selfplay.learn, or selfplay=none")
    return idx


def learning_roles(cfg: DictConfig, spec: EnvSpec) -> list[int] | None:
    """``None`` when the learners mirror the opponents (rps, prisoners: the mirrored path), else the
    indices in ``spec.roles`` of the roles that learn, for asymmetric self-play (``marlcli.selfplay.roles``).

    Asymmetric: ``selfplay.learn`` empty = every role learns; named agents stand for their whole role.
    """
    names = list(cfg.selfplay.learn)
    unknown = [x for x in names if x not in spec.agents and x not in spec.roles]
    if unknown or len(spec.roles) < 2:
        learners(cfg, spec)  # its one-line error
        return None
    try:
        learners(cfg, spec)
        return None
    except ConfigError:
        pass
    named = {role_of(x) if x in spec.agents else x for x in names}
    return [r for r, role in enumerate(spec.roles) if not named or role in named]


def check(cfg: DictConfig, spec: EnvSpec) -> None:
    """Fail fast on a bad ``selfplay`` section (called by ``trainer.validate``)."""
    sp = cfg.selfplay
    if sp.mode not in ("none", "latest", "pool"):
        raise ConfigError(f"unknown selfplay.mode '{sp.mode}': use none, latest or pool")
    if sp.mode == "none":
        return
    roles = learning_roles(cfg, spec)
    if roles is not None:
        if str(cfg.algo.get("mixer", "none")) != "none":
            raise ConfigError(f"asymmetric self-play (env={spec.name}: {' vs '.join(spec.roles)}) needs per-agent "
                              f"learners; algo={cfg.algo.name} mixes every agent into one team value (use iql, ippo, "
                              "mappo, coma or maddpg)")
        if bool(cfg.algo.get("standardise_rewards", False)):
            raise ConfigError("asymmetric self-play: algo.standardise_rewards would scale rewards by the frozen agents' "
                              "rewards too; set algo.standardise_rewards=false")
        if int(cfg.env.num_envs) < len(roles):
            raise ConfigError(f"asymmetric self-play splits the env copies over the learning roles; env.num_envs="
                              f"{cfg.env.num_envs} is fewer than the {len(roles)} roles")
    if int(sp.snapshot_interval) < 1 or int(sp.pool_size) < 1:
        raise ConfigError("selfplay.snapshot_interval and selfplay.pool_size must be positive integers")
    if not 0.0 <= float(sp.latest_prob) <= 1.0:
        raise ConfigError(f"selfplay.latest_prob={sp.latest_prob} must be within [0, 1]")


def matrix_game(cfg: DictConfig) -> tuple[Tensor, bool, int] | None:
    """``(payoff, observe_last, horizon)`` when the env is one of marlcli's matrix games."""
    env = cfg.env
    name = str(env.get("name"))
    if name not in GAMES or not (env.get("backend") == "native" or str(env.get("factory", "")).startswith(
            "marlcli.envs.matrix:")):
        return None
    make, observe_last, _ = GAMES[name]
    kwargs = {"penalty": float(env.get("penalty", -10.0))} if name == "coordination" else {}
    return torch.as_tensor(make(**kwargs)), observe_last, int(env.get("max_cycles", 1))


class MatrixMetrics:
    """Exploitability of the current and the time-averaged policy, measured after every update.

    The time-averaged policy is the mean of the policy tables measured so far (one per
    update), per state; on the stateless games (``rps``) that is exactly the mixed strategy
    of the average policy. A history-dependent actor (GRU or last action) is read at the hidden
    state it has at each point of the game, over the history tree (``marlcli.selfplay.exploitability``),
    and averaged per history with realization weights (``TreeAverage``); ``bind`` decides which,
    from the actor, before the first measure or a resume.
    """

    def __init__(self, game: tuple[Tensor, bool, int], agents: list[str], slots: list[int], n_actor: int) -> None:
        self.payoff, self.observe_last, self.horizon = game
        self.agents, self.slots, self.n_actor = agents, slots, n_actor
        self.tree: bool | None = None  # set by bind (or the first measure)
        self.sums: list[Tensor] = []  # memoryless actors: per-state sums of the tables
        self.avg_tree: list[ex.TreeAverage] = []  # history-dependent ones: realization-weighted averages
        self.count = 0

    def fits(self, actor: Any) -> bool:
        """Whether the exact measure can be computed for this actor (a history tree within ``MAX_TREE_NODES``)."""
        return not ex.history_dependent(actor) or ex.support_nodes(self.payoff, self.horizon) <= ex.MAX_TREE_NODES

    def bind(self, actor: Any) -> None:
        """Per-state or per-history tables, as ``actor`` needs; empty averages."""
        self.tree = ex.history_dependent(actor)
        n = [int(self.payoff.shape[p]) for p in (0, 1)]
        if self.tree:
            self.avg_tree = [ex.TreeAverage(n[p]) for p in (0, 1)]
        else:
            rows = ex.n_states(self.payoff, self.observe_last)
            self.sums = [torch.zeros(rows, n[p], dtype=torch.float64) for p in (0, 1)]
        self.count = 0

    def measure(self, actor: Any) -> dict[str, float]:
        if self.tree is None:
            self.bind(actor)
        tables = ex.policy_tables(actor, self.payoff, self.observe_last, self.horizon, self.n_actor, self.slots)
        self.count += 1
        if self.tree:
            for a, t in zip(self.avg_tree, tables, strict=True):
                a.add(t)
            now, avg = list(tables), [a.table() for a in self.avg_tree]
            expl = lambda pi: ex.tree_exploitability(self.payoff, *pi, self.horizon)  # noqa: E731
            rates = ex.tree_occupancy(self.payoff, *now, self.horizon)
        else:
            for s, t in zip(self.sums, tables, strict=True):
                s += t
            now, avg = list(tables), [s / self.count for s in self.sums]
            expl = lambda pi: ex.exploitability(self.payoff, *pi, self.horizon, self.observe_last)  # noqa: E731
            rates = ex.occupancy(self.payoff, *now, self.horizon, self.observe_last)
        out = {"matrix/exploitability": expl(now), "matrix/exploitability_avg": expl(avg)}
        for p, agent in enumerate(self.agents):
            for a in range(self.payoff.shape[p]):
                out[f"matrix/policy/{agent}/{a}"] = float(now[p][0, a])  # row 0: the start
                out[f"matrix/avg_policy/{agent}/{a}"] = float(avg[p][0, a])
                out[f"matrix/action_rate/{agent}/{a}"] = float(rates[p][a])
        return out

    def state_dict(self) -> dict[str, Any]:
        if self.tree:
            return {"tree": [a.state_dict() for a in self.avg_tree], "count": self.count}
        return {"sums": [s.clone() for s in self.sums], "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.tree is not None and self.tree != ("tree" in state):
            raise ValueError("the matrix-game averages were measured for an actor "
                             f"{'with' if 'tree' in state else 'without'} a hidden state, this one is "
                             f"{'with' if self.tree else 'without'}")
        if "tree" in state:
            if self.tree is None:
                self.tree = True
                self.avg_tree = [ex.TreeAverage(int(self.payoff.shape[p])) for p in (0, 1)]
            for a, st in zip(self.avg_tree, state["tree"], strict=True):
                a.load_state_dict(st)
        else:
            sums = [s.clone().double() for s in state["sums"]]
            if self.sums and [s.shape for s in sums] != [s.shape for s in self.sums]:
                raise ValueError(f"matrix-game averages of shape {[tuple(s.shape) for s in sums]}, this game needs "
                                 f"{[tuple(s.shape) for s in self.sums]}")
            self.sums, self.tree = sums, False
        self.count = int(state["count"])


class Session(Hook):
    """Self-play (when on) and matrix-game measures for one training run: a trainer hook.

    Unlike other hooks it also wraps the training env (``env``, built at construction: the
    learner's spec is the wrapper's), and its state is saved under ``selfplay`` (an empty dict
    when there is nothing to save, as checkpoints have always held).
    """

    name = "selfplay"

    def __init__(self, cfg: DictConfig, env: VecEnv, device: torch.device, out: Path | None = None) -> None:
        self.cfg, self.sp, self.device, self.out = cfg, cfg.selfplay, device, out
        self.on = str(self.sp.mode) != "none"
        self.inner, self.env = env, env
        self.league: League | None = None
        spec = env.spec
        self.roles: list[int] | None = None  # asymmetric self-play: the learning roles
        if self.on:
            check(cfg, spec)
            family = load_family(cfg.algo)
            self.league = League(league_settings(self.sp), int(cfg.seed))
            self.roles = learning_roles(cfg, spec)
            if self.roles is not None:  # every agent stays with the learner; frozen roles act per copy
                self.bank = OpponentBank(lambda: family.make_actor(spec, cfg), self._weights, device)
                self.env = RoleSelfPlayVecEnv(env, self.roles, self.bank, self.league.sample, self.league.record,
                                              self.league)
            else:
                self.learn = learners(cfg, spec)
                learn_spec = sub_spec(spec, self.learn)
                self.bank = OpponentBank(lambda: family.make_actor(learn_spec, cfg), self._weights, device)
                self.env = SelfPlayVecEnv(env, self.learn, self.bank, self.league.sample, self.league.record,
                                          self.league)
        game = matrix_game(cfg)
        self.matrix: MatrixMetrics | None = None
        if game is not None:
            if self.on:
                opp = [i for i in range(2) if i not in self.learn]
                slots = [self.learn.index(p) if p in self.learn else opp.index(p) for p in (0, 1)]
                self.matrix = MatrixMetrics(game, spec.agents, slots, len(self.learn))
            else:
                self.matrix = MatrixMetrics(game, spec.agents, [0, 1], spec.n_agents)

    def _weights(self, member: int) -> dict[str, Tensor]:
        assert self.league is not None
        return self.league.members[member].actor

    def start(self, algo: Any) -> None:
        """Seed the pool: the untrained actor (step 0) and the ``selfplay.init`` actors; fit the
        matrix measures to the actor (a history-dependent one is read over the history tree, or,
        where that tree is too large to solve, not measured: one warning line says so)."""
        self.algo = algo
        if self.matrix is not None:
            if self.matrix.fits(algo.actor):
                self.matrix.bind(algo.actor)
            else:
                print(f"marl: warning: no matrix/exploitability for this run: algo.agent=rnn or algo.last_action makes "
                      f"the actor's policy depend on the whole history, and env.max_cycles={self.matrix.horizon} gives "
                      f"{ex.support_nodes(self.matrix.payoff, self.matrix.horizon):,} histories per player to solve "
                      f"(at most {ex.MAX_TREE_NODES:,})", file=sys.stderr)
                self.matrix = None
        if self.league is None:
            return
        for path in self.sp.init:
            self.league.add(0, init_actor(Path(str(path)), algo.actor), source=str(path), pinned=True)
        self.league.add(0, algo.actor.state_dict())

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Resume: the matrix averages (the league comes back with the env state)."""
        if self.matrix is not None and state and "matrix" in state:
            self.matrix.load_state_dict(state["matrix"])
        self.write()  # drops pool files written after the checkpoint

    def after_update(self, prev: int, step: int) -> dict[str, float]:
        """Rate the finished games, snapshot at interval crossings, measure matrix games."""
        out: dict[str, float] = {}
        if self.league is not None:
            out.update(self.league.rate())
            every = int(self.sp.snapshot_interval)
            if step // every > prev // every:
                self.league.add(step, self.algo.actor.state_dict())
                in_use = set(self.env.member.tolist())  # copies finish their episode against their opponent
                self.league.prune(in_use)
                self.bank.forget({m.id for m in self.league.active()} | in_use)
                self.write()
        if self.matrix is not None:
            out.update(self.matrix.measure(self.algo.actor))
        return out

    def wrap_eval(self, env: VecEnv) -> VecEnv:
        """Evaluation envs: the learner against the opponents training draws from (``eval_opponents``:
        the pool's window, drawn uniformly from its own stream; ``selfplay=latest``: the latest snapshot).

        With ``selfplay.rate_eval`` the finished evaluation games are rated at once (one Elo game per
        member and finishing step, like a training update's), so they are in the table before the
        checkpoint that follows an evaluation and a resumed run rates exactly as an uninterrupted one.
        """
        if self.league is None:
            return env
        league = self.league
        rate = (lambda ids, s: (league.record(ids, s), league.rate())) if bool(self.sp.get("rate_eval")) else None
        draw = uniform_draw(eval_opponents(league, str(self.sp.mode)), EVAL_DRAW_SEED)
        if self.roles is not None:
            return RoleSelfPlayVecEnv(env, self.roles, self.bank, draw, rate)
        return SelfPlayVecEnv(env, self.learn, self.bank, draw, rate)

    def state_dict(self) -> dict[str, Any]:
        return {"matrix": self.matrix.state_dict()} if self.matrix is not None else {}

    def write(self) -> None:
        """``pool/`` files and the Elo table in the seed dir."""
        if self.league is not None and self.out is not None:
            self.league.write(self.out / "pool")


def _latest(sp: Any) -> Any:
    """``selfplay=latest``: a window of one, always the newest snapshot, no PFSP."""
    return SimpleNamespace(pool_size=1, latest_prob=1.0, pfsp=False, pfsp_power=float(sp.pfsp_power),
                           elo_k=float(sp.elo_k))


def league_settings(sp: Any) -> Any:
    """The league's settings for a run's ``selfplay`` section: ``pool`` as given, ``latest`` a window of one.

    Training and every later reader of its checkpoint (``marl eval``, ``marl export``) must build the
    league alike: with ``pool``'s default window, a ``latest`` run's league would hold members whose
    weights training dropped as soon as they left its window of one.
    """
    return sp if str(sp.mode) == "pool" else _latest(sp)


def eval_opponents(league: League, mode: str) -> list[int]:
    """Members an evaluation plays: those training draws from. ``latest``: the newest snapshot alone
    (training's ``latest_prob=1`` never draws another, not even a pinned ``selfplay.init`` actor);
    ``pool``: the window (pinned members and the newest ``pool_size`` snapshots)."""
    if not league.members:
        return []
    return [league.members[-1].id] if mode == "latest" else [m.id for m in league.active()]


def uniform_draw(ids: list[int], seed: int) -> Any:
    """A draw function over member ``ids``, uniform, with its own generator (evaluation)."""
    gen = torch.Generator().manual_seed(seed)
    pick = torch.tensor(ids, dtype=torch.long)
    return lambda n: pick[torch.randint(len(pick), (n,), generator=gen)]


def init_actor(path: Path, actor: Any) -> dict[str, Tensor]:
    """Actor weights for ``selfplay.init``: a pool member file, or a self-play run's seed dir / .pt."""
    if path.suffix == ".pt" and path.name.startswith("member_"):
        state = load_member(path)["actor"]
    else:
        state = results.load_checkpoint(path)["actor"]
    try:
        copy.deepcopy(actor).load_state_dict(state)
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"selfplay.init: {path} holds an actor that does not fit this learner "
                              f"({' '.join(str(exc).split())[:200]}); give a self-play run of the same game and "
                              "algorithm") from None
    return state


def opponents_for_eval(cfg: DictConfig, env: VecEnv, payload: dict[str, Any], device: torch.device,
                       vs: dict[str, Any] | None = None, seed: int = 0, deterministic: bool = False) -> VecEnv:
    """``marl eval`` / ``marl export`` of a self-play run: the opponents training would play
    (``eval_opponents``, from the league rebuilt with the run's own settings), or ``vs``'s actor
    alone (cross-play)."""
    if str(cfg.selfplay.mode) == "none":
        return env
    roles = learning_roles(cfg, env.spec)
    learn = learners(cfg, env.spec) if roles is None else list(range(env.spec.n_agents))
    family = load_family(cfg.algo)
    learn_spec = sub_spec(env.spec, learn)
    if vs is not None:
        weights = {0: vs["actor"]}
        draw = lambda n: torch.zeros(n, dtype=torch.long)  # noqa: E731
    else:
        league = League(league_settings(cfg.selfplay), 0)  # the run's own window (latest: 1), as training had it
        try:
            league.load_state_dict(payload["env"]["league"])
        except Exception:  # noqa: BLE001
            raise CheckpointError(f"{payload.get('_path')}: no readable pool in this checkpoint") from None
        ids = eval_opponents(league, str(cfg.selfplay.mode))
        missing = [i for i in ids if not league.members[i].actor]
        if not ids or missing:
            raise CheckpointError(f"{payload.get('_path')}: its pool has no weights for the opponents training "
                                  f"would play ({'none in the pool' if not ids else f'members {missing}'})")
        weights = {i: league.members[i].actor for i in ids}
        draw = uniform_draw(ids, seed + EVAL_DRAW_SEED)
    bank = OpponentBank(lambda: family.make_actor(learn_spec, cfg), weights.__getitem__, device)
    bank.deterministic = deterministic  # cross-play: both sides act alike
    if roles is not None:
        return RoleSelfPlayVecEnv(env, roles, bank, draw)
    return SelfPlayVecEnv(env, learn, bank, draw)
