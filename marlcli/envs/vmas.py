"""VMAS (Bettini et al., 2022, https://github.com/proroklab/VectorizedMultiAgentSimulator) as a ``VecEnv``.

VMAS already steps ``B`` worlds as torch tensors on any device, so this adapter only
re-packs its per-agent lists into marlcli's ``[B, N, ...]`` tensors:

* observations of every agent zero-padded to the largest (Dict observations are
  flattened in key order); ``state`` is the concatenation of the true observations;
* discrete actions are VMAS's flat ``Discrete`` index (movement x communication); an
  agent with fewer actions than the largest has the rest marked unavailable;
  continuous actions are clipped to each agent's box (``[-u_range, u_range]`` for
  movement, ``[0, 1]`` for communication), which ``EnvSpec.act_low/act_high`` declare;
* the scenario's ``done()`` terminates every agent (no bootstrap); ``env.max_steps``
  (counted here, VMAS runs with ``max_steps=None``) truncates: bootstrap from
  ``final_obs``, the observation before the auto-reset of that copy;
* each scalar entry of VMAS's per-agent ``info`` becomes an episode statistic (the mean
  over the agents that report it, summed over the episode).

Seeding. VMAS keeps one RNG state (torch CPU, numpy, python) for the whole process, a
class attribute of ``vmas.simulator.environment.Environment``: a second env (the
trainer's evaluation copies) would reseed and interleave with the first. Each
``VMASEnv`` therefore keeps its own RNG states and swaps them in around every VMAS call
(``_own_rng``), plus the CUDA generator of its device, which VMAS samples from on a GPU.
Same seed -> same stream on CPU.

Auto-reset. VMAS resets one copy per ``reset_at(i)`` call, so the copies that finished
are reset in a Python loop (all at once with one ``reset()`` when every copy ended, as
at a shared time limit). Finding them costs one host sync per step (``done.any()``);
VMAS's own action checks sync anyway.

Resume. ``state_dict`` walks the VMAS objects (environment, world, entities, their
states and actions, the scenario) and saves every tensor attribute by path, plus the
RNG states and the step counters; ``load_state_dict`` copies them back in place. This is
exact for VMAS's own scenarios (checked in ``tests/envs/test_contract.py`` for the
scenarios listed there); a custom scenario that keeps state outside tensors (Python
floats or lists changed while stepping) would not be restored. The walking is in
``marlcli/envs/vmas_state.py``.
"""

from __future__ import annotations

import contextlib
import random
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor

from marlcli.envs.base import EnvSpec, TimeStep, empty_step
from marlcli.envs.pettingzoo import load_factory
from marlcli.envs.vmas_state import RNG_KEYS, assign, rng_from_tensors, rng_to_tensors, tensors
from marlcli.errors import CheckpointError, ConfigError


def _flat(obs: Any) -> Tensor:
    """One agent's observation as ``[B, O]``: Dict observations are flattened in key order."""
    if isinstance(obs, dict):
        return torch.cat([_flat(obs[k]) for k in sorted(obs)], -1)
    return obs.reshape(obs.shape[0], -1)


def _scenario(name: str) -> Any:
    """A VMAS scenario file name (``navigation``), or ``package.module:Class`` for your own ``BaseScenario``."""
    if ":" not in name:
        return name
    try:
        return load_factory(name)()
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - a user's scenario class failing to build
        raise ConfigError(f"env.scenario={name}: {type(e).__name__}: {e}") from None


