"""Algorithm families: one module each, found by the ``family`` key of ``conf/algo/*.yaml``.

Each family module's ``Config`` dataclass is the schema of its ``conf/algo/*.yaml``; importing
this package registers them with :mod:`marlcli.config` (which sits below the algorithms and so
never imports them), so ``config.compose`` works in any process that imported the algorithms.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

from omegaconf import DictConfig

from marlcli import config
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
    actor = str(cfg.get("actor", {}).get("type", "mlp"))
    if actor in ("deepsets", "attention") and not spec.entities:
        raise ConfigError(f"actor={actor} needs an env that declares its observation layout as entity groups; "
                          f"env={spec.name} does not (use actor=mlp)")
    check_channel(spec, cfg)
    if not spec.discrete and not caps.continuous:
        raise ConfigError(f"algo={name} supports discrete actions only but env={spec.name} has continuous ones; "
                          "set env.continuous_actions=false or pick another algo")


def check_channel(spec: EnvSpec, cfg: DictConfig) -> None:
    """Refuse a message channel that no agent could use (issue 25).

    The channel joins teammates only (``EnvSpec.team_index``, ``marlcli.nets.comm.same_team``), so
    on tag and adversary each side talks only to itself, and asymmetric or mirrored self-play stays
    exact (every actor computes the messages of the agents it plays). Where every agent is a side
    of its own (prisoners, rps: two opponents of one role) nobody has a teammate to hear, and the
    channel would be dead weight that still looks like communication in the results.
    """
    comm = cfg.get("comm", None)
    if comm is None or str(comm.get("type", "none")) == "none":
        return
    team = spec.team_index
    if spec.teams and all(team.count(k) == 1 for k in team):
        raise ConfigError(f"comm={comm.type} on env={spec.name}: its players are opponents of one role (each "
                          "agent is a side of its own), so nobody has a teammate to message; use comm=none")


def schemas() -> dict[str, type]:
    """Each family's ``Config`` by module name (``ppo`` -> ``marlcli.algos.ppo.Config``)."""
    out = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name != "base":
            schema = getattr(importlib.import_module(f"{__name__}.{info.name}"), "Config", None)
            if schema is not None:
                out[info.name] = schema
    return out


def register_schemas() -> None:
    """Register every family's ``Config`` as ``algo/<module>_schema`` (idempotent)."""
    config.register(schemas())


register_schemas()  # at import: whoever can build an algorithm can compose its config (config cannot import us)
