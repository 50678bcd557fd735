"""IQL / VDN / QMIX (issue 3): mixers, returns, episode replay, resume, eval, errors.

Their learning tests are in tests/learning/test_qlearning_learns.py.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import episode_rollout, make_cfg, quiet, train_killed_after
from omegaconf import OmegaConf

from marlcli.algos.base import schedule_lr
from marlcli.buffers import EpisodeReplay, Rollout
from marlcli.cli import main
from marlcli.envs import make_env
from marlcli.errors import ConfigError
from marlcli.nets.mixers import QMixer
from marlcli.returns import nstep_returns, td_lambda
from marlcli.trainer import train

ALGOS = ("iql", "vdn", "qmix")


# ----------------------------------------------------------------------------- mixers
def test_qmix_is_monotonic_with_nonnegative_weights() -> None:
    torch.manual_seed(0)
    mixer = QMixer(n_agents=4, state_dim=7)
    state, q = torch.randn(64, 7), torch.randn(64, 4) * 3
    w1, w2 = mixer.weights(state)
    assert (w1 >= 0).all() and (w2 >= 0).all()
    base = mixer(q, state)
    for i in range(4):
        for h in (1e-3, 0.5, 5.0):
            bumped = q.clone()
            bumped[:, i] += h
            assert (mixer(bumped, state) - base >= -1e-6).all()


def test_vdn_loss_is_the_td_error_of_summed_utilities_on_the_mean_reward() -> None:
    """VDN, one-step targets by hand: y_t = mean_i r_t,i + γ Σ_i max_a Q'_i(o_t+1, a); Q_tot = Σ_i Q_i(o_t, a_t,i).

    Spread's agents get different rewards (collisions), so a mixer that averaged the
    utilities or summed the rewards would give another loss; episodes end by truncation,
    so the last step bootstraps from the final observation.
    """
    from marlcli.algos import qlearning

    e, steps, g = 4, 3, 0.9
    cfg = make_cfg("algo=vdn", "env=spread", "env.backend=native", f"env.num_envs={e}", f"env.max_cycles={steps}",
                   f"algo.batch_episodes={e}", "algo.td_lambda=0", "algo.double_q=false", f"algo.gamma={g}")
    env = make_env(cfg.env, e, 0, torch.device("cpu"))
    torch.manual_seed(0)
    algo = qlearning.make(env.spec, cfg, torch.device("cpu"))
    with torch.no_grad():  # a target net that differs from the online one, so Q' is really used
        for p in algo.target_actor.parameters():
            p.add_(0.1 * torch.randn_like(p))
    ts, trace = env.reset(), []
    for _ in range(steps):
        actions = torch.randint(0, 5, (e, 3))
        nts = env.step(actions)
        trace.append((ts, actions, nts))
        ts = nts
    assert algo.replay.add(Rollout.from_steps(trace)) == e
    batch = {k: v[:e] for k, v in algo.replay.data.items()}
    expected = torch.zeros(())
    with torch.no_grad():
        for t, (ts, actions, nts) in enumerate(trace):
            q_tot = algo.actor.q(ts.obs, None)[0].gather(-1, actions[..., None]).squeeze(-1).sum(-1)  # [E]
            nxt = nts.final_obs if t == steps - 1 else trace[t + 1][0].obs
            y = nts.reward.mean(-1) + g * algo.target_actor.q(nxt, None)[0].max(-1).values.sum(-1)
            expected += ((y - q_tot) ** 2).sum() / (e * steps)
    assert not torch.equal(torch.stack([n.reward for _, _, n in trace])[..., 0],
                           torch.stack([n.reward for _, _, n in trace])[..., 1])  # agents' rewards differ
    torch.testing.assert_close(algo.learn(batch)["loss/td"], expected)


def test_iql_loss_is_per_agent_on_own_rewards() -> None:
    """Zero-sum rps, one step: each agent's target is its own reward, loss = mean of per-agent errors."""
    from marlcli.algos import qlearning

    cfg = make_cfg("algo=iql", "env=rps", "env.backend=native", "env.num_envs=8", "algo.batch_episodes=8")
    env = make_env(cfg.env, 8, 0, torch.device("cpu"))
    algo = qlearning.make(env.spec, cfg, torch.device("cpu"))
    ts = env.reset()
    actions = torch.randint(0, 3, (8, 2))
    nts = env.step(actions)
    algo.replay.add(Rollout.from_steps([(ts, actions, nts)]))
    batch = {k: v[:8] for k, v in algo.replay.data.items()}
    with torch.no_grad():
        q = algo.actor.q_sequence(batch["obs"], batch["actions"])[:, 0]
        chosen = q.gather(-1, batch["actions"][:, 0, :, None]).squeeze(-1)  # [E, 2]
        expected = ((batch["reward"][:, 0] - chosen) ** 2).mean()
    assert not torch.equal(batch["reward"][:, 0, 0], batch["reward"][:, 0, 1])  # agents differ
    torch.testing.assert_close(algo.learn(batch)["loss/td"], expected)


