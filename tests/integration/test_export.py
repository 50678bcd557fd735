"""``marl export`` (issue 18): files per agent group, parity on recorded episodes, eval on the export.

Every config trains 100 steps (one update) once (module-scoped cache); export, parity and evaluation each
take well under a second or two on CPU.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, make_cfg

from marlcli import export as ex
from marlcli import results
from marlcli.algos import load_family
from marlcli.evaluate import env_for_eval, evaluate_path, run_episodes
from marlcli.export import evaluate_export, export_main, verify
from marlcli.trainer import train

RUNNER = Path(__file__).resolve().parents[2] / "examples" / "robot_runner.py"
FAST = ["latency_iters=20", "parity_episodes=4"]

CASES = {  # name -> overrides; the acceptance configs of issue 18
    "mappo": ["algo=mappo", "env=spread"],
    "mappo_cont": ["algo=mappo", "env=spread", "env.continuous_actions=true"],
    "vdn_rnn": ["algo=vdn", "env=spread", "algo.agent=rnn", "algo.last_action=true"],
    "maddpg": ["algo=maddpg", "env=spread", "env.continuous_actions=true", "algo.learning_starts=100",
               "algo.batch_size=32", "algo.updates_per_rollout=2"],
    "adversary_none": ["algo=mappo", "env=adversary", "sharing=none"],
}
CONTINUOUS = {"mappo_cont", "maddpg"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    """``trained(name)`` -> the seed dir of that case, trained once per module."""
    root, cache = tmp_path_factory.mktemp("export_runs"), {}

    def get(name: str) -> Path:
        if name not in cache:
            cfg = make_cfg(f"results_dir={root}", f"run={name}", "train.total_steps=100", *TINY, *CASES[name])
            cache[name] = train(cfg)
        return cache[name]

    return get


def _export(seed_dir: Path, out: Path, *extra: str) -> dict:
    assert export_main([str(seed_dir), f"out={out}", *FAST, *extra]) == 0
    return json.loads((out / "manifest.json").read_text())


@pytest.mark.parametrize("name", list(CASES))
def test_export_parity_and_eval(name: str, trained, tmp_path: Path) -> None:
    sd = trained(name)
    out = tmp_path / "export"
    m = _export(sd, out)
    cfg = results.checkpoint_config(results.load_checkpoint(sd))
    ckpt = results.resolve_checkpoint(sd)
    assert m["source"]["sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert m["source"]["step"] == 100 and m["opset"] == ex.OPSET and m["versions"]["torch"] == torch.__version__
    assert m["observation"]["normalization"] is None
    sharing = str(cfg.sharing.mode)
    assert len(m["files"]) == (1 if sharing == "all" else len(m["agents"]))
    for f in m["files"]:
        assert (out / f["onnx"]).is_file() and (out / f["torchscript"]).is_file()
    for fmt in ("onnx", "torchscript"):
        p = m["parity"][fmt]
        assert p["passed"] and p["max_abs_diff"] <= 1e-5 and p.get("discrete_agreement", 1.0) == 1.0
        assert m["latency"][f"{fmt}/cpu"]["p50_us"] > 0
    assert json.loads((out / "latency.json").read_text()) == m["latency"]
    if name == "vdn_rnn":
        assert m["hidden"]["size"] == 64 + 5 and "zeros" in m["hidden"]["reset"]
    if name == "adversary_none":  # heterogeneous: each file takes its agent's true observation size
        assert [f["obs_size"] for f in m["files"]] == [a["obs_size"] for a in m["agents"]] == [8, 10, 10]
    if name in CONTINUOUS:
        assert all(a["low"] == [0.0] * 5 and a["high"] == [1.0] * 5 for a in m["agents"])

    # marl eval on the export plays the same episodes as on the checkpoint
    torch_row = evaluate_path(sd, episodes=8, envs=8)[0]
    onnx_row = evaluate_export(out, episodes=8, envs=8)[0]
    if name in CONTINUOUS:
        assert abs(onnx_row["return_mean"] - torch_row["return_mean"]) <= max(torch_row["return_ci95"], 1e-6)
        assert abs(onnx_row["return_mean"] - torch_row["return_mean"]) < 1e-3
    else:  # identical discrete actions: identical returns
        for k, v in torch_row.items():
            if k.startswith("return"):
                assert onnx_row[k] == v, k
    assert onnx_row["step"] == torch_row["step"] and onnx_row["format"] == "onnx"


def test_onnx_mask_is_optional_and_masks(trained, tmp_path: Path) -> None:
    import onnxruntime as ort

    m = _export(trained("mappo"), tmp_path / "e", "format=onnx")
    assert m["formats"] == ["onnx"] and not list((tmp_path / "e").glob("*.torchscript.pt"))
    sess = ort.InferenceSession(str(tmp_path / "e" / m["files"][0]["onnx"]), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(6, 18)).astype(np.float32)
    idx = np.array([0, 1, 2, 0, 1, 2])
    plain = sess.run(None, {"obs": obs, "agent_index": idx})
    full = sess.run(None, {"obs": obs, "agent_index": idx, "mask": np.ones((6, 5), bool)})
    assert (plain[0] == full[0]).all() and np.array_equal(plain[1], full[1])
    mask = np.ones((6, 5), bool)
    mask[np.arange(6), plain[0]] = False  # forbid the chosen action
    masked = sess.run(None, {"obs": obs, "agent_index": idx, "mask": mask})[0]
    assert (masked != plain[0]).all() and mask[np.arange(6), masked].all()


def test_export_is_deterministic_and_single_onnx_eval(trained, tmp_path: Path) -> None:
    sd = trained("mappo")
    a, b = _export(sd, tmp_path / "a", "format=onnx"), _export(sd, tmp_path / "b", "format=onnx")
    assert a["files"][0]["onnx_sha256"] == b["files"][0]["onnx_sha256"]
    one = tmp_path / "a" / a["files"][0]["onnx"]
    assert ex.is_export(one)
    assert evaluate_export(one, episodes=4, envs=4)[0]["return_mean"] == \
        evaluate_export(tmp_path / "b", episodes=4, envs=4)[0]["return_mean"]


def _run_robot(export_dir: Path, agent: str, obs: np.ndarray, tmp_path: Path) -> tuple[np.ndarray, dict]:
    """The runner in a fresh interpreter; returns its actions and which heavy modules it loaded."""
    np.save(tmp_path / "obs.npy", obs)
    code = (
        "import json, runpy, sys\n"
        f"sys.argv = ['robot_runner.py', {str(export_dir)!r}, {agent!r}, 'obs.npy', '--out', 'act.npy']\n"
        "try:\n"
        f"    runpy.run_path({str(RUNNER)!r}, run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        "print('MODULES', json.dumps({m: m in sys.modules for m in ('torch', 'marlcli', 'onnxruntime')}))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    loaded = json.loads(res.stdout.split("MODULES", 1)[1])
    return np.load(tmp_path / "act.npy"), loaded


def _torch_episode(seed_dir: Path, agent: int) -> tuple[np.ndarray, np.ndarray]:
    """One real evaluation episode of the torch actor: agent ``agent``'s own observations and actions."""
    payload = results.load_checkpoint(seed_dir)
    cfg = results.checkpoint_config(payload)
    env = env_for_eval(cfg, 1, 7, torch.device("cpu"))
    actor = load_family(cfg.algo).make_actor(env.spec, cfg)
    actor.load_state_dict(payload["actor"])
    rec = ex.Recorder(actor)
    run_episodes(rec, env, 1)
    env.close()
    size = env.spec.obs_dims[agent]
    obs = torch.cat([s[0][:, agent, :size] for s in rec.steps]).numpy()
    return obs, torch.cat([s[3][:, agent] for s in rec.steps]).numpy()


