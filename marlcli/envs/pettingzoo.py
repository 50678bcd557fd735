"""Adapter: B copies of any PettingZoo ParallelEnv -> the batched tensor interface.

The copies are stepped one after another in Python on the CPU (this is the reference
backend; ``backend=native`` is the fast one). Each copy is reset with a seed derived
from (run seed, copy index, episode count), so trajectories depend only on the seed and
the actions. ``state_dict`` holds those counters plus the actions taken since each
copy's episode began; ``load_state_dict`` resets with the same seeds and replays them,
so a run resumed mid-episode continues exactly (for envs that are deterministic given
their reset seed and the actions, as PettingZoo's seed test demands) without pickling
the env.

Per-agent endings: an agent whose ``terminations[agent]`` is set is ``terminated``; one
whose ``truncations[agent]`` is set while others go on is ``agent_truncated``, with its
last observation in ``final_obs`` and its last masks in ``agent_final_avail``, so
learners bootstrap it instead of treating its departure as a termination.

Action masks: a ``Dict`` observation space with ``observation`` and ``action_mask`` keys
(PettingZoo's classic convention), or ``infos[agent]["action_mask"]``, mark actions
unavailable per step; agents that are not in ``env.agents`` have none.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from marlcli.envs.base import EnvSpec, TimeStep, empty_step
from marlcli.envs.outcome import OUTCOMES, game_of, teams_of
from marlcli.errors import CheckpointError, ConfigError


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
        factory_spec: str = "",
    ) -> None:
        try:
            self.envs = [factory(**kwargs) for _ in range(num_envs)]
        except TypeError as exc:
            raise ConfigError(f"env '{name}': the factory rejected env.kwargs ({exc})") from None
        self.num_envs, self.seed, self.device = num_envs, seed, device
        first = self.envs[0]
        agents = list(first.possible_agents)
        obs_dims, act_dims, discrete, lows, highs = [], [], [], [], []
        self._dict_obs: list[bool] = []
        for a in agents:
            o, s = first.observation_space(a), first.action_space(a)
            dict_obs = isinstance(o, spaces.Dict) and "observation" in o.spaces
            self._dict_obs.append(dict_obs)
            o = o["observation"] if dict_obs else o
            if not isinstance(o, spaces.Box):
                raise ConfigError(f"env '{name}': agent {a} has a {type(o).__name__} observation; need Box")
            obs_dims.append(int(np.prod(o.shape)))
            if isinstance(s, spaces.Discrete):
                act_dims.append(int(s.n))
                discrete.append(True)
                lows.append(0.0)
                highs.append(0.0)
            elif isinstance(s, spaces.Box):
                act_dims.append(int(np.prod(s.shape)))
                discrete.append(False)
                lows.append([float(x) for x in np.broadcast_to(s.low, s.shape).ravel()])  # each agent its own bounds
                highs.append([float(x) for x in np.broadcast_to(s.high, s.shape).ravel()])
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
        self.spec = EnvSpec(name, agents, obs_dims, act_dims, discrete[0], state_dim, episode_limit(first, max_cycles),
                            lows, highs, dict(_STATS.get(name, ({}, None))[0]))
        self._stats_fn = _STATS.get(name, ({}, None))[1]
        self.spec.outcome = OUTCOMES.get(name)
        self.spec.teams = teams_of(game_of(factory_spec), agents) if factory_spec else []
        self._low, self._high = (x.numpy() for x in self.spec.bounds())
        self._static = self.spec.action_mask().numpy()  # [N, A] the actions each agent really has
        n, b = len(agents), num_envs
        self._obs = np.zeros((b, n, self.spec.obs_dim), dtype=np.float32)
        self._state = np.zeros((b, state_dim), dtype=np.float32)
        self._alive = np.ones((b, n), dtype=bool)
        self._avail = np.ones((b, n, self.spec.act_dim), dtype=bool)
        self._mask = np.ones((b, n, self.spec.act_dim), dtype=bool)  # the env's masks, before the alive flags
        self._history: list[list[np.ndarray]] = [[] for _ in range(b)]  # actions since each episode began

    @classmethod
    def from_config(cls, cfg: DictConfig, num_envs: int, seed: int, device: torch.device) -> PettingZooVecEnv:
        factory = load_factory(str(cfg.factory))
        kw = cfg.get("kwargs")
        kwargs = OmegaConf.to_container(kw, resolve=True) if isinstance(kw, DictConfig) else dict(kw or {})
        return cls(factory, dict(kwargs), num_envs, seed, device, str(cfg.name), int(cfg.get("max_cycles") or 25),
                   str(cfg.factory))

    def _episode_seed(self, b: int) -> int:
        return int(np.random.SeedSequence([self.seed, b, int(self.episodes[b])]).generate_state(1)[0])

    def _write(self, b: int, obs: dict[str, Any], infos: dict[str, Any]) -> None:
        """Copy one copy's observation dict into the padded arrays; masks, alive flags and state likewise."""
        self._obs[b] = 0.0
        env = self.envs[b]
        live = set(env.agents)  # an agent that just finished still gets its last obs, but is not alive
        for i, a in enumerate(self.spec.agents):
            self._alive[b, i] = a in live
            mask = self._static[i].copy()
            o = obs.get(a)
            if o is not None:
                if self._dict_obs[i]:
                    mask[: self.spec.act_dims[i]] &= np.asarray(o["action_mask"], dtype=bool).ravel()
                    o = o["observation"]
                self._obs[b, i, : self.spec.obs_dims[i]] = np.asarray(o, dtype=np.float32).ravel()
            info_mask = (infos.get(a) or {}).get("action_mask")
            if info_mask is not None:
                mask[: self.spec.act_dims[i]] &= np.asarray(info_mask, dtype=bool).ravel()
            self._mask[b, i] = mask
            self._avail[b, i] = mask & self._alive[b, i]
        if self._has_state:
            self._state[b] = np.asarray(env.state(), dtype=np.float32).ravel()
        else:
            self._state[b] = np.concatenate([self._obs[b, i, :d] for i, d in enumerate(self.spec.obs_dims)])

    def _reset_copy(self, b: int) -> None:
        obs, infos = self.envs[b].reset(seed=self._episode_seed(b))
        self.episodes[b] += 1
        self._history[b] = []
        self._write(b, obs, infos or {})

    def _step_copy(self, b: int, acts: np.ndarray) -> tuple[dict, dict, dict]:
        """Send copy ``b``'s actions (``[N]`` or ``[N, A]``) for its live agents; returns reward, term, trunc."""
        spec, env = self.spec, self.envs[b]
        live = [i for i in range(spec.n_agents) if self._alive[b, i]]
        if spec.discrete:
            act = {spec.agents[i]: int(acts[i]) for i in live}
        else:
            act = {spec.agents[i]: np.clip(acts[i, : spec.act_dims[i]], self._low[i, : spec.act_dims[i]],
                                           self._high[i, : spec.act_dims[i]]).astype(np.float32) for i in live}
        obs, rew, term, trunc, infos = env.step(act)
        self._history[b].append(np.asarray(acts).copy())
        self._write(b, obs, infos or {})
        return rew, term, trunc

    def _current(self) -> TimeStep:
        obs, state, avail = self._tensors()
        ts = empty_step(self.spec, obs, state, avail)
        ts.alive = ts.final_alive = torch.as_tensor(self._alive.copy(), device=self.device)
        return ts

    def _tensors(self) -> tuple[Tensor, Tensor, Tensor]:
        dev = self.device
        return (torch.as_tensor(self._obs.copy(), device=dev), torch.as_tensor(self._state.copy(), device=dev),
                torch.as_tensor(self._avail.copy(), device=dev))

    def _stats(self, b: int) -> dict[str, float]:
        return self._stats_fn(self.envs[b]) if self._stats_fn else {}

    def reset(self) -> TimeStep:
        for b in range(self.num_envs):
            self._reset_copy(b)
        return self._current()

    def step(self, actions: Tensor) -> TimeStep:
        spec, n, nb = self.spec, self.spec.n_agents, self.num_envs
        acts = actions.detach().cpu().numpy()
        reward = np.zeros((nb, n), dtype=np.float32)
        terminated = np.zeros((nb, n), dtype=bool)
        truncated = np.zeros(nb, dtype=bool)
        done = np.zeros(nb, dtype=bool)
        final_obs, final_state = np.empty_like(self._obs), np.empty_like(self._state)
        final_avail, final_alive = np.empty_like(self._avail), np.empty_like(self._alive)
        lone_trunc = np.zeros((nb, n), dtype=bool)  # left by its own time limit while the episode goes on
        lone_avail = np.zeros_like(self._avail)  # and its last masks (its avail is off: it does not act again)
        info = {k: np.zeros(nb, dtype=np.float32) for k in spec.stats}
        for b, env in enumerate(self.envs):
            acted = self._alive[b].copy()
            live = [a for i, a in enumerate(spec.agents) if acted[i]]
            rew, term, trunc = self._step_copy(b, acts[b])
            for i, a in enumerate(spec.agents):
                reward[b, i] = float(rew.get(a, 0.0))
                terminated[b, i] = bool(term.get(a, False))
            for k, v in self._stats(b).items():
                info[k][b] = v
            over = not env.agents or all(term.get(a, False) or trunc.get(a, False) for a in live)
            # the true last observation, masks and alive flags, before any reset (issue 15)
            final_obs[b], final_state[b] = self._obs[b], self._state[b]
            final_avail[b], final_alive[b] = self._avail[b], self._alive[b]
            if over:
                done[b] = True
                truncated[b] = any(trunc.get(a, False) for a in live) and not all(term.get(a, False) for a in live)
                final_alive[b] = acted & ~terminated[b]  # truncated agents still have a value to bootstrap
                final_avail[b] = self._mask[b] & final_alive[b][:, None]  # the env's last masks
                self._reset_copy(b)
            else:
                for i, a in enumerate(spec.agents):
                    lone_trunc[b, i] = acted[i] and bool(trunc.get(a, False)) and not terminated[b, i]
                lone_avail[b] = self._mask[b] & lone_trunc[b][:, None]
        obs, state, avail = self._tensors()
        dev = self.device
        t = lambda x: torch.as_tensor(x, device=dev)  # noqa: E731
        return TimeStep(
            obs=obs, state=state, avail=avail, reward=t(reward), terminated=t(terminated), truncated=t(truncated),
            done=t(done), alive=t(self._alive.copy()), final_obs=t(final_obs), final_state=t(final_state),
            final_avail=t(final_avail), final_alive=t(final_alive), info={k: t(v) for k, v in info.items()},
            agent_truncated=t(lone_trunc), agent_final_avail=t(lone_avail),
        )

    def state_dict(self) -> dict[str, Tensor]:
        """Episode counters and each copy's actions since its episode began (tensors only, no pickled env)."""
        out = {"episodes": torch.as_tensor(self.episodes.copy())}  # a snapshot: as_tensor alone shares memory
        for b, hist in enumerate(self._history):
            shape = (0, self.spec.n_agents) + (() if self.spec.discrete else (self.spec.act_dim,))
            out[f"actions.{b}"] = torch.as_tensor(np.stack(hist)) if hist else torch.zeros(shape)
        return out

    def load_state_dict(self, state: dict[str, Tensor]) -> TimeStep:
        """Reset every copy with the seed its episode had, replay its actions: exact mid-episode."""
        episodes = state.get("episodes")
        if episodes is None or tuple(episodes.shape) != (self.num_envs,):
            raise CheckpointError(f"PettingZoo env state does not match {self.num_envs} env copies")
        self.episodes = episodes.cpu().numpy().astype(np.int64) - 1
        for b in range(self.num_envs):
            self._reset_copy(b)
            for acts in state.get(f"actions.{b}", torch.zeros(0)).cpu().numpy():
                self._step_copy(b, acts)
        return self._current()

    def close(self) -> None:
        for env in self.envs:
            env.close()


def episode_limit(env: Any, fallback: int) -> int:
    """The longest episode: the env's ``max_cycles`` / ``max_steps`` / ``max_num_steps``, else ``fallback``.

    ``fallback`` is ``env.max_cycles``; an episode longer than the limit is an error in
    episode replay (``EpisodeReplay.add``), never silently spliced.
    """
    raw = getattr(env, "unwrapped", env)
    for attr in ("max_cycles", "max_steps", "max_num_steps", "max_episode_steps"):
        v = getattr(raw, attr, None)
        if isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0:
            return int(v)
    return int(fallback)
