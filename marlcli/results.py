"""The results tree, the metrics writer and checkpoint I/O (a contract other tools read)::

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

Every file is written with the user's umask (issue 25: a shared cluster dir stays readable to
collaborators), and a write that fails (a full disk, a read-only or foreign-owned dir) raises
:class:`WriteError`, one line naming the file and the cause, and never leaves a torn file.

Checkpoints never run code (issue 16): ``torch.load(weights_only=True)`` unpickles tensors
and plain containers only, and :func:`checkpoint_config` refuses a config that would make
marlcli import a module the checkpoint names: ``algo.family`` must be a module of
``marlcli.algos`` and ``env.factory`` one built into marlcli (see :func:`builtin_factory`)
or one the user gave on the command line.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import math
import os
import pkgutil
import re
import secrets
import shutil
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from marlcli.cliutil import safe_name
from marlcli.errors import CheckpointError, TrainingError

CHECKPOINT_FORMAT = "marlcli-checkpoint/1"
DONE_FILE = "done"  # written when a run reached train.total_steps
RUN_FILES = ("config.yaml", "metrics.jsonl", "checkpoints", DONE_FILE)  # any of them: the dir holds a run
# what the run's results describe (its evaluations, exports, self-play pool, wandb files): stale once the run
# restarts or branches off an earlier checkpoint
DERIVED_FILES = ("eval.json", "eval_comm.json", "export")
SEED_FILES = (*RUN_FILES, "train.log", *DERIVED_FILES, "pool", "wandb")  # every file a run writes in its seed dir
# payload keys: what ``marl eval`` needs, and what ``resume=`` needs on top
EVAL_KEYS = {"step": int, "config": str, "actor": dict}
RESUME_KEYS = {**EVAL_KEYS, "learner": dict, "env": dict, "counters": dict, "track": dict, "rng": dict}


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
        _remove(path / name)


def forget_after(path: Path, step: int, source: Path | None = None) -> None:
    """Before resuming at ``step``: drop ``done``, evaluations, exports and checkpoints past ``step``.

    ``source`` (the checkpoint resumed from) becomes ``latest.pt``: otherwise a run resumed from
    an older ``step_<n>.pt`` that dies before its first checkpoint would leave the abandoned
    branch's ``latest.pt``, and ``resume=<dir>`` or ``marl eval`` would load that branch (issue 25).
    """
    for name in (DONE_FILE, *DERIVED_FILES):
        _remove(path / name)
    ckpt = path / "checkpoints"
    for p in ckpt.glob("step_*.pt"):
        if _ckpt_step(p) > step:
            _remove(p)
    latest = ckpt / "latest.pt"
    if source is not None and source.is_file() and not (latest.exists() and source.samefile(latest)):
        data = source.read_bytes()
        _atomic_write(latest, lambda f: f.write(data))


def _remove(p: Path) -> None:
    with writing(p):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)


def write_config(path: Path, cfg: DictConfig) -> None:
    atomic_write_text(path / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))


class WriteError(TrainingError):
    """A results file that could not be written (full disk, read-only or foreign-owned dir): one line."""


def io_error(path: Path, exc: OSError) -> WriteError:
    """``cannot write <path>: no space left on device``: the file and the cause, in words."""
    if exc.errno is not None:
        why = os.strerror(exc.errno)
        why = why[:1].lower() + why[1:]
        name = errno.errorcode.get(exc.errno)
        why = f"{why} ({name})" if name else why
    else:
        why = describe(exc)
    return WriteError(f"cannot write {path}: {why}")


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turn an ``OSError`` raised while writing ``path`` into a one-line :class:`WriteError`."""
    try:
        yield
    except OSError as exc:
        raise io_error(path, exc) from None


def atomic_write_text(path: Path, text: str) -> None:
    """Write a temp file, fsync it, rename it over ``path``: a crash leaves the old or the new file."""
    _atomic_write(path, lambda f: f.write(text.encode()))


def _atomic_write(path: Path, write: Any) -> None:
    """The temp file is created with mode 0666 minus the umask, as ``open()`` would create ``path``.

    (``tempfile.mkstemp`` makes it 0600 whatever the umask, and the rename kept that mode: results
    on a shared dir were unreadable to collaborators; issue 25.) Any ``OSError`` (``ENOSPC``,
    ``EROFS``, ``EACCES``) removes the temp file, leaves ``path`` as it was, and is raised as a
    :class:`WriteError` naming ``path``.
    """
    with writing(path):
        tmp, fd = _create_temp(path)
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)


def _create_temp(path: Path) -> tuple[Path, int]:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return tmp, os.open(tmp, flags, 0o666)
        except FileExistsError:
            continue


