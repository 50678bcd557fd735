"""`make bench` bookkeeping (issue 7): thresholds, targets and the report, without training."""

from __future__ import annotations

from marlcli import bench


def _evals(*points: tuple[float, float]) -> list[dict]:
    return [{"time_s": t, "eval/return_mean": r} for t, r in points]


def test_first_time_and_targets_count_seeds_in_time() -> None:
    fast = _evals((5, -20.0), (50, -9.9), (200, -8.4))
    slow = _evals((5, -20.0), (70, -9.5), (300, -9.0))  # -10 too late, never -8.5
    assert bench.first_time(fast, -10.0) == 50 and bench.first_time(slow, -8.5) is None
    assert bench.targets_met("vdn", [fast, slow]) == {"-10.0 within 60s": 1, "-8.5 within budget": 1}
    assert bench.targets_met("mappo", [fast, slow]) == {"-12.0 within 180s": 2}


def test_markdown_lists_targets() -> None:
    entry = {"seeds": 2, "final_return": [-9.0, -8.0], "best_within_60s": [-12.0, None],
             "best_within_180s": [-9.0, -8.0], "targets": {"-12.0 within 180s": 2}, "final_common": [-8.6, None]}
    entry.update({str(t): {"reached": 0, "seconds_mean": None, "seconds_ci95": None, "seconds": [None, None]}
                  for t in bench.THRESHOLDS})
    md = bench.markdown({"machine": "test", "time_to_return": {"mappo": entry}})
    assert "| mappo | ≥ -12.0 within 180s | 2/2 |" in md
    assert "| mappo | 2 | not reached | not reached | not reached | -12.0, - | -9.0, -8.0 | -9.0, -8.0 | -8.6, - |" in md


def test_common_eval_marks_runs_without_checkpoints(tmp_path) -> None:  # noqa: ANN001
    assert bench.common_eval(tmp_path, "vdn", 2) == [None, None]
