"""Asymmetric self-play (tag: 3 predators vs 1 prey): roles per env copy, frozen agents, outcome, resume, cross-play."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_cfg, strip_time
from omegaconf import OmegaConf

from marlcli import results
from marlcli.algos import load_family
from marlcli.envs.base import EnvSpec
from marlcli.envs.native.tag import TagEnv
from marlcli.envs.outcome import role_scores
from marlcli.selfplay.mirrored import OpponentBank
from marlcli.selfplay.roles import SCORE_STAT, RoleSelfPlayVecEnv
from marlcli.trainer import train

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny nets: a second thread is 10x slower on a shared 2-core box


def tag_spec() -> EnvSpec:
    return TagEnv(OmegaConf.create({}), 1, 0, torch.device("cpu")).spec


def test_tag_outcome_predators_win_on_a_catch_else_prey() -> None:
    spec = tag_spec()
    assert spec.roles == ["adversary", "agent"]
    returns = torch.tensor([[0.0, 0, 0, -50], [10, 10, 10, -10], [30, 30, 30, 5]])  # returns do not decide tag
    s = role_scores(spec, returns, {"catches": torch.tensor([0.0, 1.0, 3.0])})
    assert s.tolist() == [[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]]
    spec.outcome = None  # no declared rule: the role with the higher mean return wins, a tie is a draw
    s = role_scores(spec, torch.tensor([[1.0, 1, 1, 0], [0, 0, 0, 2], [1, 1, 1, 1]]), {})
    assert s.tolist() == [[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]]


class Const(torch.nn.Module):
    """A frozen 'actor' that plays action ``k`` everywhere (k = its weight)."""

    def __init__(self) -> None:
        super().__init__()
        self.k = torch.nn.Parameter(torch.zeros(()))

    def initial_hidden(self, batch: int) -> None:
        return None

    def act(self, obs: torch.Tensor, avail: torch.Tensor, hidden: None, deterministic: bool) -> tuple:
        return torch.full(obs.shape[:2], int(self.k), dtype=torch.long), None


def test_each_copy_learns_one_role_and_the_others_play_frozen() -> None:
    env = TagEnv(OmegaConf.create({"max_cycles": 3}), 4, 0, torch.device("cpu"))
    bank = OpponentBank(Const, lambda m: {"k": torch.tensor(float(m + 1))}, torch.device("cpu"))
    games: list = []
    wrapped = RoleSelfPlayVecEnv(env, [0, 1], bank, lambda n: torch.arange(n) % 2,
                                 lambda ids, s: games.append((ids, s)))
    assert wrapped.spec.agents == env.spec.agents and SCORE_STAT in wrapped.spec.stats
    ts = wrapped.reset()
    learn = [[True, True, True, False], [False, False, False, True]] * 2  # copies 0, 2: predators; 1, 3: prey
    assert ts.alive.tolist() == learn
    for _ in range(3):
        ts = wrapped.step(torch.zeros(4, 4, dtype=torch.long))
        # frozen agents play their member's action (member b % 2 -> action b % 2 + 1); learners play 0
        want = torch.where(torch.tensor(learn), 0, (torch.arange(4) % 2 + 1)[:, None])
        assert torch.equal(wrapped.played, want)
        assert ts.final_alive.tolist() == learn
    ids, scores = games[0]
    assert ids.tolist() == [0, 1, 0, 1] and set(scores.tolist()) <= {0.0, 1.0}
    assert torch.equal(ts.info[SCORE_STAT], scores.float())


def tag_overrides(tmp_path: Path, algo: str = "mappo", *extra: str) -> list[str]:
    return [f"results_dir={tmp_path}", "run=t", "device=cpu", "logger.progress=false", "env=tag", "env.backend=native",
            "env.num_envs=8", "env.max_cycles=10", f"algo={algo}", "sharing=role", "selfplay=pool",
            "selfplay.snapshot_interval=160", "selfplay.pool_size=3", "selfplay.latest_prob=0.2",
            "train.log_interval=80", "train.eval_interval=320", "train.eval_episodes=8", "train.eval_envs=8",
            "train.total_steps=640", *extra]


FAMILY = {"mappo": ["algo.rollout_steps=10", "algo.minibatches=2", "algo.epochs=2"],
          "ippo": ["algo.rollout_steps=10", "algo.minibatches=2", "algo.epochs=2"],
          "coma": ["algo.rollout_steps=10"],
          "iql": ["algo.rollout_steps=10", "algo.batch_episodes=4", "algo.learning_starts=1"],
          "maddpg": ["algo.rollout_steps=10", "algo.batch_size=32", "algo.learning_starts=0"]}


@pytest.mark.parametrize("algo", list(FAMILY))
def test_frozen_agents_transitions_train_nothing(algo: str) -> None:
    """Every family composes with asymmetric self-play on tag, and one update learns exactly the same
    (up to float summation order) when the frozen agents' rewards are changed: their transitions train nothing."""
    from dataclasses import replace

    from marlcli import selfplay
    from marlcli.buffers import Rollout
    from marlcli.envs import make_env

    cfg = make_cfg(*tag_overrides(Path("/nonexistent"), algo, *FAMILY[algo]))
    dev = torch.device("cpu")
    torch.manual_seed(0)
    session = selfplay.Session(cfg, make_env(cfg.env, 8, 0, dev), dev)
    env = session.env
    learner = load_family(cfg.algo).make(env.spec, cfg, dev)
    session.start(learner)
    ts, steps = env.reset(), []
    for _ in range(10):  # one episode per copy (max_cycles=10)
        actions, _ = learner.act(ts, None, 0)
        nxt = env.step(actions)
        steps.append((ts, env.played, nxt))
        ts = nxt
    r = Rollout.from_steps(steps)
    assert not r.alive.all() and r.alive.any(1).all()  # every copy has learning and frozen agents
    bonus = 100.0 * torch.arange(1.0, 5.0) * r.obs[..., 0].sign()  # varies with the state
    altered = replace(r, reward=torch.where(r.alive, r.reward, r.reward + bonus))
    twin = copy.deepcopy(learner)
    before = {k: v.clone() for k, v in learner.actor.state_dict().items()}
    torch.manual_seed(1)
    learner.update(r, 80)
    torch.manual_seed(1)
    twin.update(altered, 80)
    after, other = learner.actor.state_dict(), twin.actor.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in after)  # the update did learn something
    for k in after:  # a leak moves weights by ~lr (1e-4..1e-3); summation order alone by < 1e-7
        assert torch.allclose(after[k], other[k], rtol=0.0, atol=1e-6), k


