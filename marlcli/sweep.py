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

Slurm requeue (issue 25): submitit signals a job ``signal_delay_s`` before its time limit, or
when it is preempted (USR2); its handler calls the launcher's ``checkpoint()`` (hydra-submitit
resubmits the same job) and requeues it, ``max_num_timeout`` times after a time-out and always
after a preemption (conf/hydra/launcher/slurm.yaml). :func:`run_job` puts a handler in front of
submitit's that first stops the job's training process cleanly (SIGUSR1: a checkpoint at the
next update boundary, exit 138) and waits for it. A job that finds its own status file from an
earlier attempt continues with ``resume=auto``, from that checkpoint. SIGTERM (Slurm's
preemption and ``scancel``) is passed on to the training process, which stops the same way.

Configuration dirs (issue 16): ``marl train -m critic=centralized,independent seed=0,1``
writes ``<env>/<algo>/<run>/critic=independent/seed_1``. The parent hands the keys that do
not name the dir to every job as Hydra's ``hydra.job.config.override_dirname.exclude_keys``;
each job names its dir from its own overrides (:func:`marlcli.cliutil.variant_name`), so
this works with every launcher, Slurm included.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from marlcli import cliutil, results
from marlcli.cliutil import available_cores, parallel_jobs, threads_per_job, visible_gpus  # noqa: F401 - this module's API
from marlcli.config import compose, register_resolvers
from marlcli.distributed.launch import train_or_launch as train
from marlcli.errors import ConfigError, MarlError
from marlcli.trainer import Stopped

STATUS_FILE = "status.json"
JOB_CONFIG = "job_config.yaml"
JOB_ERROR = "error.txt"
FAILED = "failed"
STOPPED = "stopped"  # stopped by a signal after writing its checkpoint (resume=auto continues it)
STOP_CODES = {130: "SIGINT", 143: "SIGTERM", 138: "SIGUSR1", 140: "SIGUSR2"}  # trainer.STOP_SIGNALS' exit codes
CHILD_PID = "child.pid"  # the pid of the job's training process, while it runs
_CHILD: dict[str, Path] = {}  # the pid file of the job running in this process


register_resolvers()  # launcher workers unpickle run_job (importing this module) before they compose


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
    hc = HydraConfig.get()
    job_num = int(hc.job.num)
    job_dir = Path(str(hc.runtime.output_dir))
    job_dir.mkdir(parents=True, exist_ok=True)
    threads = cliutil.job_threads(hc.launcher, int(cfg.launcher.jobs_per_gpu))
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
    restore = _stop_child_first(float(hc.launcher.get("signal_delay_s") or 120))
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
    finally:
        restore()
    status = FAILED if error else started
    if error and error.startswith("stopped by "):
        status = STOPPED
    record.update(status=status, error=error, wall_s=round(time.perf_counter() - t0, 1))
    _write_status(job_dir, record)
    return record


def _stop_child_first(signal_delay_s: float) -> Any:
    """Under submitit: stop the training process cleanly before submitit's own handlers run.

    submitit's requeue signal (USR2 unless ``$SUBMITIT_PREEMPT_SIGNAL`` says otherwise) gets a
    handler that sends the training process SIGUSR1 and waits for its checkpoint (until shortly
    before Slurm's kill), then hands over to submitit's (checkpoint, requeue, exit); SIGTERM is
    passed on to the training process. Returns the function that puts the old handlers back.
    Outside submitit, or with ``launcher.isolate=false`` (the training runs in this process and
    keeps submitit's handlers; a requeued job then continues from its last periodic or
    ``train.checkpoint_minutes`` checkpoint), it does nothing.
    """
    if not os.environ.get("SUBMITIT_EXECUTOR") or threading.current_thread() is not threading.main_thread():
        return lambda: None
    from submitit import JobEnvironment  # deferred: submitit is needed only under the Slurm launcher

    requeue_sig = JobEnvironment._usr_sig()
    old = {sig: signal.getsignal(sig) for sig in (requeue_sig, signal.SIGTERM)}

    def on_requeue(signum: int, frame: Any) -> None:
        stop_child(max(5.0, signal_delay_s - 15.0))
        if callable(old[requeue_sig]):
            old[requeue_sig](signum, frame)

    def on_term(signum: int, frame: Any) -> None:
        pid = _child_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        if callable(old[signal.SIGTERM]):
            old[signal.SIGTERM](signum, frame)

    signal.signal(requeue_sig, on_requeue)
    signal.signal(signal.SIGTERM, on_term)
    return lambda: [signal.signal(sig, handler) for sig, handler in old.items()]