# ----------------------------------------------------------------------------- returns
def test_td_lambda_and_nstep_against_hand_values() -> None:
    r = torch.tensor([1.0, 2.0, 3.0]).view(3, 1, 1)
    v = torch.tensor([10.0, 20.0, 30.0]).view(3, 1, 1)  # value of the state after each step
    term = torch.zeros(3, 1, 1, dtype=torch.bool)
    cont = torch.tensor([1.0, 1.0, 0.0]).view(3, 1, 1)
    g = 0.5
    one = td_lambda(r, v, term, cont, g, 0.0).flatten()
    torch.testing.assert_close(one, torch.tensor([1 + g * 10, 2 + g * 20, 3 + g * 30]))
    torch.testing.assert_close(nstep_returns(r, v, term, cont, g, 1).flatten(), one)
    two = nstep_returns(r, v, term, cont, g, 2).flatten()
    torch.testing.assert_close(two, torch.tensor([1 + g * 2 + g**2 * 20, 2 + g * 3 + g**2 * 30, 3 + g * 30]))
    mc = td_lambda(r, v, term, cont, g, 1.0).flatten()  # λ = 1: Monte Carlo to the end, then bootstrap
    torch.testing.assert_close(mc, torch.tensor([1 + g * 2 + g**2 * (3 + g * 30), 2 + g * (3 + g * 30), 3 + g * 30]))
    term[1] = True  # episode terminates after step 1: no bootstrap there
    torch.testing.assert_close(td_lambda(r, v, term, cont, g, 1.0).flatten()[:2], torch.tensor([1 + g * 2, 2.0]))


def test_td_lambda_matches_the_recursion_with_terminations_and_episode_ends() -> None:
    """The matrix form equals the backward recursion G_t = r_t + γ(1-d_t)((1-λc_t)V_t' + λc_t G_{t+1})."""
    gen = torch.Generator().manual_seed(0)
    t, b, k, gamma, lam = 9, 6, 3, 0.9, 0.6
    r, v = torch.randn(t, b, k, generator=gen, dtype=torch.float64), torch.randn(t, b, k, generator=gen, dtype=torch.float64)
    term = torch.rand(t, b, k, generator=gen) < 0.15
    cont = torch.rand(t, b, k, generator=gen) < 0.8
    expected, g = torch.empty_like(r), v[-1]
    for i in range(t - 1, -1, -1):
        c = cont[i].double() if i < t - 1 else torch.zeros_like(v[i])
        g = r[i] + gamma * (~term[i]).double() * ((1 - lam * c) * v[i] + lam * c * g)
        expected[i] = g
    torch.testing.assert_close(td_lambda(r, v, term, cont, gamma, lam), expected)


def test_linear_lr_schedule_and_bad_schedule() -> None:
    optim = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    a = OmegaConf.create({"lr": 0.004, "lr_schedule": "linear", "lr_end": 0.001})
    assert [schedule_lr(optim, a, s, 100) for s in (0, 50, 100, 150)] == pytest.approx([0.004, 0.0025, 0.001, 0.001])
    assert optim.param_groups[0]["lr"] == pytest.approx(0.001)
    assert schedule_lr(optim, OmegaConf.create({"lr": 0.004, "lr_schedule": "constant", "lr_end": 0.0}), 99, 100) == 0.004
    with pytest.raises(ConfigError, match="lr_schedule"):
        schedule_lr(optim, OmegaConf.create({"lr": 0.004, "lr_schedule": "cosine", "lr_end": 0.0}), 0, 100)


# ----------------------------------------------------------------------------- replay
def test_episode_replay_variable_lengths_masks_and_shapes() -> None:
    buf = EpisodeReplay(capacity=4, num_envs=2, max_len=4, n_agents=2, obs_dim=3, state_dim=3, act_dim=4,
                        device=torch.device("cpu"))
    # env 0: episodes of length 2 (t=0..1) and 3 (t=2..4); env 1: length 3 (t=0..2), then 2 steps still open
    done = [[False, False], [True, False], [False, True], [False, False], [True, False]]
    assert buf.add(episode_rollout(done)) == 3
    assert buf.size == 3
    lengths = buf.data["filled"][:3].sum(1).tolist()
    assert lengths == [2, 3, 3]
    ep0 = buf.data["obs"][0, :, 0, 0].tolist()
    assert ep0[:3] == [0.0, 1.0, 101.0]  # steps 0, 1, then the final observation after step 1
    assert buf.data["obs"][1, :4, 0, 0].tolist() == [0.0, 1.0, 2.0, 102.0]  # env 1's, ended after t=2
    assert buf.data["obs"][2, :4, 0, 0].tolist() == [2.0, 3.0, 4.0, 104.0]  # env 0's second
    assert buf.pos.tolist() == [0, 2]  # env 1 has two steps staged
    assert buf.add(episode_rollout([[False, True]])) == 1  # env 1's second episode (length 3) spans rollouts
    assert buf.data["filled"][3].sum().item() == 3 and buf.size == 4
    batch = buf.sample(16)
    assert batch["obs"].shape == (16, 5, 2, 3) and batch["avail"].shape == (16, 5, 2, 4)
    assert batch["filled"].shape == (16, 5) and batch["actions"].dtype == torch.long
    assert buf.add(episode_rollout([[True, True]])) == 2  # ring buffer wraps; size stays at capacity
    assert buf.size == 4 and buf.ptr == 2