def test_asymmetric_pool_bookkeeping(tmp_path: Path) -> None:
    out = train(make_cfg(*tag_overrides(tmp_path, "mappo", *FAMILY["mappo"])))
    table = json.loads((out / "pool" / "league.json").read_text())
    assert [m["step"] for m in table["members"]] == [0, 160, 320, 480, 640]
    assert all(m["active"] for m in table["members"][-3:])  # the window of 3 (older ones until no copy plays them)
    assert sorted(p.name for p in (out / "pool").glob("member_*.pt")) == [f"member_{i}.pt" for i in range(5)]
    assert sum(m["games"] for m in table["members"]) > 0
    cfg = results.checkpoint_config(results.load_checkpoint(out))
    spec = tag_spec()
    actor = load_family(cfg.algo).make_actor(spec, cfg)  # a member is the full actor: every role
    for p in sorted((out / "pool").glob("member_*.pt")):
        actor.load_state_dict(torch.load(p, weights_only=True)["actor"])
    evals = [r for r in results.read_metrics(out / "metrics.jsonl") if "eval/selfplay_score" in r]
    assert evals and all(0.0 <= r["eval/selfplay_score"] <= 1.0 and "eval/win_rate/adversary" in r for r in evals)
    assert all(np.isfinite(m["elo_fit"]) for m in table["members"]) and table["members"][0]["elo_fit"] == 1000.0
    # marl report: the snapshots' payoff matrix by the outcome rule, with the Elo fitted to it
    from marlcli.selfplay.payoff import write_payoff

    assert write_payoff(out, tmp_path) == ["payoff_t_seed0.md", "payoff_t_seed0.png"]
    assert "Elo fitted to this matrix" in (tmp_path / "payoff_t_seed0.md").read_text()


def test_asymmetric_resume_is_bit_for_bit(tmp_path: Path) -> None:
    fixed = [*FAMILY["mappo"], "algo.lr_schedule=constant"]  # a linear lr depends on train.total_steps
    whole = train(make_cfg(*tag_overrides(tmp_path / "a", "mappo", *fixed, "train.checkpoint_interval=320")))
    half = train(make_cfg(*tag_overrides(tmp_path / "b", "mappo", *fixed, "train.total_steps=320",
                                         "train.checkpoint_interval=320")))
    (half / "done").unlink()
    train(make_cfg(*tag_overrides(tmp_path / "b", "mappo", *fixed, f"resume={half}")))
    a, b = (results.read_metrics(d / "metrics.jsonl") for d in (whole, half))
    assert strip_time(a) == strip_time(b) and any("selfplay/learner_elo" in r for r in a)
    assert (whole / "pool" / "league.json").read_text() == (half / "pool" / "league.json").read_text()
    xa, xb = (results.load_checkpoint(d)["actor"] for d in (whole, half))
    assert all(torch.equal(xa[k], xb[k]) for k in xa)


