"""Self-play (issue 20): exact exploitability, the pool's sampling and Elo, the env wrapper,
resume keeping the pool bit for bit, cross-play. The RPS learning test: tests/learning/test_selfplay_learns.py."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import make_cfg, strip_time

from marlcli import results
from marlcli.envs.matrix import MatrixVecEnv, prisoners_payoff, rps_payoff
from marlcli.errors import ConfigError
from marlcli.selfplay import exploitability as ex
from marlcli.selfplay.league import League, fit_elo
from marlcli.selfplay.mirrored import OpponentBank, SelfPlayVecEnv
from marlcli.trainer import train, validate

RPS = torch.as_tensor(rps_payoff())
PD = torch.as_tensor(prisoners_payoff())


# ----------------------------------------------------------------------------- exploitability (hand-computed)
def test_rps_exploitability_hand_values() -> None:
    rock = torch.tensor([[1.0, 0.0, 0.0]])
    uniform = torch.full((1, 3), 1 / 3)
    half = torch.tensor([[0.5, 0.5, 0.0]])  # best response: paper, earning 0.5*1 + 0.5*0
    assert ex.exploitability(RPS, rock, rock) == pytest.approx(1.0)  # paper beats it every time
    assert ex.nashconv(RPS, rock, rock) == pytest.approx(2.0)
    assert ex.exploitability(RPS, uniform, uniform) == pytest.approx(0.0, abs=1e-12)
    assert ex.exploitability(RPS, half, half) == pytest.approx(0.5)
    # rock vs paper: player 0 gains 1 by switching to scissors (from -1 to +1 = 2), player 1 gains 0
    paper = torch.tensor([[0.0, 1.0, 0.0]])
    assert ex.nashconv(RPS, rock, paper) == pytest.approx(2.0)


def test_prisoners_exploitability_hand_values() -> None:
    c, d = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    assert ex.nashconv(PD, c, c) == pytest.approx(4.0)  # each gains 5 - 3 by defecting
    assert ex.nashconv(PD, d, d) == pytest.approx(0.0)  # (D, D) is the Nash equilibrium
    mix = torch.tensor([[0.5, 0.5]])  # value 0.5*1.5 + 0.5*3 = 2.25, defecting earns 3: +0.75 each
    assert ex.nashconv(PD, mix, mix) == pytest.approx(1.5)
    # iterated, 2 rounds, tit-for-tat both (state 0 = start, 1 + 2*a0 + a1 = last joint action):
    # cooperating throughout earns 6; the best deviation is C then D: 3 + 5 = 8, a gain of 2 each
    tft0 = torch.tensor([[1.0, 0], [1, 0], [0, 1], [1, 0], [0, 1]])  # player 0 copies player 1's last
    tft1 = torch.tensor([[1.0, 0], [1, 0], [1, 0], [0, 1], [0, 1]])  # player 1 copies player 0's last
    assert ex.values(PD, tft0, tft1, 2, True).tolist() == pytest.approx([6.0, 6.0])
    assert ex.nashconv(PD, tft0, tft1, 2, True) == pytest.approx(4.0)
    assert ex.exploitability(PD, tft0, tft1, 2, True) == pytest.approx(2.0)
    f0, f1 = ex.occupancy(PD, tft0, tft1, 2, True)
    assert f0.tolist() == pytest.approx([1.0, 0.0]) and f1.tolist() == pytest.approx([1.0, 0.0])
    alld = d.expand(5, 2)  # always-defect vs tit-for-tat over 4 rounds: 5 + 1 + 1 + 1 = 8
    assert ex.values(PD, alld, tft1, 4, True).tolist() == pytest.approx([8.0, 3.0])
    f0, f1 = ex.occupancy(PD, alld, tft1, 4, True)
    assert f1.tolist() == pytest.approx([0.25, 0.75])  # tit-for-tat cooperates in round 1 only


# ----------------------------------------------------------------------------- the pool
def sp(**kw: object) -> SimpleNamespace:
    base = {"pool_size": 3, "latest_prob": 0.0, "pfsp": False, "pfsp_power": 1.0, "elo_k": 16.0}
    return SimpleNamespace(**{**base, **kw})


def actor_state(v: float) -> dict[str, torch.Tensor]:
    return {"w": torch.full((2,), v)}


def test_pool_window_sampling_and_snapshot_bookkeeping() -> None:
    league = League(sp(pool_size=2), seed=0)
    for step in (0, 100, 200, 300):
        league.add(step, actor_state(step))
    assert [m.id for m in league.active()] == [2, 3] and [m.step for m in league.members] == [0, 100, 200, 300]
    draws = league.sample(2000)
    assert set(draws.tolist()) == {2, 3} and abs(float((draws == 3).double().mean()) - 0.5) < 0.05
    league.prune(in_use={1})  # member 1 is still being played by some copy: keeps its weights
    assert [bool(m.actor) for m in league.members] == [False, True, True, True]
    league.prune(in_use=set())
    assert [bool(m.actor) for m in league.members] == [False, False, True, True]
    league.add(0, actor_state(-1), source="elsewhere", pinned=True)  # an init member stays drawn
    assert [m.id for m in league.active()] == [4, 2, 3]
    latest = League(sp(pool_size=5, latest_prob=1.0), seed=0)
    for step in range(4):
        latest.add(step, actor_state(step))
    assert set(latest.sample(100).tolist()) == {3}
    a, b = League(sp(), seed=3), League(sp(), seed=3)
    for lg in (a, b):
        for step in range(3):
            lg.add(step, actor_state(step))
    assert torch.equal(a.sample(50), b.sample(50))  # own generator: same seed, same draws


def test_pfsp_prefers_opponents_the_learner_loses_to() -> None:
    league = League(sp(pfsp=True, pfsp_power=2.0), seed=0)
    for step in range(2):
        league.add(step, actor_state(step))
    league.record(torch.tensor([0] * 50 + [1] * 50), torch.tensor([1.0] * 50 + [0.0] * 50))
    league.rate()
    draws = league.sample(4000)
    assert float((draws == 1).double().mean()) > 0.9  # the learner beat member 0, lost to member 1


def test_elo_one_game_per_member_and_update() -> None:
    league = League(sp(), seed=0)
    league.add(0, actor_state(0))
    league.record(torch.tensor([0, 0, 0, 0]), torch.tensor([1.0, 1.0, 1.0, 0.0]))  # mean score 0.75
    out = league.rate()
    # equal ratings: expected 0.5, so both move by 16 * (0.75 - 0.5) = 4
    assert league.learner_elo == pytest.approx(1004.0) and league.members[0].elo == pytest.approx(996.0)
    assert out["selfplay/win_rate"] == pytest.approx(0.75) and league.members[0].games == 4
    league.add(10, actor_state(1))  # a snapshot starts at the learner's rating
    assert league.members[1].elo == pytest.approx(1004.0)


def test_fitted_elo_is_the_maximum_likelihood_rating() -> None:
    # two players, 3 wins of 4: the Bradley-Terry rating difference is 400 log10(3) (prior ~ 0)
    games, score = np.array([[0.0, 4.0], [0.0, 0.0]]), np.array([[0.0, 3.0], [0.0, 0.0]])
    assert fit_elo(score, games, prior=1e-9)[0][1] == pytest.approx(1000.0 - 400.0 * np.log10(3.0), abs=1e-6)
    # many games between players of known ratings: the fit recovers them
    true = np.array([1000.0, 1100.0, 1200.0, 1400.0])
    expected = 1.0 / (1.0 + 10.0 ** ((true[None, :] - true[:, None]) / 400.0))
    games = np.full((4, 4), 10_000.0) - np.diag(np.full(4, 10_000.0))
    elo, cov = fit_elo(expected * games, games)
    np.testing.assert_allclose(elo, true, atol=0.5)
    se = np.sqrt(cov[1, 1] + cov[0, 0] - 2 * cov[0, 1])  # ~ 400 / ln10 / sqrt(games p (1-p) ...): a few Elo
    assert 1.0 < se < 5.0
    # a player with no games, or only wins, stays finite (the prior)
    out, _ = fit_elo(np.array([[0.0, 4.0, 0.0], [0.0] * 3, [0.0] * 3]), np.array([[0.0, 4.0, 0.0], [0.0] * 3, [0.0] * 3]))
    assert np.isfinite(out).all() and out[2] > out[1]


def test_the_learner_of_a_phase_stands_for_the_snapshot_it_becomes() -> None:
    league = League(sp(), seed=0)
    league.add(0, actor_state(0))
    league.record(torch.tensor([0] * 8), torch.tensor([1.0] * 6 + [0.0] * 2))  # the learner after snapshot 0
    league.rate()
    league.add(10, actor_state(1))
    league.record(torch.tensor([0] * 4 + [1] * 4), torch.tensor([1.0] * 4 + [0.5] * 4))
    league.rate()
    assert league.pair_games[1, 0] == 8 and league.pair_score[1, 0] == 6  # phase 0's games: player 1 vs 0
    assert league.pair_games[2, :2].tolist() == [4.0, 4.0] and league.pair_score[2, :2].tolist() == [4.0, 2.0]
    table = league.table()
    fit = [m["elo_fit"] for m in table["members"]] + [table["learner_elo_fit"]]
    assert fit[0] == 1000.0 and fit[0] < fit[1] <= fit[2]
    copy = League(sp(), seed=0)
    copy.load_state_dict(league.state_dict())
    assert copy.table() == table


# ----------------------------------------------------------------------------- the wrapper
class Fixed(torch.nn.Module):
    """An actor that always plays ``w`` (the index stored in its weights)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("w", torch.zeros((), dtype=torch.long))

    def initial_hidden(self, batch: int) -> None:
        return None

    def act(self, obs: torch.Tensor, avail: torch.Tensor, hidden: None, deterministic: bool) -> tuple:
        return torch.full(obs.shape[:2], int(self.w), dtype=torch.long), None


