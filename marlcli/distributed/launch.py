"""Starting a data-parallel run (issue 21), above the trainer: K ranks on this node, or this process.

``marl train dist.nproc_per_node=K`` calls :func:`train_or_launch`, which starts K copies of
``python -m marlcli.distributed.launch <config.yaml>`` through torch's elastic launcher (the
agent behind ``torchrun``); each rank runs ``trainer.train`` and joins its group in
``collectives.setup``. With K = 1 (or when this process already is a rank) it trains here.
The collectives themselves live below the trainer, in ``marlcli.distributed.collectives``.
"""

from __future__ import annotations

import os
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

from marlcli import results
from marlcli.cliutil import fail
from marlcli.config import RootConfig
from marlcli.distributed.collectives import HUNG_DIR, CollectiveError, active, quick_exit
from marlcli.errors import ConfigError, MarlError, TrainingError
from marlcli.runtime import use_threads
from marlcli.trainer import train


def train_or_launch(cfg: DictConfig, **kwargs: Any) -> Path:
    """``train(cfg)`` here, or as ``dist.nproc_per_node`` ranks when that is above 1."""
    if should_launch(cfg):
        return launch(cfg)
    return train(cfg, **kwargs)


def should_launch(cfg: DictConfig) -> bool:
    """``dist.nproc_per_node > 1`` and not already a rank: this process starts the ranks."""
    k = int(OmegaConf.select(cfg, "dist.nproc_per_node", default=1) or 1)
    if k < 1:
        raise ConfigError(f"dist.nproc_per_node must be 1 or more, got {k}")
    return k > 1 and "RANK" not in os.environ and not active()


def launch(cfg: DictConfig) -> Path:
    """Run ``train(cfg)`` as ``dist.nproc_per_node`` ranks on this node via torch's elastic launcher.

    Standalone rendezvous on localhost (what ``torchrun --standalone`` does), no restarts: a
    rank that fails ends the run, the agent stops the others at once, and this raises one line.
    """
    k = int(cfg.dist.nproc_per_node)
    if int(cfg.env.num_envs) % k:
        raise ConfigError(f"env.num_envs={cfg.env.num_envs} does not split over dist.nproc_per_node={k} processes")
    threads = os.environ.get("OMP_NUM_THREADS")
    if threads is None:  # K ranks share the cores (torchrun does the same); the ranks inherit it
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // k))
    with tempfile.TemporaryDirectory(prefix="marl-dist-") as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(OmegaConf.to_yaml(cfg, resolve=True))
        lc = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=k, run_id=f"marl-{uuid.uuid4().hex[:8]}",
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.1,
                          start_method="spawn")
        hung = Path(tmp) / "hung"
        hung.mkdir()
        os.environ[HUNG_DIR] = str(hung)  # a rank whose collective timed out leaves a file here
        try:
            elastic_launch(lc, sys.executable)("-m", "marlcli.distributed.launch", str(path))
        except ChildFailedError as exc:
            raise TrainingError(_failure_line(exc, k, _seed_dir(cfg), any(hung.iterdir()),
                                              float(OmegaConf.select(cfg, "dist.timeout", default=600)))) from None
        finally:
            del os.environ[HUNG_DIR]
            if threads is None:
                del os.environ["OMP_NUM_THREADS"]
    return _seed_dir(cfg)


def _seed_dir(cfg: DictConfig) -> Path:
    """The seed dir the ranks wrote to (a resumed run's own dir, not a fresh one)."""

    try:
        return results.seed_dir(results.prepare(cfg)[0])
    except Exception:  # noqa: BLE001 - only for the message
        return results.seed_dir(cfg)


def _root_cause(exc: Any) -> tuple[int, Any]:
    """The rank that failed first *in cause*, not in the agent's one-second timestamps.

    When one rank is killed, the others see their collective fail and exit (code 2, SIGABRT from
    gloo's teardown, or SIGTERM from the agent) in the same monitor tick; the killed rank is the one to name. Order:
    killed by a signal other than SIGABRT or SIGTERM, then other exit codes, then SIGABRT, then
    code 2 (a rank's own one-line error), then SIGTERM (the agent's stop of the others).
    """
    def order(item: tuple[int, Any]) -> tuple[int, int, int]:
        r, f = item
        code = int(f.exitcode)
        kind = {-6: 2, 2: 3, -15: 4}.get(code, 0 if code < 0 else 1)
        return kind, int(f.timestamp), r

    return min(exc.failures.items(), key=order)


def _failure_line(exc: Any, k: int, out: Path, hung: bool = False, timeout: float = 0.0) -> str:
    r, failure = _root_cause(exc)
    code = failure.exitcode
    if hung and code in (-9, -15):  # the others timed out waiting for it; the agent then killed it
        how = f"stopped answering (no reply within dist.timeout={timeout:g}s) and was killed"
    else:
        how = (f"killed by signal {-code}" if code < 0 else "stopped with the error above" if code == 2
           else f"exited with code {code}")
    ckpt = out / "checkpoints" / "latest.pt"
    last = f"last checkpoint: {ckpt}" if ckpt.exists() else "no checkpoint was written yet"
    return f"rank {r} of {k} {how}; the run stopped ({last})"


def worker_main(argv: list[str]) -> int:
    """One rank started by :func:`launch`: ``python -m marlcli.distributed.launch CONFIG.yaml``."""

    use_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    cfg = OmegaConf.merge(OmegaConf.structured(RootConfig), OmegaConf.load(argv[0]))  # typed, as Hydra composes it
    try:
        train(cfg)
    except CollectiveError as exc:  # the group is broken: its destructors may std::terminate (SIGABRT)
        code = fail("train", str(exc))
        if exc.timed_out and os.environ.get(HUNG_DIR):  # tell the launcher a peer went silent
            (Path(os.environ[HUNG_DIR]) / f"rank_{os.environ.get('RANK', '?')}").write_text("timed out\n")
        quick_exit(code)
    except MarlError as exc:
        quick_exit(fail("train", f"rank {os.environ.get('RANK', '?')}: {exc}"))
    quick_exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
