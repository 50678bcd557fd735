"""The testbed env (marlcli/envs/testbed.py): its design, its optimum, and every algorithm on it.

The contract checks (continuity, final_* fields, resume, seeds) and PettingZoo's own
tests run on the testbed in tests/envs/test_contract.py; here: sizes and bounds, the
analytic optimum, strict mode, and a tiny training run of every algorithm, discrete and
continuous, with shared and unshared networks, in strict mode (an unavailable action or
one for a finished agent raises inside the env).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_cfg

from marlcli.envs import make_env, testbed
from marlcli.envs.testbed import ID_SCALE, parallel_env
from marlcli.errors import ConfigError
from marlcli.trainer import train

CPU = torch.device("cpu")


def oracle(env: testbed.TestbedEnv, obs: dict, agent: str) -> object:
    """The target the agent's observation shows (the optimal action)."""
    i = env.possible_agents.index(agent)
    vec = obs[agent]["observation"] if isinstance(obs[agent], dict) else obs[agent]
    k = env.sizes[i]
    return vec[3: 3 + k].copy() if env.continuous else int(np.argmax(vec[3: 3 + k]))


@pytest.mark.parametrize("continuous", [False, True], ids=["discrete", "continuous"])
def test_sizes_bounds_and_adapter_spec(continuous: bool) -> None:
    env = make_env(make_cfg("env=testbed", f"env.continuous_actions={str(continuous).lower()}").env, 2, 0, CPU)
    spec = env.spec
    assert spec.agents == ["agent_0", "agent_1", "agent_2"] and spec.discrete == (not continuous)
    assert spec.episode_limit == 8  # the env's max_cycles attribute, for episode replay
    if continuous:
        assert spec.act_dims == [1, 2, 3] and spec.obs_dims == [4, 5, 6]
        low, high = spec.bounds()
        assert low[:, 0].tolist() == [-1.0, 0.0, 1.0] and high[:, 0].tolist() == [1.0, 2.0, 3.0]
        assert low[0, 1:].eq(0).all() and high[1, 2] == 0  # padded dims
    else:
        assert spec.act_dims == [3, 4, 5] and spec.obs_dims == [9, 11, 13]
    assert spec.state_dim == sum(spec.obs_dims) + 3
    ts = env.reset()
    assert ts.obs[:, :, 0].eq(0).all() and ts.state.shape == (2, spec.state_dim)
    env.close()


@pytest.mark.parametrize("continuous", [False, True], ids=["discrete", "continuous"])
def test_optimum_is_one_per_agent_and_ends_by_termination(continuous: bool) -> None:
    env = parallel_env(continuous_actions=continuous, strict=True)
    for seed in range(20):
        obs, _ = env.reset(seed=seed)
        need, ret, steps = env.need.copy(), dict.fromkeys(env.possible_agents, 0.0), 0
        finished: dict[str, int] = {}
        while env.agents:
            obs, rew, term, trunc, _ = env.step({a: oracle(env, obs, a) for a in env.agents})
            steps += 1
            for a in rew:
                ret[a] += rew[a]
                assert not trunc[a]
                if term[a]:
                    finished[a] = steps
        assert all(math.isclose(r, 1.0) for r in ret.values())  # the best return: 1 per agent
        assert [finished[a] for a in env.possible_agents] == need.tolist() and steps == need.max()


def test_random_policy_is_worse_and_meets_both_endings() -> None:
    env = parallel_env()
    rng = np.random.default_rng(0)
    returns, truncated = [], []
    for seed in range(200):
        obs, _ = env.reset(seed=seed)
        total = 0.0
        while env.agents:
            acts = {a: int(rng.choice(np.flatnonzero(obs[a]["action_mask"]))) for a in env.agents}
            obs, rew, term, trunc, _ = env.step(acts)
            total += sum(rew.values()) / env.n
        returns.append(total)
        truncated.append(any(trunc.values()))
    assert 0.5 < np.mean(returns) < 0.95 and 0.1 < np.mean(truncated) < 0.95


