"""Bad input everywhere (issue 25, item 10 and "Bad input everywhere"): one line on stderr, exit 2, no traceback.

Every row of ``CASES`` is a kind of bad input to ``marl train``, ``eval``, ``report`` or
``export`` that, before this issue, ended in a traceback (exit 1), was accepted and silently
ignored or misread (exit 0), or was refused in words that did not say what was meant (Hydra's
"use +key" for a typo). Each row names a phrase its one-line message must hold. Rows marked
``SUB`` run as a real ``.venv/bin/marl`` subprocess (at least one per subcommand); the rest
go through ``marlcli.cli.main`` in-process, which prints the same lines, to keep the file fast.

The eval/export/report rows share one tiny trained run (and one with a message channel, and
its export), trained once per module.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import make_cfg

from marlcli import cli
from marlcli.export import export_main
from marlcli.trainer import train

MARL = Path(sys.executable).with_name("marl")
TINY = ["env.num_envs=2", "train.eval_episodes=2", "train.eval_envs=2", "algo.rollout_steps=16",
        "logger.progress=false", "device=cpu"]
SUB = "subprocess"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The paths the cases name: a tiny spread/mappo run, a commnet run, an export, and damaged copies of both."""
    root = tmp_path_factory.mktemp("seams_input")
    run = train(make_cfg(f"results_dir={root / 'res'}", "run=r", "env=spread", "algo=mappo", "train.total_steps=32",
                         *TINY))
    comm = train(make_cfg(f"results_dir={root / 'res'}", "run=c", "env=spread", "algo=mappo", "comm=commnet",
                          "train.total_steps=32", *TINY))
    exp = root / "export"
    assert export_main([str(run), f"out={exp}", "format=onnx", "latency_iters=10", "parity_episodes=2"]) == 0
    paths = {"run": run, "comm": comm, "export": exp, "tmp": root / "scratch", "file": root / "a_file",
             "empty": root / "empty"}
    paths["tmp"].mkdir()
    paths["empty"].mkdir()
    paths["file"].write_text("not a directory\n")
    for name, damage in {
        "exp_no_onnx": lambda d: (d / "actor_all.onnx").unlink(),
        "exp_no_config": lambda d: (d / "source_config.yaml").unlink(),
        "exp_replaced": lambda d: (d / "actor_all.onnx").write_bytes(b"junk"),
        "exp_no_formats": lambda d: (d / "manifest.json").write_text(json.dumps(
            {k: v for k, v in json.loads((d / "manifest.json").read_text()).items() if k != "formats"})),
    }.items():
        shutil.copytree(exp, root / name)
        damage(root / name)
        paths[name] = root / name
    for name, (file, text) in {"rep_bad_config": ("config.yaml", "{{{: ["),
                               "rep_bad_metrics": ("metrics.jsonl", '{"step": "abc"}\n'),
                               "rep_bad_eval": ("eval.json", "nope")}.items():
        shutil.copytree(run.parent, root / name / "r")
        seed = root / name / "r" / run.name
        if file == "eval.json":  # eval.json is read only for a seed whose metrics hold no evaluation
            (seed / "metrics.jsonl").write_text("")
        (seed / file).write_text(text)
        paths[name] = root / name
    return paths


