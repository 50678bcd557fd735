"""MADDPG and COMA (issue 5): critic inputs, decentralized actors, counterfactual advantage,
checkpoint/resume, `marl eval`, bad pairs, rendezvous env. Learning on spread: tests/learning/test_offpolicy_ac_learns.py."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_cfg, quiet

from marlcli.algos import coma, maddpg
from marlcli.cli import main
from marlcli.envs import make_env
from marlcli.envs.rendezvous import RendezvousParallelEnv, rendezvous_reward
from marlcli.trainer import train

SPREAD_C = ["algo=maddpg", "env=spread", "env.backend=native", "env.continuous_actions=true"]


# ----------------------------------------------------------------------------- structure
def test_maddpg_critic_sees_state_and_all_actions_actor_sees_own_obs() -> None:
    cfg = make_cfg(*SPREAD_C)
    env = make_env(cfg.env, 4, 0, torch.device("cpu"))
    spec = env.spec
    algo = maddpg.make(spec, cfg, torch.device("cpu"))
    n, a = spec.n_agents, spec.act_dim
    assert algo.critic.in_dim == spec.state_dim + n * a + n
    ts = env.reset()
    acts = torch.rand(4, n, a)
    x = algo.critic.inputs(ts.obs, ts.state, acts)
    assert torch.equal(x[:, 1, : spec.state_dim], ts.state)
    assert torch.equal(x[:, 1, spec.state_dim: spec.state_dim + n * a], acts.flatten(1))
    q = algo.critic(ts.obs, ts.state, acts)
    acts2 = acts.clone()
    acts2[:, 2] = torch.rand(4, a)  # another agent's action changes agent 0's Q
    assert not torch.allclose(q[:, 0], algo.critic(ts.obs, ts.state, acts2)[:, 0])
    # actors: changing the others' observations leaves agent 0's action unchanged
    act0, _ = algo.actor.act(ts.obs, ts.avail, None, True)
    obs2 = ts.obs.clone()
    obs2[:, 1:] = torch.randn_like(obs2[:, 1:])
    act1, _ = algo.actor.act(obs2, ts.avail, None, True)
    assert torch.equal(act0[:, 0], act1[:, 0]) and not torch.equal(act0[:, 1], act1[:, 1])
    low, high = spec.bounds()
    assert (act0 >= low).all() and (act0 <= high).all()
    # independent DDPG: own observation and own action only
    ind = maddpg.make(spec, make_cfg(*SPREAD_C, "critic=independent"), torch.device("cpu"))
    assert ind.critic.in_dim == spec.obs_dim + a + n


def test_coma_advantage_matches_closed_form_for_hand_built_critic() -> None:
    """Q(x, a) = a table T[a_1, a_2, a_3]; the critic returns T with a_i varied, the others fixed."""
    n, acts_n = 3, 4
    g = torch.Generator().manual_seed(0)
    table = torch.randn(acts_n, acts_n, acts_n, generator=g)
    actions = torch.tensor([[1, 3, 0], [2, 2, 1]])
    probs = torch.softmax(torch.randn(2, n, acts_n, generator=g), -1)
    q = torch.stack([torch.stack([table[(slice(None),) + tuple(a[1:])],
                                  table[a[0], :, a[2]], table[a[0], a[1], :]]) for a in actions])
    adv = coma.counterfactual_advantage(q, probs, actions)
    for b, a in enumerate(actions.tolist()):
        for i in range(n):
            taken = table[tuple(a)]
            base = sum(probs[b, i, k] * table[tuple(a[:i] + [k] + a[i + 1:])] for k in range(acts_n))
            assert adv[b, i].item() == pytest.approx((taken - base).item(), abs=1e-6)


def test_coma_critic_ignores_own_action_but_sees_others() -> None:
    cfg = make_cfg("algo=coma", "env=spread", "env.backend=native")
    env = make_env(cfg.env, 2, 0, torch.device("cpu"))
    critic = coma.make(env.spec, cfg, torch.device("cpu")).critic
    ts = env.reset()
    a = torch.tensor([[0, 1, 2], [3, 4, 0]])
    q = critic(ts.obs, ts.state, a)
    b = a.clone()
    b[:, 0] = (b[:, 0] + 1) % 5  # agent 0's own action: its row of Q is unchanged, the others' change
    q2 = critic(ts.obs, ts.state, b)
    assert torch.equal(q[:, 0], q2[:, 0]) and not torch.allclose(q[:, 1], q2[:, 1])


def test_rendezvous_reward_and_envs() -> None:
    a = torch.tensor([[0.7, 0.7, 0.7, 0.7], [0.0, 1.0, 0.5, 0.7]])
    pairs = sum((a[1, i] - a[1, j]) ** 2 for i in range(4) for j in range(i + 1, 4))
    expect = -(((a[1] - 0.7) ** 2).sum() + 2.0 * pairs)
    r = rendezvous_reward(a, 0.7, 2.0)
    assert r[0].item() == pytest.approx(0.0) and r[1].item() == pytest.approx(expect.item(), rel=1e-6)
    cfg = make_cfg("env=rendezvous", "env.coupling=2.0")
    env = make_env(cfg.env, 2, 0, torch.device("cpu"))
    ts = env.step(a[:, :, None])
    assert torch.allclose(ts.reward, r[:, None].expand(-1, 4)) and ts.done.all()
    pz = RendezvousParallelEnv(n=4, target=0.7, coupling=2.0)
    pz.reset()
    _, rew, term, trunc, _ = pz.step({f"agent_{i}": [float(a[1, i])] for i in range(4)})
    assert rew["agent_3"] == pytest.approx(expect.item(), rel=1e-6) and all(term.values()) and not any(trunc.values())


# ----------------------------------------------------------------------------- resume, eval, errors
@pytest.mark.parametrize("algo", ["maddpg", "coma"])
def test_resume_identical_and_marl_eval(tmp_path, algo: str, capsys) -> None:  # noqa: ANN001
    base = ([f"algo={algo}", "env=spread", "env.backend=native", "env.num_envs=4"]
            + (["env.continuous_actions=true", "algo.learning_starts=200", "algo.batch_size=64",
                "algo.updates_per_rollout=4"] if algo == "maddpg" else []))
    full = make_cfg(*base, *quiet(tmp_path / "full", total_steps=1200, eval_interval=300, eval_episodes=8, eval_envs=8,
                                  log_interval=200))
    ref = [json.loads(x) for x in (train(full) / "metrics.jsonl").read_text().splitlines()]
    part = quiet(tmp_path / "part", total_steps=600, eval_interval=300, eval_episodes=8, eval_envs=8,
                 log_interval=200, checkpoint_interval=200)
    seed_dir = train(make_cfg(*base, *part))
    resumed = make_cfg(*base, *quiet(tmp_path / "part", eval_episodes=50, total_steps=1200),
                       f"resume={seed_dir}/checkpoints/step_600.pt")
    got = [json.loads(x) for x in (train(resumed) / "metrics.jsonl").read_text().splitlines()]
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("time_s", "time/sps")} for r in rows]  # noqa: E731
    assert strip(got) == strip(ref)
    assert main(["eval", str(seed_dir), "episodes=8", "envs=8"]) == 0
    assert json.loads((seed_dir / "eval.json").read_text())["algo"] == algo


def test_eval_reports_roles_and_catches_on_tag(tmp_path, capsys) -> None:  # noqa: ANN001
    cfg = make_cfg("algo=maddpg", "env=tag", "env.backend=native", "env.num_envs=4", "algo.learning_starts=100",
                   "algo.batch_size=32", "algo.updates_per_rollout=1",
                   *quiet(tmp_path, total_steps=200, eval_interval=200, eval_episodes=4, eval_envs=4))
    seed_dir = train(cfg)
    assert main(["eval", str(seed_dir), "episodes=4", "envs=4"]) == 0
    row = json.loads((seed_dir / "eval.json").read_text())
    assert {"return_role/adversary", "return_role/agent", "catches"} <= set(row)


@pytest.mark.parametrize("args", [
    ["algo=coma", "env=spread", "env.continuous_actions=true"],
    ["algo=coma", "env=rendezvous"],
])
def test_bad_pairs_exit_2(tmp_path, args: list[str], capsys) -> None:  # noqa: ANN001
    assert main(["train", *args, f"results_dir={tmp_path}"]) == 2
    assert "discrete actions only" in capsys.readouterr().err