def test_crossplay_predators_of_a_vs_prey_of_b(tmp_path: Path) -> None:
    from marlcli.evaluate import run_episodes
    from marlcli.selfplay.crossplay import SideBySide, evaluate_vs
    from marlcli.trainer import env_for_eval

    a = train(make_cfg(*tag_overrides(tmp_path, "mappo", *FAMILY["mappo"], "run=a", "train.total_steps=160")))
    b = train(make_cfg(*tag_overrides(tmp_path, "mappo", *FAMILY["mappo"], "run=b", "seed=1",
                                      "train.total_steps=160")))
    rows = {r["side"]: r for r in evaluate_vs(a, b, episodes=32, envs=32, deterministic=True)}
    assert set(rows) == {"adversary", "agent"} and 0.0 <= rows["adversary"]["win_rate"] <= 1.0
    # the same episodes by hand: A's actor on the predators, B's on the prey, nothing else
    pa, pb = results.load_checkpoint(a), results.load_checkpoint(b)
    cfg = results.checkpoint_config(pa)
    env = env_for_eval(cfg, 32, 0, torch.device("cpu"))
    fam = load_family(cfg.algo)
    actors = []
    for p in (pa, pb):
        x = fam.make_actor(env.spec, cfg)
        x.load_state_dict(p["actor"])
        actors.append(x.eval())
    res = run_episodes(SideBySide(actors[0], actors[1], [True, True, True, False]), env, 32, True)
    assert res.summary()["eval/win_rate/adversary"] == rows["adversary"]["win_rate"]
    assert res.summary()["eval/catches"] == rows["adversary"]["catches"]
    # B's prey swapped for A's: a different matchup, other results
    res2 = run_episodes(SideBySide(actors[0], actors[0], [True, True, True, False]), env, 32, True)
    assert res2.summary()["eval/return_mean"] != res.summary()["eval/return_mean"]


def test_asymmetric_selfplay_config() -> None:
    from marlcli import selfplay
    from marlcli.errors import ConfigError
    from marlcli.trainer import validate

    spec = tag_spec()
    assert selfplay.learning_roles(make_cfg("env=tag", "selfplay=pool"), spec) == [0, 1]  # every role learns
    assert selfplay.learning_roles(make_cfg("env=tag", "selfplay=pool", "selfplay.learn=[agent_0]"), spec) == [1]
    with pytest.raises(ConfigError, match="per-agent learners"):  # VDN/QMIX mix every agent into one value
        validate(make_cfg("env=tag", "algo=vdn", "selfplay=pool"))
    with pytest.raises(ConfigError, match="standardise_rewards"):
        validate(make_cfg("env=tag", "algo=iql", "selfplay=pool", "algo.standardise_rewards=true"))


def test_rate_eval_counts_evaluation_games_and_resumes_bit_for_bit(tmp_path: Path) -> None:
    fixed = [*FAMILY["mappo"], "algo.lr_schedule=constant"]
    games = lambda d: sum(m["games"] for m in json.loads((d / "pool" / "league.json").read_text())["members"])  # noqa: E731
    off = train(make_cfg(*tag_overrides(tmp_path / "off", "mappo", *fixed)))
    on = train(make_cfg(*tag_overrides(tmp_path / "on", "mappo", *fixed, "selfplay.rate_eval=true",
                                       "train.checkpoint_interval=320")))
    assert games(on) - games(off) == 3 * 8  # evaluations at steps 0, 320 and 640, 8 episodes each
    half = train(make_cfg(*tag_overrides(tmp_path / "half", "mappo", *fixed, "selfplay.rate_eval=true",
                                         "train.total_steps=320", "train.checkpoint_interval=320")))
    (half / "done").unlink()
    train(make_cfg(*tag_overrides(tmp_path / "half", "mappo", *fixed, f"resume={half}")))
    assert (on / "pool" / "league.json").read_text() == (half / "pool" / "league.json").read_text()
    a, b = (results.read_metrics(d / "metrics.jsonl") for d in (on, half))
    assert strip_time(a) == strip_time(b)
