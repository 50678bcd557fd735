"""Typed config schemas in Hydra's ConfigStore, the conf/ location, and override checks.

The YAML files in ``conf/`` hold values (one comment per key); the dataclasses here
give them types, so ``seed=abc`` or a misspelt key fails before anything runs. Each
algorithm module's ``Config`` dataclass is registered as ``algo/<module>_schema``.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from marlcli.cliutil import parallel_jobs

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
if not CONF_DIR.is_dir():  # installed as a wheel: conf/ ships inside the package
    CONF_DIR = Path(__file__).resolve().parent / "conf"


@dataclass
class TrainConfig:
    total_steps: int = 2_000_000  # env steps (one step of one env copy)
    eval_interval: int = 200_000  # env steps between evaluations
    eval_episodes: int = 1000  # episodes per evaluation
    eval_envs: int = 1000  # env copies stepped together during evaluation
    eval_deterministic: bool = True  # greedy / mean actions at evaluation
    checkpoint_interval: int = 500_000  # env steps between checkpoints
    keep_checkpoints: int = 0  # keep only the newest k step_<n>.pt (0 = all)
    log_interval: int = 50_000  # env steps between training log lines


@dataclass
class LoggerConfig:
    progress: bool = True  # rich progress bar on a terminal
    wandb: bool = False  # also send metrics to wandb
    wandb_project: str = "marlcli"
    wandb_mode: str | None = None  # online | offline; null = $WANDB_MODE, else offline


@dataclass
class LauncherConfig:
    jobs_per_gpu: int = 1  # local multirun: parallel jobs per visible GPU (no GPU: one per core)
    isolate: bool = True  # each sweep job in its own process: a crash or kill fails only that job


@dataclass
class DistConfig:
    nproc_per_node: int = 1  # processes (ranks) of one run on this node; 1 = no torch.distributed
    timeout: float = 600.0  # seconds a collective waits for a silent rank before the run fails
    backend: str = "auto"  # auto (nccl on CUDA, else gloo) | gloo | nccl


@dataclass
class CriticConfig:
    type: str = "centralized"  # centralized (global state) | independent (own observation)
    arch: str = "mlp"  # mlp (the flat state) | set (pooled over the agents' observations: any N)


@dataclass
class SharingConfig:
    mode: str = "all"  # all | none | role
    agent_id: bool = True  # sharing=all: append a one-hot agent id (false: the actor runs at any N)


@dataclass
class ActorConfig:
    """The actor's input architecture, for every family (``marlcli/nets/actor.py``)."""

    type: str = "mlp"  # mlp | deepsets | attention
    embed: int = 64  # entity embedding width (deepsets / attention)


@dataclass
class CommConfig:
    """Learned message channel between agents inside every family's actor (``marlcli/nets/comm.py``)."""

    type: str = "none"  # none | commnet (mean of messages) | tarmac (attention: key, value, query)
    size: int = 16  # continuous message size (bits > 0 replaces it)
    rounds: int = 1  # rounds of message passing per step
    bits: int = 0  # 0 = continuous messages of `size` numbers; > 0: this many discrete bits instead
    dropout: float = 0.0  # each message lost with this probability, at training and evaluation
    neighbors: str = "all"  # all | nearest (k closest agents) | radius (agents within radius); needs positions
    k: int = 2  # neighbors=nearest: how many agents each agent hears
    radius: float = 1.0  # neighbors=radius: range of the radio
    cut: bool = False  # zero every received message (evaluation ablation: marl eval PATH comm=off)


@dataclass
class SelfPlayConfig:
    mode: str = "none"  # none | latest | pool (see marlcli/selfplay.py)
    learn: list[str] = field(default_factory=list)  # learning agents or roles; [] = first agent / first role
    snapshot_interval: int = 20_000  # env steps between snapshots of the learner's actor
    pool_size: int = 20  # window: opponents are drawn from the newest pool_size snapshots
    latest_prob: float = 0.0  # probability of playing the newest snapshot instead of a draw
    pfsp: bool = False  # prioritized fictitious self-play: draw opponents the learner loses to more often
    pfsp_power: float = 1.0  # PFSP weight (1 - win rate)^power
    elo_k: float = 16.0  # Elo K-factor (one game per opponent and update)
    init: list[str] = field(default_factory=list)  # actors of other self-play runs always in the pool
    rate_eval: bool = False  # the games of evaluations during training count for Elo and records too


@dataclass
class RootConfig:
    seed: int = 0
    device: str = "auto"
    results_dir: str = "results"
    run: str = "default"
    variant: str = ""  # configuration dir under the run (set per sweep job from the swept keys); "" = none
    resume: str | None = None
    train: TrainConfig = field(default_factory=TrainConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    critic: CriticConfig = field(default_factory=CriticConfig)
    sharing: SharingConfig = field(default_factory=SharingConfig)
    actor: ActorConfig = field(default_factory=ActorConfig)
    comm: CommConfig = field(default_factory=CommConfig)
    selfplay: SelfPlayConfig = field(default_factory=SelfPlayConfig)
    env: Any = None
    algo: Any = None


def register_resolvers() -> None:
    """``${marl_parallel_jobs:<jobs_per_gpu>}``: used by ``conf/hydra/launcher/local.yaml``."""
    if not OmegaConf.has_resolver("marl_parallel_jobs"):
        OmegaConf.register_new_resolver("marl_parallel_jobs", lambda per_gpu: parallel_jobs(int(per_gpu)))


def compose(overrides: list[str], hydra: bool = False) -> DictConfig:
    """Compose ``conf/config.yaml`` with ``overrides`` outside a Hydra app (validation, plans, tests)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
            return hydra_compose("config", overrides=overrides, return_hydra_config=hydra)
    finally:
        GlobalHydra.instance().clear()


def register() -> None:
    """Register the root schema and every algorithm family's ``Config``."""
    register_resolvers()  # ${marl_parallel_jobs:...} in conf/hydra/launcher/local.yaml
    cs = ConfigStore.instance()
    cs.store(name="root_schema", node=RootConfig)
    cs.store(group="critic", name="critic_schema", node=CriticConfig)
    cs.store(group="sharing", name="sharing_schema", node=SharingConfig)
    cs.store(group="actor", name="actor_schema", node=ActorConfig)
    cs.store(group="comm", name="comm_schema", node=CommConfig)
    cs.store(group="selfplay", name="selfplay_schema", node=SelfPlayConfig)
    import marlcli.algos as algos

    for info in pkgutil.iter_modules(algos.__path__):
        if info.name == "base":
            continue
        module = importlib.import_module(f"marlcli.algos.{info.name}")
        schema = getattr(module, "Config", None)
        if schema is not None:
            cs.store(group="algo", name=f"{info.name}_schema", node=schema)
