"""Where metrics go besides ``metrics.jsonl``: the terminal (rich), ``train.log``, wandb."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from marlcli.files import atomic_write_text, writing


class Tracker:
    """Progress bar + a short table at each evaluation + plain log file + optional wandb."""

    def __init__(self, cfg: DictConfig, out: Path, keep_until_step: int | None = None) -> None:
        """``keep_until_step``: resuming from that step; ``train.log`` keeps only the lines up to it."""
        resumed = keep_until_step is not None
        self.console = Console(stderr=True)
        self.title = f"{cfg.algo.name} on {cfg.env.name} seed {cfg.seed}"
        self.logger = logging.getLogger(f"marlcli.run.{out}")
        self.logger.setLevel(logging.INFO)
        self.logger.propagate = False
        if resumed:
            trim_log(out / "train.log", keep_until_step)
        with writing(out / "train.log"):  # a read-only results dir: one line, not a traceback
            self._handler = QuietFileHandler(out / "train.log", mode="a" if resumed else "w")
        self._handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        self.logger.addHandler(self._handler)
        self.logger.info("%s %s -> %s", "resume" if resumed else "start", self.title, out)
        self.bar: Progress | None = None
        if cfg.logger.progress and self.console.is_terminal:
            self.bar = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed:,.0f} steps"),
                TextColumn("{task.fields[sps]} steps/s"), TextColumn("return {task.fields[ret]}"),
                TimeRemainingColumn(), console=self.console,
            )
            self.task = self.bar.add_task(self.title, total=int(cfg.train.total_steps), sps="-", ret="-")
            self.bar.start()
        self.wandb = _init_wandb(cfg, out) if cfg.logger.wandb else None

    def progress(self, step: int) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=step)

    def log(self, record: dict[str, Any]) -> None:
        """A training log line."""
        self.logger.info(" ".join(f"{k}={_fmt(v)}" for k, v in record.items()))
        if self.bar is not None:
            self.bar.update(self.task, sps=f"{record.get('time/sps', 0):,.0f}")
        if self.wandb is not None:
            self.wandb.log(record, step=record["step"])

    def eval(self, record: dict[str, Any]) -> None:
        """An evaluation: log it and show a short table."""
        self.logger.info("eval " + " ".join(f"{k}={_fmt(v)}" for k, v in record.items()))
        if self.bar is not None:
            self.bar.update(self.task, ret=f"{record['eval/return_mean']:.2f}")
        table = Table(title=f"{self.title} - eval at {record['step']:,} steps ({record['time_s']:.0f}s)",
                      title_justify="left")
        table.add_column("metric")
        table.add_column("value", justify="right")
        table.add_row("return_mean", f"{record['eval/return_mean']:.3f} ± {record['eval/return_ci95']:.3f}")
        for k, v in record.items():
            if k.startswith("eval/") and k not in ("eval/return_mean", "eval/return_ci95", "eval/return_std",
                                                    "eval/episodes") and not k.startswith("eval/return/"):
                table.add_row(k[5:], f"{v:.3f}")
        self.console.print(table)
        if self.wandb is not None:
            self.wandb.log(record, step=record["step"])

    def close(self, failed: bool = False, reason: str | None = None, exit_code: int | None = None) -> None:
        """Stop the bar, finish wandb and release train.log.

        ``reason`` is the last line of ``train.log`` for a run that did not finish (``stopped by
        SIGINT at step 1,200 ...``; default ``stopped by an error``); wandb gets ``exit_code``
        (default 1 for a failed run, 0 otherwise).
        """
        if failed:
            self.logger.info(reason or "stopped by an error")
        if self.bar is not None:
            self.bar.stop()
        if self.wandb is not None:
            self.wandb.finish(exit_code=exit_code if exit_code is not None else 1 if failed else 0)
        self.logger.removeHandler(self._handler)
        self._handler.close()


class QuietFileHandler(logging.FileHandler):
    """``train.log`` whose failed writes (a full disk) print nothing.

    The stock handler prints a "--- Logging error ---" traceback per record; the run reports
    the full disk once, through the metrics or checkpoint write that fails with it.
    """

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        self.failed = True


STEP = re.compile(r"^\S+ \S+ (?:eval )?step=(\d+) ")  # "<date> <time> [eval ]step=<n> ..." lines


def trim_log(path: Path, keep_until_step: int) -> None:
    """Cut ``train.log`` at its first line past ``keep_until_step``, as ``metrics.jsonl`` is on resume.

    Without this a resumed run logs steps after the checkpoint twice (issue 16).
    """
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines(keepends=True):
        m = STEP.match(line)
        if m and int(m.group(1)) > keep_until_step:
            break
        kept.append(line if line.endswith("\n") else line + "\n")
    atomic_write_text(path, "".join(kept))


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _init_wandb(cfg: DictConfig, out: Path) -> Any:
    """One wandb run per seed, grouped by env/algo/run; offline unless the user configured it."""
    import wandb  # deferred: wandb is optional and slow to import (logger.wandb=true only)

    mode = cfg.logger.wandb_mode or os.environ.get("WANDB_MODE") or "offline"
    return wandb.init(
        project=cfg.logger.wandb_project, mode=mode, dir=str(out), name=f"seed_{cfg.seed}",
        group="/".join(str(x) for x in (cfg.env.name, cfg.algo.name, cfg.run, cfg.get("variant")) if x),
        config=OmegaConf.to_container(cfg, resolve=True),
        tags=[str(cfg.env.name), str(cfg.algo.name), f"critic={cfg.critic.type}", f"sharing={cfg.sharing.mode}"],
        reinit=True,
    )