def test_wrapper_shows_learners_only_and_each_copy_plays_its_own_member() -> None:
    cfg = SimpleNamespace(get=lambda k, d=None: {"name": "rps", "max_cycles": 1}.get(k, d))
    inner = MatrixVecEnv(cfg, 4, 0, torch.device("cpu"))
    weights = {0: {"w": torch.tensor(0)}, 1: {"w": torch.tensor(2)}}  # member 0 plays rock, 1 scissors
    games: list = []
    env = SelfPlayVecEnv(inner, [0], OpponentBank(Fixed, weights.__getitem__, torch.device("cpu")),
                         lambda n: torch.tensor([0, 1, 0, 1])[:n], lambda i, s: games.append((i, s)))
    assert env.spec.agents == ["player_0"] and env.spec.n_agents == 1
    ts = env.reset()
    assert ts.obs.shape == (4, 1, 1)
    ts = env.step(torch.ones(4, 1, dtype=torch.long))  # paper: beats rock (+1), loses to scissors (-1)
    assert ts.reward[:, 0].tolist() == [1.0, -1.0, 1.0, -1.0]
    ids, scores = games[0]
    assert ids.tolist() == [0, 1, 0, 1] and scores.tolist() == [1.0, 0.0, 1.0, 0.0]


def test_selfplay_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="selfplay.learn"):
        validate(make_cfg("env=rps", "selfplay=pool", "selfplay.learn=[nobody]"))
    with pytest.raises(ConfigError, match="mirror"):  # spread: one role, 1 learner vs 2 others
        validate(make_cfg("env=spread", "env.backend=native", "selfplay=pool"))
    with pytest.raises(ConfigError, match="latest_prob"):
        validate(make_cfg("env=rps", "selfplay=pool", "selfplay.latest_prob=2"))


