"""Typed config schemas, their registration in Hydra's ConfigStore, and the conf/ location.

The YAML files in ``conf/`` hold the values Hydra composes; the dataclasses here give them
types, so ``seed=abc`` or a misspelt key fails before anything runs. Each field's trailing
comment (continued by comment lines right below it) is its meaning: ``docs/configuration.md``
and ``marl train --help`` are generated from these comments (``marlcli/reference.py``). A class
docstring is the prose of its section on that page.

The algorithm families' ``Config`` schemas live with the families (``marlcli/algos/*.py``) and
register themselves: importing ``marlcli.algos`` calls :func:`register` with them, so this
module never imports the algorithms (it sits below them). The override checks that turn a bad
``key=value`` into one line are in ``marlcli/overrides.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from marlcli.cliutil import parallel_jobs

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
if not CONF_DIR.is_dir():  # installed as a wheel: conf/ ships inside the package
    CONF_DIR = Path(__file__).resolve().parent / "conf"


@dataclass
class TrainConfig:
    """The training budget and how often a run evaluates, checkpoints and logs (an algorithm's yaml may set
    its own `train.*` defaults: they are listed with it under `algo`)."""

    total_steps: int = 2_000_000  # env steps (one step of one env copy)
    eval_interval: int = 200_000  # env steps between evaluations
    eval_episodes: int = 1000  # episodes per evaluation, the same ones every time
    #   (100 were ±0.7 on spread: docs/bench.md#why-evaluations-use-1000-episodes)
    eval_envs: int = 1000  # env copies stepped together during evaluation (lower it for heavy PettingZoo envs)
    eval_deterministic: bool = True  # greedy / mean actions at evaluation
    checkpoint_interval: int = 500_000  # env steps between checkpoints (plus one at the end)
    checkpoint_minutes: float = 10.0  # wall-clock minutes between checkpoints as well, so a slow run always has one (0 = off)
    keep_checkpoints: int = 0  # keep only the newest k step_<n>.pt (0 = all)
    log_interval: int = 50_000  # env steps between training log lines


@dataclass
class LoggerConfig:
    """Where a run reports besides its metrics file: a progress bar, and wandb when `logger.wandb=true`
    (one wandb run per seed, grouped by env/algo/run, tagged with env/algo/critic/sharing; **offline** unless
    `logger.wandb_mode=online` or `WANDB_MODE` says otherwise)."""

    progress: bool = True  # rich progress bar (on a terminal)
    wandb: bool = False  # also log to wandb: one run per seed, grouped by env/algo/run
    wandb_project: str = "marlcli"  # wandb project
    wandb_mode: str | None = None  # online | offline; null = $WANDB_MODE, else offline


@dataclass
class LauncherConfig:
    """How `marl train -m` runs a sweep's jobs (docs/sweeps.md)."""

    jobs_per_gpu: int = 1  # local multirun: parallel jobs per visible GPU (no GPU: one job per core)
    isolate: bool = True  # run each sweep job in its own process, so a crash or kill fails only that job


@dataclass
class DistConfig:
    """One run over several processes: torch.distributed data parallel (docs/distributed.md)."""

    nproc_per_node: int = 1  # ranks started on this node by `marl train` (1 = no torch.distributed; ignored under torchrun)
    timeout: float = 600.0  # seconds a collective waits for a silent rank before the run fails
    backend: str = "auto"  # auto (nccl on CUDA, gloo on CPU) | gloo | nccl


@dataclass
class CriticConfig:
    """What the value / Q functions see (`conf/critic/`). `arch=set` (MAPPO's critic and the QMIX mixer only)
    embeds each agent's observation and pools them, so the critic accepts any number of agents."""

    type: str = "centralized"  # centralized (the global state) | independent (each agent's own observation)
    arch: str = "mlp"  # mlp (the flat global state) | set (pooled over the agents' observations: any N)