def _fsync_dir(path: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where dirs cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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


def save_checkpoint(ckpt_dir: Path, step: int, payload: dict[str, Any], keep: int = 0) -> Path:
    """Write ``step_<n>.pt`` and ``latest.pt`` atomically (temp file, fsync, rename; no temp left on error).

    The payload is serialized in memory first and written as one buffer: a full disk then
    fails in that write, as ``WriteError: cannot write .../step_<n>.pt: no space left on
    device``, instead of inside torch's zip writer as ``unexpected pos 274496 vs 274384``.
    ``step_<n>.pt`` goes first, so a failure leaves ``latest.pt`` at the previous checkpoint.
    """
    with writing(ckpt_dir):
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    payload = {"format": CHECKPOINT_FORMAT, "step": step, **payload}
    buf = io.BytesIO()
    torch.save(payload, buf)
    data = buf.getbuffer()
    target = ckpt_dir / f"step_{step}.pt"
    for path in (target, ckpt_dir / "latest.pt"):
        _atomic_write(path, lambda f: f.write(data))
    if keep > 0:
        olds = sorted(ckpt_dir.glob("step_*.pt"), key=_ckpt_step)
        for p in olds[:-keep]:
            _remove(p)
    return target


def _ckpt_step(path: Path) -> int:
    tail = path.stem.rpartition("_")[2]
    return int(tail) if tail.isdigit() else -1


def load_checkpoint(path: Path, need: dict[str, type] = EVAL_KEYS) -> dict[str, Any]:
    """Load safely (``weights_only=True``: no code in the file runs) and check format and keys.

    A dir means its newest readable checkpoint (``latest.pt``, else the highest ``step_<n>.pt``).
    Anything malformed raises ``CheckpointError`` with one line.
    """
    if path.is_dir():
        return newest_readable(path, need)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}; point at a seed dir or a .pt file of a marl run")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"{path} is not a readable marlcli checkpoint ({type(exc).__name__}); "
            "it may be truncated or from another tool"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a marlcli checkpoint (format tag missing)")
    for key, kind in need.items():
        if not isinstance(payload.get(key), kind) or isinstance(payload.get(key), bool):
            got = "missing" if key not in payload else type(payload[key]).__name__
            raise CheckpointError(f"{path} is not a complete marlcli checkpoint ('{key}' is {got})")
    payload["_path"] = str(path)
    return payload


def checkpoints_newest_first(path: Path) -> list[Path]:
    """``latest.pt`` then ``step_<n>.pt`` by decreasing n, under a seed dir or a checkpoints dir."""
    ckpt = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    steps = sorted(ckpt.glob("step_*.pt"), key=_ckpt_step, reverse=True)
    return [p for p in (ckpt / "latest.pt", *steps) if p.is_file()]


def newest_readable(path: Path, need: dict[str, type] = EVAL_KEYS) -> dict[str, Any]:
    """The newest checkpoint of a seed dir that loads, skipping (and naming) unreadable ones.

    A crash or a full disk can leave ``latest.pt`` truncated while ``step_<n>.pt`` is fine.
    """
    errors = []
    for cand in checkpoints_newest_first(path):
        try:
            payload = load_checkpoint(cand, need)
        except CheckpointError as exc:
            errors.append(str(exc))
            continue
        for err in errors:
            print(f"marl: warning: skipped {err}", file=sys.stderr)
        return payload
    if errors:
        raise CheckpointError(errors[0] + f" (and no other readable checkpoint under {path})")
    raise CheckpointError(f"no checkpoint under {path} (expected checkpoints/latest.pt)")


def resolve_checkpoint(path: Path) -> Path:
    """A seed dir -> its ``checkpoints/latest.pt`` (or its newest ``step_<n>.pt``)."""
    found = checkpoints_newest_first(path)
    if not found:
        raise CheckpointError(f"no checkpoint under {path} (expected checkpoints/latest.pt)")
    return found[0]


def find_seed_dirs(path: Path) -> list[Path]:
    """Every ``seed_*`` dir at or below ``path`` that holds a checkpoint."""
    if (path / "checkpoints").is_dir():
        return [path]
    return sorted(p.parent.parent for p in path.rglob("checkpoints/latest.pt"))


def checkpoint_config(payload: dict[str, Any], trusted: Iterable[str] = (),
                      overrides: dict[str, str] | None = None) -> DictConfig:
    """The checkpoint's config, checked so that building its env and algorithm runs no foreign code.

    ``trusted``: env factories the user gave on the command line, allowed besides the built-in
    ones; ``overrides`` (``{"env.factory": "pkg.mod:make"}`` from ``marl eval``) replace keys
    first, and a factory given that way is trusted. A config that does not parse or compose
    with marlcli's schemas, an unknown ``algo.family`` or a foreign ``env.factory`` raises
    ``CheckpointError`` (one line).
    """
    from marlcli.config import RootConfig

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
    try:
        import importlib

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
    import marlcli.algos as algos

    return {m.name for m in pkgutil.iter_modules(algos.__path__) if m.name != "base"}


MPE2_FACTORY = re.compile(r"mpe2\.[a-z0-9_]+_v[0-9]+:(parallel_env|env|raw_env)")


def builtin_factory(spec: str) -> bool:
    """Env factories a checkpoint may name: those in marlcli's ``conf/env/*.yaml`` and the mpe2 envs.

    Only these exact callables, not "any module under marlcli": ``marlcli.cli:main`` with
    ``env.kwargs={argv: [...]}`` would itself start a run with a factory of the file's choosing.
    """
    return spec in conf_factories() or MPE2_FACTORY.fullmatch(spec) is not None


def conf_factories() -> set[str]:
    from marlcli.config import CONF_DIR

    out = set()
    for path in (CONF_DIR / "env").glob("*.yaml"):
        factory = OmegaConf.load(path).get("factory")
        if factory:
            out.add(str(factory))
    return out


def restore(module: Any, state: Any, what: str, payload: dict[str, Any]) -> Any:
    """``module.load_state_dict(state)`` with missing keys or wrong shapes as one-line ``CheckpointError``."""
    try:
        return module.load_state_dict(state)
    except Exception as exc:  # noqa: BLE001 - RuntimeError, KeyError, TypeError ... from a foreign file
        raise CheckpointError(f"{payload.get('_path', 'the checkpoint')}: its {what} state does not fit "
                              f"({describe(exc)})") from None


def describe(exc: BaseException) -> str:
    """An exception as one short line: its type and its message with whitespace collapsed."""
    text = " ".join(str(exc).split())
    return (f"{type(exc).__name__}: {text}" if text else type(exc).__name__)[:300]
