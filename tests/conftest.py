"""Shared test helpers: compose configs the way `marl train` does, with tiny budgets."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from marlcli import config, results
from marlcli.trainer import train

torch.set_num_threads(min(2, os.cpu_count() or 1))
os.environ.setdefault("WANDB_MODE", "disabled")  # tests never touch the network

TINY = ["env.num_envs=4", "train.eval_episodes=4", "train.eval_envs=4", "logger.progress=false"]


def make_cfg(*overrides: str) -> DictConfig:
    """Compose ``conf/config.yaml`` with overrides (no Hydra app, no output dirs)."""
    config.register()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config.CONF_DIR), version_base=None):
        return compose("config", overrides=list(overrides))


@pytest.fixture
def compose_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """``compose_cfg("algo=ippo", ...)`` -> a config writing into ``tmp_path`` with run name ``test``."""

    def _compose(*overrides: str) -> DictConfig:
        return make_cfg(f"results_dir={tmp_path}", "run=test", *TINY, *overrides)

    return _compose


def strip_time(records: list[dict]) -> list[dict]:
    """Metrics without wall-clock keys, for exact comparisons."""
    return [{k: v for k, v in r.items() if not k.startswith("time")} for r in records]


def quiet(tmp_path: Path, eval_episodes: int = 20, **train: object) -> list[str]:
    """Overrides for a quiet training run into ``tmp_path``: small evals, no checkpoints or logs between."""
    t = {"eval_episodes": eval_episodes, "eval_envs": eval_episodes, "checkpoint_interval": 10**9,
         "log_interval": 10**9, **train}
    return [f"results_dir={tmp_path}", "device=cpu", "logger.progress=false"] + [f"train.{k}={v}" for k, v in t.items()]


def eval_records(seed_dir: Path) -> list[dict]:
    """The evaluation lines of a run's metrics.jsonl."""
    lines = [json.loads(x) for x in (seed_dir / "metrics.jsonl").read_text().splitlines()]
    return [x for x in lines if "eval/return_mean" in x]



class Killed(Exception):
    """Stands in for SIGKILL in ``train_killed_after``."""


def train_killed_after(cfg: DictConfig, step: int, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Train ``cfg`` and stop it dead right after its step-``step`` checkpoint; returns its seed dir.

    Unlike a shorter budget, this interrupts the same run, so everything that depends on
    ``train.total_steps`` (learning-rate schedules) must also continue exactly on resume.
    """
    real = results.save_checkpoint

    def save_then_die(ckpt_dir: Path, at: int, payload: dict, keep: int = 0) -> Path:
        path = real(ckpt_dir, at, payload, keep)
        if at >= step:
            raise Killed
        return path

    with monkeypatch.context() as m:
        m.setattr(results, "save_checkpoint", save_then_die)
        with pytest.raises(Killed):
            train(cfg)
    return results.seed_dir(cfg)