class VMASEnv:
    """``num_envs`` copies of one VMAS scenario on ``device``, auto-reset, truncated at ``max_steps``."""

    def __init__(self, env_cfg: Any, num_envs: int, seed: int, device: torch.device,
                 dtype: torch.dtype = torch.float32) -> None:
        import vmas  # deferred: vmas (and its pyglet/gym stack) loads only when env.backend=vmas
        from vmas.simulator.environment import Environment  # deferred: vmas loads only when env.backend=vmas

        self._shared_rng = Environment.vmas_random_state  # the list VMAS's local_seed swaps in
        self.num_envs, self.device = int(num_envs), torch.device(device)
        scenario = str(env_cfg.get("scenario") or "")
        self.max_steps = int(env_cfg.get("max_steps") or 0)
        if self.max_steps <= 0:
            raise ConfigError(f"env.max_steps={env_cfg.get('max_steps')} must be a positive integer "
                              "(VMAS scenarios may never end on their own)")
        kwargs = dict(env_cfg.get("kwargs") or {})
        if env_cfg.get("n_agents") is not None:
            kwargs["n_agents"] = int(env_cfg.get("n_agents"))
        self.discrete = not bool(env_cfg.get("continuous_actions", False))
        self._seed_rng(int(seed))
        with self._own_rng(), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                self.env = vmas.make_env(_scenario(scenario), num_envs=self.num_envs, device=self.device,
                                         continuous_actions=not self.discrete, max_steps=None, seed=None,
                                         dict_spaces=False, **kwargs)
            except ConfigError:
                raise
            except AssertionError as e:  # vmas.scenarios.load asserts on an unknown name
                if "not found" in str(e):
                    raise ConfigError(f"no VMAS scenario named '{scenario}' (env.scenario)") from None
                raise ConfigError(f"VMAS scenario '{scenario}' rejected its arguments: {e}") from None
            except (TypeError, ValueError) as e:  # a scenario argument of the wrong type or value
                raise ConfigError(f"VMAS scenario '{scenario}': {type(e).__name__}: {e}") from None
            obs = [_flat(o) for o in self.env.reset()]
        unused = [str(w.message) for w in caught if "passed but not used" in str(w.message)]
        if unused:
            raise ConfigError(f"VMAS scenario '{scenario}': {unused[0].split(' This will')[0]}")
        agents = self.env.agents
        self.obs_dims = [int(o.shape[1]) for o in obs]
        if self.discrete:
            act_dims = [int(self.env.get_agent_action_space(a).n) for a in agents]
            low: list[list[float]] | float = -1.0
            high: list[list[float]] | float = 1.0
        else:
            spaces = [self.env.get_agent_action_space(a) for a in agents]
            act_dims = [int(s.shape[0]) for s in spaces]
            low = [[float(x) for x in s.low] for s in spaces]
            high = [[float(x) for x in s.high] for s in spaces]
        self.spec = EnvSpec(
            name=str(env_cfg.get("name", f"vmas_{scenario}")),
            agents=[a.name for a in agents],
            obs_dims=self.obs_dims,
            act_dims=act_dims,
            discrete=self.discrete,
            state_dim=sum(self.obs_dims),
            episode_limit=self.max_steps,
            act_low=low,
            act_high=high,
            stats={k: "sum" for k in self._info_keys()},
            position=_observed_position(obs, agents),
        )
        self._mask = self.spec.action_mask().to(self.device)  # [N, A]
        self._low, self._high = (t.to(self.device) for t in self.spec.bounds())
        self.t = torch.zeros(self.num_envs, dtype=torch.long, device=self.device)  # steps into the episode

    # ------------------------------------------------------------------ RNG isolation

    def _seed_rng(self, seed: int) -> None:
        self._rng: list[Any] = [torch.Generator().manual_seed(seed).get_state(),
                                np.random.RandomState(seed).get_state(), random.Random(seed).getstate()]
        self._cuda_rng: Tensor | None = None
        if self.device.type == "cuda":
            self._cuda_rng = torch.Generator(device=self.device).manual_seed(seed).get_state()

    @contextlib.contextmanager
    def _own_rng(self) -> Iterator[None]:
        """Run VMAS code with this env's RNG states (VMAS swaps ``vmas_random_state`` in itself)."""
        outer = list(self._shared_rng)
        self._shared_rng[:] = self._rng
        cuda_outer = None
        if self._cuda_rng is not None:
            cuda_outer = torch.cuda.get_rng_state(self.device)
            torch.cuda.set_rng_state(self._cuda_rng, self.device)
        try:
            yield
        finally:
            self._rng = list(self._shared_rng)
            self._shared_rng[:] = outer
            if cuda_outer is not None:
                self._cuda_rng = torch.cuda.get_rng_state(self.device)
                torch.cuda.set_rng_state(cuda_outer, self.device)

    # ------------------------------------------------------------------ packing

    def _info_keys(self) -> list[str]:
        try:
            with self._own_rng():
                infos = self.env.get_from_scenario(get_observations=False, get_rewards=False, get_infos=True,
                                                   get_dones=False)[0]
        except (AttributeError, TypeError):  # info() reads values only set while stepping: no stats
            return []
        keys = [k for info in infos for k, v in info.items()
                if isinstance(v, Tensor) and v.numel() == self.num_envs]
        return list(dict.fromkeys(keys))

    def _pack(self, obs: list[Any]) -> tuple[Tensor, Tensor]:
        """Per-agent observations -> ``obs [B, N, O]`` zero-padded and ``state [B, S]``."""
        flat = [_flat(o).to(torch.float32) for o in obs]
        state = torch.cat(flat, 1)
        o = self.spec.obs_dim
        padded = [x if x.shape[1] == o else torch.nn.functional.pad(x, (0, o - x.shape[1])) for x in flat]
        return torch.stack(padded, 1), state

    def _stats(self, infos: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        out = {}
        for k in self.spec.stats:
            vals = [info[k].reshape(self.num_envs).float() for info in infos if k in info]
            out[k] = torch.stack(vals, 1).mean(1)
        return out

    def _avail(self) -> Tensor:
        return self._mask.expand(self.num_envs, -1, -1).clone()

    def _observe(self) -> tuple[Tensor, Tensor]:
        with self._own_rng():
            obs = self.env.get_from_scenario(get_observations=True, get_rewards=False, get_infos=False,
                                             get_dones=False)[0]
        return self._pack(obs)

    def _actions(self, actions: Tensor) -> list[Tensor]:
        """marlcli actions -> VMAS's per-agent list (discrete ``[B, 1]``, continuous ``[B, a_i]`` clipped)."""
        if self.discrete:
            a = actions.to(self.device).long()
            return [a[:, i, None] for i in range(self.spec.n_agents)]
        a = torch.maximum(torch.minimum(actions.to(self.device, torch.float32), self._high), self._low)
        return [a[:, i, :d] for i, d in enumerate(self.spec.act_dims)]

    # ------------------------------------------------------------------ VecEnv

    def reset(self) -> TimeStep:
        with self._own_rng():
            self.env.reset(return_observations=False)
        self.t.zero_()
        obs, state = self._observe()
        info = {k: torch.zeros(self.num_envs, device=self.device) for k in self.spec.stats}
        return empty_step(self.spec, obs, state, self._avail(), info)

    def step(self, actions: Tensor) -> TimeStep:
        with self._own_rng():
            obs_l, rew_l, term, infos = self.env.step(self._actions(actions))
        self.t += 1
        obs, state = self._pack(obs_l)
        reward = torch.stack([r.reshape(self.num_envs) for r in rew_l], 1).to(torch.float32)
        term = term.reshape(self.num_envs).bool()
        truncated = (self.t >= self.max_steps) & ~term
        done = term | truncated
        final_obs, final_state = obs, state
        if bool(done.any()):  # the one host sync per step: VMAS resets copies by Python index
            with self._own_rng():
                if bool(done.all()):
                    self.env.reset(return_observations=False)
                else:
                    for i in done.nonzero().flatten().tolist():
                        self.env.reset_at(i, return_observations=False)
            self.t.masked_fill_(done, 0)
            obs, state = self._observe()
        b, n = reward.shape
        avail = self._avail()
        alive = torch.ones(b, n, dtype=torch.bool, device=self.device)
        terminated = term[:, None].expand(b, n).clone()
        return TimeStep(obs=obs, state=state, avail=avail, reward=reward, terminated=terminated,
                        truncated=truncated, done=done, alive=alive, final_obs=final_obs,
                        final_state=final_state, final_avail=avail & ~terminated[..., None], final_alive=~terminated,
                        info=self._stats(infos))

    def positions(self) -> Tensor:
        """Agent positions ``[B, N, 2]`` (x, y in VMAS world units)."""
        return torch.stack([a.state.pos for a in self.env.agents], 1).to(torch.float32)

    def state_dict(self) -> dict[str, Tensor]:
        out = {f"vmas.{k}": v.clone() for k, v in tensors(self.env).items()}  # "vmas.@path": entity refs
        out["t"] = self.t.clone()
        out.update(rng_to_tensors(self._rng, self._cuda_rng))
        return out

    def load_state_dict(self, state: dict[str, Tensor]) -> TimeStep:
        missing = [k for k in ("t", *RNG_KEYS[:1]) if k not in state]
        if missing:
            raise CheckpointError(f"VMAS env state has no '{missing[0]}'")
        if tuple(state["t"].shape) != tuple(self.t.shape):
            raise CheckpointError(f"VMAS env state is for {state['t'].shape[0]} copies, not {self.num_envs}")
        entities = self.env.world.entities
        for k, v in state.items():  # entity references first: tensor paths may run through them
            if k.startswith("vmas.@"):
                assign(self.env, k[6:], entities[int(v[0])])
        for k, v in state.items():
            if k.startswith("vmas.") and not k.startswith("vmas.@"):
                assign(self.env, k[5:], v.to(self.device))
        self.t.copy_(state["t"])
        self._rng, cuda = rng_from_tensors(state)
        if self._cuda_rng is not None and cuda is not None:
            self._cuda_rng = cuda
        obs, state_ = self._observe()
        info = {k: torch.zeros(self.num_envs, device=self.device) for k in self.spec.stats}
        return empty_step(self.spec, obs, state_, self._avail(), info)

    def close(self) -> None:
        return None


def make(env_cfg: Any, num_envs: int, seed: int, device: torch.device) -> VMASEnv:
    """``num_envs`` copies of ``env_cfg.scenario`` (see ``conf/env/vmas.yaml``)."""
    return VMASEnv(env_cfg, num_envs, seed, device)


def _observed_position(obs: list[Tensor], agents: list[Any]) -> list[int]:
    """``[0, 1]`` when every agent's observation starts with its own position (most VMAS scenarios:
    navigation, balance, flocking, ...), checked on the reset observation; else ``[]`` (no range graph)."""
    try:
        same = all(o.shape[1] >= 2 and torch.allclose(o[:, :2].float(), a.state.pos.float(), atol=1e-5)
                   for o, a in zip(obs, agents, strict=True))
    except (AttributeError, RuntimeError):
        return []
    return [0, 1] if same else []
