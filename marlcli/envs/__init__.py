"""Environment backends behind one factory: ``make_env(cfg.env, ...) -> VecEnv``."""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from marlcli.envs import native, vmas
from marlcli.envs.base import EnvSpec, TimeStep, VecEnv, role_of
from marlcli.envs.pettingzoo import PettingZooVecEnv
from marlcli.errors import ConfigError

__all__ = ["EnvSpec", "TimeStep", "VecEnv", "make_env", "role_of"]


# swarm options of the native spread (issue 17) and their mpe2-equal defaults
NATIVE_ONLY = {"scale_arena": False, "observe_position": True, "global_reward": "sum"}


def make_env(env_cfg: DictConfig, num_envs: int, seed: int, device: torch.device) -> VecEnv:
    """Build ``num_envs`` copies of the configured env on ``device``.

    ``env.backend`` picks the implementation: ``native`` (batched torch tensors, see
    ``marlcli.envs.native``) or ``pettingzoo`` (any ParallelEnv factory, stepped one
    copy at a time on the CPU) or ``vmas`` (VMAS scenarios, batched on any device).
    """
    backend = env_cfg.get("backend", "pettingzoo")
    if backend == "native":
        return native.make(env_cfg, num_envs, seed, device)
    if backend == "pettingzoo":
        for key, default in NATIVE_ONLY.items():  # options mpe2 does not have: never ignore them silently
            if key in env_cfg and env_cfg.get(key) != default:
                raise ConfigError(f"env.{key}={env_cfg.get(key)} exists only in the native env; use env.backend=native")

        return PettingZooVecEnv.from_config(env_cfg, num_envs, seed, device)
    if backend == "vmas":
        return vmas.make(env_cfg, num_envs, seed, device)
    raise ConfigError(f"unknown env.backend '{backend}': use native, pettingzoo or vmas")
