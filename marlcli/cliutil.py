"""Helpers shared by ``cli``, ``sweep``, ``report`` and ``config``, below all of them (issue 16).

One-line errors, ``key=value`` option parsing, Hydra override parsing (sweep values, the
product of combinations to validate, the per-configuration dir name) and run names. This
module imports nothing from marlcli, so none of those modules needs another's internals.
"""

from __future__ import annotations

import difflib
import errno
import itertools
import math
import os
import re
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Keys that never name a configuration dir: seeds are the replicas inside one, run is its
# parent, resume is how to continue; env/algo group choices already name <env>/<algo>.
NOT_VARIANT_KEYS = ("seed", "run", "resume", "variant", "env", "algo", "results_dir")
FULL_PRODUCT_LIMIT = 256  # validate every combination of a sweep up to this many
UNSAFE = re.compile(r"[^A-Za-z0-9._=,:+-]")


def fail(command: str, message: str) -> int:
    """One line on stderr, exit code 2."""
    print(f"marl {command}: error: {' '.join(str(message).split())}", file=sys.stderr)
    return 2


def suggest(word: str, candidates: Any, n: int = 3) -> str:
    """`` (did you mean train.total_steps?)`` for a mistyped name, or ``""`` when nothing is close.

    The closest names by ``difflib`` ratio, so a typo is answered with the key the user meant, not
    with Hydra's ``use +key`` (which adds the typo as a new, silently ignored key; issue 25).
    """
    close = difflib.get_close_matches(word, sorted({str(c) for c in candidates}), n=n, cutoff=0.6)
    return f" (did you mean {' or '.join(close)}?)" if close else ""


def os_error(path: Any, exc: OSError) -> str:
    """``cannot write out/x: not a directory (ENOTDIR)``: a failed file operation as one line, in words."""
    if exc.errno is None:
        return f"cannot write {path}: {' '.join(str(exc).split())}"
    if exc.errno in (errno.EEXIST, errno.ENOTDIR):  # a file where a directory must go: say which
        blocking = next((a for a in [Path(path), *Path(path).parents] if a.exists() and not a.is_dir()), None)
        if blocking is not None:
            return f"cannot write {path}: {blocking} is a file, not a directory"
    why = os.strerror(exc.errno)
    name = errno.errorcode.get(exc.errno)
    return f"cannot write {exc.filename or path}: {why[:1].lower()}{why[1:]}" + (f" ({name})" if name else "")


# ----------------------------------------------------------------------------- key=value options
@dataclass
class Options:
    """Parsed ``marl eval|report`` arguments: paths, typed options and passthrough overrides."""

    paths: list[str]
    opts: dict[str, Any]
    overrides: list[str]  # ``<prefix>key=value`` options (e.g. ``env.factory=...``), in order


def parse_kv(args: list[str], known: dict[str, Any], passthrough: tuple[str, ...] = (),
             positive: tuple[str, ...] = ()) -> Options:
    """Split ``args`` into paths and ``key=value`` options typed like ``known``'s defaults.

    Keys in ``passthrough`` (exact keys such as ``env.factory``, or prefixes ending in ``.``
    such as ``env.``) are kept verbatim as overrides, so a command can accept config keys
    without a typed default. Integer options in ``positive`` must be at least 1 (``episodes=0``
    would otherwise fail deep inside torch). An unknown key, a value of the wrong type or out of
    range raises ``ValueError`` with a one-line message; an unknown key names the closest ones.
    """
    paths: list[str] = []
    opts, overrides = dict(known), []
    for a in args:
        if "=" not in a or Path(a).exists():
            paths.append(a)
            continue
        k, v = a.split("=", 1)
        if k in passthrough or any(p.endswith(".") and k.startswith(p) and len(k) > len(p) for p in passthrough):
            overrides.append(a)
            continue
        if k not in known:
            every = [*known, *(f"{p}KEY=" if p.endswith(".") else f"{p}=" for p in passthrough)]
            near = suggest(k, [*known, *(p for p in passthrough if not p.endswith("."))])
            raise ValueError(f"unknown option '{k}'{near}; options: {', '.join(every)}")
        opts[k] = _typed(k, v, known[k])
        if k in positive and opts[k] < 1:
            raise ValueError(f"{k} must be a positive integer (1 or more), got {opts[k]}")
    return Options(paths, opts, overrides)