def _stop_line(exc: BaseException, out: Path) -> str:
    why = "requeued by Slurm" if isinstance(exc, SystemExit) else "interrupted"
    return f"{why}; continues from its last checkpoint with resume=auto (seed dir {out})"


def _run_here(cfg: DictConfig, job_num: int, threads: int) -> str | None:
    torch.set_num_threads(threads)
    os.environ["MARL_JOB_NUM"] = str(job_num)
    try:
        train(cfg)
    except Exception as exc:  # noqa: BLE001
        return _one_line(exc)
    return None


def _run_child(cfg: DictConfig, job_dir: Path, job_num: int, threads: int) -> str | None:
    """Train in a fresh interpreter: an exception, a segfault or a kill ends only that process.

    The process writes its pid to ``child.pid`` in the job dir, for :func:`stop_child` (Slurm's signal).
    """
    (job_dir / JOB_CONFIG).write_text(OmegaConf.to_yaml(cfg, resolve=True))
    err_file = job_dir / JOB_ERROR
    err_file.unlink(missing_ok=True)
    pid_file = job_dir / CHILD_PID
    pid_file.unlink(missing_ok=True)  # an earlier attempt's
    env = {**os.environ, "MARL_JOB_NUM": str(job_num), "MARL_THREADS": str(threads),
           "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    _CHILD["pid_file"] = pid_file
    try:
        proc = subprocess.run([sys.executable, "-m", "marlcli.sweep", str(job_dir)], env=env, check=False)
    finally:
        _CHILD.pop("pid_file", None)
    if proc.returncode == 0:
        return None
    if err_file.exists():
        return err_file.read_text().strip() or f"exit code {proc.returncode}"
    if proc.returncode in STOP_CODES:
        return f"stopped by {STOP_CODES[proc.returncode]} (checkpoint written; resume=auto continues it)"
    if proc.returncode < 0:
        return f"killed by {signal.Signals(-proc.returncode).name}"
    return f"exit code {proc.returncode} (no error recorded; see the seed dir's train.log)"


def _child_pid() -> int | None:
    """The running training process of this job (None before it started or outside a job)."""
    pid_file = _CHILD.get("pid_file")
    try:
        return int(pid_file.read_text()) if pid_file is not None else None
    except (OSError, ValueError):
        return None


def stop_child(wait_s: float) -> int | None:
    """Ask the running training process to stop (SIGUSR1: checkpoint at the next update) and wait for it.

    Called from a signal handler while the main thread waits on that process, so it never
    reaps it (``WNOWAIT``): the waiting ``_run_child`` still gets its exit code. Returns the
    exit code, or None when no process runs or it did not exit within ``wait_s`` seconds.
    """
    pid = _child_pid()
    if pid is None:
        return None
    try:
        os.kill(pid, signal.SIGUSR1)
    except ProcessLookupError:
        return None
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:  # already reaped
            return None
        if info is not None:
            return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status
        time.sleep(0.05)
    return None


def _child_main(job_dir: Path) -> int:
    """``python -m marlcli.sweep JOB_DIR``: train the job's config; one error line on failure."""
    torch.set_num_threads(int(os.environ.get("MARL_THREADS", "1")))
    cfg = OmegaConf.load(job_dir / JOB_CONFIG)
    (job_dir / CHILD_PID).write_text(f"{os.getpid()}\n")  # for stop_child in the job's launcher process
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
    text = " ".join(str(exc).split()) or "(no message)"
    return text if isinstance(exc, MarlError) else f"{type(exc).__name__}: {text}"


def _write_status(job_dir: Path, record: dict[str, Any]) -> None:
    results.atomic_write_text(job_dir / STATUS_FILE, json.dumps(record, indent=2) + "\n")


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


if __name__ == "__main__":
    sys.exit(_child_main(Path(sys.argv[1])))