def test_observation_encodes_step_and_episode() -> None:
    env = parallel_env(mask_in="info")
    obs, infos = env.reset(seed=3)
    first_id = obs["agent_0"][1] * ID_SCALE
    assert first_id == int(first_id) and all(o[0] == 0 for o in obs.values())
    for a, o in obs.items():  # the mask is observed and also in the infos; the target is available
        k = env.sizes[env.possible_agents.index(a)]
        assert np.array_equal(o[3 + k:] > 0.5, infos[a]["action_mask"] > 0) and infos[a]["action_mask"][oracle(env, obs, a)]
    obs, *_ = env.step({a: 0 for a in env.agents})
    assert all(o[0] == 1 / env.max_cycles and o[1] * ID_SCALE == first_id for o in obs.values())
    obs, _ = env.reset()
    assert obs["agent_0"][1] * ID_SCALE != first_id


def test_strict_mode_rejects_what_marlcli_must_never_send() -> None:
    env = parallel_env(strict=True)
    obs, _ = env.reset(seed=0)
    bad = int(np.flatnonzero(obs["agent_2"]["action_mask"] == 0)[0])
    acts = {a: oracle(env, obs, a) for a in env.agents}
    with pytest.raises(ValueError, match="unavailable"):
        env.step({**acts, "agent_2": bad})
    with pytest.raises(ValueError, match="none for"):
        env.step({a: v for a, v in acts.items() if a != "agent_0"})
    lenient = parallel_env()
    obs, _ = lenient.reset(seed=0)
    _, rew, *_ = lenient.step({**{a: oracle(lenient, obs, a) for a in lenient.agents}, "agent_2": bad})
    assert rew["agent_2"] == 0.0 and rew["agent_0"] > 0  # unavailable actions score nothing
    cont = parallel_env(continuous_actions=True, strict=True)
    cont.reset(seed=0)
    with pytest.raises(ValueError, match="outside"):
        cont.step({"agent_0": np.array([0.0]), "agent_1": np.array([-0.5, 1.0]), "agent_2": np.ones(3)})


def test_bad_options_fail_fast() -> None:
    with pytest.raises(ConfigError):
        parallel_env(need_high=9, max_cycles=8)
    with pytest.raises(ConfigError):
        parallel_env(mask_in="nowhere")


# ---------------------------------------------------------------- every algorithm on the testbed

ALGO_CASES = [("mappo", False), ("ippo", False), ("iql", False), ("vdn", False), ("qmix", False), ("coma", False),
              ("maddpg", False), ("maddpg", True), ("mappo", True)]
# tiny budgets that still reach each family's update: one rollout of 4 x 25 steps (MADDPG: a
# random warm-up rollout, then one with its policy), replay warm-ups shortened, small networks
QLEARN = ["algo.learning_starts=4", "algo.batch_episodes=4", "algo.replay_ratio=2"]
EXTRA = {
    "iql": QLEARN, "vdn": QLEARN, "qmix": QLEARN,
    "mappo": ["algo.epochs=1", "algo.minibatches=2"], "ippo": ["algo.epochs=1", "algo.minibatches=2"],
    "coma": ["algo.critic_epochs=2", "algo.actor_epochs=1"],
    "maddpg": ["train.total_steps=200", "algo.learning_starts=100", "algo.batch_size=32", "algo.updates_per_rollout=2"],
}


@pytest.mark.parametrize("sharing", ["all", "none"])
@pytest.mark.parametrize(("algo", "continuous"), ALGO_CASES,
                         ids=[f"{a}-{'cont' if c else 'disc'}" for a, c in ALGO_CASES])
def test_every_algorithm_trains_on_the_testbed(compose_cfg, algo: str, continuous: bool, sharing: str) -> None:  # noqa: ANN001
    cfg = compose_cfg("env=testbed", f"algo={algo}", f"sharing={sharing}", "device=cpu", "env.strict=true",
                      f"env.continuous_actions={str(continuous).lower()}", "train.total_steps=100",
                      "train.eval_interval=1000000", "train.log_interval=100", "train.checkpoint_interval=1000000",
                      "algo.hidden=16", *EXTRA.get(algo, []))
    out = Path(train(cfg))  # strict testbed: an unavailable action or one for a finished agent raises
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] >= int(cfg.train.total_steps) and any(k.startswith("loss/") for k in records[-2])
    assert any("eval/return_mean" in r for r in records)
    values = [v for r in records for k, v in r.items() if isinstance(v, float) and k != "time_s"]
    assert values and all(math.isfinite(v) for v in values)
    evals = [r["eval/return_mean"] for r in records if "eval/return_mean" in r]
    assert all(0.0 <= v <= 1.0 + 1e-6 for v in evals)  # the optimum is 1 per agent