def experiment_options(argv: list[str], defaults: dict[str, Any], prog: str) -> dict[str, Any]:
    """An experiment script's ``key=value`` options, typed like ``defaults``; a bad one is one line, exit 2."""
    try:
        parsed = parse_kv(argv, defaults)
        if parsed.paths:
            raise ValueError(f"expected key=value options, got '{parsed.paths[0]}'; options: {', '.join(defaults)}")
        return {k: float(v) if isinstance(defaults[k], float) else v for k, v in parsed.opts.items()}
    except ValueError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _typed(key: str, value: str, default: Any) -> Any:
    if isinstance(default, bool):
        if value.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"{key} must be true or false, got '{value}'")
        return value.lower() in ("true", "1")
    if isinstance(default, int):
        try:
            return int(value)
        except ValueError:
            raise ValueError(f"{key} must be an integer, got '{value}'") from None
    return value


# ----------------------------------------------------------------------------- Hydra overrides
@dataclass
class Override:
    """One command-line override: its key (without ``+``/``~``), its values, the lines per value."""

    key: str
    lines: list[str]  # one ``key=value`` line per value (a single line when not a sweep)
    sweep: bool


def parse_overrides(overrides: list[str]) -> list[Override]:
    """Parse with Hydra's own grammar (so ``range()``, ``choice()`` and quoting behave the same)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser  # deferred: keeps cliutil (`marl --help`) light

    out = []
    for o in OverridesParser.create().parse_overrides(overrides):
        if o.is_sweep_override():
            key = o.get_key_element()
            out.append(Override(o.key_or_group, [f"{key}={v}" for v in o.sweep_string_iterator()], True))
        else:
            out.append(Override(o.key_or_group, [str(o.input_line)], False))
    return out


def n_jobs(overrides: list[str]) -> int:
    """How many jobs Hydra's basic sweeper launches: the product of the sweep value counts."""
    return math.prod(len(o.lines) for o in parse_overrides(overrides))


def jobs(overrides: list[str]) -> list[list[str]]:
    """Every job's override list, in the order Hydra's basic sweeper launches them."""
    parsed = parse_overrides(overrides)
    return [list(c) for c in itertools.product(*(o.lines for o in parsed))]


def is_structural(key: str) -> bool:
    """Keys whose combinations decide whether a job can run at all (env/algo pairs, env options)."""
    return key in ("env", "algo", "critic", "sharing") or key.startswith(("env.", "algo.family"))


def combinations(overrides: list[str], limit: int = FULL_PRODUCT_LIMIT) -> list[list[str]]:
    """Override lists to validate before a sweep runs (issue 16).

    The full product of every sweep's values when it has at most ``limit`` jobs; otherwise
    the full product of the structural keys (``env``, ``algo``, ``critic``, ``sharing``,
    ``env.*``) with every other sweep value tried once against the first combination. So
    ``algo=mappo,qmix env.continuous_actions=false,true`` always checks ``[qmix, true]``.
    """
    parsed = parse_overrides(overrides)
    if math.prod(len(o.lines) for o in parsed) <= limit:
        return jobs(overrides)
    pick = [o.lines if (not o.sweep or is_structural(o.key)) else o.lines[:1] for o in parsed]
    combos = [list(c) for c in itertools.product(*pick)]
    for pos, o in enumerate(parsed):
        if o.sweep and not is_structural(o.key):
            combos += [combos[0][:pos] + [line] + combos[0][pos + 1:] for line in o.lines[1:]]
    return combos


