"""Checkpoints never run code, malformed ones give one line, and training is crash safe (issue 16)."""

from __future__ import annotations

import io
import logging
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY, make_cfg, strip_time

from marlcli import results, tracking
from marlcli.cli import main
from marlcli.errors import CheckpointError, ConfigError
from marlcli.trainer import train

SMALL = [*TINY, "env=spread", "env.backend=native", "algo.rollout_steps=25", "algo.epochs=1", "train.total_steps=300",
         "train.eval_interval=100", "train.checkpoint_interval=100", "train.log_interval=100", "device=cpu"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished tiny run (checkpoints at steps 100, 200, 300); tests copy it before changing it."""
    root = tmp_path_factory.mktemp("trained")
    return train(make_cfg(f"results_dir={root}", "run=base", *SMALL))


def copy_run(trained: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "spread" / "mappo" / "base" / "seed_0"
    shutil.copytree(trained, dst)
    cfg = (dst / "config.yaml").read_text().replace(str(trained.parents[3]), str(tmp_path))
    (dst / "config.yaml").write_text(cfg)
    return dst


def one_line_exit_2(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("marl ") and "\n" not in err and "Traceback" not in err, err
    return err


def crafted(path: Path, config: object, **extra: object) -> Path:
    """A checkpoint with the right format tag and whatever config and keys a test wants."""
    payload = {"format": results.CHECKPOINT_FORMAT, "step": 1, "config": config, "actor": {}, **extra}
    torch.save(payload, path)
    return path


# ----------------------------------------------------------------------------- checkpoints never run code
def test_os_system_checkpoint_runs_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The issue's 6-line exploit: env.factory os:system with a command in env.kwargs."""
    marker = tmp_path / "pwned"
    cfg = {"seed": 0, "run": "x", "env": {"name": "spread", "backend": "pettingzoo", "factory": "os:system",
                                          "kwargs": {"command": f"touch {marker}"}, "num_envs": 1},
           "algo": {"name": "mappo", "family": "ppo"}}
    pt = crafted(tmp_path / "evil.pt", yaml.safe_dump(cfg), learner={}, env={}, counters={}, track={}, rng={})
    err = one_line_exit_2(["eval", str(pt)], capsys)
    assert "os:system" in err and "env.factory=os:system" in err
    err = one_line_exit_2(["train", f"resume={pt}", "logger.progress=false"], capsys)
    assert "not built into marlcli" in err
    assert not marker.exists()
    # the same from a shell, in a fresh interpreter
    proc = subprocess.run([sys.executable, "-m", "marlcli.cli", "eval", str(pt)], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and not marker.exists()


def test_algo_family_must_be_a_marlcli_module(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for family in ("os", "base", "../../os", "ppo.os"):
        cfg = {"env": {"name": "spread", "backend": "native"}, "algo": {"name": "mappo", "family": family}}
        pt = crafted(tmp_path / "fam.pt", yaml.safe_dump(cfg))
        assert "algo.family" in one_line_exit_2(["eval", str(pt)], capsys)


def test_builtin_factories() -> None:
    assert results.builtin_factory("mpe2.simple_tag_v3:parallel_env")
    assert results.builtin_factory("marlcli.envs.matrix:coordination")  # named in conf/env/coordination.yaml
    for bad in ("os:system", "marlcli.cli:main", "mpe2.simple_tag_v3:os", "subprocess:run", "builtins:exec"):
        assert not results.builtin_factory(bad), bad


def test_a_factory_given_on_the_command_line_is_trusted(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_envs.py").write_text("from mpe2 import simple_spread_v3\n\n"
                                         "def make(**kw):\n    return simple_spread_v3.parallel_env(**kw)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    out = train(make_cfg(f"results_dir={tmp_path}", "run=own", *TINY, "env=pettingzoo", "env.factory=my_envs:make",
                         "env.num_envs=2", "train.total_steps=50", "train.eval_episodes=2", "train.eval_envs=2"))
    capsys.readouterr()
    err = one_line_exit_2(["eval", str(out), "episodes=2", "envs=2"], capsys)
    assert "env.factory=my_envs:make" in err
    assert main(["eval", str(out), "episodes=2", "envs=2", "env.factory=my_envs:make"]) == 0
    (out / "done").unlink()
    assert train(make_cfg("resume=" + str(out), "env=pettingzoo", "env.factory=my_envs:make",
                          "train.total_steps=100")) == out
    with pytest.raises(CheckpointError, match="not built into marlcli"):
        train(make_cfg("resume=" + str(out), "train.total_steps=150"))


# ----------------------------------------------------------------------------- malformed checkpoints
def _zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/data.pkl", b"not a pickle")
    return buf.getvalue()


MALFORMED = {
    "truncated": lambda good: good.read_bytes()[: len(good.read_bytes()) // 2],
    "random bytes": lambda good: os.urandom(4096),
    "empty": lambda good: b"",
    "foreign zip": lambda good: _zip_bytes(),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_unreadable_files_give_one_line(trained: Path, tmp_path: Path, case: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    pt = tmp_path / "bad.pt"
    pt.write_bytes(MALFORMED[case](trained / "checkpoints" / "latest.pt"))
    assert "not a readable marlcli checkpoint" in one_line_exit_2(["eval", str(pt)], capsys)
    one_line_exit_2(["train", f"resume={pt}", "logger.progress=false"], capsys)


def _payload(trained: Path) -> dict:
    return torch.load(trained / "checkpoints" / "latest.pt", weights_only=True)


def _wrong_shapes(p: dict) -> dict:
    p["actor"] = {k: torch.zeros(3, 1) for k in p["actor"]}
    return p


BROKEN = {  # name -> (edit of a good payload, words of the error)
    "no format tag": (lambda p: {k: v for k, v in p.items() if k != "format"}, "format tag"),
    "no actor": (lambda p: {k: v for k, v in p.items() if k != "actor"}, "'actor' is missing"),
    "no config": (lambda p: {k: v for k, v in p.items() if k != "config"}, "'config' is missing"),
    "step not an int": (lambda p: {**p, "step": "300"}, "'step' is str"),
    "wrong tensor shapes": (_wrong_shapes, "actor state does not fit"),
    "missing actor keys": (lambda p: {**p, "actor": {}}, "actor state does not fit"),
    "config not yaml": (lambda p: {**p, "config": "env: [unclosed"}, "does not compose"),
    "config without algo": (lambda p: {**p, "config": "env: {name: spread, backend: native}\n"}, "does not compose"),
    "config with an unknown key": (lambda p: {**p, "config": p["config"] + "bogus_key: 1\n"}, "does not compose"),
    "config with a bad type": (lambda p: {**p, "config": p["config"].replace("seed: 0", "seed: abc")},
                               "does not compose"),
    "algo key of another family": (lambda p: {**p, "config": p["config"].replace("algo:\n", "algo:\n  mixer: qmix\n")},
                                   "algo config does not compose"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_malformed_checkpoints_give_one_line(trained: Path, tmp_path: Path, case: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    edit, words = BROKEN[case]
    pt = tmp_path / "bad.pt"
    torch.save(edit(_payload(trained)), pt)
    assert words in one_line_exit_2(["eval", str(pt), "episodes=2", "envs=2"], capsys)


@pytest.mark.parametrize("part", ["learner", "env", "counters", "track", "rng"])
def test_resume_from_a_checkpoint_with_a_broken_part_gives_one_line(trained: Path, tmp_path: Path, part: str,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = copy_run(trained, tmp_path)  # the payload's config points here, never at the shared run
    p = _payload(trained)
    p[part] = {"bogus": torch.zeros(2, 2)} if part != "counters" else {"step": "x"}
    p["config"] = (out / "config.yaml").read_text()
    pt = tmp_path / "bad.pt"
    torch.save(p, pt)
    before = (out / "metrics.jsonl").read_text()
    err = one_line_exit_2(["train", f"resume={pt}", "logger.progress=false", "train.total_steps=400"], capsys)
    assert "bad.pt" in err
    assert (out / "metrics.jsonl").read_text() == before and (out / "done").exists()


# ----------------------------------------------------------------------------- no stale state
def test_a_fresh_run_into_a_used_seed_dir_is_refused(trained: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = copy_run(trained, tmp_path)
    with pytest.raises(ConfigError, match=r"already holds a run; continue it with resume=.*run=NAME"):
        train(make_cfg(f"results_dir={tmp_path}", "run=base", *SMALL))
    err = one_line_exit_2(["train", f"results_dir={tmp_path}", "run=base", *SMALL], capsys)
    assert f"resume={out}" in err
    assert (out / "done").exists() and len(results.read_metrics(out / "metrics.jsonl")) > 3


def test_resume_auto_without_a_readable_checkpoint_starts_afresh(tmp_path: Path) -> None:
    cfg = make_cfg(f"results_dir={tmp_path}", "run=r", *SMALL, "resume=auto")
    out = results.seed_dir(cfg)
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "latest.pt").write_bytes(b"torn")
    (out / "metrics.jsonl").write_text('{"step": 999999, "eval/return_mean": 5.0}\n')
    (out / "eval.json").write_text("{}")
    assert train(cfg) == out
    assert max(r["step"] for r in results.read_metrics(out / "metrics.jsonl")) == 300
    assert not (out / "eval.json").exists() and (out / "done").exists()


def test_resume_auto_refuses_a_run_with_another_config(trained: Path, tmp_path: Path) -> None:
    out = copy_run(trained, tmp_path)
    (out / "done").unlink()
    with pytest.raises(ConfigError, match=r"was started with algo.lr=0.002, not 0.1"):
        train(make_cfg(f"results_dir={tmp_path}", "run=base", *SMALL, "resume=auto", "algo.lr=0.1"))


def test_resume_drops_done_eval_json_and_later_checkpoints(trained: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    out = copy_run(trained, tmp_path)
    (out / "eval.json").write_text("{}")
    seen = {}
    real = results.save_checkpoint

    def spy(ckpt_dir: Path, step: int, payload: dict, keep: int = 0) -> Path:
        seen.setdefault("files", {p.name for p in ckpt_dir.iterdir()})
        seen.setdefault("done", (out / "done").exists())
        return real(ckpt_dir, step, payload, keep)

    monkeypatch.setattr(results, "save_checkpoint", spy)
    train(make_cfg(f"resume={out / 'checkpoints' / 'step_100.pt'}", "train.total_steps=1"))
    assert seen == {"files": {"step_100.pt", "latest.pt"}, "done": False}
    assert not (out / "eval.json").exists() and (out / "done").exists()


# ----------------------------------------------------------------------------- crash safety
def test_resume_auto_falls_back_to_the_newest_readable_checkpoint(trained: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = copy_run(trained, tmp_path)
    (out / "done").unlink()
    for name in ("latest.pt", "step_300.pt"):  # a crash mid-write left both torn
        path = out / "checkpoints" / name
        path.write_bytes(path.read_bytes()[:100])
    train(make_cfg(f"results_dir={tmp_path}", "run=base", *SMALL, "resume=auto"))
    assert "skipped" in capsys.readouterr().err
    assert strip_time(results.read_metrics(out / "metrics.jsonl")) == \
        strip_time(results.read_metrics(trained / "metrics.jsonl"))
    assert results.load_checkpoint(out / "checkpoints" / "latest.pt")["step"] == 300


def test_checkpoint_writes_fsync_before_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(f"replace {Path(b).name}"), real_replace(a, b))[1])
    results.save_checkpoint(tmp_path, 5, {"actor": {}})
    results.atomic_write_text(tmp_path / "done", "5\n")
    for name in ("step_5.pt", "latest.pt", "done"):
        i = events.index(f"replace {name}")
        assert events[i - 1] == "fsync", events


def test_no_temp_file_is_left_when_torch_save_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(obj: object, f: object) -> None:
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError, match="No space"):
        results.save_checkpoint(tmp_path / "ckpt", 5, {"actor": {}})
    assert list((tmp_path / "ckpt").iterdir()) == []


def test_train_closes_everything_on_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    closed: list[str] = []
    real_writer_close, real_tracker_close = results.MetricsWriter.close, tracking.Tracker.close

    def writer_close(self: results.MetricsWriter) -> None:
        closed.append("metrics")
        real_writer_close(self)

    def tracker_close(self: tracking.Tracker, failed: bool = False) -> None:
        closed.append(f"tracker failed={failed}")
        real_tracker_close(self, failed)

    def boom(*args: object, **kw: object) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(results.MetricsWriter, "close", writer_close)
    monkeypatch.setattr(tracking.Tracker, "close", tracker_close)
    monkeypatch.setattr(results, "save_checkpoint", boom)
    cfg = make_cfg(f"results_dir={tmp_path}", "run=crash", *SMALL)
    with pytest.raises(RuntimeError, match="disk on fire"):
        train(cfg)
    assert closed == ["tracker failed=True", "metrics"]
    out = results.seed_dir(cfg)
    assert logging.getLogger(f"marlcli.run.{out}").handlers == []
    assert (out / "train.log").read_text().rstrip().endswith("stopped by an error")


def test_train_log_is_trimmed_on_resume(trained: Path, tmp_path: Path) -> None:
    out = copy_run(trained, tmp_path)
    train(make_cfg(f"resume={out / 'checkpoints' / 'step_100.pt'}", "train.total_steps=1"))
    lines = (out / "train.log").read_text().splitlines()
    steps = [ln.split(" step=")[1].split()[0] for ln in lines if " step=" in ln and " eval " not in ln]
    evals = [ln.split(" step=")[1].split()[0] for ln in lines if " eval step=" in ln]
    assert steps == ["100", "200", "300"] and evals == ["0", "100", "200", "300"], lines
    assert [ln.split(" ", 3)[2] for ln in lines if " start " in ln or " resume " in ln] == ["start", "resume"]


def test_trim_log_keeps_lines_up_to_the_step(tmp_path: Path) -> None:
    log = tmp_path / "train.log"
    log.write_text("d t start x\nd t step=100 a=1\nd t eval step=100 r=1\nd t step=200 a=2\nd t eval step=200 r\n")
    tracking.trim_log(log, 100)
    assert log.read_text() == "d t start x\nd t step=100 a=1\nd t eval step=100 r=1\n"
