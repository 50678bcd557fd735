"""Pairings of options that have no sensible meaning, refused before anything runs (issue 25).

Each option works on its own; some pairs of them do not mean anything together, and without a
check they either crash deep inside a run or, worse, run while silently ignoring one of the
two. ``check_pairings(cfg, spec)`` is the one place for those refusals that had no home yet
(called by ``marlcli.trainer.validate`` right after ``check_compatible``). The refusals that
already live elsewhere stay there and are only listed here, in ``REFUSED_ELSEWHERE``, so that
``PAIRINGS + REFUSED_ELSEWHERE`` is the whole table of refused pairings that the docs and
``tests/integration/test_composition.py`` print and check (every other pair of option values is run there
through train, kill, resume, eval, export and report).

Each table row is ``(option_a, option_b, reason)``.
"""

from __future__ import annotations

from omegaconf import DictConfig

from marlcli.envs.base import EnvSpec
from marlcli.errors import ConfigError

# refused by check_pairings below
PAIRINGS: tuple[tuple[str, str, str], ...] = (
    ("critic=set", "algo=iql|vdn (algo.mixer=none|vdn)",
     "neither IQL nor VDN's sum reads a state or the set of observations, so critic=set would be silently ignored; "
     "use algo=qmix (its mixer over the set) or algo=mappo"),
    ("critic=independent", "algo=qmix",
     "QMIX's mixer is conditioned on the global state whatever critic.type says, so critic=independent would be "
     "silently ignored and the run would still train on centralized information; use algo=vdn or algo=iql"),
)

# refused where they were before issue 25; listed for the table only (not checked twice)
REFUSED_ELSEWHERE: tuple[tuple[str, str, str], ...] = (
    ("algo.agent=rnn", "algo=mappo|ippo|coma|maddpg",
     "only the Q-learning agents have a GRU variant: the typed schema (marlcli/config.py) has no such key"),
    ("algo.last_action=true", "algo=mappo|ippo|coma|maddpg",
     "only the Q-learning agents take their previous action as input: no such key in the schema"),
    ("actor=deepsets|attention", "an env without an entity layout (all but spread)",
     "an entity encoder needs the observation's entity groups (algos.check_compatible)"),
    ("algo=iql|vdn|qmix|coma", "continuous actions (rendezvous, vmas, env.continuous_actions=true)",
     "these families pick one of finitely many actions (algos.check_compatible)"),
    ("algo=maddpg|coma", "critic=set", "the set critic exists for PPO's value and QMIX's mixer only (algos.check_compatible)"),
    ("comm=commnet|tarmac", "env=rps|prisoners",
     "the two players are opponents of one role: a channel lets one's loss train the other's messages "
     "(algos.check_channel)"),
    ("selfplay=latest|pool", "an env whose learner has no mirror image (spread, rendezvous, testbed)",
     "no opponent to freeze (selfplay.learners)"),
    ("selfplay=latest|pool on roles (tag, adversary, reference, PettingZoo)", "algo=vdn|qmix",
     "asymmetric self-play learns per agent; a mixer's team value would mix in the frozen agents (selfplay.check)"),
    ("selfplay=latest|pool", "dist.nproc_per_node>1", "the pool and opponents live in one process (trainer.check_sizes)"),
)


def check_pairings(cfg: DictConfig, spec: EnvSpec) -> None:
    """One-line ``ConfigError`` for a pairing of options in ``PAIRINGS`` (the env's ``spec`` is built already)."""
    algo = cfg.algo
    mixer = str(algo.get("mixer", "")) if str(algo.get("family", "")) == "qlearning" else None
    if mixer in ("none", "vdn") and str(cfg.critic.get("arch", "mlp")) == "set":
        raise ConfigError(f"critic=set with algo={algo.name}: {'IQL' if mixer == 'none' else 'VDN'} has no critic and no "
                          "mixer that reads the state, so the set critic would be ignored; use algo=qmix critic=set, "
                          "or drop critic=set")
    if mixer == "qmix" and str(cfg.critic.get("type", "centralized")) == "independent":
        raise ConfigError("critic=independent with algo=qmix: QMIX's mixer always reads the global state, so the "
                          "independent critic would be ignored; use algo=vdn or algo=iql for state-free learners")
