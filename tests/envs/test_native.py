"""Native batched MPE envs against mpe2, plus auto-reset, masks and state round trips.

Equivalence: each native copy b starts from the state of an mpe2 env reset with seed b
(``set_from_mpe2``), both take the same random actions for a whole episode, and the
native float64 observations, states and rewards must match mpe2's float64 internals
(``scenario.observation``) to 1e-5 over 200 episodes per configuration.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from marlcli.envs import native
from marlcli.errors import CheckpointError, ConfigError

CPU = torch.device("cpu")
EPISODES = 200
T = 25


def cfg(name: str, **kw: Any) -> Any:
    return OmegaConf.create({"name": name, "backend": "native", "max_cycles": T, **kw})


CASES = {
    "spread": ("simple_spread_v3", cfg("spread", N=3, local_ratio=0.5), {"N": 3, "local_ratio": 0.5}),
    "spread_po": (
        "simple_spread_v3",
        cfg("spread", N=4, num_agent_neighbors=1, num_landmark_neighbors=2),
        {"N": 4, "num_agent_neighbors": 1, "num_landmark_neighbors": 2},
    ),
    "tag": ("simple_tag_v3", cfg("tag", num_good=2, num_adversaries=3, num_obstacles=2),
            {"num_good": 2, "num_adversaries": 3, "num_obstacles": 2}),
    "adversary": ("simple_adversary_v3", cfg("adversary", N=2), {"N": 2}),
}


def mpe2_env(module: str, kwargs: dict[str, Any], continuous: bool) -> Any:
    import importlib

    from pettingzoo.utils.env_logger import EnvLogger

    EnvLogger.suppress_output()  # out-of-bound continuous actions are clipped on purpose
    mod = importlib.import_module(f"mpe2.{module}")
    return mod.parallel_env(max_cycles=T, continuous_actions=continuous, **kwargs)


@pytest.mark.parametrize("continuous", [False, True], ids=["discrete", "continuous"])
@pytest.mark.parametrize("case", list(CASES))
def test_matches_mpe2(case: str, continuous: bool) -> None:
    module, env_cfg, kwargs = CASES[case]
    env_cfg = OmegaConf.merge(env_cfg, {"continuous_actions": continuous})
    env = native.make(env_cfg, EPISODES, 0, CPU, torch.float64)
    pz = mpe2_env(module, kwargs, continuous)
    raw = pz.unwrapped
    agents, spec = pz.possible_agents, env.spec
    assert spec.agents == agents
    assert spec.obs_dims == [pz.observation_space(a).shape[0] for a in agents]
    assert spec.state_dim == pz.state_space.shape[0]
    n = len(agents)
    rng = np.random.default_rng(0)
    if continuous:  # beyond [0, 1] on purpose: both sides must clip
        acts = rng.uniform(-0.2, 1.2, (T, EPISODES, n, 5))
    else:
        acts = rng.integers(0, 5, (T, EPISODES, n))

    for b in range(EPISODES):
        pz.reset(seed=b)
        env.set_from_mpe2(b, pz)
    obs, state = env.scenario.observe(env.world)
    nat_obs, nat_state, nat_rew = [obs.clone()], [state.clone()], []
    for t in range(T):
        ts = env.step(torch.as_tensor(acts[t]))
        nat_obs.append(ts.final_obs)
        nat_state.append(ts.final_state)
        nat_rew.append(ts.reward)
        assert bool(ts.done.all()) == (t == T - 1)
    n_obs = torch.stack(nat_obs, 1).numpy()  # [B, T+1, N, O]
    n_state = torch.stack(nat_state, 1).numpy()
    n_rew = torch.stack(nat_rew, 1).numpy()  # [B, T, N]

    ref_obs = np.zeros_like(n_obs)
    ref_state = np.zeros_like(n_state)
    ref_rew = np.zeros_like(n_rew)

    def record(b: int, t: int) -> None:
        per = [raw.scenario.observation(a, raw.world) for a in raw.world.agents]
        for i, o in enumerate(per):
            ref_obs[b, t, i, : len(o)] = o
        ref_state[b, t] = np.concatenate(per)

    for b in range(EPISODES):
        pz.reset(seed=b)
        record(b, 0)
        for t in range(T):
            _, rew, _, trunc, _ = pz.step({a: acts[t, b, i] for i, a in enumerate(agents)})
            ref_rew[b, t] = [rew[a] for a in agents]
            record(b, t + 1)
        assert all(trunc.values())
    np.testing.assert_allclose(n_obs, ref_obs, rtol=0, atol=1e-5)
    np.testing.assert_allclose(n_state, ref_state, rtol=0, atol=1e-5)
    np.testing.assert_allclose(n_rew, ref_rew, rtol=0, atol=1e-5)


def test_auto_reset_when_all_finish_together() -> None:
    env = native.make(cfg("tag"), 8, 1, CPU)
    spec = env.spec
    ts = env.reset()
    assert ts.obs.shape == (8, spec.n_agents, spec.obs_dim) and ts.obs.dtype == torch.float32
    assert ts.state.shape == (8, spec.state_dim)
    assert ts.avail.all() and ts.avail.shape == (8, spec.n_agents, 5)
    # padded observation entries stay zero (prey see one velocity fewer)
    for i, d in enumerate(spec.obs_dims):
        assert (ts.obs[:, i, d:] == 0).all()
    for t in range(1, 2 * T + 1):
        last = ts
        ts = env.step(torch.randint(0, 5, (8, spec.n_agents)))
        boundary = t % T == 0
        assert bool(ts.done.all()) == boundary and bool(ts.done.any()) == boundary
        assert torch.equal(ts.truncated, ts.done) and not ts.terminated.any() and ts.alive.all()
        if boundary:
            assert not torch.equal(ts.final_obs, ts.obs)
            assert (env.world.t == 0).all() and (env.world.vel == 0).all()
            assert (ts.obs[:, :, :2] == 0).all()  # fresh episode: zero own velocity
        else:
            assert torch.equal(ts.final_obs, ts.obs) and torch.equal(ts.final_state, ts.state)
        assert not torch.equal(last.obs, ts.obs)


def test_partial_reset_keeps_other_envs() -> None:
    env = native.make(cfg("spread"), 4, 0, CPU)
    env.reset()
    env.world.t[1] = T - 1  # copy 1 finishes first
    ts = env.step(torch.zeros(4, 3, dtype=torch.long))
    assert ts.done.tolist() == [False, True, False, False]
    assert torch.equal(ts.obs[[0, 2, 3]], ts.final_obs[[0, 2, 3]])
    assert not torch.equal(ts.obs[1], ts.final_obs[1])
    assert env.world.t.tolist() == [1, 0, 1, 1]


@pytest.mark.parametrize("name", ["spread", "tag", "adversary"])
@pytest.mark.parametrize("continuous", [False, True])
def test_state_dict_round_trip(name: str, continuous: bool) -> None:
    c = OmegaConf.merge(cfg(name), {"continuous_actions": continuous})
    env = native.make(c, 6, 3, CPU)
    env.reset()
    n = env.spec.n_agents
    g = torch.Generator().manual_seed(0)
    acts = (torch.rand(40, 6, n, 5, generator=g) if continuous
            else torch.randint(0, 5, (40, 6, n), generator=g))
    for t in range(10):
        env.step(acts[t])
    saved = env.state_dict()
    assert all(isinstance(v, torch.Tensor) for v in saved.values())
    first = [env.step(a) for a in acts[10:]]  # crosses an auto-reset (new random episode)
    other = native.make(c, 6, 99, CPU)
    other.load_state_dict(saved)
    for a, ts in zip(acts[10:], first, strict=True):
        ts2 = other.step(a)
        assert torch.equal(ts.obs, ts2.obs) and torch.equal(ts.reward, ts2.reward)
        assert torch.equal(ts.state, ts2.state) and torch.equal(ts.done, ts2.done)


def test_same_seed_same_episodes() -> None:
    a, b = (native.make(cfg("adversary"), 5, 7, CPU) for _ in range(2))
    assert torch.equal(a.reset().obs, b.reset().obs)
    assert not torch.equal(a.reset().obs, native.make(cfg("adversary"), 5, 8, CPU).reset().obs)


def test_load_rejects_wrong_shape() -> None:
    saved = native.make(cfg("spread"), 2, 0, CPU).state_dict()
    with pytest.raises(CheckpointError):
        native.make(cfg("spread"), 3, 0, CPU).load_state_dict(saved)


def test_unknown_name_and_bad_options() -> None:
    with pytest.raises(ConfigError):
        native.make(cfg("nope"), 2, 0, CPU)
    with pytest.raises(ConfigError):
        native.make(cfg("tag", num_agent_neighbors=1), 2, 0, CPU)


@pytest.mark.parametrize("n", [10, 30, 100])
def test_large_spread_steps(n: int) -> None:
    env = native.make(cfg("spread", N=n), 2, 0, CPU)
    ts = env.reset()
    assert ts.obs.shape == (2, n, 6 * n)
    ts = env.step(torch.randint(0, 5, (2, n)))
    assert torch.isfinite(ts.obs).all() and torch.isfinite(ts.reward).all()
    assert ts.info["collisions"].shape == (2,)


def test_spread_stats_count_pairs_and_cover() -> None:
    env = native.make(cfg("spread", N=3), 1, 0, CPU, torch.float64)
    w = env.world
    w.pos[0] = torch.tensor([[0.0, 0.1, 2.0, 0.0, 0.05, 2.0], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    w.vel.zero_()
    w.refresh()
    ts = env.step(torch.zeros(1, 3, dtype=torch.long))  # no-op; contact forces push 0 and 1 apart
    assert ts.info["collisions"].item() == 1.0
    assert ts.info["landmarks_covered"].item() == 3.0
