"""Learning tests: small budgets, fixed seeds, clear margins over a random policy."""

from __future__ import annotations

import pytest

from marlcli import results
from marlcli.trainer import train

RANDOM_SPREAD = -27.5  # mean return of a uniform random policy on spread (issue 2 scale)


def final_eval(out) -> float:
    return [r for r in results.read_metrics(out / "metrics.jsonl") if "eval/return_mean" in r][-1][
        "eval/return_mean"]


@pytest.mark.slow
def test_mappo_learns_spread(compose_cfg) -> None:
    out = train(compose_cfg("algo=mappo", "env.num_envs=128", "train.total_steps=160000",
                            "train.eval_interval=0", "train.eval_episodes=100", "train.eval_envs=100"))
    assert final_eval(out) > RANDOM_SPREAD + 5
