"""Issue 25, where self-play meets the matrix games, the CLI and recurrent actors:

1. each seat of a mirrored game observes it from its own side, so a frozen snapshot playing
   the other seat reads "my last move" as its own (a tit-for-tat snapshot retaliates);
2. ``marl eval`` / ``marl export`` of a ``selfplay=latest`` run rebuild its league with its own
   window (1) and play the latest snapshot only;
6. the matrix measures read a history-dependent actor (GRU, last action) at the hidden state it
   has at each point of the game, not at the initial one.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import make_cfg, strip_time
from omegaconf import OmegaConf

from marlcli import results
from marlcli.algos import load_family
from marlcli.envs import make_env
from marlcli.envs.matrix import GAMES
from marlcli.selfplay import exploitability as ex
from marlcli.selfplay import session as selfplay
from marlcli.selfplay.mirrored import OpponentBank, SelfPlayVecEnv
from marlcli.trainer import train

CPU = torch.device("cpu")
BACKENDS = ["native", "pettingzoo"]


def matrix_env(name: str, backend: str, num_envs: int, *extra: str):
    cfg = make_cfg(f"env={name}", f"env.backend={backend}", *extra)
    return make_env(cfg.env, num_envs, 0, CPU)


# ----------------------------------------------------------------------------- 1. seats
class TitForTat(torch.nn.Module):
    """Cooperates first, then plays the other's last move, read from its own observation:
    the one-hot of (own move, other's move) -> index ``own * 2 + other``."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("w", torch.zeros(()))

    def initial_hidden(self, batch: int) -> None:
        return None

    def act(self, obs: torch.Tensor, avail: torch.Tensor, hidden: None, deterministic: bool) -> tuple:
        seen = obs.sum(-1) > 0
        return torch.where(seen, obs.argmax(-1) % 2, 0), None


@pytest.mark.parametrize("backend", BACKENDS)
def test_always_defect_vs_tit_for_tat_snapshot_scores_14(backend: str) -> None:
    """Round 1: D vs C = 5; rounds 2-10: the snapshot retaliates, D vs D = 1 each: 14.
    Before the fix the snapshot in seat 1 read the learner's move as its own and cooperated: 50."""
    inner = matrix_env("prisoners", backend, 3)
    bank = OpponentBank(TitForTat, {0: {"w": torch.zeros(())}}.__getitem__, CPU)
    env = SelfPlayVecEnv(inner, [0], bank, lambda n: torch.zeros(n, dtype=torch.long))
    env.reset()
    total = torch.zeros(3)
    for t in range(10):
        ts = env.step(torch.ones(3, 1, dtype=torch.long))  # always defect
        total += ts.reward[:, 0]
        assert bool(ts.done.all()) == (t == 9)
    assert total.tolist() == [14.0, 14.0, 14.0]


def mirrored_matrix_games() -> list[str]:
    """Every matrix game marlcli ships (all have mirrored seats), from the registry, not a hand list."""
    return sorted(GAMES)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", mirrored_matrix_games())
def test_seats_swap_observations_and_rewards(name: str, backend: str) -> None:
    """Play a random joint-action sequence in one env and the same with the seats swapped in
    another: at every step (the final observation included) seat 0's view in one is seat 1's view
    in the other, and the rewards swap too (the games are symmetric)."""
    b, cycles = 6, 3
    a, s = (matrix_env(name, backend, b, f"env.max_cycles={cycles}") for _ in range(2))
    assert a.spec.obs_dims[0] == a.spec.obs_dims[1] and a.spec.act_dims[0] == a.spec.act_dims[1]
    ta, ts = a.reset(), s.reset()
    gen = torch.Generator().manual_seed(1)
    for _ in range(2 * cycles):
        assert torch.equal(ta.obs, ts.obs.flip(1)), f"{name}: the views do not swap with the seats"
        acts = torch.randint(a.spec.act_dims[0], (b, 2), generator=gen)
        ta, ts = a.step(acts), s.step(acts.flip(1))
        assert torch.equal(ta.final_obs, ts.final_obs.flip(1))
        assert torch.equal(ta.reward, ts.reward.flip(1))
    if GAMES[name][1]:  # the last joint action is observed: seat views differ unless both moved alike
        acts = torch.tensor([[0, 1]] * b)
        ta = a.step(acts)
        assert not torch.equal(ta.obs[:, 0], ta.obs[:, 1])


def test_spread_of_two_agents_swaps_observations_with_the_seats() -> None:
    """The other env marlcli's mirrored self-play accepts with its defaults and whose observation
    depends on the seat (spread with N=2; rendezvous sees constants): swapping the two agents'
    physical states swaps their observations."""
    cfg = make_cfg("env=spread", "env.backend=native", "env.N=2", "selfplay=latest")
    env = make_env(cfg.env, 4, 0, CPU)
    assert selfplay.learning_roles(cfg, env.spec) is None and selfplay.learners(cfg, env.spec) == [0]
    env.reset()
    env.step(torch.randint(env.spec.act_dims[0], (4, 2)))  # move, so that velocities differ too
    state = env.state_dict()
    obs = env.load_state_dict(state).obs
    swapped = dict(state)
    for key in ("pos", "vel"):  # [B, 2, entities]: the agents come first
        x = state[key].clone()
        x[..., [0, 1]] = x[..., [1, 0]]
        swapped[key] = x
    assert torch.allclose(env.load_state_dict(swapped).obs, obs.flip(1))


def test_exploitability_observations_match_the_env_per_seat() -> None:
    """The exact measure reads each seat's table from the observations the env gives that seat."""
    payoff = torch.as_tensor(GAMES["prisoners"][0]())
    env = matrix_env("prisoners", "native", 4)
    env.reset()
    acts = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]])
    ts = env.step(acts)
    state = 1 + acts[:, 0] * 2 + acts[:, 1]
    for seat in (0, 1):
        assert torch.equal(ex.observations(payoff, True, seat)[state].float(), ts.obs[:, seat])


