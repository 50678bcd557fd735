"""Self-play learns (issue 20): a pool of past selves takes a rock-playing learner to the uniform
equilibrium of rock-paper-scissors. Moved from tests/integration/test_selfplay.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import make_cfg

from marlcli import results
from marlcli.algos import ppo
from marlcli.trainer import train


@pytest.mark.slow
def test_pool_selfplay_learns_rps_from_a_rock_player(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      learn_seed: object) -> None:
    """A learner that starts playing rock 80% of the time (exploitability 0.7): against a pool of
    its past selves it first beats them (paper), then ends near the uniform equilibrium. A broken
    learner (``--break-learner=rewards``) drifts to uniform through the entropy bonus alone, but
    never beats its rock-playing first snapshot: the score against it stays at 0.5."""
    real = ppo.make_actor

    def rock_player(spec: object, cfg: object) -> ppo.PolicyActor:
        actor = real(spec, cfg)
        with torch.no_grad():
            actor.net.net[-1].bias[:, 0] += 2.0  # softmax(2, 0, 0) = (0.79, 0.11, 0.11)
        return actor

    monkeypatch.setattr(ppo, "make_actor", rock_player)
    seed = learn_seed(0)  # type: ignore[operator]
    out = train(make_cfg(f"results_dir={tmp_path}", "run=learn", f"seed={seed}", "device=cpu", "logger.progress=false",
                         "env=rps", "env.backend=native", "env.num_envs=64", "algo=ippo", "algo.lr_schedule=constant",
                         "algo.lr=0.001", "algo.ent_coef=0.2", "selfplay=pool", "selfplay.snapshot_interval=16000",
                         "selfplay.pool_size=1000", "train.total_steps=160000", "train.log_interval=16000",
                         "train.eval_interval=1000000", "train.checkpoint_interval=1000000", "train.eval_episodes=64",
                         "train.eval_envs=64"))
    rows = [r for r in results.read_metrics(out / "metrics.jsonl") if "matrix/exploitability" in r]
    first = json.loads((out / "pool" / "league.json").read_text())["members"][0]
    print(f"seed {seed}: start {rows[0]['matrix/exploitability']:.3f} end {rows[-1]['matrix/exploitability']:.3f} "
          f"avg {rows[-1]['matrix/exploitability_avg']:.3f} score vs first {first['score'] / first['games']:.3f}")
    # calibrated on seeds 0-2 (160k steps, 15 s each): score vs the first snapshot 0.556-0.564
    # (broken: 0.498), time-averaged exploitability 0.19-0.22 from a start of 0.82-0.85 (broken: 0 from 0)
    assert first["score"] / first["games"] >= 0.53
    assert rows[-1]["matrix/exploitability_avg"] <= min(0.3, 0.5 * rows[0]["matrix/exploitability"])
