"""Adapter: B copies of any PettingZoo ParallelEnv -> the batched tensor interface.

The copies are stepped one after another in Python on the CPU (this is the reference
backend; ``backend=native`` is the fast one). Each copy is reset with a seed derived
from (run seed, copy index, episode count), so trajectories depend only on the seed and
the actions, and a run resumed at an episode boundary continues exactly.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from marlcli.envs.base import EnvSpec, TimeStep, empty_step
from marlcli.errors import ConfigError


def load_factory(spec: str) -> Callable[..., Any]:
    """Resolve ``package.module:callable`` (or ``package.module.callable``)."""
    module_name, sep, attr = spec.partition(":")
    if not sep:
        module_name, _, attr = spec.rpartition(".")
    if not module_name or not attr:
        raise ConfigError(f"env.factory '{spec}' must look like package.module:callable")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError and anything the module raises on import
        raise ConfigError(
            f"env.factory '{spec}': cannot import '{module_name}' ({type(exc).__name__}: {exc}); "
            "check the module path and that its package is installed"
        ) from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ConfigError(f"env.factory '{spec}': '{module_name}' has no callable '{attr}'")
    return factory


def _spread_stats(env: Any) -> dict[str, float]:
    """Collisions (agent pairs touching) and landmarks covered (< 0.1) for mpe2 spread."""
    world = env.unwrapped.world
    pos = np.array([a.state.p_pos for a in world.agents])
    lm = np.array([lmk.state.p_pos for lmk in world.landmarks])
    size = world.agents[0].size
    d_aa = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
    n = len(pos)
    collisions = float(((d_aa < 2 * size) & ~np.eye(n, dtype=bool)).sum() / 2)
    covered = float((np.linalg.norm(pos[None] - lm[:, None], axis=-1).min(1) < 0.1).sum())
    return {"collisions": collisions, "landmarks_covered": covered}


def _tag_stats(env: Any) -> dict[str, float]:
    """Catches for mpe2 tag: predator-prey pairs in contact this step (as the +10 reward counts them)."""
    world = env.unwrapped.world
    preds = [a for a in world.agents if a.adversary]
    prey = [a for a in world.agents if not a.adversary]
    catches = sum(float(np.linalg.norm(p.state.p_pos - q.state.p_pos) < p.size + q.size) for p in preds for q in prey)
    return {"catches": catches}


# env name -> (stats spec, function computing the per-step stats of one copy)
_STATS: dict[str, tuple[dict[str, str], Callable[[Any], dict[str, float]]]] = {
    "spread": ({"collisions": "sum", "landmarks_covered": "last"}, _spread_stats),
    "tag": ({"catches": "sum"}, _tag_stats),
}


class PettingZooVecEnv:
    """``num_envs`` copies of a ParallelEnv with Box observations and Discrete/Box actions."""

    def __init__(
        self,
        factory: Callable[..., Any],
        kwargs: dict[str, Any],
        num_envs: int,
        seed: int,
        device: torch.device,
        name: str = "pettingzoo",
        max_cycles: int = 25,
    ) -> None:
        from gymnasium import spaces

        try:
            self.envs = [factory(**kwargs) for _ in range(num_envs)]
        except TypeError as exc:
            raise ConfigError(f"env '{name}': the factory rejected env.kwargs ({exc})") from None
        self.num_envs, self.seed, self.device = num_envs, seed, device
        first = self.envs[0]
        agents = list(first.possible_agents)
        obs_dims, act_dims, discrete = [], [], []
        low, high = -1.0, 1.0
        for a in agents:
            o, s = first.observation_space(a), first.action_space(a)
            if not isinstance(o, spaces.Box):
                raise ConfigError(f"env '{name}': agent {a} has a {type(o).__name__} observation; need Box")
            obs_dims.append(int(np.prod(o.shape)))
            if isinstance(s, spaces.Discrete):
                act_dims.append(int(s.n))
                discrete.append(True)
            elif isinstance(s, spaces.Box):
                act_dims.append(int(np.prod(s.shape)))
                discrete.append(False)
                low, high = float(np.min(s.low)), float(np.max(s.high))
            else:
                raise ConfigError(f"env '{name}': agent {a} has a {type(s).__name__} action; need Discrete or Box")
        if len(set(discrete)) > 1:
            raise ConfigError(f"env '{name}': mixes discrete and continuous actions across agents")
        self.episodes = np.zeros(num_envs, dtype=np.int64)  # resets done per copy
        first.reset(seed=self._episode_seed(0))
        self._has_state = hasattr(first, "state")
        if self._has_state:
            try:
                state_dim = int(np.asarray(first.state()).size)
            except Exception:  # PettingZoo envs without a global state raise here
                self._has_state = False
        if not self._has_state:
            state_dim = sum(obs_dims)
        limit = int(getattr(first.unwrapped, "max_cycles", max_cycles))
        stats, self._stats_fn = _STATS.get(name, ({}, None))
        self.spec = EnvSpec(name, agents, obs_dims, act_dims, discrete[0], state_dim, limit, low, high, dict(stats))
        self._avail = self.spec.action_mask().to(device)
        self._obs = np.zeros((num_envs, len(agents), self.spec.obs_dim), dtype=np.float32)
        self._state = np.zeros((num_envs, state_dim), dtype=np.float32)
        self._alive = np.ones((num_envs, len(agents)), dtype=bool)

    @classmethod
    def from_config(cls, cfg: DictConfig, num_envs: int, seed: int, device: torch.device) -> PettingZooVecEnv:
        factory = load_factory(str(cfg.factory))
        kwargs = OmegaConf.to_container(cfg.get("kwargs") or {}, resolve=True)
        return cls(factory, dict(kwargs), num_envs, seed, device, str(cfg.name), int(cfg.get("max_cycles", 25)))

    def _episode_seed(self, b: int) -> int:
        return int(np.random.SeedSequence([self.seed, b, int(self.episodes[b])]).generate_state(1)[0])

    def _write(self, b: int, obs: dict[str, np.ndarray]) -> None:
        """Copy one copy's observation dict into the padded arrays; state likewise."""
        self._obs[b] = 0.0
        env = self.envs[b]
        live = set(env.agents)  # an agent that just finished still gets its last obs, but is not alive
        for i, a in enumerate(self.spec.agents):
            self._alive[b, i] = a in live
            if a in obs:
                self._obs[b, i, : self.spec.obs_dims[i]] = np.asarray(obs[a], dtype=np.float32).ravel()
        if self._has_state:
            self._state[b] = np.asarray(env.state(), dtype=np.float32).ravel()
        else:
            self._state[b] = np.concatenate([self._obs[b, i, :d] for i, d in enumerate(self.spec.obs_dims)])

    def _reset_copy(self, b: int) -> None:
        obs, _ = self.envs[b].reset(seed=self._episode_seed(b))
        self.episodes[b] += 1
        self._write(b, obs)

    def _tensors(self) -> tuple[Tensor, Tensor, Tensor]:
        obs = torch.as_tensor(self._obs.copy(), device=self.device)
        state = torch.as_tensor(self._state.copy(), device=self.device)
        avail = self._avail.expand(self.num_envs, -1, -1) & torch.as_tensor(self._alive, device=self.device)[..., None]
        return obs, state, avail

    def _stats(self, b: int) -> dict[str, float]:
        return self._stats_fn(self.envs[b]) if self._stats_fn else {}

    def reset(self) -> TimeStep:
        for b in range(self.num_envs):
            self._reset_copy(b)
        obs, state, avail = self._tensors()
        ts = empty_step(self.spec, obs, state, avail)
        ts.alive = torch.as_tensor(self._alive.copy(), device=self.device)
        return ts

    def step(self, actions: Tensor) -> TimeStep:
        spec, n = self.spec, self.spec.n_agents
        acts = actions.detach().cpu().numpy()
        reward = np.zeros((self.num_envs, n), dtype=np.float32)
        terminated = np.zeros((self.num_envs, n), dtype=bool)
        truncated = np.zeros(self.num_envs, dtype=bool)
        done = np.zeros(self.num_envs, dtype=bool)
        final_obs, final_state = self._obs.copy(), self._state.copy()
        info = {k: np.zeros(self.num_envs, dtype=np.float32) for k in spec.stats}
        for b, env in enumerate(self.envs):
            live = [a for i, a in enumerate(spec.agents) if self._alive[b, i]]
            if spec.discrete:
                act = {a: int(acts[b, spec.agents.index(a)]) for a in live}
            else:
                act = {
                    a: np.clip(acts[b, i, : spec.act_dims[i]], spec.act_low, spec.act_high).astype(np.float32)
                    for i, a in enumerate(spec.agents)
                    if a in live
                }
            obs, rew, term, trunc, _ = env.step(act)
            for i, a in enumerate(spec.agents):
                reward[b, i] = float(rew.get(a, 0.0))
                terminated[b, i] = bool(term.get(a, False))
            for k, v in self._stats(b).items():
                info[k][b] = v
            self._write(b, obs)
            over = not env.agents or all(term.get(a, False) or trunc.get(a, False) for a in live)
            if over:
                done[b] = True
                truncated[b] = any(trunc.get(a, False) for a in live) and not all(term.get(a, False) for a in live)
                final_obs[b], final_state[b] = self._obs[b], self._state[b]
                self._reset_copy(b)
        obs, state, avail = self._tensors()
        dev = self.device
        return TimeStep(
            obs=obs,
            state=state,
            avail=avail,
            reward=torch.as_tensor(reward, device=dev),
            terminated=torch.as_tensor(terminated, device=dev),
            truncated=torch.as_tensor(truncated, device=dev),
            done=torch.as_tensor(done, device=dev),
            alive=torch.as_tensor(self._alive.copy(), device=dev),
            final_obs=torch.as_tensor(final_obs, device=dev),
            final_state=torch.as_tensor(final_state, device=dev),
            info={k: torch.as_tensor(v, device=dev) for k, v in info.items()},
        )

    def state_dict(self) -> dict[str, Tensor]:
        """Episode counters: enough to continue exactly from an episode boundary."""
        return {"episodes": torch.as_tensor(self.episodes)}

    def load_state_dict(self, state: dict[str, Tensor]) -> TimeStep:
        """Restore the counters and start fresh episodes (exact when saved at a boundary)."""
        self.episodes = state["episodes"].cpu().numpy().astype(np.int64) - 1
        return self.reset()

    def close(self) -> None:
        for env in self.envs:
            env.close()