# (subcommand, args, a phrase the one-line error must hold, how to run it). {name} = a path of `world`.
CASES = [
    # marl train: typos name the key meant and never suggest +key; a +key outside the schema is refused
    ("train", ["train.totl_steps=5"], "did you mean train.total_steps", SUB),
    ("train", ["+train.totl_steps=5"], "unknown key 'train.totl_steps'", ""),
    ("train", ["algo=qmx"], "did you mean qmix", ""),
    ("train", ["env=sprad"], "did you mean spread", ""),
    ("train", ["seed=abc"], "seed: an integer is expected", ""),
    ("train", ["logger.progress=maybe"], "logger.progress: true or false is expected", ""),
    ("train", ["env.N=abc"], "env.N: an integer is expected", ""),
    ("train", ["env.N=1.5"], "env.N: an integer is expected", ""),
    ("train", ["env.continuous_actions=maybe"], "true or false is expected", ""),
    ("train", ["env.max_cycles=0"], "env.max_cycles must be a positive integer", ""),
    # marl eval: counts, env keys typed against the run's saved env config, nothing silently ignored
    ("eval", ["{run}", "episodes=0"], "episodes must be a positive integer", SUB),
    ("eval", ["{run}", "episodes=-5"], "episodes must be a positive integer", ""),
    ("eval", ["{run}", "envs=0"], "envs must be a positive integer", ""),
    ("eval", ["{run}", "episods=3"], "did you mean episodes", ""),
    ("eval", ["{run}", "env.N=abc"], "env.N: an integer is expected (the run's env.N is 3)", ""),
    ("eval", ["{run}", "env.N=0"], "env.N must be a positive integer", ""),
    ("eval", ["{run}", "env.continuous_actions=maybe"], "true or false is expected", ""),
    ("eval", ["{run}", "env.NN=3"], "did you mean env.N", ""),
    ("eval", ["{run}", "env.num_envs=4"], "envs=N", ""),
    ("eval", ["{run}", "vs={run}", "env.N=4"], "takes no env./comm. options", ""),
    ("eval", ["{comm}", "comm.dropout=1.5"], "comm.dropout must be between 0.0 and 1.0", ""),
    ("eval", ["{comm}", "comm.dropuot=0.1"], "did you mean comm.dropout", ""),
    ("eval", ["{comm}", "comm=on"], "comm=off (the channel cut) is the one comm= value", ""),
    ("eval", ["{exp_no_onnx}"], "actor_all.onnx is missing", ""),
    ("eval", ["{exp_no_config}"], "source config the manifest names (source_config.yaml) is missing", ""),
    ("eval", ["{exp_no_formats}"], "has no valid 'formats'", ""),
    ("eval", ["{exp_replaced}"], "does not match its sha256", ""),
    # marl report: flags, out=DIR, damaged results files named
    ("report", ["{run}", "--format"], "--format needs a value", SUB),
    ("report", ["{run}", "--formt", "marl-eval"], "did you mean --format", ""),
    ("report", ["{run}", "outt={tmp}"], "did you mean out", ""),
    ("report", ["{run}", "out={file}"], "is a file, not a directory", ""),
    ("report", ["{run}", "out={file}/sub"], "a_file is a file, not a directory", ""),
    ("report", ["{rep_bad_config}"], "config.yaml", ""),
    ("report", ["{rep_bad_metrics}"], "metrics.jsonl", ""),
    ("report", ["{rep_bad_eval}"], "eval.json", ""),
    # marl export: counts and out=DIR
    ("export", ["{run}", "parity_episodes=0"], "parity_episodes must be a positive integer", SUB),
    ("export", ["{run}", "latency_iters=0"], "latency_iters must be a positive integer", ""),
    ("export", ["{run}", "formt=onnx"], "did you mean format", ""),
    ("export", ["{run}", "out={file}"], "is a file, not a directory", ""),
    ("export", ["{run}", "out={file}/sub"], "a_file is a file, not a directory", ""),
]
# Small budgets, so that on code that accepts a bad input the command still ends quickly (and the test fails).
DEFAULTS = {"train": ["train.total_steps=32", *TINY], "eval": ["episodes=2", "envs=2"],
            "export": ["parity_episodes=2", "latency_iters=10", "format=onnx", "out={tmp}/exported"], "report": []}


def _args(cmd: str, args: list[str], world: dict[str, Path]) -> list[str]:
    given = {a.split("=", 1)[0].lstrip("+") for a in args}
    extra = [d for d in DEFAULTS[cmd] if d.split("=", 1)[0] not in given]
    if cmd == "train" and "results_dir" not in given:
        extra.append(f"results_dir={world['tmp']}/train")
    return [a.format(**{k: str(v) for k, v in world.items()}) for a in [*args, *extra]]


