"""Override checks: a bad ``key=value`` (unknown key or option, wrong type, out of range) as one line.

Just above :mod:`marlcli.config` (it uses its ``compose`` and schemas), below everything else:
``marl train`` composes through :func:`compose_checked`, and ``marl eval`` checks its
``env.<key>`` and ``comm.<key>`` options with :func:`check_env_value` and
:func:`check_comm_override` (issue 25). Kept apart so config.py stays schemas and registration.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from omegaconf import DictConfig, OmegaConf

from marlcli.cliutil import suggest
from marlcli.config import CONF_DIR, CommConfig, compose, group_options
from marlcli.errors import ConfigError

# Env keys that count something (agents, copies, steps) and so must be >= 1, and those that may be 0. The env
# configs have no schema (each env takes its own keys), so a 0 would otherwise fail deep inside the env code.
ENV_POSITIVE = ("num_envs", "N", "n", "n_agents", "num_good", "num_adversaries", "goals", "max_cycles", "max_steps")
ENV_NON_NEGATIVE = ("num_obstacles",)  # (num_*_neighbors: the env itself wants null or >= 1)
# Keys whose null is meaningful although the env's config gives a number (vmas n_agents: the scenario's default).
ENV_NULLABLE = ("n_agents", "num_agent_neighbors", "num_landmark_neighbors", "factory", "kwargs")
EXPECTED = {"Integer": "an integer", "bool": "true or false", "Boolean": "true or false", "Float": "a number",
            "String": "a string"}


def expected_type(reference: Any) -> str | None:
    """What a value replacing ``reference`` must be, in words (None: anything goes, e.g. a ``null`` default)."""
    if isinstance(reference, bool):
        return "true or false"
    if isinstance(reference, int):
        return "an integer"
    if isinstance(reference, float):
        return "a number"
    if isinstance(reference, (list, tuple)):
        return "a list"
    if isinstance(reference, dict):
        return "a mapping"
    if isinstance(reference, str) and "${" not in reference:
        return "a string"
    return None


def fits(value: Any, reference: Any) -> bool:
    """``value`` has the type of ``reference`` (an int where a float is expected is fine; a bool never is a number)."""
    want = expected_type(reference)
    if want is None:
        return True
    if want == "true or false":
        return isinstance(value, bool)
    if want == "an integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if want == "a number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if want == "a list":
        return isinstance(value, (list, tuple))
    if want == "a mapping":
        return isinstance(value, dict)
    return value is not None and not isinstance(value, (list, tuple, dict))  # a string: any scalar reads as one


def shown(value: Any) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def check_env_value(key: str, value: Any, reference: Any, where: str = "") -> None:
    """One line (``ConfigError``) for an ``env.<key>`` value of the wrong type or range.

    The env configs have no typed schema, so the type is the one the key has in the env's own
    config (``conf/env/<env>.yaml`` for ``marl train``, the checkpoint's saved config for
    ``marl eval``): ``env.N=abc`` or ``env.N=1.5`` where ``N`` is 3 is refused here instead of
    failing inside the env (or, for ``env.continuous_actions=maybe``, being read as true).
    """
    name = key.rsplit(".", 1)[-1]
    if value is None and name in ENV_NULLABLE:
        return
    if not fits(value, reference):
        raise ConfigError(f"{key}: {expected_type(reference)} is expected{where}, got '{shown(value)}'")
    if isinstance(value, bool) or not isinstance(value, int):
        if value is None or name not in (*ENV_POSITIVE, *ENV_NON_NEGATIVE):
            return
        raise ConfigError(f"{key}: an integer is expected, got '{shown(value)}'")
    if name in ENV_POSITIVE and value < 1:
        raise ConfigError(f"{key} must be a positive integer (1 or more), got {value}")
    if name in ENV_NON_NEGATIVE and value < 0:
        raise ConfigError(f"{key} must be 0 or more, got {value}")


def parse_value(value: str) -> Any:
    """A command-line value as Hydra and ``results.apply_overrides`` read it (``3`` -> 3, ``true`` -> True)."""
    return OmegaConf.to_container(OmegaConf.from_dotlist([f"x={value}"]))["x"]


def flat_keys(node: Any, prefix: str = "") -> list[str]:
    """Every dotted key of a config (sections and leaves), for did-you-mean suggestions."""
    out = []
    if isinstance(node, DictConfig):
        for k in node.keys():
            key = f"{prefix}{k}"
            out.append(key)
            child = node._get_node(k)
            if isinstance(child, DictConfig):
                out += flat_keys(child, f"{key}.")
    return out


def _key(line: str) -> str:
    return line.split("=", 1)[0].lstrip("+~")


def _free_form(key: str) -> bool:
    """``env.kwargs.*`` (any ParallelEnv's arguments) and Hydra's own settings are not marlcli schema keys."""
    return key == "env.kwargs" or key.startswith(("env.kwargs.", "hydra.", "hydra/"))


def compose_checked(overrides: list[str]) -> DictConfig:
    """``compose(overrides)`` with every bad override as one ``ConfigError`` line that says what was meant.

    An unknown key names the closest valid keys and never suggests Hydra's ``+key`` (which
    would add the typo as a new key that nothing reads); a ``+key`` that is not in the schema is
    refused too, except free-form ``env.kwargs.*``. An unknown group option lists the choices
    with the closest one; a value of the wrong type says which type is expected. ``env.<key>``
    values are checked against the chosen env's own config (:func:`check_env_value`).
    """
    try:
        cfg = compose(overrides)
    except Exception as exc:  # noqa: BLE001 - Hydra's and OmegaConf's composition errors, all turned into words
        raise ConfigError(explain(exc, overrides)) from None
    added = [o for o in overrides if o.startswith("+") and not _free_form(_key(o))]
    if added:
        base = compose([o for o in overrides if o not in added])
        for line in added:
            key = _key(line)
            if OmegaConf.select(base, key, default=_ABSENT) is _ABSENT:
                raise ConfigError(_unknown_key(key, base))
    _check_env(cfg, overrides)
    return cfg


_ABSENT = object()


def _unknown_key(key: str, cfg: DictConfig | None) -> str:
    keys = [k for k in flat_keys(cfg) if not k.startswith("hydra") and k != key] if cfg is not None else []
    parent = key.rpartition(".")[0]
    siblings = [k for k in keys if k.rpartition(".")[0] == parent]
    keys = siblings if parent and siblings else keys  # train.totl_steps: the train.* keys; trian.x: every key
    return (f"unknown key '{key}'{suggest(key, keys)}; `marl train --help` lists the keys "
            "(env.kwargs.KEY=VALUE passes free-form arguments to a PettingZoo factory)")


def explain(exc: Exception, overrides: list[str]) -> str:
    """A Hydra/OmegaConf composition error as one line in marlcli's words (see :func:`compose_checked`)."""
    text = " ".join(str(exc).split())
    cause = " ".join(str(exc.__cause__ or "").split())
    m = re.search(r"Could not override '([^']+)'", text)
    if m:
        key = m.group(1)
        try:
            base: DictConfig | None = compose([o for o in overrides if _key(o) != key])
        except Exception:  # noqa: BLE001 - another bad override: no suggestions, that one is reported next
            base = None
        return _unknown_key(key, base)
    m = re.search(r"Could not find '([^']+)/([^'/]+)'", text)
    if m:
        group, option = m.groups()
        choices = [o for o in (getattr(exc, "options", None) or group_options(group)) if not o.endswith("_schema")]
        return f"unknown {group} '{option}'{suggest(option, choices)}; choices: {', '.join(choices)}"
    m = re.search(r"Error merging override (\S+?)=(.*)$", text)
    if m:
        key, value = m.groups()
        if "is not a subclass of" in cause:
            return f"{key} is a section of keys, not a value: set its keys ({key}.KEY=VALUE; `marl train --help`)"
        t = re.search(r"could not be converted to (\w+)|is not a valid (bool)", cause)
        if t:
            return f"{key}: {EXPECTED.get(t.group(1) or t.group(2), 'another type')} is expected, got '{value}'"
        return f"{key}={value}: {cause or text}"
    m = re.search(r"An item is already at '([^']+)'", text)
    if m:
        return f"{m.group(1)} is already a key: set it without '+' ({m.group(1)}=VALUE)"
    if "Could not load" in text:
        return f"{text.split('Available options')[0].strip()} (see `marl train --help` for the options)"
    return f"{text}{f' ({cause})' if cause and cause not in text else ''}"