def variant_keys(overrides: list[str]) -> list[str]:
    """The swept keys that name a configuration dir: every sweep except seed/run/env/algo/hydra.*."""
    return [o.key for o in parse_overrides(overrides)
            if o.sweep and o.key not in NOT_VARIANT_KEYS and not o.key.startswith("hydra")]


def hidden_keys(overrides: list[str]) -> list[str]:
    """Task-override keys left out of a job's variant name (Hydra's ``override_dirname.exclude_keys``)."""
    named = set(variant_keys(overrides))
    keys = {o.key for o in parse_overrides(overrides)} - named
    return sorted(keys | set(NOT_VARIANT_KEYS))


def variant_name(job_overrides: list[str], exclude: list[str]) -> str:
    """A job's configuration dir name from its own override lines, e.g. ``critic=independent,sharing=none``.

    Hydra's ``override_dirname`` (sorted ``key=value`` lines joined by ``,``), without ``+``/``~``
    prefixes and with anything outside ``[A-Za-z0-9._=,:+-]`` replaced by ``_`` so it is one
    safe path component. Stable: the same overrides give the same name in every sweep.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser  # deferred: keeps cliutil (`marl --help`) light

    parsed = OverridesParser.create().parse_overrides(job_overrides)
    lines = sorted(str(o.input_line) for o in parsed  # Hydra's own rule, and never a hydra.* setting
                   if o.key_or_group not in exclude and not o.key_or_group.startswith("hydra"))
    return safe_name(",".join(lines))


def safe_name(name: str) -> str:
    """One path component: prefixes dropped, unsafe characters -> ``_``, never ``.``/``..``."""
    name = ",".join(part.lstrip("+~") for part in name.split(",")) if name else ""
    name = UNSAFE.sub("_", name)
    return "_" + name if name in (".", "..") else name


def default_run_name() -> str:
    """A timestamp plus 6 random hex digits: two runs started in the same second get different names.

    (A clash, 1 in 16 million, would still never mix runs: a used seed dir is refused.)
    """
    return f"{time.strftime('%Y-%m-%d_%H-%M-%S')}_{secrets.token_hex(3)}"


# ----------------------------------------------------------------------------- resources
def available_cores() -> int:
    """CPU cores this process may use (respects taskset / cgroup affinity)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def visible_gpus() -> int:
    import torch  # deferred: torch takes seconds to import; `marl --help` and argument errors need none

    return torch.cuda.device_count()


def parallel_jobs(jobs_per_gpu: int, gpus: int | None = None, cores: int | None = None) -> int:
    """Jobs at once: ``gpus x jobs_per_gpu``, or the number of cores with no GPU (at least 1)."""
    gpus = visible_gpus() if gpus is None else gpus
    cores = available_cores() if cores is None else cores
    return max(1, gpus * int(jobs_per_gpu) if gpus > 0 else cores)


def threads_per_job(n_jobs: int, cores: int | None = None) -> int:
    """Torch threads per job so ``n_jobs`` jobs do not oversubscribe the cores: cores // jobs, >= 1."""
    cores = available_cores() if cores is None else cores
    return max(1, cores // max(1, int(n_jobs)))


def job_threads(launcher_cfg: Any, jobs_per_gpu: int) -> int:
    """Threads for one sweep job: Slurm's CPUs per task, else cores // the local launcher's n_jobs."""
    slurm = os.environ.get("SLURM_CPUS_PER_TASK")
    if slurm:
        return max(1, int(slurm))
    try:
        n_jobs = launcher_cfg.get("n_jobs")
    except Exception:  # noqa: BLE001 - ${launcher.jobs_per_gpu} is outside HydraConfig's hydra-only copy
        n_jobs = None
    return threads_per_job(parallel_jobs(jobs_per_gpu) if n_jobs in (None, -1) else int(n_jobs))
