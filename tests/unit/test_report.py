"""``marl report`` on synthetic results trees: its figures, outputs and marl-eval JSON (the statistics: test_stats.py)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from marlcli import report
from marlcli.cli import main

# ----------------------------------------------------------------------------- synthetic trees
FINALS = {"mappo": [1.0, 2.0, 3.0, 10.0], "ippo": [-1.0, -1.0, -1.0]}


def make_tree(root: Path, run: str = "r1") -> Path:
    """results/<env>/<algo>/<run>/seed_k with eval lines at steps 0, 100, 200 (final = FINALS)."""
    for algo, finals in FINALS.items():
        for seed, final in enumerate(finals):
            sdir = root / "spread" / algo / run / f"seed_{seed}"
            sdir.mkdir(parents=True)
            (sdir / "config.yaml").write_text(
                f"seed: {seed}\nrun: {run}\nenv:\n  name: spread\n  factory: mpe2.simple_spread_v3:parallel_env\n"
                f"algo:\n  name: {algo}\n")
            lines = [{"step": 0, "time_s": 0.0, "eval/return_mean": 0.0},
                     {"step": 100, "time_s": 5.0, "time/sps": 20.0, "loss/policy": 0.1},
                     {"step": 100, "time_s": 5.5, "eval/return_mean": final / 2},
                     {"step": 200, "time_s": 10.0 + seed, "eval/return_mean": final}]
            (sdir / "metrics.jsonl").write_text("".join(json.dumps(ln) + "\n" for ln in lines))
            (sdir / "done").write_text("200\n")
    # a sweep's status dir must not be read as results
    (root / ".sweeps" / run / "0").mkdir(parents=True)
    return root


def test_summary_rows_known_answers(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "results")
    seeds = [report.load_seed(d) for d in report.find_seed_dirs(root)]
    rows = {r["algo"]: r for r in report.summary_rows(report.group(seeds))}
    m = rows["mappo"]
    assert (m["env"], m["run"], m["seeds"], m["seeds_done"], m["seeds_total"], m["env_steps"]) == \
        ("spread", "r1", 4, 4, 4, 200)
    assert m["return_mean"] == pytest.approx(4.0)
    assert m["iqm"] == pytest.approx(2.5)
    assert m["wall_time_s"] == pytest.approx(11.5)  # mean of 10, 11, 12, 13
    assert m["ci95_low"] <= 2.0 < 4.0 < m["ci95_high"] <= 10.0
    assert (rows["ippo"]["return_mean"], rows["ippo"]["ci95_low"], rows["ippo"]["ci95_high"]) == (-1.0, -1.0, -1.0)


def test_eval_json_used_only_without_eval_lines(tmp_path: Path) -> None:
    sdir = tmp_path / "spread" / "mappo" / "r" / "seed_0"
    sdir.mkdir(parents=True)
    (sdir / "metrics.jsonl").write_text(json.dumps({"step": 50, "time_s": 1.0, "loss/policy": 0.0}) + "\n")
    (sdir / "eval.json").write_text(json.dumps({"return_mean": -7.5}))
    res = report.load_seed(sdir)
    assert (res.env, res.algo, res.run, res.seed, res.final_return) == ("spread", "mappo", "r", 0, -7.5)


def test_curve_mean_and_band(tmp_path: Path) -> None:
    seeds = [report.load_seed(d) for d in report.find_seed_dirs(make_tree(tmp_path / "res") / "spread" / "mappo")]
    steps, m, lo, hi = report.curve(seeds)
    assert steps.tolist() == [0, 100, 200]
    assert m.tolist() == pytest.approx([0.0, 2.0, 4.0])
    assert lo[0] == hi[0] == 0.0 and lo[2] < 4.0 < hi[2]


def test_report_cli_writes_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_tree(tmp_path / "results")
    assert main(["report", str(root / "spread" / "mappo" / "r1"), str(root / "spread" / "ippo"),
                 "--format", "marl-eval"]) == 0
    out_dir = root / "spread" / "mappo" / "r1"  # the first PATH
    text = capsys.readouterr().out
    assert "mappo" in text and "ippo" in text and "4.000" in text
    png = out_dir / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5_000
    assert "| spread | mappo | r1 | 4/4 |" in (out_dir / "report.md").read_text()
    rows = list(csv.DictReader((out_dir / "report.csv").open()))
    assert {r["algo"]: float(r["iqm"]) for r in rows} == {"ippo": -1.0, "mappo": 2.5}
    data = json.loads((out_dir / "marl_eval.json").read_text())
    runs = data["mpe2"]["spread"]["mappo"]
    assert sorted(runs) == ["run_0", "run_1", "run_2", "run_3"]
    assert runs["run_3"]["step_2"] == {"step_count": 200, "return": [10.0]}
    assert runs["run_3"]["absolute_metrics"] == {"return": [10.0]}
    assert len(data["mpe2"]["spread"]["ippo"]) == 3


def test_report_out_dir(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "results")
    assert main(["report", str(root), f"out={tmp_path / 'rep'}"]) == 0
    assert {p.name for p in (tmp_path / "rep").iterdir()} == {"report.md", "report.csv", "curves.png"}


@pytest.mark.parametrize("args", [["/no/such/dir"], [], ["--format", "csv", "."], ["bogus=1", "."]])
def test_report_bad_input_is_one_line_exit_2(tmp_path: Path, args: list[str],
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("marl report: error:") and err.count("\n") == 1


def test_report_empty_dir_exit_2(tmp_path: Path) -> None:
    assert main(["report", str(tmp_path)]) == 2


# ----------------------------------------------------------------------------- comparisons (issue 16)
def make_seed(root: Path, variant: str, seed: int, final: float, done: bool = True, env: str = "spread",
              roles: dict[str, float] | None = None, stats: dict[str, float] | None = None) -> Path:
    """One seed dir of run "cmp" in the configuration dir ``variant`` (as `marl train -m` writes it)."""
    sdir = root / env / "mappo" / "cmp" / variant / f"seed_{seed}"
    sdir.mkdir(parents=True)
    (sdir / "config.yaml").write_text(f"seed: {seed}\nrun: cmp\nvariant: '{variant}'\nenv:\n  name: {env}\n"
                                      "algo:\n  name: mappo\n")
    extra = {f"eval/return_role/{k}": v for k, v in (roles or {}).items()}
    extra.update({f"eval/{k}": v for k, v in (stats or {}).items()})
    lines = [{"step": 0, "time_s": 0.0, "eval/return_mean": 0.0, **{k: 0.0 for k in extra}},
             {"step": 100, "time_s": 3.0, "eval/return_mean": final, "eval/return_ci95": 0.1, "eval/episodes": 4.0,
              "eval/return/agent_0": final, **extra}]
    (sdir / "metrics.jsonl").write_text("".join(json.dumps(ln) + "\n" for ln in lines))
    if done:
        (sdir / "done").write_text("100\n")
    return sdir


def test_one_row_per_configuration_with_varied_keys_as_columns(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    finals = {"critic=centralized,sharing=all": [1.0, 3.0], "critic=centralized,sharing=none": [5.0, 7.0],
              "critic=independent,sharing=all": [-1.0, -3.0], "critic=independent,sharing=none": [0.0, 2.0]}
    for variant, values in finals.items():
        for seed, final in enumerate(values):
            make_seed(tmp_path, variant, seed, final)
    run = tmp_path / "spread" / "mappo" / "cmp"
    seeds = [report.load_seed(d) for d in report.find_seed_dirs(run)]
    rows = report.summary_rows(report.group(seeds))
    assert [(r["config"], r["seeds_done"], r["seeds_total"], r["return_mean"]) for r in rows] == [
        ({"critic": "centralized", "sharing": "all"}, 2, 2, 2.0),
        ({"critic": "centralized", "sharing": "none"}, 2, 2, 6.0),
        ({"critic": "independent", "sharing": "all"}, 2, 2, -2.0),
        ({"critic": "independent", "sharing": "none"}, 2, 2, 1.0)]
    assert main(["report", str(run)]) == 0
    md = (run / "report.md").read_text()
    assert "| env | algo | run | critic | sharing | seeds done/total |" in md
    assert "| spread | mappo | cmp | independent | none | 2/2 | 100 |" in md
    assert len([ln for ln in md.splitlines() if ln.startswith("| spread |")]) == 4
    csv_rows = list(csv.DictReader((run / "report.csv").open()))
    assert [(r["critic"], r["sharing"], float(r["return_mean"])) for r in csv_rows][1] == ("centralized", "none", 6.0)
    assert (run / "curves.png").stat().st_size > 5_000


def test_unfinished_seeds_are_left_out_and_listed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_seed(tmp_path, "algo.lr=0.001", 0, 4.0)
    make_seed(tmp_path, "algo.lr=0.001", 1, 6.0)
    running = make_seed(tmp_path, "algo.lr=0.001", 2, -100.0, done=False)
    run = tmp_path / "spread" / "mappo" / "cmp"
    [row] = report.summary_rows(report.group([report.load_seed(d) for d in report.find_seed_dirs(run)]))
    assert (row["return_mean"], row["seeds_done"], row["seeds_total"]) == (5.0, 2, 3)
    assert row["unfinished"] == [str(running)]
    assert main(["report", str(run)]) == 0
    out = capsys.readouterr().out
    assert "2/3" in out and "unfinished seeds" in out and "seed_2" in out
    assert str(running) in (run / "report.md").read_text()


def test_competitive_envs_are_reported_per_role_with_env_stats(tmp_path: Path) -> None:
    for seed, (adv, agent, catches) in enumerate([(10.0, -10.0, 1.0), (30.0, -30.0, 3.0)]):
        make_seed(tmp_path, "sharing=role", seed, 0.0, env="tag", roles={"adversary": adv, "agent": agent},
                  stats={"catches": catches})
    run = tmp_path / "tag" / "mappo" / "cmp"
    [row] = report.summary_rows(report.group([report.load_seed(d) for d in report.find_seed_dirs(run)]))
    assert row["roles"]["adversary"]["mean"] == 20.0 and row["roles"]["agent"]["mean"] == -20.0
    assert row["roles"]["adversary"]["ci95_low"] == 10.0 and row["roles"]["adversary"]["ci95_high"] == 30.0
    assert row["stats"] == {"catches": 2.0}
    assert main(["report", str(run)]) == 0
    md = (run / "report.md").read_text()
    assert "return adversary (mean [95% CI])" in md and "catches" in md
    assert "| tag | mappo | cmp | role | 2/2 | 100 | 0:00:03 | - | - | - | 20.000 [10.000, 30.000] |" in md
    flat = next(csv.DictReader((run / "report.csv").open()))
    assert float(flat["return_role/agent/mean"]) == -20.0 and float(flat["catches"]) == 2.0
