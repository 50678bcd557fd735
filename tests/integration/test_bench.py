"""`make bench` bookkeeping (issues 7, 16): thresholds, targets, failures, fresh run dirs, the oracle.

No training runs here: ``subprocess.run`` is replaced by a fake that writes what ``marl train``
would (or fails the way a crash would), so every test takes well under a second.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch

from marlcli.bench import main as bench
from marlcli.bench import oracle as bench_oracle
from marlcli.bench import render, runs, ttr


def _evals(*points: tuple[float, float]) -> list[dict]:
    return [{"time_s": t, "eval/return_mean": r} for t, r in points]


def test_first_time_and_targets_count_seeds_in_time() -> None:
    fast = _evals((5, -20.0), (50, -9.9), (200, -8.4))
    slow = _evals((5, -20.0), (70, -9.5), (300, -9.0))  # -10 too late, never -8.5
    assert runs.first_time(fast, -10.0) == 50 and runs.first_time(slow, -8.5) is None
    assert ttr.targets_met("vdn", [fast, slow]) == {"-10.0 within 60s": 1, "-8.5 within budget": 1}
    assert ttr.targets_met("mappo", [fast, slow]) == {"-12.0 within 180s": 2}


def test_markdown_lists_targets_seeds_and_cut_off_runs() -> None:
    entry = {"seeds": [100, 101], "eval_seed": 9000, "final_return": [-9.0, -8.0], "best_within_60s": [-12.0, None],
             "best_within_180s": [-9.0, -8.0], "targets": {"-12.0 within 180s": 2}, "final_common": [-8.6, None],
             "finished": [True, False]}
    entry.update({str(t): {"reached": 0, "seconds_mean": None, "seconds_ci95": None, "seconds": [None, None]}
                  for t in ttr.THRESHOLDS})
    md = render.markdown({"machine": "test", "time_to_return": {"mappo": entry}})
    assert "| mappo | ≥ -12.0 within 180s | 2/2 |" in md
    assert "| mappo | 100, 101 | not reached | not reached | not reached | -12.0, - | -9.0, -8.0 | -9.0, -8.0 | -8.6, - |" in md
    assert "episodes of evaluation seed 9000" in md and "Cut off at the time limit before the end of the budget: mappo seed 101" in md


def test_seeds_default_to_held_out_ones() -> None:
    assert bench.parse_seeds(ttr.SEEDS) == [100, 101, 102, 103, 104]
    assert bench.parse_seeds("100,102-103,7") == [100, 102, 103, 7]
    assert ttr.seed_list(3) == [0, 1, 2] and ttr.EVAL_SEED != ttr.TUNING_EVAL_SEED


def test_common_eval_marks_runs_without_checkpoints(tmp_path: Path) -> None:
    assert ttr.common_eval(tmp_path, "vdn", [100, 101]) == [None, None]


def _arg(cmd: list[str], key: str) -> str:
    return next(a.split("=", 1)[1] for a in cmd if a.startswith(key + "="))


def fake_train(rc: int = 0, stderr: str = "", record: bool = True, seen: list[bool] | None = None) -> Any:
    """A stand-in for ``subprocess.run(marl train ...)``: writes one eval record unless told not to."""

    def run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess:
        kw["stderr"].write(stderr)
        seed_dir = Path(_arg(cmd, "results_dir")) / "spread" / "vdn" / _arg(cmd, "run") / f"seed_{_arg(cmd, 'seed')}"
        if seen is not None:
            seen.append(seed_dir.exists())  # the run must start from nothing
        if record:
            seed_dir.mkdir(parents=True, exist_ok=True)
            (seed_dir / "metrics.jsonl").write_text(json.dumps({"step": 10, "time_s": 1.0, "eval/return_mean": -20.0})
                                                    + "\n")
        return subprocess.CompletedProcess(cmd, rc)

    return run


def test_failing_run_stops_the_bench_with_its_stderr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    lines = "".join(f"line {i}\n" for i in range(30)) + "RuntimeError: loss is NaN\n"
    monkeypatch.setattr(runs.subprocess, "run", fake_train(rc=1, stderr=lines))
    rc = bench.main(["--out", str(tmp_path), "--sections", "ttr", "--algos", "vdn", "--seeds", "100"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "run ttr-vdn-s100 failed (exit code 1)" in err and "RuntimeError: loss is NaN" in err
    assert "line 29" in err and "line 5\n" not in err  # the tail only
    assert not (tmp_path / "bench.json").exists()  # no table from a failed bench


def test_run_without_eval_records_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runs.subprocess, "run", fake_train(rc=0, record=False, stderr="Killed\n"))
    with pytest.raises(runs.RunFailed, match="no evaluation record"):
        runs.run_train(tmp_path, "ttr-vdn-s100", ["algo=vdn", "seed=100"], 10.0)


def test_each_run_starts_in_a_fresh_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stale = tmp_path / "runs" / "spread" / "vdn" / "ttr-vdn-s100" / "seed_100"
    (stale / "checkpoints").mkdir(parents=True)
    (stale / "checkpoints" / "latest.pt").write_bytes(b"an older run's actor")
    (stale / "metrics.jsonl").write_text(json.dumps({"step": 5, "time_s": 3.0, "eval/return_mean": -8.0}) + "\n")
    # a crash that writes nothing must not be reported with the old run's records or actor
    monkeypatch.setattr(runs.subprocess, "run", fake_train(rc=-9, record=False))
    with pytest.raises(runs.RunFailed, match="exit code -9"):
        runs.run_train(tmp_path, "ttr-vdn-s100", ["algo=vdn", "seed=100"], 10.0)
    assert not stale.exists()
    seen: list[bool] = []
    monkeypatch.setattr(runs.subprocess, "run", fake_train(seen=seen))
    evals = runs.run_many(tmp_path, [(f"ttr-vdn-s{s}", ["algo=vdn", f"seed={s}"]) for s in (100, 101)], 10.0,
                           jobs=2)
    assert seen == [False, False] and [e["eval/return_mean"] for e in evals["ttr-vdn-s100"]] == [-20.0]


def test_publish_keeps_the_hand_written_text(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "bench.md").write_text(f"# b\n\nprotocol\n\n{render.BEGIN}\nold table\n{render.END}\n\n## History\nkept\n")
    data = {"machine": "test", "oracle": {"horizon": "2", "episodes": 20, "tune_seed": 8000, "eval_seed": 9000,
                                          "return_mean": -7.5, "return_ci95": 0.1, "landmarks_covered": 2.9,
                                          "collisions": 1.5}}
    render.publish(tmp_path, data, docs)
    text = (docs / "bench.md").read_text()
    assert "protocol" in text and "## History\nkept" in text and "old table" not in text and "| -7.50 |" in text
    assert json.loads((docs / "bench.json").read_text()) == data


def _world(agents: list[tuple[float, float]], landmarks: list[tuple[float, float]],
           vel: tuple[float, float] = (0.0, 0.0)) -> torch.Tensor:
    """Full observations [1, N, O] of one spread world: vel, pos, landmark offsets, (others: zeros)."""
    n = len(agents)
    obs = torch.zeros(1, n, 4 + 2 * n + 4 * (n - 1))
    for i, p in enumerate(agents):
        obs[0, i, :4] = torch.tensor([*vel, *p])
        for j, lm in enumerate(landmarks):
            obs[0, i, 4 + 2 * j: 6 + 2 * j] = torch.tensor([lm[0] - p[0], lm[1] - p[1]])
    return obs


def test_oracle_assigns_by_total_distance_and_moves_toward_its_landmark() -> None:
    ctl = bench_oracle.AssignmentController(3, horizon=2)
    # agent 1 is nearest to landmark 0 but the cheapest joint assignment sends agent 0 there
    obs = _world([(0.0, 0.0), (0.5, 0.0), (-1.0, -1.0)], [(0.6, 0.0), (2.0, 0.0), (-1.0, -1.0)])
    offsets = obs[..., 4:10].reshape(1, 3, 3, 2)
    assert ctl.assign(offsets).tolist() == [[0, 1, 2]]
    actions, _ = ctl.act(obs, torch.ones(1, 3, 5), None)
    assert actions.tolist() == [[2, 2, 0]]  # +x, +x, stay: agent 2 sits on its landmark
    down = _world([(0.0, 0.0), (1.0, 1.0), (-1.0, 1.0)], [(0.0, -0.8), (1.0, 1.0), (-1.0, 1.0)])
    assert ctl.act(down, torch.ones(1, 3, 5), None)[0][0, 0].item() == 3  # -y
    # at top speed (2.0) toward a landmark 0.2 away: brake (-x) rather than overshoot
    coasting = _world([(0.0, 0.0), (1.0, 1.0), (-1.0, 1.0)], [(0.2, 0.0), (1.0, 1.0), (-1.0, 1.0)], vel=(2.0, 0.0))
    assert ctl.act(coasting, torch.ones(1, 3, 5), None)[0][0, 0].item() == 1


def test_oracle_return_far_above_standing_still() -> None:
    from omegaconf import OmegaConf

    from marlcli.evaluate import env_for_eval, run_episodes

    class Still:
        def initial_hidden(self, batch: int) -> None:
            return None

        def act(self, obs: torch.Tensor, avail: torch.Tensor, hidden: None, deterministic: bool = True) -> tuple:
            return torch.zeros(obs.shape[:2], dtype=torch.long), None

    env = env_for_eval(OmegaConf.create({"env": bench_oracle.SPREAD}), 64, 8000, torch.device("cpu"))
    still = run_episodes(Still(), env, 64).summary()
    ours = bench_oracle.evaluate(2, 64, 8000)
    assert still["eval/return_mean"] < -20.0
    assert ours["return_mean"] > -9.5 and ours["return_mean"] > still["eval/return_mean"] + 12
    assert ours["landmarks_covered"] > 2.5


def test_channel_cost_section(monkeypatch) -> None:
    """The comm section times the three channels the same way and renders its table."""
    from marlcli.bench import swarm as bench_swarm

    monkeypatch.setattr(bench_swarm, "swarm_scaling", lambda ns, variants: {"us_per_env_step": {
        c: {str(ns[0]): 10.0 * (i + 1)} for i, c in enumerate(variants)}})
    cc = bench_swarm.channel_cost(n=4, copies=8, reps=1, rounds=1)
    assert set(cc["act_ms"]) == {"none", "commnet", "tarmac"} and cc["train_ratio"] == {"commnet": 2.0, "tarmac": 3.0}
    assert "Cost of a message channel at N = 4" in render.markdown({"channel_cost": cc})
