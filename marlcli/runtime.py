"""The process a run lives in: its device, seeds, threads, allocator, and the signals that stop it.

Below everything that trains or evaluates (it imports no other marlcli module but ``errors``),
so the trainer, ``marl eval``, the exporter and the bench pick devices and seed alike.

Stopping (issue 25): SIGINT, SIGTERM, SIGUSR1 and SIGUSR2 (Slurm's ``--signal`` before the
time limit; submitit uses USR2) only set a flag (:class:`StopRequest`). At the next update
boundary the trainer writes a checkpoint, closes its files and raises :class:`Stopped`: the CLI
prints one line with the ``marl train resume=<seed dir>`` command and exits 128 + the signal
number (SIGINT 130, SIGTERM 143, SIGUSR1 138, SIGUSR2 140). A second Ctrl-C while stopping
aborts at once (:class:`Abort`), still as one line.
"""

from __future__ import annotations

import ctypes
import random
import signal
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

from marlcli.errors import ConfigError, TrainingError


# ----------------------------------------------------------------------------- device, seeds, threads, memory
def resolve_device(name: str, job_num: int | None = None, gpus: int | None = None) -> torch.device:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``.

    In a sweep (``job_num`` given; ``$MARL_JOB_NUM`` when called from ``train``) job k is
    pinned to GPU ``k % gpus`` round-robin, so parallel jobs spread over the visible GPUs
    (issue 6). ``gpus`` defaults to ``torch.cuda.device_count()``.
    """
    if name == "auto":
        n = torch.cuda.device_count() if gpus is None else gpus
        if n <= 0:
            return torch.device("cpu")
        return torch.device("cuda" if job_num is None else f"cuda:{job_num % n}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but no CUDA GPU is visible; use device=cpu or device=auto")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device '{name}': use auto, cpu, cuda or cuda:N") from None


def seed_everything(seed: int) -> None:
    """The one seeding function: same seed and config on CPU -> same metrics."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def use_threads(n: int) -> None:
    """Torch's intra-op threads for this process (a rank or sweep job gets its share of the cores)."""
    torch.set_num_threads(max(1, int(n)))


def keep_freed_memory() -> None:
    """Tell glibc malloc to keep freed blocks instead of returning them to the OS.

    A learner step allocates a few MB of activations and frees them again; by default
    glibc unmaps (or trims) those blocks and the next step page-faults them back in. On
    the 2-core VM that cost about a fifth of the VDN learner's time (564k page faults in
    80 rollouts and their updates, 83k with this; issue 7). Does nothing off glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3  # mallopt parameters (malloc.h)
    libc.mallopt(m_mmap_threshold, 32 << 20)  # blocks below 32 MB come from the heap
    libc.mallopt(m_trim_threshold, 256 << 20)  # keep up to 256 MB of free heap
    libc.mallopt(m_top_pad, 16 << 20)


# ----------------------------------------------------------------------------- stop signals
STOP_SIGNALS = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGUSR1: 138, signal.SIGUSR2: 140}  # 128 + signum


class Stopped(TrainingError):
    """A run stopped by a signal (after writing its checkpoint): the CLI prints it and exits ``exit_code``."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Abort(KeyboardInterrupt):
    """A second Ctrl-C while stopping: leave at once (a KeyboardInterrupt, so no ``except Exception`` eats it)."""


class StopRequest:
    """SIGINT / SIGTERM / SIGUSR1 / SIGUSR2 handlers that only note the signal, for the loop to act on.

    Installed for the duration of ``train()`` in the main thread only (``signal.signal``
    cannot be called elsewhere), and the previous handlers are put back afterwards.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.out: Path | None = None  # the seed dir, for the resume command of an abort
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()

    def _handle(self, signum: int, frame: object) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise Abort
        if self.signum is None:  # silent here: the one line comes when the run has stopped, with its resume command
            self.signum = signum

    @property
    def name(self) -> str:
        """``SIGTERM``: the signal received (call only once one was)."""
        assert self.signum is not None
        return signal.Signals(self.signum).name

    def aborted(self, out: Path) -> Stopped:
        """The one line of a second Ctrl-C: where the last checkpoint is."""
        return Stopped(f"aborted by a second Ctrl-C; continue from the last checkpoint with: marl train resume={out}",
                       STOP_SIGNALS[signal.SIGINT])
