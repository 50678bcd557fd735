"""The results tree, the metrics writer and checkpoint I/O (a contract other tools read)::

    <results_dir>/<env name>/<algo name>/<run>/seed_<seed>/
        config.yaml      fully resolved config
        metrics.jsonl    one JSON object per line, flushed as written ("step", "time_s", ...)
        checkpoints/     step_<n>.pt ..., latest.pt
        train.log
        eval.json        written by ``marl eval``
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from marlcli.errors import CheckpointError

CHECKPOINT_FORMAT = "marlcli-checkpoint/1"
DONE_FILE = "done"  # written when a run reached train.total_steps


def seed_dir(cfg: DictConfig) -> Path:
    return Path(cfg.results_dir) / str(cfg.env.name) / str(cfg.algo.name) / str(cfg.run) / f"seed_{cfg.seed}"


def write_config(path: Path, cfg: DictConfig) -> None:
    atomic_write_text(path / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))


def atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


class MetricsWriter:
    """Appends one JSON line per record and flushes it at once (nothing is lost on a crash)."""

    def __init__(self, path: Path, keep_until_step: int | None = None) -> None:
        self.path = path
        if keep_until_step is not None and path.exists():  # resume: drop lines past the checkpoint
            lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
            kept = [ln for ln in lines if _line_step(ln) <= keep_until_step]
            atomic_write_text(path, "".join(ln + "\n" for ln in kept))
        elif keep_until_step is None and path.exists():
            path.unlink()
        self._f = path.open("a", buffering=1)

    def write(self, record: dict[str, Any]) -> None:
        self._f.write(json.dumps({k: _plain(v) for k, v in record.items()}) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


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
    """Write ``step_<n>.pt`` and ``latest.pt`` atomically (temp file, then rename)."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    payload = {"format": CHECKPOINT_FORMAT, "step": step, **payload}
    target = ckpt_dir / f"step_{step}.pt"
    for path in (target, ckpt_dir / "latest.pt"):
        fd, tmp = tempfile.mkstemp(dir=ckpt_dir, prefix=f".{path.name}.")
        os.close(fd)
        torch.save(payload, tmp)
        os.replace(tmp, path)
    if keep > 0:
        olds = sorted(ckpt_dir.glob("step_*.pt"), key=lambda p: int(p.stem.split("_")[1]))
        for p in olds[:-keep]:
            p.unlink()
    return target


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load safely (``weights_only=True``: no code in the file runs) and check the format."""
    if path.is_dir():
        path = resolve_checkpoint(path)
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
    return payload


def resolve_checkpoint(path: Path) -> Path:
    """A seed dir -> its ``checkpoints/latest.pt``."""
    for cand in (path / "checkpoints" / "latest.pt", path / "latest.pt"):
        if cand.exists():
            return cand
    raise CheckpointError(f"no checkpoint under {path} (expected checkpoints/latest.pt)")


def find_seed_dirs(path: Path) -> list[Path]:
    """Every ``seed_*`` dir at or below ``path`` that holds a checkpoint."""
    if (path / "checkpoints").is_dir():
        return [path]
    return sorted(p.parent.parent for p in path.rglob("checkpoints/latest.pt"))


def checkpoint_config(payload: dict[str, Any]) -> DictConfig:
    cfg = OmegaConf.create(payload["config"])
    assert isinstance(cfg, DictConfig)
    return cfg