def _one_line_exit_2(cmd: str, argv: list[str], how: str, capsys: pytest.CaptureFixture[str]) -> str:
    if how == SUB:
        proc = subprocess.run([str(MARL), cmd, *argv], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
        code, err = proc.returncode, proc.stderr
    else:
        capsys.readouterr()
        code, err = cli.main([cmd, *argv]), capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith(f"marl {cmd}: error: "), (code, err)
    return lines[0]


@pytest.mark.parametrize(("cmd", "args", "phrase", "how"), CASES,
                         ids=[f"{c[0]}:{' '.join(c[1])}" + (" (subprocess)" if c[3] else "") for c in CASES])
def test_bad_input_is_one_line_exit_2(cmd: str, args: list[str], phrase: str, how: str, world: dict[str, Path],
                                      capsys: pytest.CaptureFixture[str]) -> None:
    line = _one_line_exit_2(cmd, _args(cmd, args, world), how, capsys)
    assert phrase.format(**{k: str(v) for k, v in world.items()}) in line, line
    assert "+train" not in line and "use +" not in line, line  # never Hydra's "append with +key" advice


# Bad inputs that were already one line with exit 2 before issue 25 (kept here so that they stay so).
ALREADY = [
    ("eval", ["{run}", "seed=abc"], "seed must be an integer"),
    ("eval", ["{run}", "deterministic=maybe"], "deterministic must be true or false"),
    ("eval", ["{run}", "device=tpu"], "unknown device 'tpu'"),
    ("eval", ["{run}", "vs=/nonexistent"], "/nonexistent"),
    ("eval", ["{empty}"], "no checkpoints under"),
    ("train", ["results_dir={file}/sub"], "not a directory"),  # trainer.py's own check (issue 25, disk faults)
    ("report", ["{file}"], "is not a directory"),
    ("export", ["{run}", "exporter=dynamoo"], "unknown exporter"),
]


@pytest.mark.parametrize(("cmd", "args", "phrase"), ALREADY, ids=[f"{c[0]}:{' '.join(c[1])}" for c in ALREADY])
def test_still_one_line(cmd: str, args: list[str], phrase: str, world: dict[str, Path],
                        capsys: pytest.CaptureFixture[str]) -> None:
    assert phrase in _one_line_exit_2(cmd, _args(cmd, args, world), "", capsys)


def test_valid_keys_are_not_refused() -> None:
    """The checks refuse only what is wrong: free-form factory kwargs (marl train passes env.kwargs.* as ++), ++ on a real key, a null-default key, env.N."""
    from marlcli.overrides import compose_checked

    cfg = compose_checked(["++env.kwargs.foo=1", "+env.kwargs.bar=2", "++train.total_steps=5",
                           "env.num_agent_neighbors=2", "env.N=4", "env.local_ratio=1", "env.continuous_actions=true"])
    assert cfg.train.total_steps == 5 and cfg.env.N == 4 and cfg.env.kwargs.foo == 1
    assert compose_checked(["env=pettingzoo", "++env.kwargs={N: 2}"]).env.kwargs.N == 2


def test_eval_accepts_a_well_typed_env_override(world: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["eval", str(world["run"]), "episodes=2", "envs=2", "env.scale_arena=false",
                     "env.local_ratio=1", "env.max_cycles=5"]) == 0


@pytest.mark.parametrize("cmd", ["eval", "report", "export"])
def test_ctrl_c_is_one_line_exit_130(cmd: str, world: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    """A KeyboardInterrupt reaching ``cli.entry()``: ``marl <cmd>: interrupted``, exit 130, no traceback."""
    import marlcli.export
    import marlcli.report

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    target = {"eval": (cli, "evaluate_path"), "report": (marlcli.report, "load_seed"),
              "export": (marlcli.export, "export")}[cmd]
    monkeypatch.setattr(*target, interrupted)
    monkeypatch.setattr(sys, "argv", ["marl", cmd, str(world["run"])])
    capsys.readouterr()
    try:
        cli.entry()
    except KeyboardInterrupt:  # (re-raised, it would stop the whole pytest session)
        pytest.fail("the KeyboardInterrupt escaped cli.entry()")
    except SystemExit as stop:
        code = stop.code
    err = capsys.readouterr().err
    assert code == 130 and err.strip() == f"marl {cmd}: interrupted", (code, err)


def test_ctrl_c_during_a_real_eval(world: dict[str, Path]) -> None:
    """SIGINT to a ``marl eval`` subprocess in the middle of its episodes: one line, exit 130."""
    proc = subprocess.Popen([str(MARL), "eval", str(world["run"]), "episodes=10000000", "envs=64"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    time.sleep(8)  # past the imports, inside the episodes (which would take hours)
    assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err.strip() == "marl eval: interrupted", (proc.returncode, err)
