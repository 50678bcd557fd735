"""Issue 25, items 8 and 9: an agent truncated alone, and RunningNorm's collective.

Item 8. PettingZoo can truncate one agent (``truncations[agent]``) while the others go on.
Before the fix the adapter reported nothing for it (neither ``terminated`` nor
``truncated``, which is per episode), so PPO's GAE recursed into the agent's padding
rows and Q-learning bootstrapped it from 0 as if it had terminated. The testbed's
``agent_cycles`` option makes such agents; each test below failed on the code before
the fix (see the report of the change for how that was checked).

Item 9. ``RunningNorm.update`` returned before its collective on a rank without alive
rows, so under ``dist`` the other ranks waited in theirs forever.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import make_cfg

from marlcli.buffers import Rollout
from marlcli.distributed import collectives as distributed
from marlcli.envs.pettingzoo import PettingZooVecEnv
from marlcli.envs.testbed import ID_SCALE, parallel_env
from marlcli.errors import ConfigError
from marlcli.nets.norm import RunningNorm
from marlcli.returns import gae
from marlcli.trainer import train

CPU = torch.device("cpu")
LIMIT = 4  # the testbed's max_cycles in these tests


def make_testbed(num_envs: int, seed: int = 0, **kwargs: Any) -> PettingZooVecEnv:
    kw = {"max_cycles": LIMIT, "need_low": 3, "need_high": 4, "strict": True, **kwargs}
    return PettingZooVecEnv(parallel_env, kw, num_envs, seed, CPU, "testbed")


def targets(ts: Any, k: list[int]) -> torch.Tensor:
    """Each agent's target action as its observation shows it ``[B, N]`` (discrete testbed)."""
    return torch.stack([ts.obs[:, i, 3: 3 + ki].argmax(-1) for i, ki in enumerate(k)], -1)


def miss(ts: Any, k: list[int]) -> torch.Tensor:
    """An action other than the target for every agent (scores 0; unavailable ones only off strict mode)."""
    return (targets(ts, k) + 1) % torch.tensor(k)


def collect(env: PettingZooVecEnv, steps: int, policy: Any, seed: int = 0) -> tuple[Rollout, list]:
    gen = torch.Generator().manual_seed(seed)
    ts, triples = env.reset(), []
    for _ in range(steps):
        act = policy(ts, gen)
        nts = env.step(act)
        triples.append((ts, act, nts))
        ts = nts
    return Rollout.from_steps(triples), triples


def random_available(ts: Any, gen: torch.Generator) -> torch.Tensor:
    probs = ts.avail.float().flatten(0, 1)
    probs[probs.sum(1) == 0, 0] = 1.0  # an agent that does not act: a placeholder the adapter never sends
    return torch.multinomial(probs, 1, generator=gen).view(ts.avail.shape[:2])


# ---------------------------------------------------------------- (a) the adapter's flags


def test_adapter_flags_a_lone_truncation_apart_from_termination() -> None:
    """agent_0's own limit is 2 steps; nobody can terminate before step 3 (need >= 3)."""
    env = make_testbed(3, agent_cycles=[2])
    k = env.spec.act_dims
    ts = env.reset()
    for step in (1, 2):
        ts = env.step(targets(ts, k))
        if step == 1:
            assert not ts.agent_truncated.any() and ts.alive.all()
    # step 2: agent_0 leaves by its own time limit, not by termination; the episode goes on
    assert ts.agent_truncated[:, 0].all() and not ts.agent_truncated[:, 1:].any()
    assert not ts.terminated.any() and not ts.done.any() and not ts.truncated.any()
    assert not ts.alive[:, 0].any() and ts.alive[:, 1:].all()
    assert not ts.final_alive[:, 0].any() and not ts.final_avail[:, 0].any()  # it does not act again
    # its final observation (the one PettingZoo returns before the agent leaves) is there, with its last mask
    fin = ts.final_obs[:, 0]
    assert torch.equal(torch.round(fin[:, 0] * LIMIT), torch.full((3,), 2.0))  # the step-2 observation
    assert (fin[:, 1] * ID_SCALE >= 1).all()  # this episode's code, not padding
    assert torch.equal(ts.agent_final_avail[:, 0, :3], fin[:, 3 + 3: 3 + 6] > 0.5)
    assert ts.agent_final_avail[:, 0].any(-1).all() and not ts.agent_final_avail[:, 1:].any()
    assert torch.equal(ts.obs[:, 0], fin)  # not done: obs[t + 1] == final_obs, so replay row t + 1 holds it
    # the next step: nothing new for agent_0 (its rows are padding now)
    ts = env.step(targets(ts, k))
    assert not ts.agent_truncated.any()

    # a lone termination: agent_0 needs 1 and hits its target, the others miss (off strict mode)
    env = make_testbed(2, need_low=1, need_high=1, strict=False, agent_cycles=[3, 3])
    ts = env.reset()
    act = miss(ts, k)
    act[:, 0] = targets(ts, k)[:, 0]
    ts = env.step(act)
    assert ts.terminated[:, 0].all() and not ts.terminated[:, 1:].any() and not ts.done.any()
    assert not ts.agent_truncated.any() and not ts.agent_final_avail.any()


