"""Native batched torch environments: B env copies stepped as tensors, no Python loops.

``make(env_cfg, ...)`` looks ``env_cfg.name`` up in ``ENVS``; every entry is a class
built as ``cls(env_cfg, num_envs, seed, device, dtype)`` that implements ``VecEnv``.
"""

from __future__ import annotations

from typing import Any

import torch

from marlcli.envs.base import VecEnv
from marlcli.envs.matrix import MatrixVecEnv
from marlcli.envs.native.adversary import AdversaryEnv
from marlcli.envs.native.reference import ReferenceEnv
from marlcli.envs.native.spread import SpreadEnv
from marlcli.envs.native.tag import TagEnv
from marlcli.envs.rendezvous import RendezvousEnv
from marlcli.errors import ConfigError

ENVS: dict[str, Any] = {
    "spread": SpreadEnv,
    "tag": TagEnv,
    "adversary": AdversaryEnv,
    "reference": ReferenceEnv,  # speaker-listener signalling game: only agent 0 sees the goal (issue 19)
    "rendezvous": RendezvousEnv,  # one-step credit-assignment game (marlcli/envs/rendezvous.py)
    "coordination": MatrixVecEnv,  # matrix games (marlcli/envs/matrix.py)
    "prisoners": MatrixVecEnv,
    "rps": MatrixVecEnv,
}


def make(
    env_cfg: Any, num_envs: int, seed: int, device: torch.device, dtype: torch.dtype = torch.float32
) -> VecEnv:
    """Build ``num_envs`` copies of the native env named ``env_cfg.name`` on ``device``."""
    name = env_cfg.get("name")
    if name not in ENVS:
        raise ConfigError(
            f"no native env named '{name}' (known: {', '.join(sorted(ENVS))}); use env.backend=pettingzoo"
        )
    return ENVS[name](env_cfg, num_envs, seed, torch.device(device), dtype)