# ----------------------------------------------------------------------------- resume and results tree
def rps_overrides(tmp_path: Path, *extra: str) -> list[str]:
    return [f"results_dir={tmp_path}", "run=t", "device=cpu", "logger.progress=false", "env=rps", "env.backend=native",
            "env.num_envs=16", "algo=ippo", "algo.rollout_steps=10", "algo.lr_schedule=constant", "selfplay=pool", "selfplay.snapshot_interval=480",
            "selfplay.pool_size=3", "selfplay.pfsp=true", "selfplay.latest_prob=0.2", "train.log_interval=160",
            "train.eval_interval=960", "train.eval_episodes=16", "train.eval_envs=16", *extra]


def test_resume_keeps_pool_and_elo_bit_for_bit(tmp_path: Path) -> None:
    whole = train(make_cfg(*rps_overrides(tmp_path / "a", "train.total_steps=1920", "train.checkpoint_interval=960")))
    half = train(make_cfg(*rps_overrides(tmp_path / "b", "train.total_steps=960", "train.checkpoint_interval=960")))
    (half / "done").unlink()
    train(make_cfg(*rps_overrides(tmp_path / "b", f"resume={half}", "train.total_steps=1920")))
    a, b = (results.read_metrics(d / "metrics.jsonl") for d in (whole, half))
    assert strip_time(a) == strip_time(b)
    assert any("matrix/exploitability_avg" in r and "selfplay/learner_elo" in r for r in a)
    assert (whole / "pool" / "league.json").read_text() == (half / "pool" / "league.json").read_text()
    names = sorted(p.name for p in (whole / "pool").glob("member_*.pt"))
    assert names == sorted(p.name for p in (half / "pool").glob("member_*.pt")) and len(names) == 5
    for n in names:
        x, y = (torch.load(d / "pool" / n, weights_only=True) for d in (whole, half))
        assert x["step"] == y["step"] and all(torch.equal(x["actor"][k], y["actor"][k]) for k in x["actor"])
    table = json.loads((whole / "pool" / "league.json").read_text())
    assert [m["step"] for m in table["members"]][:2] == [0, 480] and sum(m["games"] for m in table["members"]) > 0