def _env_choice(overrides: list[str]) -> str:
    chosen = [o.split("=", 1)[1] for o in overrides if _key(o) == "env" and "=" in o]
    if chosen:
        return chosen[-1]
    for entry in OmegaConf.to_container(OmegaConf.load(CONF_DIR / "config.yaml"))["defaults"]:
        if isinstance(entry, dict) and "env" in entry:
            return str(entry["env"])
    return "spread"


def _check_env(cfg: DictConfig, overrides: list[str]) -> None:
    """Each ``env.<key>=VALUE`` given: the type the key has in ``conf/env/<env>.yaml``, and its range."""
    path = CONF_DIR / "env" / f"{_env_choice(overrides)}.yaml"
    defaults = OmegaConf.to_container(OmegaConf.load(path), resolve=False) if path.is_file() else {}
    assert isinstance(defaults, dict)
    for line in overrides:
        key = _key(line)
        if not key.startswith("env.") or line.startswith("~") or key == "env.kwargs":
            continue
        name = key.removeprefix("env.")
        if "." in name:  # env.kwargs.<key>: free-form, unless the env's config gives it a plain value
            head, _, sub = name.partition(".")
            reference = defaults[head].get(sub) if isinstance(defaults.get(head), dict) else None
            if expected_type(reference) is None:
                continue
        else:
            reference = defaults.get(name)
        value = OmegaConf.select(cfg, key, default=None, throw_on_resolution_failure=False)
        check_env_value(key, value, reference,
                        f" (the env's {name} is {shown(reference)})" if expected_type(reference) else "")


COMM_RANGES = {"dropout": (0.0, 1.0), "size": (1, None), "rounds": (1, None), "bits": (0, None), "k": (1, None),
               "radius": (0.0, None)}


def check_comm_override(key: str, value: str) -> None:
    """``marl eval PATH comm.<key>=VALUE``: a key of :class:`CommConfig`, of its type and in its range."""
    fields = {f.name: f.default for f in dataclasses.fields(CommConfig)}
    name = key.removeprefix("comm.")
    if name not in fields:
        raise ConfigError(f"unknown key '{key}'{suggest(key, [f'comm.{f}' for f in fields])}; "
                          f"comm keys: {', '.join(fields)}")
    parsed = parse_value(value)
    if not fits(parsed, fields[name]):
        raise ConfigError(f"{key}: {expected_type(fields[name])} is expected, got '{shown(parsed)}'")
    low, high = COMM_RANGES.get(name, (None, None))
    if (low is not None and parsed < low) or (high is not None and parsed > high):
        span = f"between {low} and {high}" if high is not None else f"{low} or more"
        raise ConfigError(f"{key} must be {span}, got {shown(parsed)}")