def test_lone_truncations_keep_the_contract_over_many_episodes() -> None:
    """Random play with per-agent limits 2 and 3 (max_cycles 4): every lone departure is flagged once, as one kind."""
    env = make_testbed(3, need_low=2, need_high=4, agent_cycles=[2, 3])
    r, _ = collect(env, 24, random_available)
    done, alive, term, lone = r.done, r.alive, r.terminated, r.agent_truncated
    left = alive & ~r.next_alive & ~done[..., None]  # left while the episode goes on
    assert lone.any() and (left & term).any(), "both lone endings occur"
    assert torch.equal(left & ~term, lone), "a lone departure that is not a termination is a lone truncation"
    assert not (lone & term).any() and not (lone & done[..., None]).any() and not (lone & ~alive).any()
    assert torch.equal(r.agent_final_avail.any(-1), lone)  # the target is always available
    assert not (r.agent_final_avail & ~env.spec.action_mask()).any()
    # its final observation is the next one, at the next step index
    t_ep = torch.round(r.obs[..., 0] * LIMIT)
    assert torch.equal(torch.round(r.next_obs[..., 0] * LIMIT)[lone], t_ep[lone] + 1)
    assert (t_ep[..., 0][lone[..., 0]] + 1 == 2).all() and (t_ep[..., 1][lone[..., 1]] + 1 == 3).all()
    # and the usual continuity still holds (final_* == plain where not done)
    go_on = ~done[:-1]
    assert torch.equal(r.next_obs[:-1][go_on], r.obs[1:][go_on])
    assert torch.equal(r.next_alive[:-1][go_on], r.alive[1:][go_on])


def test_testbed_rejects_bad_agent_cycles() -> None:
    with pytest.raises(ConfigError, match="agent_cycles"):
        parallel_env(max_cycles=4, need_high=4, agent_cycles=[0])
    with pytest.raises(ConfigError, match="agent_cycles"):
        parallel_env(max_cycles=4, need_high=4, agent_cycles=[5])
    with pytest.raises(ConfigError, match="agent_cycles"):
        parallel_env(n_agents=2, max_cycles=4, need_high=4, agent_cycles=[1, 2, 3])
    raw = parallel_env(max_cycles=4, need_low=3, need_high=4, agent_cycles=[1])
    obs, _ = raw.reset(seed=0)
    _, _, term, trunc, _ = raw.step({a: int(np.argmax(obs[a]["observation"][3: 3 + k]))
                                     for a, k in zip(raw.agents, raw.sizes, strict=True)})
    assert trunc == {"agent_0": True, "agent_1": False, "agent_2": False} and not any(term.values())
    assert raw.agents == ["agent_1", "agent_2"]


# ---------------------------------------------------------------- (b) GAE


