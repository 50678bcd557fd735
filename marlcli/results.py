"""The results tree, the metrics writer and resume preparation (a contract other tools read)::

    <results_dir>/<env name>/<algo name>/<run>/[<variant>/]seed_<seed>/
        config.yaml      fully resolved config
        metrics.jsonl    one JSON object per line, flushed as written ("step", "time_s", ...)
        checkpoints/     step_<n>.pt ..., latest.pt
        train.log
        done             written when the run reached train.total_steps
        eval.json        written by ``marl eval`` (eval_comm.json: its channel ablation)
        export/          written by ``marl export``

``<variant>`` is the configuration of a sweep job, named by the swept keys
(``critic=independent,sharing=none``); single runs have none (issue 16).

Files are written through ``marlcli.files`` (atomic, with the user's umask, :class:`WriteError`
in one line), checkpoints through ``marlcli.checkpoints`` (the typed :class:`Checkpoint`, its
files and which configs it may name); both are re-exported here, so ``results.load_checkpoint``,
``results.WriteError`` and the rest keep working for every caller.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import math
import os
import pkgutil
import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

import marlcli.algos
from marlcli.checkpoints import (  # noqa: F401 - re-exported: results.load_checkpoint & co. stay where callers look
    CHECKPOINT_FORMAT,
    EVAL_KEYS,
    RESUME_KEYS,
    Checkpoint,
    RunState,
    checkpoint_step,
    checkpoints_newest_first,
    find_seed_dirs,
    load_checkpoint,
    newest_readable,
    resolve_checkpoint,
    restore,
    save_checkpoint,
)
from marlcli.cliutil import safe_name
from marlcli.config import CONF_DIR, RootConfig
from marlcli.errors import CheckpointError, ConfigError
from marlcli.files import (  # noqa: F401 - re-exported
    WriteError,
    atomic_write,
    atomic_write_text,
    describe,
    io_error,
    remove,
    writing,
)

_atomic_write = atomic_write  # the name selfplay.league writes its pool files with
DONE_FILE = "done"  # written when a run reached train.total_steps
RUN_FILES = ("config.yaml", "metrics.jsonl", "checkpoints", DONE_FILE)  # any of them: the dir holds a run
# what the run's results describe (its evaluations, exports, self-play pool, wandb files): stale once the run
# restarts or branches off an earlier checkpoint
DERIVED_FILES = ("eval.json", "eval_comm.json", "export")
SEED_FILES = (*RUN_FILES, "train.log", *DERIVED_FILES, "pool", "wandb")  # every file a run writes in its seed dir


# ----------------------------------------------------------------------------- run dirs
def seed_dir(cfg: DictConfig) -> Path:
    """``<results_dir>/<env>/<algo>/<run>/[<variant>/]seed_<k>``: one dir per configuration and seed."""
    run = Path(cfg.results_dir) / str(cfg.env.name) / str(cfg.algo.name) / str(cfg.run)
    variant = safe_name(str(cfg.get("variant") or ""))  # one path component, even for a hand-written variant=
    return (run / variant if variant else run) / f"seed_{cfg.seed}"


def results_root(checkpoint: Path, cfg: DictConfig) -> str:
    """The ``results_dir`` under which ``checkpoint`` sits as ``seed_dir(cfg)/checkpoints/*.pt``.

    So ``resume=<seed dir>`` continues in that dir even after the tree was moved or copied;
    a checkpoint outside a results tree keeps the ``results_dir`` it was saved with.
    """
    tail = seed_dir(cfg).relative_to(Path(cfg.results_dir)).parts
    here = checkpoint.resolve().parent
    here = here.parent if here.name == "checkpoints" else here
    if here.parts[-len(tail):] == tail:
        return str(Path(*here.parts[:-len(tail)]))
    return str(cfg.results_dir)


def holds_run(path: Path) -> bool:
    """True when ``path`` has any file of an earlier run (config, metrics, checkpoints, done)."""
    return any((path / name).exists() for name in RUN_FILES)


def clear_run(path: Path) -> None:
    """Remove an earlier run's files from a seed dir, so a fresh start leaves no stale state."""
    for name in SEED_FILES:
        remove(path / name)


def forget_after(path: Path, step: int, source: Path | None = None) -> None:
    """Before resuming at ``step``: drop ``done``, evaluations, exports and checkpoints past ``step``.

    ``source`` (the checkpoint resumed from) becomes ``latest.pt``: otherwise a run resumed from
    an older ``step_<n>.pt`` that dies before its first checkpoint would leave the abandoned
    branch's ``latest.pt``, and ``resume=<dir>`` or ``marl eval`` would load that branch (issue 25).
    """
    for name in (DONE_FILE, *DERIVED_FILES):
        remove(path / name)
    ckpt = path / "checkpoints"
    for p in ckpt.glob("step_*.pt"):
        if checkpoint_step(p) > step:
            remove(p)
    latest = ckpt / "latest.pt"
    if source is not None and source.is_file() and not (latest.exists() and source.samefile(latest)):
        data = source.read_bytes()
        atomic_write(latest, lambda f: f.write(data))


def write_config(path: Path, cfg: DictConfig) -> None:
    atomic_write_text(path / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))


# ----------------------------------------------------------------------------- metrics.jsonl
class MetricsWriter:
    """Appends one JSON line per record, straight to the file (nothing is lost on a crash).

    Each line goes out in one ``os.write`` loop on an ``O_APPEND`` descriptor, with no Python
    buffer in between: a write that fails (``ENOSPC``) truncates the file back to its last
    whole line and raises :class:`WriteError` at once, so ``metrics.jsonl`` stays valid JSON
    lines and the run ends when the disk fills, not later with a torn line (issue 25).
    """

    def __init__(self, path: Path, keep_until_step: int | None = None) -> None:
        self.path = path
        with writing(path):
            if keep_until_step is not None and path.exists():  # resume: drop lines past the checkpoint
                lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
                kept = [ln for ln in lines if _line_step(ln) <= keep_until_step]
                atomic_write_text(path, "".join(ln + "\n" for ln in kept))
            elif keep_until_step is None and path.exists():
                path.unlink()
            self._fd: int | None = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0),
                                           0o666)
            self._size = os.fstat(self._fd).st_size

    def write(self, record: dict[str, Any]) -> None:
        assert self._fd is not None, "write after close"
        data = memoryview((json.dumps({k: _plain(v) for k, v in record.items()}) + "\n").encode())
        try:
            while data:
                data = data[os.write(self._fd, data):]
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._size)  # no torn last line
            raise io_error(self.path, exc) from None
        self._size = os.fstat(self._fd).st_size

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _line_step(line: str) -> float:
    try:
        return float(json.loads(line).get("step", math.inf))
    except json.JSONDecodeError:
        return math.inf  # a torn last line from a crash: drop it


def _plain(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else (1e308 if v > 0 else -1e308)
    return v


def read_metrics(path: Path) -> list[dict[str, Any]]:
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


# ----------------------------------------------------------------------------- which configs a checkpoint may name
def checkpoint_config(payload: Mapping[str, Any], trusted: Iterable[str] = (),
                      overrides: dict[str, str] | None = None) -> DictConfig:
    """The checkpoint's config, checked so that building its env and algorithm runs no foreign code.

    ``trusted``: env factories the user gave on the command line, allowed besides the built-in
    ones; ``overrides`` (``{"env.factory": "pkg.mod:make"}`` from ``marl eval``) replace keys
    first, and a factory given that way is trusted. A config that does not parse or compose
    with marlcli's schemas, an unknown ``algo.family`` or a foreign ``env.factory`` raises
    ``CheckpointError`` (one line).
    """
    where = payload.get("_path", "the checkpoint")
    overrides = overrides or {}
    trusted = {*trusted, *([overrides["env.factory"]] if "env.factory" in overrides else [])}
    try:
        raw = OmegaConf.create(payload["config"])
        if not isinstance(raw, DictConfig) or not isinstance(raw.get("env"), DictConfig) \
                or not isinstance(raw.get("algo"), DictConfig):
            raise ValueError("it has no env and algo sections")
        apply_overrides(raw, overrides)
        cfg = OmegaConf.merge(OmegaConf.structured(RootConfig), raw)
        for key in ("env.name", "env.backend", "algo.name", "algo.family"):
            if not isinstance(OmegaConf.select(cfg, key), str):
                raise ValueError(f"{key} is missing")
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - YAML, schema and type errors alike
        raise CheckpointError(f"{where}: its config does not compose ({describe(exc)})") from None
    family = str(cfg.algo.family)
    if family not in known_families():
        raise CheckpointError(f"{where}: its config names algo.family '{family}', which is not one of marlcli's "
                              f"({', '.join(sorted(known_families()))})")
    try:  # a module of marlcli.algos (checked just above), so importing it runs only marlcli's code
        schema = importlib.import_module(f"marlcli.algos.{family}").Config
        OmegaConf.merge(OmegaConf.structured(schema), cfg.algo)
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"{where}: its algo config does not compose ({describe(exc)})") from None
    factory = str(cfg.env.get("factory") or "")
    if cfg.env.backend == "pettingzoo" and not builtin_factory(factory) and factory not in trusted:
        raise CheckpointError(f"{where}: its config names env.factory '{factory}', which is not built into marlcli; "
                              f"checkpoints never import code they name: if you trust it, pass env.factory={factory}")
    assert isinstance(cfg, DictConfig)
    return cfg


def apply_overrides(raw: DictConfig, overrides: dict[str, str]) -> None:
    """Set ``env.KEY=VALUE`` / ``comm.KEY=VALUE`` overrides (``marl eval PATH env.N=32``) on a checkpoint's config.

    Values are parsed as YAML (``true``, ``3``, ``null``). Only keys the saved env config
    has can be set (a typo is one line, not a silently ignored key), except ``env.factory``;
    a key the factory also takes (``env.kwargs.N``, resolved when the run was saved) is
    set there too, so both backends see the new value.
    """
    for key, value in overrides.items():
        parsed = OmegaConf.from_dotlist([f"x={value}"]).x
        head, _, name = key.partition(".")
        if head == "comm" and str(OmegaConf.select(raw, "comm.type") or "none") == "none":
            raise CheckpointError(f"{key}: the run has no message channel (it was trained with comm=none)")
        if head == "env" and name != "factory":
            if "." not in name and name not in raw.env:
                known = ", ".join(k for k in raw.env if k != "kwargs")
                raise CheckpointError(f"{key}: the run's env config has no key '{name}' (its keys: {known})")
            if "." not in name and isinstance(raw.env.get("kwargs"), DictConfig) and name in raw.env.kwargs:
                OmegaConf.update(raw, f"env.kwargs.{name}", parsed, force_add=True)
        OmegaConf.update(raw, key, parsed, force_add=True)


def known_families() -> set[str]:
    """Modules of ``marlcli.algos`` (found without importing them)."""
    return {m.name for m in pkgutil.iter_modules(marlcli.algos.__path__) if m.name != "base"}


MPE2_FACTORY = re.compile(r"mpe2\.[a-z0-9_]+_v[0-9]+:(parallel_env|env|raw_env)")


def builtin_factory(spec: str) -> bool:
    """Env factories a checkpoint may name: those in marlcli's ``conf/env/*.yaml`` and the mpe2 envs.

    Only these exact callables, not "any module under marlcli": ``marlcli.cli:main`` with
    ``env.kwargs={argv: [...]}`` would itself start a run with a factory of the file's choosing.
    """
    return spec in conf_factories() or MPE2_FACTORY.fullmatch(spec) is not None


def conf_factories() -> set[str]:
    out = set()
    for path in (CONF_DIR / "env").glob("*.yaml"):
        factory = OmegaConf.load(path).get("factory")
        if factory:
            out.add(str(factory))
    return out


# ----------------------------------------------------------------------------- resume preparation
def prepare(cfg: DictConfig, given: list[str] | None = None) -> tuple[DictConfig, Checkpoint | None]:
    """Apply ``resume``: returns the config to run and the checkpoint to continue from.

    ``given``: the command line's overrides (``key=value``; the CLI passes them). With
    ``resume=<dir>`` a given key whose value differs from the saved run's is refused (issue 25:
    ``algo=qmix resume=<a mappo run>`` used to be ignored silently); the keys of
    ``RESUME_FREE`` may differ, and those of ``RESUME_HONOURED`` are taken from today's command.
    """
    resume = cfg.get("resume")
    if not resume:
        return cfg, None
    trusted = [str(cfg.env.get("factory") or "")]  # the factory of today's command line (or marlcli's conf)
    if resume == "auto":  # multirun: skip finished seeds, continue from the newest readable checkpoint
        out = seed_dir(cfg)
        if (out / DONE_FILE).exists() or not checkpoints_newest_first(out):
            return cfg, None
        try:
            ckpt = load_checkpoint(out, RESUME_KEYS)
        except CheckpointError as exc:  # nothing readable: start fresh (train() clears the dir)
            print(f"marl: warning: resume=auto starts {out} afresh: {exc}", file=sys.stderr)
            return cfg, None
        _same_run(checkpoint_config(ckpt, trusted), cfg, out)
        return cfg, ckpt
    ckpt = load_checkpoint(Path(str(resume)), RESUME_KEYS)
    saved = checkpoint_config(ckpt, trusted)
    given = [o.split("=", 1)[0].lstrip("+~") for o in given or []]
    _refuse_conflicts(saved, cfg, given, str(resume))
    # continue the saved run; a larger train.total_steps extends it, logger settings are today's
    saved.train.total_steps = max(int(saved.train.total_steps), int(cfg.train.total_steps))
    saved.logger = cfg.logger
    for key in RESUME_HONOURED:
        if key in given and OmegaConf.select(cfg, key) is not None:
            OmegaConf.update(saved, key, OmegaConf.select(cfg, key), force_add=True)
    saved.resume = None
    assert ckpt.path is not None
    saved.results_dir = results_root(ckpt.path, saved)  # a moved tree resumes where it is
    return saved, ckpt


# keys a resume=<dir> command may give with any value (train.total_steps: a larger one extends the run;
# run: `marl train` adds a fresh run name; logger, device and checkpoint settings do not change what is learnt)
RESUME_FREE = ("logger.", "logger", "resume", "device", "launcher.", "launcher", "results_dir", "train.total_steps",
               "dist.", "dist", "run", "hydra.", "hydra", "train.checkpoint_interval", "train.keep_checkpoints",
               "train.checkpoint_minutes")
RESUME_HONOURED = ("device", "train.checkpoint_interval", "train.keep_checkpoints", "train.checkpoint_minutes")
# what names a config group's choice: `algo=qmix` conflicts with a saved algo.name of mappo
GROUP_ID = {"env": ("name",), "algo": ("name",), "critic": ("type", "arch"), "sharing": ("mode",),
            "actor": ("type",), "comm": ("type",), "selfplay": ("mode",)}


def _refuse_conflicts(saved: DictConfig, cfg: DictConfig, given: list[str], where: str) -> None:
    """One line naming the first given key whose value is not the saved run's (resume=<dir> continues that run)."""
    for key in given:
        key = key.lstrip("+~")
        if key in RESUME_FREE or key.startswith(tuple(k for k in RESUME_FREE if k.endswith("."))):
            continue
        for path in [f"{key}.{f}" for f in GROUP_ID[key]] if key in GROUP_ID else [key]:
            a, b = _plain_value(OmegaConf.select(saved, path)), _plain_value(OmegaConf.select(cfg, path))
            if a != b:
                shown = key if key in GROUP_ID and path == f"{key}.{GROUP_ID[key][0]}" else path
                raise ConfigError(f"resume={where} continues a run trained with {shown}={a}, not {shown}={b}; "
                                  f"drop {key}= to continue it as it was (only train.total_steps, logger.*, device and "
                                  "checkpoint settings may change), or start a new run without resume=")


def _plain_value(v: Any) -> Any:
    return OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v


def _same_run(saved: DictConfig, cfg: DictConfig, out: Path) -> None:
    """resume=auto continues a run only under the config it was started with (issue 16)."""
    ignore = ("logger.", "resume", "device", "launcher.", "results_dir", "train.total_steps", "dist.",
              "train.checkpoint_minutes")
    a, b = _flat(OmegaConf.to_container(saved, resolve=True)), _flat(OmegaConf.to_container(cfg, resolve=True))
    diff = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k) and not k.startswith(ignore)]
    if diff:
        raise ConfigError(f"resume=auto: {out} was started with {diff[0]}={a.get(diff[0])!r}, not "
                          f"{b.get(diff[0])!r}; continue it as it was with resume={out}, or start a new run with "
                          "run=NAME")


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(node, dict):
        return {prefix.rstrip("."): node}
    out: dict[str, Any] = {}
    for k, v in node.items():
        out.update(_flat(v, f"{prefix}{k}."))
    return out