# ----------------------------------------------------------------------------- resume, eval, errors
@pytest.mark.parametrize("algo", ALGOS)
def test_resume_is_exact_and_eval_works(tmp_path, algo: str, monkeypatch) -> None:  # noqa: ANN001
    base = [f"algo={algo}", "env=spread", "env.backend=native", "env.num_envs=8", "algo.batch_episodes=8",
            "algo.learning_starts=8", "algo.agent=rnn", "algo.last_action=true"] if algo == "qmix" else \
           [f"algo={algo}", "env=spread", "env.backend=native", "env.num_envs=8", "algo.batch_episodes=8",
            "algo.learning_starts=8"]
    base += ["algo.lr_schedule=linear"]  # the schedule must continue exactly too
    t = {"eval_interval": 400, "checkpoint_interval": 400, "log_interval": 200}
    full = train(make_cfg(*base, *quiet(tmp_path / "a", total_steps=800, **t)))
    # killed after the step-400 checkpoint (the lr schedule, ε and replay all continue from it)
    cut = train_killed_after(make_cfg(*base, *quiet(tmp_path / "b", total_steps=800, **t)), 400, monkeypatch)
    resumed = train(make_cfg(*base, *quiet(tmp_path / "b", total_steps=800, **t), f"resume={cut}"))
    assert resumed == cut
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("time_s", "time/sps")} for r in rows]  # noqa: E731
    read = lambda d: [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert strip(read(resumed)) == strip(read(full))
    assert any(r.get("train/lr", 1.0) < 0.5 * float(make_cfg(*base)["algo"]["lr"]) for r in read(full))  # decayed
    assert main(["eval", str(full), "episodes=4", "device=cpu"]) == 0


def test_unknown_lr_schedule_is_a_one_line_error(tmp_path, capsys) -> None:  # noqa: ANN001
    code = main(["train", "algo=vdn", "algo.lr_schedule=cosine", f"results_dir={tmp_path}", "logger.progress=false",
                 "train.total_steps=100"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "lr_schedule" in err


def test_qmix_on_continuous_actions_is_a_one_line_error(tmp_path, capsys) -> None:  # noqa: ANN001
    code = main(["train", "algo=qmix", "env=spread", "env.continuous_actions=true", f"results_dir={tmp_path}",
                 "logger.progress=false", "train.total_steps=100"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "discrete" in err


@pytest.mark.parametrize("algo", ["vdn", "qmix"])
def test_polyak_moves_targets_by_tau_toward_the_online_nets(algo: str) -> None:
    """``algo.tau < 1``: after one gradient step every target parameter is (1-τ) old + τ new online."""
    from marlcli.algos import qlearning

    tau = 0.25
    cfg = make_cfg(f"algo={algo}", "env=spread", "env.backend=native", "env.num_envs=4", "env.max_cycles=5",
                   "algo.batch_episodes=4", f"algo.tau={tau}")
    env = make_env(cfg.env, 4, 0, torch.device("cpu"))
    torch.manual_seed(0)
    learner = qlearning.make(env.spec, cfg, torch.device("cpu"))
    with torch.no_grad():  # targets apart from the online nets, so a hard copy or no update both fail
        for p in list(learner.target_actor.parameters()) + list(learner.target_mixer.parameters()):
            p.add_(torch.randn_like(p))
    ts, trace = env.reset(), []
    for _ in range(5):
        actions = torch.randint(0, 5, (4, 3))
        nts = env.step(actions)
        trace.append((ts, actions, nts))
        ts = nts
    learner.replay.add(Rollout.from_steps(trace))
    pairs = [(learner.target_actor, learner.actor), (learner.target_mixer, learner.mixer)]
    before = [[p.detach().clone() for p in t.parameters()] for t, _ in pairs]
    online_before = [p.detach().clone() for p in learner.actor.parameters()]
    learner.learn({k: v[:4] for k, v in learner.replay.data.items()})
    assert any(not torch.equal(a, b) for a, b in zip(online_before, learner.actor.parameters(), strict=True))
    for (target, online), old in zip(pairs, before, strict=True):
        for t, o, p in zip(target.parameters(), online.parameters(), old, strict=True):
            torch.testing.assert_close(t, p + tau * (o.detach() - p))
    assert (len(before[1]) == 0) == (algo == "vdn")  # VDN's sum has no parameters; QMIX's hypernetworks do