def test_gae_stops_at_a_lone_truncation_and_bootstraps_from_the_final_value() -> None:
    """By hand, γ = 0.9, λ = 0.5, T = 4, one env, two agents.

    agent 0 is truncated alone at t = 1 (rows 2, 3 are padding with values 3 that must not
    leak back); agent 1 plays on until the episode is truncated at t = 3.
    agent 0: δ = [1 + .9·1 − .5, 2 + .9·4 − 1] = [1.4, 4.6]; A_1 = 4.6, A_0 = 1.4 + .45·4.6 = 3.47.
    agent 1: δ = [−.1, .9, −.1, 1.8]; A_3 = 1.8, A_2 = .71, A_1 = 1.2195, A_0 = .448775.
    """
    col = lambda a, b: torch.tensor([a, b], dtype=torch.float32).T[:, None, :]  # noqa: E731  -> [T, 1, 2]
    rewards = col([1.0, 2.0, 0.0, 0.0], [0.0, 1.0, 0.0, 1.0])
    values = col([0.5, 1.0, 3.0, 3.0], [1.0, 1.0, 1.0, 1.0])
    next_values = col([1.0, 4.0, 3.0, 3.0], [1.0, 1.0, 1.0, 2.0])
    terminated = torch.zeros(4, 1, 2, dtype=torch.bool)
    done = torch.tensor([[False], [False], [False], [True]])
    lone = torch.zeros(4, 1, 2, dtype=torch.bool)
    lone[1, 0, 0] = True
    adv = gae(rewards, values, next_values, terminated, done, 0.9, 0.5, lone)
    torch.testing.assert_close(adv[:2, 0, 0], torch.tensor([3.47, 4.6]))
    torch.testing.assert_close(adv[:, 0, 1], torch.tensor([0.448775, 1.2195, 0.71, 1.8]))
    # a lone termination cuts the value too: A_1 = 2 − 1 = 1, A_0 = 1.4 + .45·1 = 1.85
    term = torch.zeros_like(lone)
    term[1, 0, 0] = True
    adv = gae(rewards, values, next_values, term, done, 0.9, 0.5, torch.zeros_like(lone))
    torch.testing.assert_close(adv[:2, 0, 0], torch.tensor([1.85, 1.0]))


@pytest.mark.parametrize("family", ["ppo", "coma"])
def test_on_policy_learners_stop_at_a_lone_truncation(monkeypatch: pytest.MonkeyPatch, family: str) -> None:
    """MAPPO's advantages and COMA's TD(λ) targets at a lone truncation are the one-step bootstrap δ."""
    import importlib

    module = importlib.import_module(f"marlcli.algos.{family}")
    algo = {"ppo": "mappo", "coma": "coma"}[family]
    cfg = make_cfg(f"algo={algo}", "env=testbed", "env.num_envs=3", "algo.hidden=8", "algo.gamma=0.9",
                   *(["algo.epochs=1"] if family == "ppo" else ["algo.critic_epochs=1", "algo.actor_epochs=1"]))
    env = make_testbed(3, agent_cycles=[2])
    r, _ = collect(env, LIMIT, random_available)
    assert r.agent_truncated[1, :, 0].all()
    torch.manual_seed(0)
    learner = module.make(env.spec, cfg, CPU)
    seen: dict[str, torch.Tensor] = {}

    def spy(rewards, values, next_values, terminated, done, gamma, lam, *rest):  # noqa: ANN001, ANN202
        out = gae(rewards, values, next_values, terminated, done, gamma, lam, *rest)
        seen.update(rewards=rewards, values=values, next_values=next_values, adv=out, gamma=torch.tensor(gamma))
        return out

    monkeypatch.setattr(module, "gae", spy)
    learner.update(r, LIMIT * 3)
    lone = r.agent_truncated
    delta = seen["rewards"] + seen["gamma"] * seen["next_values"] - seen["values"]
    torch.testing.assert_close(seen["adv"][lone], delta[lone])
    # and the padding after it is not zero-valued, so leaking it would have shown
    assert (seen["values"][2:, :, 0] != 0).all()


# ---------------------------------------------------------------- (c) Q-learning targets


def _q_batch(algo: str, *extra: str) -> tuple[Any, dict[str, torch.Tensor], Any]:
    """One episode per copy: agent_0 terminates alone at step 1, agent_1 is truncated alone at step 2,
    agent_2 plays on until the episode's truncation at step 4. Returns (learner, batch, config)."""
    from marlcli.algos import qlearning

    env = make_testbed(2, need_low=1, need_high=1, strict=False, agent_cycles=[LIMIT, 2])
    k = env.spec.act_dims

    def policy(ts: Any, gen: torch.Generator) -> torch.Tensor:
        act = miss(ts, k)
        act[:, 0] = targets(ts, k)[:, 0]
        return act

    r, _ = collect(env, LIMIT, policy)
    assert r.terminated[0, :, 0].all() and r.agent_truncated[1, :, 1].all() and r.done[-1].all()
    cfg = make_cfg(f"algo={algo}", "env=testbed", f"env.max_cycles={LIMIT}", "env.num_envs=2", "algo.hidden=8",
                   "algo.batch_episodes=2", "algo.double_q=false", "algo.gamma=0.9", *extra)
    torch.manual_seed(0)
    learner = qlearning.make(env.spec, cfg, CPU)
    with torch.no_grad():  # a target net that differs from the online one
        for p in learner.target_actor.parameters():
            p.add_(0.3 * torch.randn_like(p))
    assert learner.replay.add(r) == 2
    return learner, {key: v[:2] for key, v in learner.replay.data.items()}, r