@pytest.mark.parametrize("name,agent", [("vdn_rnn", 1), ("adversary_none", 0)])
def test_robot_runner_needs_no_torch(name: str, agent: int, trained, tmp_path: Path) -> None:
    sd = trained(name)
    m = _export(sd, tmp_path / "e", "format=onnx")
    obs, want = _torch_episode(sd, agent)  # GRU + last action: the hidden state carries over 25 steps
    got, loaded = _run_robot(tmp_path / "e", m["agents"][agent]["name"], obs, tmp_path)
    assert loaded == {"torch": False, "marlcli": False, "onnxruntime": True}
    assert np.array_equal(got, want)


# ----------------------------------------------------------------------------- bad input: one line, exit 2
def _one_line_error(capsys: pytest.CaptureFixture[str], *words: str) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("marl export: error:") and len(err.splitlines()) == 1, err
    for w in words:
        assert w in err, err
    return err


def test_unknown_format_and_option(trained, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sd = trained("mappo")
    assert export_main([str(sd), "format=tflite", f"out={tmp_path / 'x'}"]) == 2
    _one_line_error(capsys, "unknown format 'tflite'")
    assert export_main([str(sd), "bogus=1"]) == 2
    _one_line_error(capsys, "unknown option 'bogus'")
    assert export_main([str(tmp_path / "missing")]) == 2
    _one_line_error(capsys, "does not exist")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    assert export_main([str(tmp_path / "junk.pt")]) == 2
    _one_line_error(capsys, "not a readable marlcli checkpoint")
    assert not (tmp_path / "x").exists()


def test_missing_onnxruntime(trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture[str]) -> None:
    sd = trained("mappo")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    assert export_main([str(sd), f"out={tmp_path / 'x'}", *FAST]) == 2
    _one_line_error(capsys, "onnxruntime", "pip install")
    assert not (tmp_path / "x").exists()
    assert export_main([str(sd), f"out={tmp_path / 'ts'}", "format=torchscript", *FAST]) == 0  # needs none


def test_unexportable_actor(trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                            capsys: pytest.CaptureFixture[str]) -> None:
    from marlcli.algos import ppo

    class Scripted(torch.nn.Module):  # an actor marl export has no adapter for
        def initial_hidden(self, batch: int) -> None:
            return None

    monkeypatch.setattr(ppo, "make_actor", lambda spec, cfg: Scripted())
    assert export_main([str(trained("mappo")), f"out={tmp_path / 'x'}", *FAST]) == 2
    _one_line_error(capsys, "cannot export an actor of type Scripted")


def test_parity_failure_is_loud(trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str]) -> None:
    real = verify.run_file

    def off_by_one(fmt, handle, policy, ins):  # a broken runtime: every action shifted
        out = real(fmt, handle, policy, ins)
        return [(out[0] + 1) % 5, *out[1:]]

    monkeypatch.setattr(verify, "run_file", off_by_one)
    assert export_main([str(trained("mappo")), f"out={tmp_path / 'x'}", *FAST]) == 2
    _one_line_error(capsys, "parity check failed", "discrete agreement 0.00%", "nothing written")
    assert not (tmp_path / "x").exists()


