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
    actor = str(cfg.get("actor", {}).get("type", "mlp"))
    if actor in ("deepsets", "attention") and not spec.entities:
        raise ConfigError(f"actor={actor} needs an env that declares its observation layout as entity groups; "
                          f"env={spec.name} does not (use actor=mlp)")
    check_channel(spec, cfg)
    if not spec.discrete and not caps.continuous:
        raise ConfigError(f"algo={name} supports discrete actions only but env={spec.name} has continuous ones; "
                          "set env.continuous_actions=false or pick another algo")


# matrix games whose two players are opponents although they share one role (one team to the channel)
RIVALS_OF_ONE_ROLE = ("prisoners", "rps")


def check_channel(spec: EnvSpec, cfg: DictConfig) -> None:
    """Refuse a message channel where it would join opponents (issue 25).

    The channel joins the agents of one role (``marlcli.nets.comm.same_team``), so on tag and
    adversary each side talks only to itself, and asymmetric or mirrored self-play stays exact
    (every actor computes the messages of the agents it plays). On prisoners and rps both players
    have the role ``player`` but play against each other: a channel would carry one player's loss
    into the other's sender.
    """
    comm = cfg.get("comm", None)
    if comm is None or str(comm.get("type", "none")) == "none":
        return
    env = cfg.get("env", {})
    game = str(env.get("factory", "")).rpartition(":")[2] if str(env.get("factory", "")).startswith(
        "marlcli.envs.matrix:") else (str(env.get("name", "")) if env.get("backend") == "native" else "")
    if game in RIVALS_OF_ONE_ROLE:
        raise ConfigError(f"comm={comm.type} on env={spec.name}: its players are opponents of one role, so a "
                          f"channel would let one player's loss train the other's messages; use comm=none")
