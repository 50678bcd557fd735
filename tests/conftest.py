"""Shared test helpers: compose configs the way `marl train` does, with tiny budgets."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from marlcli import config

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