# ----------------------------------------------------------------------------- 2. marl eval / export of latest
def test_eval_and_export_of_a_latest_run_play_the_latest_snapshot(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Training pruned every member but the newest; ``marl eval`` and ``marl export`` must rebuild
    the league with latest's window of 1 (no ``Missing key(s)`` traceback) and play that member alone."""
    from marlcli.cli import main

    out = train(make_cfg(f"results_dir={tmp_path}", "run=t", "device=cpu", "logger.progress=false", "env=rps",
                         "env.backend=native", "env.num_envs=4", "algo=ippo", "algo.rollout_steps=8",
                         "selfplay=latest", "selfplay.snapshot_interval=32", "train.total_steps=192",
                         "train.eval_episodes=4", "train.eval_envs=4", "train.eval_interval=96"))
    payload = torch.load(out / "checkpoints" / "latest.pt", weights_only=False)
    members = payload["env"]["league"]["members"]
    assert len(members) >= 3 and not members[0]["actor"] and members[-1]["actor"]  # pruned: the crash's cause
    played: set[int] = set()
    real = OpponentBank.actor

    def spy(self: OpponentBank, member: int) -> torch.nn.Module:
        played.add(int(member))
        return real(self, member)

    monkeypatch.setattr(OpponentBank, "actor", spy)
    assert main(["eval", str(out), "episodes=8", "envs=4"]) == 0
    assert played == {members[-1]["id"]}
    played.clear()
    assert main(["export", str(out), f"out={tmp_path / 'export'}", "format=torchscript", "parity_episodes=2",
                 "latency_iters=2"]) == 0
    assert played == {members[-1]["id"]}


def test_eval_opponents_are_what_training_draws() -> None:
    """``latest``: the newest member alone, even with a pinned ``selfplay.init`` member in the
    window (training's latest_prob=1 never draws it); ``pool``: the window."""
    from marlcli.selfplay.league import League

    sp = OmegaConf.create({"mode": "latest", "pool_size": 20, "latest_prob": 0.0, "pfsp": False, "pfsp_power": 1.0,
                           "elo_k": 16.0})
    league = League(selfplay.league_settings(sp), 0)
    league.add(0, {}, source="init.pt", pinned=True)
    for step in range(4):
        league.add(step, {})
    assert league.window == 1
    assert set(league.sample(64).tolist()) == {4} and selfplay.eval_opponents(league, "latest") == [4]
    pool = League(selfplay.league_settings(OmegaConf.merge(sp, {"mode": "pool", "pool_size": 2})), 0)
    for step in range(4):
        pool.add(step, {})
    assert selfplay.eval_opponents(pool, "pool") == [2, 3]


# ----------------------------------------------------------------------------- 6. history-dependent actors
class Clock(torch.nn.Module):
    """Cooperates in round 1 and defects from round 2 on, whatever it sees: its hidden state
    counts the rounds. Read at the initial hidden state it would always cooperate."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))

    def initial_hidden(self, batch: int) -> torch.Tensor:
        return torch.zeros(batch, 2, 1)

    def act(self, obs: torch.Tensor, avail: torch.Tensor, hidden: torch.Tensor, deterministic: bool) -> tuple:
        return (hidden[..., 0] > 0).long(), hidden + 1 + 0 * self.w


def test_history_dependent_actor_is_measured_from_its_own_history() -> None:
    """Clock vs Clock over 10 rounds: cooperation rate 1/10; a best response defects in round 1
    (5 instead of 3) and then as well (1 each): exploitability 2. Read at the initial hidden state
    (before the fix): always cooperate, cooperation rate 1, exploitability 20."""
    cfg = make_cfg("env=prisoners", "env.backend=native")
    m = selfplay.MatrixMetrics(selfplay.matrix_game(cfg), ["player_0", "player_1"], [0, 1], 2)
    out = m.measure(Clock())
    assert out["matrix/action_rate/player_0/0"] == pytest.approx(0.1)
    assert out["matrix/action_rate/player_1/0"] == pytest.approx(0.1)
    assert out["matrix/exploitability"] == pytest.approx(2.0)
    assert out["matrix/policy/player_0/0"] == 1.0  # round 1 cooperates


def greedy_rollout_rates(actor: torch.nn.Module, horizon: int) -> list[float]:
    """Both players greedy through the real env, the actor's hidden state carried as training does:
    the cooperation rate of each player over one episode."""
    env = matrix_env("prisoners", "native", 1, f"env.max_cycles={horizon}")
    ts, hidden = env.reset(), actor.initial_hidden(1)
    coop = torch.zeros(2)
    with torch.no_grad():
        for _ in range(horizon):
            acts, hidden = actor.act(ts.obs, ts.avail, hidden, True)
            coop += (acts[0] == 0).float()
            ts = env.step(acts)
    return (coop / horizon).tolist()


@pytest.mark.parametrize("option", ["algo.agent=rnn", "algo.last_action=true"])
def test_q_actor_tables_follow_the_hidden_state_it_plays_with(option: str) -> None:
    """A recurrent / last-action IQL actor on prisoners: the measured action rates are those of
    the actor really playing itself greedily (a deterministic episode), for a batch of random
    initialisations; before the fix the tables were read at the zero hidden state."""
    horizon = 6
    cfg = make_cfg("env=prisoners", "env.backend=native", f"env.max_cycles={horizon}", "algo=iql", option,
                   "algo.hidden=8")
    spec = make_env(cfg.env, 1, 0, CPU).spec
    differs = 0
    for seed in range(6):
        torch.manual_seed(seed)
        actor = load_family(cfg.algo).make_actor(spec, cfg)
        for p in actor.parameters():
            p.data.mul_(4.0)  # sharper nets: their greedy moves do depend on what they saw
        m = selfplay.MatrixMetrics(selfplay.matrix_game(cfg), spec.agents, [0, 1], 2)
        out = m.measure(actor)
        rates = greedy_rollout_rates(actor, horizon)
        assert [out["matrix/action_rate/player_0/0"], out["matrix/action_rate/player_1/0"]] == pytest.approx(rates)
        # the per-state reading, as before the fix: the zero hidden state at every state (each seat's view)
        start_and_last = torch.cat([torch.zeros(1, 4), torch.eye(4)])
        full = torch.stack([start_and_last, start_and_last[:, [0, 2, 1, 3]]], 1)  # seat 1: (a1, a0) first
        acts, _ = actor.act(full, torch.ones(5, 2, 2, dtype=torch.bool), actor.initial_hidden(5), True)
        old = [torch.nn.functional.one_hot(acts[:, p], 2).double() for p in (0, 1)]
        old_rates = ex.occupancy(torch.as_tensor(GAMES["prisoners"][0]()), *old, horizon, True)
        differs += [float(old_rates[0][0]), float(old_rates[1][0])] != pytest.approx(rates)
    assert differs > 0  # the case the fix is for occurs among these actors


def test_tree_tables_match_the_actor_along_random_histories() -> None:
    """Player 0 greedy against a random player 1 in the real env, a GRU + last-action actor: at
    every step its action is its tree table's row for the history so far."""
    horizon, b = 5, 16
    cfg = make_cfg("env=prisoners", "env.backend=native", f"env.max_cycles={horizon}", "algo=iql", "algo.agent=rnn",
                   "algo.last_action=true", "algo.hidden=8")
    env = make_env(cfg.env, b, 0, CPU)
    torch.manual_seed(3)
    actor = load_family(cfg.algo).make_actor(env.spec, cfg)
    for p in actor.parameters():
        p.data.mul_(4.0)
    payoff, k = torch.as_tensor(GAMES["prisoners"][0]()), 4
    t0, _ = ex.policy_tables(actor, payoff, True, horizon, 2, [0, 1])
    table = dict(zip(t0.ids.tolist(), t0.probs.argmax(-1).tolist(), strict=True))
    ts, hidden = env.reset(), actor.initial_hidden(b)
    node, offset = torch.zeros(b, dtype=torch.long), 0
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for t in range(horizon):
            acts, hidden = actor.act(ts.obs, ts.avail, hidden, True)
            assert acts[:, 0].tolist() == [table[offset + int(n)] for n in node]
            acts[:, 1] = torch.randint(2, (b,), generator=gen)
            ts = env.step(acts)
            if t + 1 < horizon:
                node, offset = node * k + acts[:, 0] * 2 + acts[:, 1], offset + k**t


def test_tree_measure_equals_the_stationary_one_for_a_memoryless_policy() -> None:
    """A per-state policy written as a tree table gives the same values, best responses and
    occupancy as the per-state recursion (the tree code checked against the reference one)."""
    payoff, horizon = torch.as_tensor(GAMES["prisoners"][0]()), 4
    gen = torch.Generator().manual_seed(0)
    pi = [torch.softmax(torch.randn(5, 2, generator=gen, dtype=torch.float64), -1) for _ in range(2)]
    sizes = ex.tree_sizes(payoff, horizon)
    state = [torch.zeros(1, dtype=torch.long)]
    for _ in sizes[1:]:
        state.append((1 + torch.arange(4)).repeat(len(state[-1])))  # child m * 4 + j: last joint action j
    state = torch.cat(state)
    trees = [ex.TreeTable(torch.arange(len(state)), p[state], torch.ones(len(state))) for p in pi]
    for br in (None, 0, 1):
        torch.testing.assert_close(ex.tree_values(payoff, *trees, horizon, br), ex.values(payoff, *pi, horizon, True, br))
    assert ex.tree_exploitability(payoff, *trees, horizon) == pytest.approx(ex.exploitability(payoff, *pi, horizon, True))
    for x, y in zip(ex.tree_occupancy(payoff, *trees, horizon), ex.occupancy(payoff, *pi, horizon, True), strict=True):
        torch.testing.assert_close(x, y)


def test_recurrent_iql_selfplay_on_prisoners_trains_and_resumes_its_measures(tmp_path: Path) -> None:
    """The trainer path: a GRU IQL learner in mirrored self-play on prisoners reports the tree
    measures, and a resumed run continues them (the averages are in the checkpoint)."""
    common = [f"results_dir={tmp_path}", "device=cpu", "logger.progress=false", "env=prisoners", "env.backend=native",
              "env.num_envs=2", "env.max_cycles=4", "algo=iql", "algo.agent=rnn", "algo.hidden=8",
              "selfplay=latest", "selfplay.snapshot_interval=64", "train.eval_episodes=2", "train.eval_envs=2",
              "train.log_interval=16", "train.eval_interval=1000000"]
    whole = train(make_cfg(*common, "run=a", "train.total_steps=128", "train.checkpoint_interval=64"))
    half = train(make_cfg(*common, "run=b", "train.total_steps=64", "train.checkpoint_interval=64"))
    (half / "done").unlink()
    train(make_cfg(*common, "run=b", f"resume={half}", "train.total_steps=128"))
    rows = [[r for r in results.read_metrics(d / "metrics.jsonl") if "matrix/exploitability" in r] for d in (whole, half)]
    assert rows[0] and all(r["matrix/exploitability"] >= 0.0 for r in rows[0])
    assert strip_time(rows[0]) == strip_time(rows[1])  # the averages continue exactly
    assert "tree" in results.load_checkpoint(whole)["selfplay"]["matrix"]