# ----------------------------------------------------------------------------- cross-play
def test_side_by_side_uses_each_sides_own_actor() -> None:
    from marlcli.selfplay.crossplay import SideBySide

    rock, scissors = Fixed(), Fixed()
    scissors.w.fill_(2)
    acts, _ = SideBySide(rock, scissors, [True, False]).act(torch.ones(3, 2, 1), torch.ones(3, 2, 3, dtype=torch.bool),
                                                            None, True)
    assert acts.tolist() == [[0, 2]] * 3


def test_crossplay_of_two_selfplay_runs_is_zero_sum(tmp_path: Path) -> None:
    from marlcli.selfplay.crossplay import evaluate_vs

    a = train(make_cfg(*rps_overrides(tmp_path, "train.total_steps=480", "run=a", "seed=0")))
    b = train(make_cfg(*rps_overrides(tmp_path, "train.total_steps=480", "run=b", "seed=1")))
    ab = evaluate_vs(a, b, episodes=64, envs=64)
    ba = evaluate_vs(b, a, episodes=64, envs=64)
    assert len(ab) == 1 and ab[0]["side"] == "player_0" and ab[0]["vs"] == str(b)
    # deterministic: A's greedy action vs B's, then B's vs A's; RPS is zero-sum and symmetric
    assert ab[0]["return_mean"] == pytest.approx(-ba[0]["return_mean"])
    assert abs(ab[0]["return_mean"]) in (0.0, 1.0)
    # marl report on a self-play run: the snapshots' payoff matrix (members 0 and 480 here)
    from marlcli.selfplay.payoff import payoff_matrix, write_all

    members, m = payoff_matrix(a, episodes=32)
    assert [d["step"] for d in members] == [0, 480] and m.shape == (2, 2) and np.isfinite(m).all()
    assert write_all([a, b], tmp_path) == ["payoff_a_seed0.md", "payoff_a_seed0.png", "payoff_b_seed1.md",
                                           "payoff_b_seed1.png"]