@pytest.mark.parametrize("returns", ["algo.td_lambda=0.6", "algo.returns=nstep algo.nstep=3"])
def test_iql_bootstraps_a_lone_truncation_and_not_a_lone_termination(monkeypatch: pytest.MonkeyPatch,
                                                                     returns: str) -> None:
    from marlcli.algos import qlearning

    learner, batch, r = _q_batch("iql", *returns.split())
    seen: list[torch.Tensor] = []
    orig = qlearning.QLearner.td_targets

    def spy(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        out = orig(self, *args, **kwargs)
        seen.append(out)
        return out

    monkeypatch.setattr(qlearning.QLearner, "td_targets", spy)
    learner.learn(batch)
    target = seen[0]  # [E, L, N]
    # agent_0 terminated alone at row 0: its target is its reward, no bootstrap
    torch.testing.assert_close(target[:, 0, 0], r.reward[0, :, 0])
    assert (r.reward[0, :, 0] == 1).all()
    # agent_1 truncated alone at row 1: r + γ max over its last masks of Q'(its final observation)
    with torch.no_grad():
        q_fin = learner.target_actor.q(r.next_obs[1], None)[0][:, 1]  # [E, A]
        v_fin = q_fin.masked_fill(~r.agent_final_avail[1, :, 1], float("-inf")).max(-1).values
    expected = r.reward[1, :, 1] + 0.9 * v_fin
    assert (v_fin.abs() > 1e-3).all()  # bootstrapping from 0 would differ
    torch.testing.assert_close(target[:, 1, 1], expected)


@pytest.mark.parametrize("algo", ["vdn", "qmix"])
def test_mixed_targets_include_the_truncated_agents_value(monkeypatch: pytest.MonkeyPatch, algo: str) -> None:
    """VDN: the mixed next value at the lone truncation's row is Σ_i of every agent still owed a value there."""
    from marlcli.algos import qlearning

    learner, batch, r = _q_batch(algo, "algo.td_lambda=0", "algo.agent=rnn")
    seen: list[torch.Tensor] = []
    orig = qlearning.QLearner.td_targets

    def spy(self, b, q_next, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        seen.append(q_next)
        return orig(self, b, q_next, *args, **kwargs)

    monkeypatch.setattr(qlearning.QLearner, "td_targets", spy)
    out = learner.learn(batch)
    assert math.isfinite(float(out["loss/td"]))
    if algo == "vdn":
        with torch.no_grad():
            tq = learner.target_actor.q_sequence(batch["obs"], batch["actions"])[:, 2]  # row 2: after the cut
            avail = batch["avail"][:, 2].clone()
            avail[:, 1] = batch["agent_final_avail"][:, 1, 1]
            v = tq.masked_fill(~avail, float("-inf")).max(-1).values
            v = v.masked_fill(~avail.any(-1), 0.0)
        torch.testing.assert_close(seen[0][:, 1, 0], v[:, 1:].sum(-1))  # agents 1 (truncated) and 2 (alive)


# ---------------------------------------------------------------- MADDPG


def test_maddpg_bootstraps_a_lone_truncation_under_its_last_masks(monkeypatch: pytest.MonkeyPatch) -> None:
    from marlcli.algos import maddpg

    env = make_testbed(2, agent_cycles=[2])
    r, _ = collect(env, LIMIT, random_available)
    cfg = make_cfg("algo=maddpg", "env=testbed", "env.num_envs=2", "algo.hidden=8", "algo.batch_size=8")
    learner = maddpg.make(env.spec, cfg, CPU)
    learner.replay.add(r)
    seen: list[torch.Tensor] = []
    orig = learner._policy_action

    def spy(actor, obs, avail, explore):  # noqa: ANN001, ANN202
        if actor is learner.actor_target:
            seen.append(avail)
        return orig(actor, obs, avail, explore)

    monkeypatch.setattr(learner, "_policy_action", spy)
    rows_in = learner.replay.size
    monkeypatch.setattr(learner.replay, "sample", lambda batch: {k: v[:rows_in] for k, v in learner.replay.data.items()})
    learner._gradient_step()
    rows = r.agent_truncated.reshape(-1, 3)
    assert rows.any()
    final = r.agent_final_avail.reshape(-1, 3, r.agent_final_avail.shape[-1])
    assert torch.equal(seen[0][rows], final[rows]) and seen[0][rows].any(-1).all()


# ---------------------------------------------------------------- every family trains with lone truncations

TRAIN = {
    "mappo": ["algo.epochs=1"],
    "iql": ["algo.agent=rnn", "algo.learning_starts=4", "algo.batch_episodes=4", "algo.replay_ratio=2"],
    "coma": ["algo.critic_epochs=1", "algo.actor_epochs=1"],
    "maddpg": ["env.continuous_actions=true", "train.total_steps=160", "algo.learning_starts=80", "algo.batch_size=16",
               "algo.updates_per_rollout=1"],
}


@pytest.mark.parametrize("algo", list(TRAIN))
def test_training_with_lone_truncations(tmp_path: Path, algo: str) -> None:
    cfg = make_cfg("env=testbed", "env.agent_cycles=[2,5]", f"algo={algo}", "device=cpu", f"results_dir={tmp_path}",
                   "run=t", "env.num_envs=4", "train.eval_episodes=4", "train.eval_envs=4", "logger.progress=false",
                   "train.total_steps=100", "train.eval_interval=1000000", "train.log_interval=100",
                   "train.checkpoint_interval=1000000", "algo.hidden=8", *TRAIN[algo])
    out = Path(train(cfg))  # strict testbed: an action for an agent that left raises inside the env
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert any(k.startswith("loss/") for r in records for k in r)
    values = [v for r in records for k, v in r.items() if isinstance(v, float) and k != "time_s"]
    assert values and all(math.isfinite(v) for v in values)


# ---------------------------------------------------------------- item 9: RunningNorm under dist


def test_running_norm_joins_the_collective_on_a_rank_without_alive_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """Emulate two ranks: rank 0 has rows, rank 1 has none. Each all-reduce of rank 1 gets rank 0's part added.

    Rank 1 must make the same collective calls as rank 0 (else the job hangs) and end with
    the same statistics; before the fix it returned at once and made none.
    """
    x = torch.tensor([[1.0, 2.0], [3.0, 5.0]])
    alive = torch.ones(2, 2, dtype=torch.bool)
    monkeypatch.setattr(distributed, "active", lambda: True)
    calls: list[list[torch.Tensor]] = []

    def record(*tensors: torch.Tensor) -> list[torch.Tensor]:
        calls.append([t.clone() for t in tensors])
        return list(tensors)

    monkeypatch.setattr(distributed, "all_sum", record)
    rank0 = RunningNorm(beta=0.9)
    rank0.update(x, alive)
    parts = calls[:]
    assert parts, "the update makes a collective call"

    calls.clear()
    it = iter(parts)

    def with_rank0(*tensors: torch.Tensor) -> list[torch.Tensor]:
        calls.append([t.clone() for t in tensors])
        other = next(it)
        assert [t.shape for t in other] == [t.shape for t in tensors], "the same collective on both ranks"
        for t, o in zip(tensors, other, strict=True):
            t.add_(o.to(t.dtype))
        return list(tensors)

    monkeypatch.setattr(distributed, "all_sum", with_rank0)
    rank1 = RunningNorm(beta=0.9)
    rank1.update(x, torch.zeros_like(alive))  # no alive rows on this rank
    assert len(calls) == len(parts)
    for name in ("mean", "mean_sq", "debias"):
        torch.testing.assert_close(getattr(rank1, name), getattr(rank0, name))

    # no rows on any rank: every rank still calls, and nobody updates
    calls.clear()
    monkeypatch.setattr(distributed, "all_sum", record)
    idle = RunningNorm(beta=0.9)
    idle.update(x, torch.zeros_like(alive))
    assert len(calls) >= 1 and idle.debias == 0 and (idle.mean == 0).all()
