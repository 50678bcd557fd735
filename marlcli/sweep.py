"""Multirun sweeps (issue 6): parallel jobs, one GPU or a share of the cores each, failure
isolation, a status record per job, and the end-of-sweep summary.

Flow of ``marl train -m seed=0,1,2,3``::

    cli.train_main --plan()--> sweep dir, jobs at once, every job's seed dir (two jobs never
                               share one; none may hold an earlier run), stale status cleared
        hydra launcher (local = joblib, or slurm = submitit) -> run_job(cfg) per job
            run_job names the job's configuration dir (``variant``) by its swept keys,
            writes <sweep dir>/<job num>/status.json, runs train(cfg) in a child
            process (launcher.isolate) so an exception, NaN loss or kill fails only that job
        --summarize()--> rich table of finished / resumed / skipped / failed, exit code

Hydra >= 1.2 does not hand the launcher's ``JobReturn`` list back to the caller of a
``@hydra.main`` function, so the summary is built from the per-job status files; they also
survive a launcher that dies with a worker.

Slurm requeue (issue 25): ``hydra/launcher=slurm`` uses :class:`SlurmLauncher`, hydra-submitit's
launcher with a ``checkpoint()`` that submitit calls on the time-limit or preemption signal
(USR2, ``signal_delay_s`` before the kill): it tells the job's training process to stop
(SIGUSR1: checkpoint at the next update boundary, exit 138), waits for it, and returns the
resubmission, which submitit requeues (``max_num_timeout`` times after a time-out, always after
a preemption). A job that finds its own status file from an earlier attempt continues with
``resume=auto``, from that checkpoint. A preemption by SIGTERM (Slurm's default) stops the
training process the same way, and a cluster that requeues it continues it the same way.

Configuration dirs (issue 16): ``marl train -m critic=centralized,independent seed=0,1``
writes ``<env>/<algo>/<run>/critic=independent/seed_1``. The parent hands the keys that do
not name the dir to every job as Hydra's ``hydra.job.config.override_dirname.exclude_keys``;
each job names its dir from its own overrides (:func:`marlcli.cliutil.variant_name`), so
this works with every launcher, Slurm included.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from marlcli import cliutil
from marlcli.cliutil import available_cores, parallel_jobs, visible_gpus  # noqa: F401 - this module's API
from marlcli.config import compose, register_resolvers
from marlcli.errors import ConfigError

STATUS_FILE = "status.json"
JOB_CONFIG = "job_config.yaml"
JOB_ERROR = "error.txt"
FAILED = "failed"
STOPPED = "stopped"  # stopped by a signal after writing its checkpoint (resume=auto continues it)
STOP_CODES = {130: "SIGINT", 143: "SIGTERM", 138: "SIGUSR1", 140: "SIGUSR2"}  # trainer.STOP_SIGNALS' exit codes
_CHILD: dict[str, subprocess.Popen[bytes]] = {}  # the training process of the job running in this process


# ----------------------------------------------------------------------------- resources
def threads_per_job(n_jobs: int, cores: int | None = None) -> int:
    """Torch threads per job so ``n_jobs`` jobs do not oversubscribe the cores: cores // jobs, >= 1."""
    cores = available_cores() if cores is None else cores
    return max(1, cores // max(1, int(n_jobs)))


register_resolvers()  # launcher workers unpickle run_job (importing this module) before they compose


def _job_threads(launcher_cfg: Any, jobs_per_gpu: int) -> int:
    """Threads for this job: Slurm's CPUs per task, else cores // the local launcher's n_jobs."""
    slurm = os.environ.get("SLURM_CPUS_PER_TASK")
    if slurm:
        return max(1, int(slurm))
    try:
        n_jobs = launcher_cfg.get("n_jobs")
    except Exception:  # noqa: BLE001 - ${launcher.jobs_per_gpu} is outside HydraConfig's hydra-only copy
        n_jobs = None
    return threads_per_job(parallel_jobs(jobs_per_gpu) if n_jobs in (None, -1) else int(n_jobs))


# ----------------------------------------------------------------------------- one job
def run_job(cfg: DictConfig) -> dict[str, Any]:
    """The multirun task: run one sweep job, never raise, return and record its status.

    Status: ``finished``, ``resumed`` (continued from ``latest.pt`` with ``resume=auto``),
    ``skipped`` (``resume=auto`` and the seed dir is done), ``stopped`` (by a signal, checkpoint
    written) or ``failed`` (with the error line). A status file already in the job's dir means an
    earlier attempt of this very job ran (``plan()`` clears them before a sweep starts): a Slurm
    requeue, which continues with ``resume=auto``. Only submitit's requeue exit (``SystemExit``)
    and a KeyboardInterrupt leave this function, after the status is recorded.
    """
    from hydra.core.hydra_config import HydraConfig

    from marlcli import results

    hc = HydraConfig.get()
    job_num = int(hc.job.num)
    job_dir = Path(str(hc.runtime.output_dir))
    job_dir.mkdir(parents=True, exist_ok=True)
    threads = _job_threads(hc.launcher, int(cfg.launcher.jobs_per_gpu))
    exclude = list(hc.job.config.override_dirname.exclude_keys)
    if exclude and not cfg.get("variant"):  # started by `marl train -m`: one dir per configuration
        cfg.variant = cliutil.variant_name(list(hc.overrides.task), exclude)
    out = results.seed_dir(cfg)
    record: dict[str, Any] = {"job": job_num, "overrides": list(hc.overrides.task), "seed_dir": str(out),
                              "status": "running", "error": None, "wall_s": 0.0, "threads": threads}
    requeued = (job_dir / STATUS_FILE).exists()
    if requeued and not cfg.get("resume"):
        cfg.resume = "auto"  # this job's own earlier attempt: continue from its checkpoint
    auto = cfg.get("resume") == "auto"
    if auto and (out / results.DONE_FILE).exists():
        record["status"] = "finished" if requeued else "skipped"
        _write_status(job_dir, record)
        return record
    started = "resumed" if auto and (out / "checkpoints" / "latest.pt").exists() else "finished"
    _write_status(job_dir, record)
    t0 = time.perf_counter()
    try:
        if cfg.launcher.get("isolate", True):
            error = _run_child(cfg, job_dir, job_num, threads)
        else:
            error = _run_here(cfg, job_num, threads)
    except Exception as exc:  # noqa: BLE001 - isolation: no error escapes a job
        error = _one_line(exc)
    except BaseException as exc:  # submitit's requeue (SystemExit) or Ctrl-C: record, then let it go on
        record.update(status=STOPPED, error=_stop_line(exc, out), wall_s=round(time.perf_counter() - t0, 1))
        _write_status(job_dir, record)
        raise
    status = FAILED if error else started
    if error and error.startswith("stopped by "):
        status = STOPPED
    record.update(status=status, error=error, wall_s=round(time.perf_counter() - t0, 1))
    _write_status(job_dir, record)
    return record


def _stop_line(exc: BaseException, out: Path) -> str:
    why = "requeued by Slurm" if isinstance(exc, SystemExit) else "interrupted"
    return f"{why}; continues from its last checkpoint with resume=auto (seed dir {out})"


def _run_here(cfg: DictConfig, job_num: int, threads: int) -> str | None:
    import torch

    from marlcli.trainer import train

    torch.set_num_threads(threads)
    os.environ["MARL_JOB_NUM"] = str(job_num)
    try:
        train(cfg)
    except Exception as exc:  # noqa: BLE001
        return _one_line(exc)
    return None


def _run_child(cfg: DictConfig, job_dir: Path, job_num: int, threads: int) -> str | None:
    """Train in a fresh interpreter: an exception, a segfault or a kill ends only that process.

    The process is kept in ``_CHILD`` while it runs, for :func:`stop_child` (Slurm's signal).
    """
    (job_dir / JOB_CONFIG).write_text(OmegaConf.to_yaml(cfg, resolve=True))
    err_file = job_dir / JOB_ERROR
    err_file.unlink(missing_ok=True)
    env = {**os.environ, "MARL_JOB_NUM": str(job_num), "MARL_THREADS": str(threads),
           "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    with subprocess.Popen([sys.executable, "-m", "marlcli.sweep", str(job_dir)], env=env) as proc:
        _CHILD["proc"] = proc
        try:
            returncode = proc.wait()
        finally:
            _CHILD.pop("proc", None)
    if returncode == 0:
        return None
    if err_file.exists():
        return err_file.read_text().strip() or f"exit code {returncode}"
    if returncode in STOP_CODES:
        return f"stopped by {STOP_CODES[returncode]} (checkpoint written; resume=auto continues it)"
    if returncode < 0:
        return f"killed by {signal.Signals(-returncode).name}"
    return f"exit code {returncode} (no error recorded; see the seed dir's train.log)"


def stop_child(wait_s: float) -> int | None:
    """Ask the running training process to stop (SIGUSR1: checkpoint at the next update) and wait for it.

    Called from a signal handler while the main thread waits on that process, so it never
    reaps it (``WNOWAIT``): the waiting ``_run_child`` still gets its exit code. Returns the
    exit code, or None when no process runs or it did not exit within ``wait_s`` seconds.
    """
    proc = _CHILD.get("proc")
    if proc is None or proc.returncode is not None:
        return None
    try:
        os.kill(proc.pid, signal.SIGUSR1)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:  # already reaped
            return proc.returncode
        if info is not None:
            return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status
        time.sleep(0.05)
    return None


def _child_main(job_dir: Path) -> int:
    """``python -m marlcli.sweep JOB_DIR``: train the job's config; one error line on failure."""
    import torch

    from marlcli.trainer import Stopped, train

    torch.set_num_threads(int(os.environ.get("MARL_THREADS", "1")))
    cfg = OmegaConf.load(job_dir / JOB_CONFIG)
    try:
        out = train(cfg)  # type: ignore[arg-type]
    except Stopped as exc:  # a signal: checkpoint written; the exit code says which signal
        (job_dir / JOB_ERROR).write_text(_one_line(exc) + "\n")
        print(f"marl train: job {os.environ.get('MARL_JOB_NUM')}: {_one_line(exc)}", file=sys.stderr)
        return exc.exit_code
    except Exception as exc:  # noqa: BLE001
        (job_dir / JOB_ERROR).write_text(_one_line(exc) + "\n")
        print(f"marl train: job {os.environ.get('MARL_JOB_NUM')} failed: {_one_line(exc)}", file=sys.stderr)
        return 1
    print(f"results: {out}")
    return 0


def _one_line(exc: BaseException) -> str:
    from marlcli.errors import MarlError

    text = " ".join(str(exc).split()) or "(no message)"
    return text if isinstance(exc, MarlError) else f"{type(exc).__name__}: {text}"


def _write_status(job_dir: Path, record: dict[str, Any]) -> None:
    from marlcli.results import atomic_write_text

    atomic_write_text(job_dir / STATUS_FILE, json.dumps(record, indent=2) + "\n")


# ----------------------------------------------------------------------------- the parent side
@dataclass
class SweepPlan:
    sweep_dir: Path
    n_jobs: int | None  # jobs at once (local launcher); None for a cluster launcher
    expected: int  # jobs the sweep will launch
    launcher: str  # hydra launcher class name
    seed_dirs: list[Path] = field(default_factory=list)  # every job's seed dir, in launch order


# keys that decide a job's seed dir besides its variant (see results.seed_dir)
DIR_KEYS = ("results_dir", "env", "env.name", "algo", "algo.name", "run", "variant")


def job_seed_dirs(overrides: list[str], exclude: list[str]) -> list[Path]:
    """The seed dir of every job of the sweep, computed before anything runs.

    Composes once per distinct choice of the keys that name dirs (not once per seed).
    """
    from marlcli import results

    parsed = cliutil.parse_overrides(overrides)
    cache: dict[tuple[str, ...], DictConfig] = {}
    dirs = []
    for lines in cliutil.jobs(overrides):
        named = tuple(line if (not o.sweep or o.key in DIR_KEYS) else o.lines[0]
                      for o, line in zip(parsed, lines, strict=True))
        key = tuple(line for o, line in zip(parsed, named, strict=True) if o.key != "seed")
        if key not in cache:
            cache[key] = compose(list(key))
        cfg = cache[key].copy()
        seeds = [line.split("=", 1)[1] for o, line in zip(parsed, lines, strict=True) if o.key == "seed"]
        if seeds:
            cfg.seed = int(seeds[-1]) if seeds[-1].lstrip("-").isdigit() else compose(list(named)).seed
        if not cfg.get("variant"):
            cfg.variant = cliutil.variant_name(lines, exclude)
        dirs.append(results.seed_dir(cfg))
    return dirs


def plan(overrides: list[str], exclude: list[str] | None = None) -> SweepPlan:
    """Where the sweep's status files go, how many jobs to expect and every job's seed dir.

    Raises ``ConfigError`` (one line) when two jobs would write one seed dir, or when a
    job's dir already holds a run and the sweep does not say ``resume=auto``. Clears stale
    status files.
    """
    from marlcli import results

    exclude = cliutil.hidden_keys(overrides) if exclude is None else exclude
    first = cliutil.jobs(overrides)[0]
    cfg = compose(first, hydra=True)
    dirs = job_seed_dirs(overrides, exclude)
    seen: dict[Path, int] = {}
    for num, d in enumerate(dirs):
        if d in seen:
            raise ConfigError(f"sweep jobs {seen[d]} and {num} would both write {d}; give each configuration "
                              "different values (or its own variant=NAME)")
        seen[d] = num
    if not cfg.get("resume"):
        for d in dirs:
            if results.holds_run(d):
                raise ConfigError(f"{d} already holds a run; add resume=auto to continue this sweep, or pick a new "
                                  "run=NAME")
    sweep_dir = Path(str(cfg.hydra.sweep.dir))
    n_jobs = cfg.hydra.launcher.get("n_jobs")
    for old in sweep_dir.glob(f"*/{STATUS_FILE}"):
        old.unlink()
    return SweepPlan(sweep_dir, int(n_jobs) if n_jobs is not None else None, len(dirs),
                     str(cfg.hydra.launcher._target_).rsplit(".", 1)[-1], dirs)


def latest_run(overrides: list[str]) -> str | None:
    """``resume=auto`` without ``run=``: the most recently modified run dir of the sweep's env/algo.

    Looks at ``<results_dir>/<env>/<algo>/*`` for every env/algo the overrides sweep over;
    None when there is none (the sweep then starts a new timestamped run).
    """
    candidates: dict[Path, float] = {}
    for combo in cliutil.combinations(overrides, limit=0):
        cfg = compose(combo)
        parent = Path(str(cfg.results_dir)) / str(cfg.env.name) / str(cfg.algo.name)
        if parent.is_dir():
            for run in parent.iterdir():
                seeds = [*run.glob("seed_*"), *run.glob("*/seed_*")]  # single runs and configuration dirs
                if seeds:
                    candidates[run] = max(s.stat().st_mtime for s in seeds)
    return max(candidates, key=lambda p: candidates[p]).name if candidates else None


def read_statuses(sweep_dir: Path) -> list[dict[str, Any]]:
    rows = [json.loads(p.read_text()) for p in sweep_dir.glob(f"*/{STATUS_FILE}")]
    return sorted(rows, key=lambda r: r["job"])


def summarize(p: SweepPlan, launcher_error: str | None = None) -> int:
    """Print the sweep's summary table; 1 if any job failed, was killed or never ran, else 0."""
    from rich.console import Console
    from rich.table import Table

    rows = read_statuses(p.sweep_dir)
    for r in rows:  # a job still "running" after the launcher returned died with its worker
        if r["status"] == "running":
            r.update(status=FAILED, error=launcher_error or "the job's process died")
    missing = p.expected - len(rows)
    shared = set.intersection(*(set(r["overrides"]) for r in rows)) if len(rows) > 1 else set()
    table = Table(title=f"sweep summary: {p.sweep_dir}", title_justify="left")
    for col in ("job", "overrides", "status", "wall", "seed dir / error"):
        table.add_column(col, justify="right" if col in ("job", "wall") else "left")
    colour = {"finished": "green", "resumed": "cyan", "skipped": "dim", STOPPED: "yellow", FAILED: "bold red"}
    root = p.sweep_dir.parent.parent  # <results_dir>/.sweeps/<run> -> <results_dir>
    for r in rows:
        seed_dir = Path(r["seed_dir"])
        where = str(seed_dir.relative_to(root)) if seed_dir.is_relative_to(root) else str(seed_dir)
        label = " ".join(o for o in r["overrides"] if o not in shared) or " ".join(r["overrides"])
        table.add_row(str(r["job"]), label, f"[{colour.get(r['status'], '')}]{r['status']}",
                      f"{r['wall_s']:.0f}s", r["error"] or where)
    counts = {s: sum(r["status"] == s for r in rows) for s in ("finished", "resumed", "skipped", STOPPED, FAILED)}
    console = Console(stderr=True)
    if not console.is_terminal:
        console = Console(stderr=True, width=160)
    console.print(table)
    line = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    if missing > 0:
        line += f", {missing} not run"
    if launcher_error:
        line += f" (launcher: {launcher_error})"
    console.print(f"sweep: {line or 'no jobs'}")
    return 1 if counts[FAILED] or counts[STOPPED] or missing > 0 or launcher_error else 0


# ----------------------------------------------------------------------------- Slurm requeue
def _requeue_launcher(base: type) -> type:
    """``base`` (a hydra-submitit launcher) whose ``checkpoint()`` first stops the job's training cleanly."""

    class Requeue(base):  # type: ignore[misc, valid-type]
        def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
            """submitit calls this on the time-limit / preemption signal, before it requeues the job.

            The training process gets until shortly before Slurm's kill (``signal_delay_s``) to
            write its checkpoint; the resubmission is the same job, which then continues it.
            """
            delay = float(self.params.get("signal_delay_s") or 120)
            stop_child(max(5.0, delay - 15.0))
            return super().checkpoint(*args, **kwargs)

    Requeue.__name__ = Requeue.__qualname__ = base.__name__
    Requeue.__module__ = __name__
    return Requeue


try:
    from hydra_plugins.hydra_submitit_launcher import submitit_launcher as _submitit
except ImportError:  # hydra-submitit-launcher not installed: no Slurm sweeps
    pass
else:
    SlurmLauncher = _requeue_launcher(_submitit.SlurmLauncher)  # conf/hydra/launcher/slurm.yaml's _target_
    LocalLauncher = _requeue_launcher(_submitit.LocalLauncher)  # the same on this machine (submitit's local executor)


if __name__ == "__main__":
    sys.exit(_child_main(Path(sys.argv[1])))
