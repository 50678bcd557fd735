"""The environment contract, checked on every VecEnv marlcli ships (issue 15).

Each case is stepped with seeded random *available* actions (the testbed: half of the
time its target, so both episode endings occur) for a few episodes of a few copies, and
the ``Rollout`` is built with ``Rollout.from_steps`` as the trainer does. Then:

* generic: wherever ``~done[t]``, ``next_*[t] == *[t + 1]`` (obs, state, avail, alive);
  masks stay inside the agents' real actions and off for agents that do not act; at
  ``done`` ``final_alive`` is "acted and not terminated"; terminated agents had acted;
* per backend, the true last values and auto-reset: the PettingZoo adapter against raw
  ParallelEnv copies replayed with the same episode seeds and actions; the testbed also
  against its analytic encoding (step index, episode code, masks, rewards); native MPE
  physically (``pos' = pos + vel * dt``, static landmarks, fresh episodes at rest); the
  matrix games and rendezvous against their payoffs;
* VMAS: the adapter's stream equals a lone raw VMAS env replayed with the same RNG states
  and actions (padding, per-agent rewards, final observations, truncation at
  ``max_steps``, termination from the scenario's ``done()``, auto-reset of those copies);
* ``state_dict`` / ``load_state_dict`` mid-episode continues the same stream exactly, and
  the same seed gives the same stream, a different seed a different one.

PettingZoo's own ``parallel_api_test`` / ``parallel_seed_test`` (plus its AEC API and
state tests) run on every ParallelEnv marlcli ships, at the end of this file.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from dataclasses import dataclass, fields
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from pettingzoo import ParallelEnv
from pettingzoo.utils.conversions import parallel_to_aec
from torch import Tensor

from marlcli.buffers import Rollout
from marlcli.envs import native
from marlcli.envs.base import EnvSpec, TimeStep, VecEnv
from marlcli.envs.matrix import GAMES
from marlcli.envs.pettingzoo import PettingZooVecEnv, load_factory
from marlcli.envs.rendezvous import rendezvous_reward
from marlcli.envs.testbed import ID_SCALE
from marlcli.envs.vmas import VMASEnv

with warnings.catch_warnings():  # pettingzoo.test imports its deprecated classic envs
    warnings.simplefilter("ignore", DeprecationWarning)
    from pettingzoo.test import api_test, parallel_api_test, parallel_seed_test
    from pettingzoo.test.state_test import test_parallel_env as pz_state_test_parallel
    from pettingzoo.test.state_test import test_state as pz_state_test
    from pettingzoo.test.state_test import test_state_space as pz_state_space_test

CPU = torch.device("cpu")
B = 3  # env copies
LIMIT = 6  # max_cycles of the multi-step cases


@dataclass
class Case:
    make: Callable[[int], VecEnv]  # seed -> B copies
    steps: int  # steps per copy collected (a few episodes)
    kind: str  # native_mpe | matrix | rendezvous | pettingzoo | vmas
    factory: str = ""  # pettingzoo: the ParallelEnv factory
    kwargs: dict[str, Any] | None = None  # pettingzoo: its kwargs
    random: bool = True  # the seed changes the stream (matrix games and rendezvous are deterministic)
    limit: int = LIMIT  # episode limit (max_cycles)


def _native(name: str, **kw: Any) -> Callable[[int], VecEnv]:
    c = OmegaConf.create({"name": name, "backend": "native", **kw})
    return lambda seed: native.make(c, B, seed, CPU)


def _pz(factory: str, name: str = "pettingzoo", **kwargs: Any) -> Callable[[int], VecEnv]:
    return lambda seed: PettingZooVecEnv(load_factory(factory), dict(kwargs), B, seed, CPU, name)


def _pz_case(factory: str, name: str, steps: int = 3 * LIMIT, random: bool = True, limit: int = LIMIT,
             **kwargs: Any) -> Case:
    return Case(_pz(factory, name, **kwargs), steps, "pettingzoo", factory, kwargs, random, limit)


MPE2 = {"spread": "mpe2.simple_spread_v3:parallel_env", "speaker_listener": "mpe2.simple_speaker_listener_v4:parallel_env",
        "adversary": "mpe2.simple_adversary_v3:parallel_env", "tag": "mpe2.simple_tag_v3:parallel_env"}
TESTBED = "marlcli.envs.testbed:parallel_env"

CASES: dict[str, Case] = {}
for _cont in (False, True):
    _sfx = "_cont" if _cont else ""
    for _name in ("spread", "tag", "adversary"):
        CASES[f"native_{_name}{_sfx}"] = Case(
            _native(_name, max_cycles=LIMIT, continuous_actions=_cont), 3 * LIMIT, "native_mpe")
    for _name, _factory in MPE2.items():
        CASES[f"pz_{_name}{_sfx}"] = _pz_case(_factory, _name, max_cycles=LIMIT, continuous_actions=_cont)
# swarm spread (issue 17): neighbour-limited observations, scaled arena, no absolute position, mean reward
CASES["native_spread_swarm"] = Case(_native("spread", max_cycles=LIMIT, N=6, num_agent_neighbors=3,
                                            num_landmark_neighbors=3, scale_arena=True, observe_position=False,
                                            global_reward="mean"), 3 * LIMIT, "native_mpe")
for _name, _cycles in (("coordination", 1), ("prisoners", 3), ("rps", 1)):
    CASES[f"native_{_name}"] = Case(_native(_name, max_cycles=_cycles), 7, "matrix", random=False, limit=_cycles)
    CASES[f"pz_{_name}"] = _pz_case(f"marlcli.envs.matrix:{_name}", _name, 7, False, _cycles, max_cycles=_cycles)
CASES["native_reference"] = Case(_native("reference", N=3, max_cycles=LIMIT), 3 * LIMIT, "reference")
CASES["native_rendezvous"] = Case(_native("rendezvous", n=3), 4, "rendezvous", random=False, limit=1)
CASES["pz_rendezvous"] = _pz_case("marlcli.envs.rendezvous:parallel_env", "rendezvous", 4, False, 1, n=3)
# VMAS: homogeneous (navigation with its lidar, balance) and heterogeneous (speaker_listener: obs 3 vs 11,
# actions 27 vs 9 / box 5 vs 2); the navigation agents steer to their goals 90% of the time
# (``random_actions``) in a small arena, so whole episodes also end by the scenario's done().
VMAS_CASES = {"navigation": dict(n_agents=2, max_steps=12, kwargs={"world_spawning_x": 0.4, "world_spawning_y": 0.4}),
              "balance": dict(n_agents=3, max_steps=LIMIT), "simple_speaker_listener": dict(max_steps=LIMIT)}


def _vmas(scenario: str, continuous: bool, **kw: Any) -> Callable[[int], VecEnv]:
    c = OmegaConf.create({"name": f"vmas_{scenario}", "backend": "vmas", "scenario": scenario,
                          "continuous_actions": continuous, **kw})
    return lambda seed: VMASEnv(c, B, seed, CPU)


for _cont in (False, True):
    for _name, _kw in VMAS_CASES.items():
        CASES[f"vmas_{_name}{'_cont' if _cont else ''}"] = Case(
            _vmas(_name, _cont, **_kw), 3 * int(_kw["max_steps"]), "vmas", _name, _kw, limit=int(_kw["max_steps"]))
CASES["testbed"] = _pz_case(TESTBED, "testbed", 30, limit=8, strict=True)
CASES["testbed_info_mask"] = _pz_case(TESTBED, "testbed", 30, limit=8, strict=True, mask_in="info")
CASES["testbed_cont"] = _pz_case(TESTBED, "testbed", 30, limit=8, strict=True, continuous_actions=True)


# ---------------------------------------------------------------- acting and collecting


def random_actions(spec: EnvSpec, ts: TimeStep, gen: torch.Generator) -> Tensor:
    """Uniform over each agent's available actions (discrete) or its box (continuous).

    Testbed copies take their observed target half of the time instead, so agents also
    finish early and whole episodes end by termination."""
    b, n = ts.avail.shape[:2]
    if spec.discrete:
        probs = ts.avail.float().flatten(0, 1)
        probs[probs.sum(1) == 0, 0] = 1.0  # an agent that does not act: any placeholder
        act = torch.multinomial(probs, 1, generator=gen).view(b, n)
    else:
        low, high = spec.bounds()
        act = low + (high - low) * torch.rand(b, n, spec.act_dim, generator=gen)
    if spec.name == "vmas_navigation":  # obs = [pos, vel, pos - goal, lidar]: full thrust to the goal
        oracle = torch.rand(b, n, generator=gen) < 0.9
        to_goal = -ts.obs[..., 4:6]
        sign = torch.where(to_goal > 0.05, 1, torch.where(to_goal < -0.05, -1, 0))
        # discrete: flat index 3 * x + y, per axis 0 = stay, 1 = -u, 2 = +u (VMAS's odd-n mapping)
        goal = (-sign % 3)[..., 0] * 3 + (-sign % 3)[..., 1] if spec.discrete else sign.float()
        act = torch.where(oracle if spec.discrete else oracle[..., None], goal, act)
    if spec.name == "testbed":
        oracle = torch.rand(b, n, generator=gen) < 0.5
        for i, k in enumerate(spec.act_dims):
            target = ts.obs[:, i, 3: 3 + k]
            if spec.discrete:
                act[:, i] = torch.where(oracle[:, i], target.argmax(-1), act[:, i])
            else:
                act[:, i, :k] = torch.where(oracle[:, i, None], target, act[:, i, :k])
    return act


def collect(env: VecEnv, steps: int, seed: int = 0) -> tuple[TimeStep, Rollout, TimeStep]:
    """``steps`` steps of random available actions: (reset TimeStep, the Rollout, the last TimeStep)."""
    gen = torch.Generator().manual_seed(seed)
    ts = first = env.reset()
    triples = []
    for _ in range(steps):
        act = random_actions(env.spec, ts, gen)
        nxt = env.step(act)
        triples.append((ts, act, nxt))
        ts = nxt
    return first, Rollout.from_steps(triples), ts


def fields_equal(a: Any, b: Any) -> bool:
    """Every tensor field (and info entry) of two TimeSteps or Rollouts is identical."""
    for f in fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if x is None or y is None:  # an optional field (TimeStep.played): unset on both
            if x is not y:
                return False
        elif isinstance(x, dict):
            if x.keys() != y.keys() or not all(torch.equal(x[k], y[k]) for k in x):
                return False
        elif not torch.equal(x, y):
            return False
    return True


# ---------------------------------------------------------------- the generic contract


def check_generic(spec: EnvSpec, first: TimeStep, r: Rollout) -> None:
    t_, b_, n = r.reward.shape
    o, s, a = spec.obs_dim, spec.state_dim, spec.act_dim
    assert r.obs.shape == r.next_obs.shape == (t_, b_, n, o) and r.obs.dtype == torch.float32
    assert r.state.shape == r.next_state.shape == (t_, b_, s)
    assert r.avail.shape == r.next_avail.shape == (t_, b_, n, a) and r.avail.dtype == torch.bool
    assert r.alive.shape == r.next_alive.shape == r.terminated.shape == (t_, b_, n)
    assert r.done.shape == r.truncated.shape == (t_, b_)
    # right after reset: nothing done, everyone alive, final_* == plain
    assert first.alive.all() and not first.done.any() and not first.terminated.any()
    assert (first.reward == 0).all() and torch.equal(first.final_obs, first.obs)
    # continuity: next_*[t] == *[t + 1] wherever the episode goes on
    go_on = ~r.done[:-1]
    for name in ("obs", "state", "avail", "alive"):
        nxt, cur = getattr(r, f"next_{name}")[:-1], getattr(r, name)[1:]
        assert torch.equal(nxt[go_on], cur[go_on]), f"next_{name}[t] != {name}[t+1] where not done"
    # padding: observations beyond an agent's size are zero; masks only on its real actions
    for i, d in enumerate(spec.obs_dims):
        assert (r.obs[..., i, d:] == 0).all() and (r.next_obs[..., i, d:] == 0).all()
    static = spec.action_mask()
    assert not (r.avail & ~static).any() and not (r.next_avail & ~static).any()
    # masks are on exactly for agents that act (discrete: at least one action each; continuous: all real dims)
    for avail, alive in ((r.avail, r.alive), (r.next_avail, r.next_alive)):
        assert torch.equal(avail.any(-1), alive)
        assert spec.discrete or torch.equal(avail, static & alive[..., None])
    # only agents that acted can terminate or earn a reward
    assert not (r.terminated & ~r.alive).any()
    assert (r.reward[~r.alive] == 0).all()
    # at done: final_alive = acted and not terminated; truncation only at done
    done = r.done
    assert torch.equal(r.next_alive[done], r.alive[done] & ~r.terminated[done])
    assert not (r.truncated & ~done).any()
    ended = r.terminated | ~r.alive  # finished before or in this step
    assert torch.equal(done & ~r.truncated, done & ended.all(-1)), "done without truncation = all terminated"
    # not done: the agents that go on are those that acted and did not terminate
    assert torch.equal(r.next_alive[~done], r.alive[~done] & ~r.terminated[~done])


# ---------------------------------------------------------------- per-backend checks


def pz_reference(case: Case, spec: EnvSpec, seed: int, actions: Tensor) -> dict[str, np.ndarray]:
    """Replay raw ParallelEnv copies with the adapter's episode seeds and ``actions [T, B, ...]``.

    Returns what the adapter must have produced: ``obs, state, avail, alive`` acted on and
    ``reward, terminated, truncated, done, next_*`` of each step (true last values at done).
    """
    t_, n = actions.shape[0], spec.n_agents
    factory = load_factory(case.factory)
    counts = np.zeros(B, dtype=np.int64)
    seeder = SimpleNamespace(seed=seed, episodes=counts)  # PettingZooVecEnv._episode_seed reads these two
    out: dict[str, np.ndarray] = {
        "obs": np.zeros((t_, B, n, spec.obs_dim), np.float32), "state": np.zeros((t_, B, spec.state_dim), np.float32),
        "avail": np.zeros((t_, B, n, spec.act_dim), bool), "alive": np.zeros((t_, B, n), bool),
        "reward": np.zeros((t_, B, n), np.float32), "terminated": np.zeros((t_, B, n), bool),
        "truncated": np.zeros((t_, B), bool), "done": np.zeros((t_, B), bool),
    }
    for k in ("obs", "state", "avail", "alive"):
        out[f"next_{k}"] = np.zeros_like(out[k])

    def encode(env: Any, obs: dict, infos: dict, alive: np.ndarray) -> tuple[np.ndarray, ...]:
        o = np.zeros((n, spec.obs_dim), np.float32)
        m = spec.action_mask().numpy().copy()
        for i, a in enumerate(spec.agents):
            x = obs.get(a)
            if isinstance(x, dict):
                m[i, : spec.act_dims[i]] &= np.asarray(x["action_mask"], bool)
                x = x["observation"]
            if x is not None:
                o[i, : spec.obs_dims[i]] = np.asarray(x, np.float32).ravel()
            if "action_mask" in (infos.get(a) or {}):
                m[i, : spec.act_dims[i]] &= np.asarray(infos[a]["action_mask"], bool)
        try:
            st = np.asarray(env.state(), np.float32).ravel()
        except (AttributeError, NotImplementedError):
            st = np.concatenate([o[i, :d] for i, d in enumerate(spec.obs_dims)])
        return o, st, m & alive[:, None]

    for b in range(B):
        env = factory(**(case.kwargs or {}))
        counts[b] = 0

        def reset(env: Any = env, b: int = b) -> tuple[np.ndarray, ...]:
            obs, infos = env.reset(seed=PettingZooVecEnv._episode_seed(seeder, b))  # type: ignore[arg-type]
            counts[b] += 1
            alive = np.array([a in env.agents for a in spec.agents])
            return (*encode(env, obs, infos, alive), alive)

        cur = reset()
        for t in range(t_):
            for k, v in zip(("obs", "state", "avail", "alive"), cur, strict=True):
                out[k][t, b] = v
            acted = cur[3]
            act = {a: (int(actions[t, b, i]) if spec.discrete else actions[t, b, i, : spec.act_dims[i]].numpy())
                   for i, a in enumerate(spec.agents) if acted[i]}
            obs, rew, term, trunc, infos = env.step(act)
            for i, a in enumerate(spec.agents):
                out["reward"][t, b, i] = rew.get(a, 0.0)
                out["terminated"][t, b, i] = bool(term.get(a, False))
            over = not env.agents
            alive = acted & ~out["terminated"][t, b] if over else np.array([a in env.agents for a in spec.agents])
            nxt = (*encode(env, obs, infos, alive), alive)
            for k, v in zip(("obs", "state", "avail", "alive"), nxt, strict=True):
                out[f"next_{k}"][t, b] = v
            out["done"][t, b] = over
            live = [a for i, a in enumerate(spec.agents) if acted[i]]
            out["truncated"][t, b] = over and any(trunc.get(a) for a in live) and not all(term.get(a) for a in live)
            cur = reset() if over else nxt
    return out


def check_pettingzoo(case: Case, spec: EnvSpec, r: Rollout, seed: int) -> None:
    ref = pz_reference(case, spec, seed, r.actions)
    for k, v in ref.items():
        got = getattr(r, k).numpy()
        np.testing.assert_array_equal(got, v, err_msg=f"adapter {k} differs from the raw ParallelEnv")
    if case.factory.startswith("mpe2"):  # mpe2 episodes end by truncation at max_cycles, never by termination
        assert not r.terminated.any() and torch.equal(r.truncated, r.done)
        t = torch.arange(1, r.done.shape[0] + 1)[:, None].expand_as(r.done)
        assert torch.equal(r.done, t % LIMIT == 0) and r.alive.all()


def check_testbed(spec: EnvSpec, r: Rollout, limit: int) -> None:
    """The adapter's view of the testbed against the testbed's analytic encoding."""
    code = lambda x: torch.round(x[..., 1] * ID_SCALE)  # noqa: E731  [.., N] episode id
    step = lambda x: torch.round(x[..., 0] * limit)  # noqa: E731  step index in the episode
    t_ = r.done.shape[0]
    seen_term = seen_trunc = seen_early = False
    for b in range(B):
        t_ep = 0
        for t in range(t_):
            obs, nxt, alive, done = r.obs[t, b], r.next_obs[t, b], r.alive[t, b], bool(r.done[t, b])
            assert (step(obs[alive]) == t_ep).all(), "observed step index"
            assert (step(nxt[r.next_alive[t, b] | (alive & r.terminated[t, b])]) == t_ep + 1).all()
            ids = code(obs[alive]).unique()
            assert ids.numel() == 1 and 1 <= ids.item() < ID_SCALE, "one episode id per episode"
            assert (code(nxt[alive]) == ids).all(), "final obs belong to the same episode"
            prog, nprog = obs[:, 2], nxt[:, 2]
            for i, k in enumerate(spec.act_dims):
                if not alive[i]:
                    continue
                assert torch.isclose(r.reward[t, b, i], nprog[i] - prog[i], atol=1e-6), "reward = progress gained"
                assert bool(r.terminated[t, b, i]) == bool(nprog[i] >= 1 - 1e-6), "terminated = progress 1"
                if spec.discrete:  # the mask is observed; the target is available; reward for the target only
                    mask, target = obs[i, 3 + k: 3 + 2 * k] > 0.5, int(obs[i, 3: 3 + k].argmax())
                    assert torch.equal(r.avail[t, b, i, :k], mask) and mask[target]
                    assert (r.reward[t, b, i] > 0) == (int(r.actions[t, b, i]) == target)
                    if r.next_alive[t, b, i]:  # the final mask of a truncated agent is its real last one
                        assert torch.equal(r.next_avail[t, b, i, :k], nxt[i, 3 + k: 3 + 2 * k] > 0.5)
            seen_early |= bool(r.terminated[t, b].any() and r.next_alive[t, b].any())  # others go on
            t_ep += 1
            assert t_ep <= limit and (done or t_ep < limit), "episodes end at max_cycles at the latest"
            if done:
                truncated = bool(r.truncated[t, b])
                assert t_ep == limit or not truncated, "truncation only at max_cycles"
                seen_term |= not truncated
                seen_trunc |= truncated
                if t + 1 < t_:  # auto-reset: a fresh episode at step 0 with a new id, everyone alive
                    fresh = r.obs[t + 1, b]
                    assert (step(fresh) == 0).all() and (fresh[:, 2] == 0).all() and r.alive[t + 1, b].all()
                    assert (code(fresh) != ids).all()
                t_ep = 0
    assert seen_term and seen_trunc and seen_early, "both endings and early finishers occur"


def check_native_mpe(name: str, r: Rollout) -> None:
    """Native MPE: ``next_obs`` (the true final one at done) continues ``obs`` physically."""
    done = r.done
    assert not r.terminated.any() and torch.equal(r.truncated, done) and r.alive.all() and r.next_alive.all()
    t = torch.arange(1, done.shape[0] + 1)[:, None].expand_as(done)
    assert torch.equal(done, t % LIMIT == 0)
    if name == "spread_swarm":  # obs = [vel, nearest landmark offsets (sorted: the order may change), ...]
        fresh = r.obs[1:][done[:-1]]
        assert (fresh[..., 0:2] == 0).all(), "a fresh episode starts at rest"
        at_done = done[:-1]
        assert not torch.isclose(r.next_obs[:-1][at_done], r.obs[1:][at_done], atol=1e-4).all(), \
            "the final obs is not the reset one"
        return
    if name in ("spread", "tag"):  # obs = [vel, pos, landmark offsets, ...]; mpe2 moves pos by the old vel
        torch.testing.assert_close(r.next_obs[..., 2:4], r.obs[..., 2:4] + 0.1 * r.obs[..., 0:2], rtol=0, atol=1e-5)
        fresh = r.obs[1:][done[:-1]]
        assert (fresh[..., 0:2] == 0).all(), "a fresh episode starts at rest"
        lm = slice(4, 8)
    else:  # adversary_0 sees [landmark offsets (2 x 2), ...]
        lm = slice(0, 4)
    # landmarks do not move: the offset between two landmarks is the same in next_obs as in obs
    diff = lambda x: x[..., 0, lm][..., 0:2] - x[..., 0, lm][..., 2:4]  # noqa: E731
    torch.testing.assert_close(diff(r.next_obs), diff(r.obs), rtol=0, atol=1e-5)
    at_done = done[:-1]
    assert not torch.isclose(diff(r.next_obs[:-1][at_done]), diff(r.obs[1:][at_done]), atol=1e-4).all(), \
        "the final obs is not the reset one"


def check_matrix(name: str, spec: EnvSpec, r: Rollout, cycles: int) -> None:
    make_payoff, observe_last, _ = GAMES[name]
    payoff = torch.as_tensor(make_payoff(), dtype=torch.float32)
    a0, a1 = r.actions[..., 0], r.actions[..., 1]
    torch.testing.assert_close(r.reward, payoff[a0, a1])
    t = torch.arange(1, r.done.shape[0] + 1)[:, None].expand_as(r.done)
    assert torch.equal(r.done, t % cycles == 0) and not r.truncated.any()
    assert torch.equal(r.terminated, r.done[..., None].expand_as(r.terminated)) and not r.next_alive[r.done].any()
    if observe_last:  # the final observation is the last joint action, one-hot, own move first; a new episode: zeros
        n0, n1 = payoff.shape[:2]
        last = torch.stack([torch.nn.functional.one_hot(a0 * n1 + a1, spec.obs_dim),
                            torch.nn.functional.one_hot(a1 * n0 + a0, spec.obs_dim)], -2).float()
        assert torch.equal(r.next_obs, last)
        assert (r.obs[1:][r.done[:-1]] == 0).all() and (r.obs[0] == 0).all()
    else:
        assert (r.obs == 1).all() and (r.next_obs == 1).all()


def check_rendezvous(r: Rollout) -> None:
    team = rendezvous_reward(r.actions[..., 0].double().clamp(-2.0, 2.0), 0.7, 1.0).float()
    torch.testing.assert_close(r.reward, team[..., None].expand_as(r.reward))
    assert r.done.all() and r.terminated.all() and not r.truncated.any() and not r.next_alive.any()


def vmas_reference(case: Case, seed: int, actions: Tensor) -> dict[str, list[Tensor]]:
    """A lone raw VMAS env, seeded as ``VMASEnv`` seeds its own RNG states, replayed with ``actions``.

    Returns per step the padded observations acted on, rewards, the scenario's done flags
    and the observations right after the step (before any reset)."""
    import random

    import vmas
    from vmas.simulator.environment import Environment

    kw = dict(case.kwargs or {})
    limit, extra = int(kw.pop("max_steps")), dict(kw.pop("kwargs", {}))
    Environment.vmas_random_state[:] = [torch.Generator().manual_seed(seed).get_state(),
                                        np.random.RandomState(seed).get_state(), random.Random(seed).getstate()]
    env = vmas.make_env(case.factory, num_envs=B, device="cpu", continuous_actions=actions.dtype.is_floating_point,
                        max_steps=None, seed=None, **kw, **extra)
    o = max(int(x.shape[1]) for x in env.reset())
    pad = lambda obs: torch.stack([torch.nn.functional.pad(x, (0, o - x.shape[1])) for x in obs], 1)  # noqa: E731
    out: dict[str, list[Tensor]] = {"obs": [], "reward": [], "term": [], "next_obs": []}
    cur, t = pad(env.reset()), torch.zeros(B, dtype=torch.long)
    for a in actions:
        dims = [env.get_agent_action_size(ag) for ag in env.agents]
        acts = [a[:, i, None] if not a.dtype.is_floating_point else a[:, i, :d] for i, d in enumerate(dims)]
        obs, rew, term, _ = env.step(acts)
        t += 1
        out["obs"].append(cur)
        out["reward"].append(torch.stack(rew, 1))
        out["term"].append(term.clone())
        out["next_obs"].append(pad(obs))
        done = term | (t >= limit)
        if done.all():
            env.reset()
        for i in done.nonzero().flatten().tolist() if not done.all() else []:
            env.reset_at(i)
        t[done] = 0
        cur = pad(env.get_from_scenario(get_observations=True, get_rewards=False, get_infos=False,
                                        get_dones=False)[0])
    return out


def check_vmas(case: Case, spec: EnvSpec, r: Rollout, env: VecEnv) -> None:
    ref = vmas_reference(case, 0, r.actions)
    for k, mine in (("obs", r.obs), ("reward", r.reward), ("next_obs", r.next_obs)):
        torch.testing.assert_close(mine, torch.stack(ref[k]), rtol=0, atol=0, msg=f"VMAS {k} differs from raw VMAS")
    term = torch.stack(ref["term"])
    assert torch.equal(r.terminated, term[..., None].expand_as(r.terminated)), "terminated = the scenario's done()"
    t = torch.zeros(B, dtype=torch.long)
    for step in range(r.done.shape[0]):  # truncation exactly at max_steps, unless the scenario ended it
        t += 1
        assert torch.equal(r.truncated[step], (t >= case.limit) & ~term[step])
        t[r.done[step]] = 0
    assert torch.equal(r.done, r.truncated | term)
    if case.factory in ("navigation", "balance"):  # obs start with the agent's position
        keep = ~r.done[-1]
        assert torch.equal(env.positions()[keep], r.next_obs[-1][keep][..., :2])
    if case.factory == "navigation":
        assert term.any() and r.truncated.any(), "both endings occur"
        dist = r.next_obs[..., 4:6].norm(dim=-1)  # at termination every agent is on its goal
        assert (dist[term] < 0.1).all()


@pytest.mark.parametrize("case_id", list(CASES))
def test_contract(case_id: str) -> None:
    case = CASES[case_id]
    env = case.make(0)
    first, r, last = collect(env, case.steps)
    spec = env.spec
    check_generic(spec, first, r)
    assert set(last.info) == set(spec.stats) and all(v.shape == (B,) for v in last.info.values())
    name = case_id.removeprefix("native_").removeprefix("pz_").removesuffix("_cont")
    if case.kind == "pettingzoo":
        check_pettingzoo(case, spec, r, seed=0)
    if case_id.startswith("testbed"):
        check_testbed(spec, r, case.limit)
    elif case.kind == "native_mpe":
        check_native_mpe(name, r)
    elif case.kind == "matrix" or name in GAMES:
        check_matrix(name, spec, r, case.limit)
    elif name == "rendezvous":
        check_rendezvous(r)
    elif case.kind == "vmas":
        check_vmas(case, spec, r, env)
    env.close()


@pytest.mark.parametrize("case_id", list(CASES))
def test_state_dict_round_trip_mid_episode(case_id: str) -> None:
    case = CASES[case_id]
    env = case.make(3)
    gen = torch.Generator().manual_seed(1)
    ts = env.reset()
    for _ in range(LIMIT // 2 + 1):  # mid-episode for the multi-step cases
        ts = env.step(random_actions(env.spec, ts, gen))
    saved = env.state_dict()
    assert all(isinstance(v, torch.Tensor) for v in saved.values())
    state = gen.get_state()
    stream = []
    for _ in range(2 * LIMIT):  # crosses episode ends and auto-resets
        act = random_actions(env.spec, ts, gen)
        stream.append((act, env.step(act)))
        ts = stream[-1][1]
    other = case.make(3)
    other.reset()
    other.step(random_actions(other.spec, other.reset(), torch.Generator().manual_seed(5)))  # elsewhere first
    resumed = other.load_state_dict(saved)
    gen.set_state(state)
    for act, want in stream:
        assert torch.equal(random_actions(other.spec, resumed, gen), act), "resumed obs/masks differ"
        resumed = other.step(act)
        assert fields_equal(resumed, want), "the resumed env left the stream"


@pytest.mark.parametrize("case_id", list(CASES))
def test_seed_decides_the_stream(case_id: str) -> None:
    case = CASES[case_id]
    steps = min(case.steps, 2 * LIMIT)
    a, b = collect(case.make(7), steps)[1], collect(case.make(7), steps)[1]
    assert fields_equal(a, b), "same seed, different stream"
    c = collect(case.make(8), steps)[1]
    if not case.random:  # deterministic games: the seed must not matter either
        assert fields_equal(a, c)
        return
    assert not torch.equal(a.obs, c.obs) or not torch.equal(a.reward, c.reward), "the seed is ignored"


# ---------------------------------------------------------------- PettingZoo's own checks

PARALLEL_ENVS: dict[str, Callable[[], Any]] = {
    "coordination": load_factory("marlcli.envs.matrix:coordination"),
    "prisoners": load_factory("marlcli.envs.matrix:prisoners"),
    "rps": load_factory("marlcli.envs.matrix:rps"),
    "rendezvous": load_factory("marlcli.envs.rendezvous:parallel_env"),
    "testbed": load_factory(TESTBED),
    "testbed_info_mask": functools.partial(load_factory(TESTBED), mask_in="info"),
    "testbed_cont": functools.partial(load_factory(TESTBED), continuous_actions=True),
}
# warnings PettingZoo's checks raise on purpose-built features (tiny one-number or all-zero
# observations of the matrix games; the testbed's per-agent sizes and Dict observations)
EXPECTED = ("Observation is a single number", "Observation numpy array is all zeros",
            "Agents have different observation space sizes", "Observations are different shapes",
            "Observation space for each agent probably should be", "Observation is not a NumPy array")


@pytest.mark.parametrize("name", list(PARALLEL_ENVS))
def test_pettingzoo_api_and_seed_tests(name: str) -> None:
    make = PARALLEL_ENVS[name]
    assert isinstance(make(), ParallelEnv)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        parallel_api_test(make(), num_cycles=100)
        parallel_seed_test(make, num_cycles=100)
        api_test(parallel_to_aec(make()), num_cycles=100)
    unexpected = {str(w.message) for w in caught if not str(w.message).startswith(EXPECTED)}
    assert not unexpected


@pytest.mark.parametrize("name", ["testbed", "testbed_cont"])
def test_pettingzoo_state_test(name: str) -> None:
    make = PARALLEL_ENVS[name]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pz_state_space_test(make())
        pz_state_test(parallel_to_aec(make()), 50)
        pz_state_test_parallel(make())
    assert not caught, [str(w.message) for w in caught]