@dataclass
class SharingConfig:
    """Which agents share one network's parameters (`conf/sharing/`). An agent's group (`role`) is its name
    before the trailing `_<digits>`: `adversary_0` -> `adversary`."""

    mode: str = "all"  # all (one network) | none (one per agent) | role (one per agent group)
    agent_id: bool = True  # sharing=all: append a one-hot agent id (false: one actor that runs at any N)


@dataclass
class ActorConfig:
    """The actor's input architecture, for every family (`marlcli/nets/actor.py`; entity-based actors: docs/swarms.md)."""

    type: str = "mlp"  # mlp (the observation as it is) | deepsets | attention (entity-based: any number of neighbours)
    embed: int = 64  # entity embedding width (deepsets / attention only)


@dataclass
class CommConfig:
    """A learned message channel between teammates' actors, for every family (`marlcli/nets/comm.py`; the
    mechanism: docs/communication.md). Continuous messages are tanh-bounded numbers. With `bits` > 0 they are
    exact ±1 bits in the forward pass (training and evaluation; a lost message reads 0) and take the tanh's
    gradient backward (straight-through); tarmac's key is bits too. `dropout` is drawn afresh at every
    forward, so PPO's old and new log-probabilities and replayed episodes see different losses. `neighbors`
    builds the graph from the positions an env declares as `EnvSpec.position` (native spread with
    `observe_position=true`: obs[2:4]); an env without positions is a one-line error. `marl eval PATH
    comm.KEY=VALUE` degrades a trained channel (`comm=off` cuts it)."""

    type: str = "none"  # none | commnet (mean of the messages) | tarmac (attention: key, value, query)
    size: int = 16  # continuous message size (numbers per message; bits > 0 replaces it)
    rounds: int = 1  # rounds of message passing per step (round r's message sees round r-1's received)
    bits: int = 0  # 0 = continuous messages of `size` numbers; > 0 = this many discrete bits instead (straight-through)
    dropout: float = 0.0  # each sender->receiver message lost with this probability (training and evaluation)
    neighbors: str = "all"  # all | nearest (the k closest agents) | radius (agents within radius); needs env positions
    k: int = 2  # neighbors=nearest: agents each agent hears
    radius: float = 1.0  # neighbors=radius: radio range (env units)
    cut: bool = False  # zero every received message (evaluation ablation: marl eval PATH comm=off)


@dataclass
class SelfPlayConfig:
    """Who plays the opponents: the learning agents against frozen copies of their own actor (`marlcli/selfplay/`;
    the mechanism: docs/self-play.md). `learn: []` is the first agent when all agents share one role (rps:
    `player_0`), else the first role if the others mirror it, else every role (asymmetric: tag). A snapshot is
    also taken at step 0; `selfplay=latest` is a window of one. `init` takes seed dirs, `.pt` files and
    `pool/member_<id>.pt` of other self-play runs of the same game and algorithm."""

    mode: str = "none"  # none | latest | pool
    learn: list[str] = field(default_factory=list)  # learning agents or roles; [] = the first agent (one role) or the first role
    snapshot_interval: int = 20_000  # env steps between snapshots of the learner's actor
    pool_size: int = 20  # window: opponents are drawn from the newest pool_size snapshots
    latest_prob: float = 0.0  # probability of playing the newest snapshot instead of a draw from the window
    pfsp: bool = False  # prioritized fictitious self-play: weight (1 - learner's score)^pfsp_power
    pfsp_power: float = 1.0  # PFSP exponent
    elo_k: float = 16.0  # Elo K-factor (one game per opponent and update)
    init: list[str] = field(default_factory=list)  # actors of other self-play runs of the same game, always in the pool
    rate_eval: bool = False  # true: evaluation games during training also move the Elo table and records


