"""The trainer's seams (issue 26): hooks called at their points, the played joint action as a
``TimeStep`` field, and the typed checkpoint that keeps the on-disk payload as it was."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import make_cfg
from omegaconf import OmegaConf

from marlcli import results, selfplay
from marlcli.checkpoints import Checkpoint
from marlcli.envs.native.tag import TagEnv
from marlcli.hooks import CommStats, Hook
from marlcli.selfplay.mirrored import OpponentBank
from marlcli.selfplay.roles import RoleSelfPlayVecEnv
from marlcli.trainer import train

RUN = ["env=spread", "env.backend=native", "env.num_envs=2", "algo.rollout_steps=25", "algo.epochs=1",
       "train.total_steps=200", "train.log_interval=100", "train.eval_interval=100", "train.checkpoint_interval=100",
       "train.eval_episodes=2", "train.eval_envs=2", "logger.progress=false", "device=cpu"]


class Recorder(Hook):
    """Notes every call the trainer makes; counts updates and saves the count."""

    name = "recorder"

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.updates = 0
        self.loaded: Any = "never called"

    def start(self, algo: Any) -> None:
        self.calls.append(("start",))

    def after_update(self, prev_step: int, step: int) -> dict[str, float]:
        self.updates += 1
        self.calls.append(("update", prev_step, step))
        return {"recorder/updates": float(self.updates)}

    def log_metrics(self) -> dict[str, float]:
        self.calls.append(("log",))
        return {"recorder/logged": 1.0}

    def wrap_eval(self, env: Any) -> Any:
        self.calls.append(("eval",))
        return env

    def state_dict(self) -> dict[str, Any]:
        return {"updates": torch.tensor(self.updates)}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        self.loaded = state
        if state is not None:
            self.updates = int(state["updates"])

    def write(self) -> None:
        self.calls.append(("write",))


class Stateless(Hook):
    name = "stateless"

    def __init__(self) -> None:
        self.loaded: Any = "never called"

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        self.loaded = state


def test_the_trainer_calls_each_hook_at_its_points_and_checkpoints_its_state(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    rec, quiet = Recorder(), Stateless()
    out = train(make_cfg(f"results_dir={tmp_path}", "run=r", *RUN), hooks=[rec, quiet])
    # 50 env steps per update; evaluations at 0, 100, 200; log lines and checkpoints at 100 and 200
    assert rec.calls == [("start",), ("eval",), ("update", 0, 50), ("update", 50, 100), ("log",), ("eval",),
                         ("write",), ("update", 100, 150), ("update", 150, 200), ("log",), ("eval",), ("write",)]
    logs = [r for r in results.read_metrics(out / "metrics.jsonl") if "recorder/logged" in r]
    assert [(r["step"], r["recorder/updates"]) for r in logs] == [(100, 2.0), (200, 4.0)]
    ckpt = results.load_checkpoint(out / "checkpoints" / "step_100.pt", results.RESUME_KEYS)
    assert ckpt.hooks["recorder"] == {"updates": torch.tensor(2)} and "stateless" not in ckpt.hooks
    assert ckpt["selfplay"] == {} and ckpt.hooks["selfplay"] == {}  # self-play's key, as checkpoints always had

    again, quiet2 = Recorder(), Stateless()
    resume = make_cfg(f"resume={out / 'checkpoints' / 'step_100.pt'}", "train.total_steps=200", "logger.progress=false")
    train(resume, hooks=[again, quiet2])
    assert again.loaded == {"updates": torch.tensor(2)} and quiet2.loaded is None  # None: no state of that name
    assert again.calls == [("start",), ("update", 100, 150), ("update", 150, 200), ("log",), ("eval",), ("write",)]
    assert [r["recorder/updates"] for r in results.read_metrics(out / "metrics.jsonl") if "recorder/logged" in r] == \
        [2.0, 4.0]  # the resumed count continues where the checkpoint left it


def test_a_hook_may_not_take_a_checkpoint_key(tmp_path: Path) -> None:
    class Env(Stateless):
        name = "env"

        def state_dict(self) -> dict[str, Any]:
            return {}

    with pytest.raises(ValueError, match="'env' would overwrite"):
        train(make_cfg(f"results_dir={tmp_path}", "run=r", *RUN, "train.total_steps=50"), hooks=[Env()])


def test_the_played_joint_action_is_a_timestep_field() -> None:
    """Asymmetric self-play reports what the env really executed (the frozen agents' actions in their slots)
    in ``TimeStep.played``; plain envs leave it None (= the actions given), and so does reset."""

    class Const(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("k", torch.zeros(()))

        def initial_hidden(self, batch: int) -> None:
            return None

        def act(self, obs: torch.Tensor, avail: torch.Tensor, hidden: None, deterministic: bool) -> tuple:
            return torch.full(obs.shape[:2], int(self.k), dtype=torch.long), None

    inner = TagEnv(OmegaConf.create({"max_cycles": 3}), 2, 0, torch.device("cpu"))
    assert inner.reset().played is None and inner.step(torch.zeros(2, 4, dtype=torch.long)).played is None
    bank = OpponentBank(Const, lambda m: {"k": torch.tensor(2.0)}, torch.device("cpu"))
    env = RoleSelfPlayVecEnv(inner, [0], bank, lambda n: torch.zeros(n, dtype=torch.long))
    assert env.reset().played is None
    ts = env.step(torch.zeros(2, 4, dtype=torch.long))
    predators = torch.tensor([True, True, True, False])  # role 0 learns in every copy; the prey plays frozen
    assert torch.equal(ts.played, torch.where(predators, 0, 2).expand(2, 4))


def test_checkpoint_payload_round_trips_with_its_keys_in_order(tmp_path: Path) -> None:
    payload = {"format": results.CHECKPOINT_FORMAT, "step": 7, "config": "seed: 0\n", "algo": "mappo",
               "actor": {"w": torch.ones(2)}, "learner": {"opt": {}}, "env": {"t": torch.zeros(1)},
               "counters": {"step": 7}, "track": {"ret_cnt": torch.zeros(())}, "selfplay": {"matrix": {"count": 1}},
               "rng": {"torch": torch.get_rng_state()}, "hidden": torch.zeros(1, 2), "world": 2,
               "ranks": [{"env": {}}], "future_hook": [1, 2]}
    ckpt = Checkpoint.from_payload(payload, tmp_path / "x.pt")
    assert ckpt.step == 7 and ckpt.hooks == {"selfplay": {"matrix": {"count": 1}}, "future_hook": [1, 2]}
    again = ckpt.to_payload()
    assert list(again) == [*payload][:10] + ["future_hook", "rng", "hidden", "world", "ranks"]
    assert again.keys() == payload.keys()
    assert ckpt["_path"] == str(tmp_path / "x.pt") and ckpt.get("actor") is payload["actor"]
    results.save_checkpoint(tmp_path, 7, ckpt)
    loaded = results.load_checkpoint(tmp_path / "step_7.pt")
    assert isinstance(loaded, Checkpoint) and loaded.hooks["future_hook"] == [1, 2] and loaded.world == 2
    # a one-process checkpoint has no world, ranks or hidden keys, as before
    lean = Checkpoint.from_payload({k: payload[k] for k in list(payload)[:11]}).to_payload()
    assert "world" not in lean and "ranks" not in lean and "hidden" not in lean


def test_session_and_comm_stats_are_hooks() -> None:
    assert Hook in selfplay.Session.__mro__ and selfplay.Session.name == "selfplay"
    comm = CommStats()
    assert comm.state_dict() is None and comm.log_metrics() == {}  # before start: no actor, nothing to report
