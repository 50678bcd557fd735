"""VMAS backend (``env=vmas``) beyond the environment contract (``test_contract.py``).

Bad configuration fails with one line; the CLI composes it; resume is exact mid-episode. The
learning test (MAPPO on navigation) is tests/learning/test_vmas_learns.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import make_cfg, strip_time, train_killed_after

from marlcli import results
from marlcli.envs import make_env
from marlcli.errors import ConfigError
from marlcli.trainer import train

CPU = torch.device("cpu")


@pytest.mark.parametrize(("overrides", "message"), [
    (["env.scenario=no_such_scenario"], "no VMAS scenario named 'no_such_scenario'"),
    (["env.kwargs={not_a_key: 1}"], "not used by the scenario"),
    (["env.max_steps=0"], "env.max_steps=0 must be a positive integer"),
])
def test_bad_config_is_one_line(overrides: list[str], message: str) -> None:
    cfg = make_cfg("env=vmas", *overrides)
    with pytest.raises(ConfigError, match=message):
        make_env(cfg.env, 2, 0, CPU)


def test_config_composes_and_passes_kwargs() -> None:
    cfg = make_cfg("env=vmas", "env.scenario=navigation", "env.n_agents=5", "env.kwargs={collisions: false}")
    env = make_env(cfg.env, 2, 0, CPU)
    assert env.spec.name == "vmas_navigation" and env.spec.n_agents == 5
    assert env.spec.obs_dims == [6] * 5  # no lidar without collisions: pos, vel, goal offset
    assert env.positions().shape == (2, 5, 2)


def test_own_scenario_class() -> None:
    """``env.scenario=package.module:Class`` builds your own ``BaseScenario`` (here VMAS's navigation class)."""
    cfg = make_cfg("env=vmas", "env.scenario=vmas.scenarios.navigation:Scenario", "env.name=my_nav", "env.n_agents=2")
    env = make_env(cfg.env, 2, 0, CPU)
    ref = make_env(make_cfg("env=vmas", "env.scenario=navigation", "env.n_agents=2").env, 2, 0, CPU)
    assert env.spec.name == "my_nav" and torch.equal(env.reset().obs, ref.reset().obs)


def test_two_envs_do_not_share_a_stream() -> None:
    """VMAS keeps one process-wide RNG; each VMASEnv swaps in its own, so a second env does not shift the first."""
    cfg = make_cfg("env=vmas", "env.scenario=navigation", "env.n_agents=2")
    alone = make_env(cfg.env, 2, 0, CPU)
    a0 = alone.reset().obs
    paired, other = make_env(cfg.env, 2, 0, CPU), make_env(cfg.env, 2, 1, CPU)
    other.reset()
    assert torch.equal(paired.reset().obs, a0)
    other.reset()
    assert torch.equal(paired.reset().obs, alone.reset().obs)


def test_bench_table_row() -> None:
    from marlcli.bench import main as bench

    row = {"native_spread": 2000.0, "vmas_simple_spread": 100.0, "vmas_navigation": 50.0}
    md = bench.markdown({"machine": "t", "vmas_throughput": {"env_steps_per_s": {"64": row}, "repeats": 3,
                                                             "load_avg_1min": 1.5}})
    assert "| 64 | 2,000 | 100 | 50 | 20x |" in md and "best of 3" in md and "load average 1.5" in md


def test_resume_is_exact_mid_episode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run killed after a mid-episode checkpoint (t=10 of 25) resumes to the uninterrupted run's metrics."""
    base = ["algo=mappo", "env=vmas", "env.scenario=navigation", "env.n_agents=2", "env.max_steps=25",
            "env.num_envs=4", "env.kwargs={collisions: false}", "algo.rollout_steps=10", "algo.epochs=1",
            "train.total_steps=80", "train.eval_interval=80", "train.checkpoint_interval=40", "train.log_interval=40",
            "train.eval_episodes=4", "train.eval_envs=4", "logger.progress=false", "device=cpu"]
    full = train(make_cfg(*base, f"results_dir={tmp_path / 'a'}", "run=r"))
    cut = train_killed_after(make_cfg(*base, f"results_dir={tmp_path / 'b'}", "run=r"), 40, monkeypatch)
    resumed = train(make_cfg(*base, f"results_dir={tmp_path / 'b'}", "run=r", f"resume={cut}"))
    assert strip_time(results.read_metrics(resumed / "metrics.jsonl")) == \
        strip_time(results.read_metrics(full / "metrics.jsonl"))