@dataclass
class RootConfig:
    """The top-level keys of `conf/config.yaml`. Resuming, `resume=auto` and what survives a crash: docs/faults.md."""

    seed: int = 0  # seeds torch, numpy, python and the envs
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    results_dir: str = "results"  # root of the results tree (docs/results-tree.md)
    run: str = "default"  # run name; `marl train` sets a unique timestamp (plus 6 hex digits) unless you give one
    variant: str = ""  # configuration dir under the run: `marl train -m` names it by the swept keys; "" = none
    resume: str | None = None  # a seed dir or .pt to continue; `auto` in sweeps: skip finished, resume unfinished
    train: TrainConfig = field(default_factory=TrainConfig)  # budget, evaluation, checkpoints, logging
    logger: LoggerConfig = field(default_factory=LoggerConfig)  # progress bar and wandb
    launcher: LauncherConfig = field(default_factory=LauncherConfig)  # how a sweep's jobs run
    dist: DistConfig = field(default_factory=DistConfig)  # one run over several processes
    critic: CriticConfig = field(default_factory=CriticConfig)  # the critic group (conf/critic/)
    sharing: SharingConfig = field(default_factory=SharingConfig)  # the sharing group (conf/sharing/)
    actor: ActorConfig = field(default_factory=ActorConfig)  # the actor group (conf/actor/)
    comm: CommConfig = field(default_factory=CommConfig)  # the comm group (conf/comm/)
    selfplay: SelfPlayConfig = field(default_factory=SelfPlayConfig)  # the selfplay group (conf/selfplay/)
    env: Any = None  # the env group (conf/env/): no schema, each env takes its own keys
    algo: Any = None  # the algo group (conf/algo/): typed by its family's Config (marlcli/algos/<family>.py)


GROUP_SCHEMAS: dict[str, type] = {"critic": CriticConfig, "sharing": SharingConfig, "actor": ActorConfig,
                                  "comm": CommConfig, "selfplay": SelfPlayConfig}
_ALGO_SCHEMAS: dict[str, type] = {}  # family module name -> its Config, as the algorithms registered them


def register_resolvers() -> None:
    """``${marl_parallel_jobs:<jobs_per_gpu>}``: used by ``conf/hydra/launcher/local.yaml``."""
    if not OmegaConf.has_resolver("marl_parallel_jobs"):
        OmegaConf.register_new_resolver("marl_parallel_jobs", lambda per_gpu: parallel_jobs(int(per_gpu)))


def register(algo_schemas: Mapping[str, type] | None = None) -> None:
    """Store the root and group schemas, and ``algo_schemas`` (family -> ``Config``) as ``algo/<family>_schema``.

    The algorithms call this with their own schemas when ``marlcli.algos`` is imported
    (``marlcli.algos.register_schemas``); a later call without them keeps those already given.
    """
    register_resolvers()  # ${marl_parallel_jobs:...} in conf/hydra/launcher/local.yaml
    cs = ConfigStore.instance()
    cs.store(name="root_schema", node=RootConfig)
    for group, schema in GROUP_SCHEMAS.items():
        cs.store(group=group, name=f"{group}_schema", node=schema)
    for family, schema in (algo_schemas or {}).items():
        _ALGO_SCHEMAS[family] = schema
        cs.store(group="algo", name=f"{family}_schema", node=schema)


def algo_schemas() -> dict[str, type]:
    """The algorithm schemas registered so far (family -> ``Config``)."""
    return dict(_ALGO_SCHEMAS)


def compose(overrides: list[str], hydra: bool = False) -> DictConfig:
    """Compose ``conf/config.yaml`` with ``overrides`` outside a Hydra app (validation, plans, tests).

    Needs the algorithms' schemas, which ``import marlcli.algos`` registers (the trainer, the
    evaluator and ``marl`` import it; a script that only imports this module must import it too).
    """
    register()
    if not _ALGO_SCHEMAS:
        raise RuntimeError("no algorithm schemas are registered: import marlcli.algos first (it registers them), "
                           "or call marlcli.algos.register_schemas()")
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
            return hydra_compose("config", overrides=overrides, return_hydra_config=hydra)
    finally:
        GlobalHydra.instance().clear()


def group_options(group: str) -> list[str]:
    """The options of a config group: ``conf/<group>/*.yaml`` (and Hydra's own for ``hydra/...``)."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
