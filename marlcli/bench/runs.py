"""Training runs of the bench: real ``marl train`` subprocesses, each in a freshly emptied run dir.

The ``backends`` and ``ttr`` sections measure wall time from process launch (``MARL_T0``), so a run
must be a separate process with the shipped defaults, not a call into the trainer. A run that
exits non-zero, or leaves no evaluation record, raises ``RunFailed`` with its last stderr lines;
``python -m marlcli.bench`` then stops without writing anything.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

TAIL_LINES = 20  # stderr lines shown when a run fails


class RunFailed(RuntimeError):
    """A ``marl train`` subprocess of the bench failed; the message ends with its stderr tail."""


def run_train(out: Path, name: str, overrides: list[str], time_limit: float,
              threads: int | None = None) -> list[dict[str, Any]]:
    """One ``marl train`` subprocess in a fresh run dir; returns its eval records (time_s from launch).

    Raises ``RunFailed`` with the last stderr lines when it exits non-zero or leaves no eval
    record. A run cut off at ``time_limit`` is not a failure: its records up to then count.
    """
    results_dir = out / "runs"
    for old in results_dir.glob(f"*/*/{name}"):  # a crashed run must never be read with an old run's files
        shutil.rmtree(old)
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "marlcli.cli", "train", f"results_dir={results_dir}", f"run={name}",
           "logger.progress=false", *overrides]
    env = dict(os.environ, MARL_T0=repr(time.time()))
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    err_path = logs / f"{name}.stderr"
    with open(logs / f"{name}.stdout", "w") as so, open(err_path, "w") as se:
        try:
            rc: int | None = subprocess.run(cmd, env=env, timeout=time_limit, stdout=so, stderr=se,
                                            check=False).returncode
        except subprocess.TimeoutExpired:
            rc = None  # cut off: metrics.jsonl holds everything up to now
    evals = read_evals(results_dir, name)
    if rc not in (None, 0) or not evals:
        why = f"exit code {rc}" if rc not in (None, 0) else "no evaluation record"
        tail = err_path.read_text().splitlines()[-TAIL_LINES:]
        raise RunFailed(f"run {name} failed ({why}): {' '.join(cmd)}\n"
                        f"last stderr lines ({err_path}):\n" + "\n".join(tail))
    return evals


def run_many(out: Path, runs: list[tuple[str, list[str]]], time_limit: float,
             jobs: int = 1) -> dict[str, list[dict[str, Any]]]:
    """``run_train`` for each ``(name, overrides)``, ``jobs`` at a time (one thread each when > 1)."""
    threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else None
    if jobs <= 1:
        return {name: run_train(out, name, ov, time_limit) for name, ov in runs}
    with ThreadPoolExecutor(jobs) as pool:
        futures = {name: pool.submit(run_train, out, name, ov, time_limit, threads) for name, ov in runs}
        try:
            return {name: f.result() for name, f in futures.items()}
        except RunFailed:
            for f in futures.values():
                f.cancel()
            raise


def seed_dirs(results_dir: Path, name: str) -> list[Path]:
    """The seed dirs of run ``name`` under ``results_dir`` (any env and algo)."""
    return sorted(results_dir.glob(f"*/*/{name}/seed_*"))


def read_evals(results_dir: Path, name: str) -> list[dict[str, Any]]:
    """The eval records of run ``name`` under ``results_dir`` (empty if it never started)."""
    files = [d / "metrics.jsonl" for d in seed_dirs(results_dir, name) if (d / "metrics.jsonl").exists()]
    if not files:
        return []
    lines = [json.loads(ln) for ln in files[0].read_text().splitlines() if ln.strip()]
    return [r for r in lines if "eval/return_mean" in r]


def first_time(evals: list[dict[str, Any]], threshold: float) -> float | None:
    """Seconds from launch of the first eval record at or above ``threshold`` (None: never reached)."""
    for r in evals:
        if r["eval/return_mean"] >= threshold:
            return float(r["time_s"])
    return None
