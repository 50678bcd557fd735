"""Algorithm families: one module each, found by the ``family`` key of ``conf/algo/*.yaml``."""

from __future__ import annotations

import importlib
from types import ModuleType

from omegaconf import DictConfig

from marlcli.envs.base import EnvSpec
from marlcli.errors import ConfigError


def load_family(algo_cfg: DictConfig) -> ModuleType:
    """The module implementing ``algo.family`` (e.g. ``ppo`` -> ``marlcli.algos.ppo``)."""
    family = str(algo_cfg.get("family", ""))
    try:
        return importlib.import_module(f"marlcli.algos.{family}")
    except ModuleNotFoundError:
        raise ConfigError(f"algo '{algo_cfg.get('name')}' names unknown family '{family}'") from None


def check_compatible(module: ModuleType, spec: EnvSpec, cfg: DictConfig) -> None:
    """Reject a bad env/algo pair before anything runs."""
    caps, name = module.CAPS, cfg.algo.name
    if spec.discrete and not caps.discrete:
        raise ConfigError(f"algo={name} needs continuous actions but env={spec.name} has discrete ones; "
                          "set env.continuous_actions=true or pick another algo")
    if cfg.critic.get("arch", "mlp") not in ("mlp", "set"):
        raise ConfigError(f"unknown critic.arch '{cfg.critic.arch}': use mlp or set")
    if cfg.critic.get("arch", "mlp") == "set" and (not caps.set_critic or cfg.critic.type != "centralized"):
        raise ConfigError(f"critic=set (a centralized critic over the set of agents) is available for MAPPO and the "
                          f"QMIX mixer, not algo={name} with critic.type={cfg.critic.type}; use critic=centralized")
    if not spec.discrete and not caps.continuous:
        raise ConfigError(f"algo={name} supports discrete actions only but env={spec.name} has continuous ones; "
                          "set env.continuous_actions=false or pick another algo")