def test_eval_export_bad_input(trained, tmp_path: Path) -> None:
    with pytest.raises(ex.ExportError, match="not an export"):
        evaluate_export(tmp_path)
    out = tmp_path / "e"
    _export(trained("mappo"), out, "format=onnx")
    with pytest.raises(ex.ExportError, match="deterministic"):
        evaluate_export(out, episodes=2, envs=2, deterministic=False)


@pytest.mark.parametrize("game", ["rps", "tag"])
def test_export_of_a_self_play_run(game: str, tmp_path: Path) -> None:
    """Mirrored self-play (rps): the one actor of the learning slot, recorded against its pool; asymmetric
    self-play (tag): the full actor, every role. The mirrored export names its slots and is not run as a team."""
    extra = (["env=rps", "algo=ippo", "selfplay.snapshot_interval=100"] if game == "rps" else
             ["env=tag", "env.backend=native", "env.max_cycles=10", "algo=mappo", "sharing=role",
              "selfplay.snapshot_interval=50"])
    sdir = train(make_cfg(f"results_dir={tmp_path}", "run=sp", "train.total_steps=200", *TINY, "selfplay=pool", *extra))
    manifest = _export(sdir, tmp_path / "e")
    agents = [a["name"] for a in manifest["agents"]]
    if game == "rps":
        assert agents == ["player_0"] and manifest["selfplay"] == {"mode": "pool", "learning_slots": ["player_0"]}
        with pytest.raises(ex.ExportError, match="mirrored self-play"):
            evaluate_export(tmp_path / "e", episodes=2, envs=2)
    else:
        assert len(agents) == 4 and manifest["selfplay"] is None
        assert evaluate_export(tmp_path / "e", episodes=4, envs=4)[0]["episodes"] == 4
