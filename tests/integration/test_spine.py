"""The spine: config composition, the PettingZoo adapter, GAE, checkpoints, resume, eval, errors."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import collect_rollout, make_cfg, strip_time
from gymnasium import spaces
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from pettingzoo import ParallelEnv

from marlcli import config, results, selfplay
from marlcli.algos import load_family
from marlcli.cli import main
from marlcli.config import CONF_DIR
from marlcli.envs import make_env
from marlcli.envs.pettingzoo import PettingZooVecEnv
from marlcli.errors import ConfigError
from marlcli.evaluate import env_for_eval, evaluate_path, load_actor
from marlcli.returns import gae
from marlcli.trainer import train

ENVS = sorted(p.stem for p in (CONF_DIR / "env").glob("*.yaml"))
ALGOS = sorted(p.stem for p in (CONF_DIR / "algo").glob("*.yaml"))


def test_every_combination_composes() -> None:
    """env x algo x critic x sharing all compose, and record what was used."""
    config.register()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        for env, algo, critic, sharing in itertools.product(ENVS, ALGOS, ["centralized", "independent"],
                                                            ["all", "none", "role"]):
            cfg = compose("config", overrides=[f"env={env}", f"algo={algo}", f"critic={critic}",
                                               f"sharing={sharing}"])
            assert cfg.env.name and cfg.algo.name == algo and cfg.algo.family
            assert cfg.critic.type == critic and cfg.sharing.mode == sharing
            for key in ("total_steps", "eval_interval", "eval_episodes", "checkpoint_interval", "log_interval"):
                assert key in cfg.train


def test_ippo_is_ppo_with_independent_critic() -> None:
    cfg = make_cfg("algo=ippo")
    assert cfg.algo.family == "ppo" and cfg.critic.type == "independent" and cfg.algo.name == "ippo"
    assert make_cfg("algo=mappo").critic.type == "centralized"


def test_adapter_heterogeneous_adversary() -> None:
    """mpe2 adversary: agents with different observation sizes share one padded tensor."""
    env = make_env(make_cfg("env=adversary", "env.backend=pettingzoo").env, 3, 0, torch.device("cpu"))
    spec = env.spec
    assert spec.agents == ["adversary_0", "agent_0", "agent_1"]
    assert spec.obs_dims == [8, 10, 10] and spec.obs_dim == 10 and spec.state_dim == 28
    assert spec.roles == ["adversary", "agent"] and spec.role_index == [0, 1, 1]
    ts = env.reset()
    assert ts.obs.shape == (3, 3, 10) and ts.state.shape == (3, 28)
    assert torch.all(ts.obs[:, 0, 8:] == 0)  # padding of the smaller observation
    for _ in range(25):
        ts = env.step(torch.randint(0, 5, (3, 3)))
    assert ts.done.all() and ts.truncated.all() and not ts.terminated.any()
    assert not torch.equal(ts.final_obs, ts.obs)  # final obs kept apart from the reset obs


class EarlyExitEnv(ParallelEnv):
    """Two agents; ``b_0`` finishes after 2 steps, ``a_0`` after 4. Different action sizes."""

    metadata = {"name": "early_exit"}

    def __init__(self) -> None:
        self.possible_agents = ["a_0", "b_0"]
        self._obs = {"a_0": spaces.Box(-1, 1, (3,)), "b_0": spaces.Box(-1, 1, (2,))}
        self._act = {"a_0": spaces.Discrete(4), "b_0": spaces.Discrete(2)}

    def observation_space(self, agent: str) -> spaces.Space:
        return self._obs[agent]

    def action_space(self, agent: str) -> spaces.Space:
        return self._act[agent]

    def reset(self, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        self.agents, self.t = list(self.possible_agents), 0
        return {a: np.full(self._obs[a].shape, 0.5, np.float32) for a in self.agents}, {}

    def step(self, actions: dict) -> tuple[dict, dict, dict, dict, dict]:
        assert set(actions) == set(self.agents), "adapter must only send actions for live agents"
        assert actions.get("b_0", 0) < 2
        self.t += 1
        term = {a: (a == "b_0" and self.t >= 2) or self.t >= 4 for a in self.agents}
        rew = {a: 1.0 for a in self.agents}
        obs = {a: np.full(self._obs[a].shape, self.t, np.float32) for a in self.agents}
        self.agents = [a for a in self.agents if not term[a]]
        return obs, rew, term, {a: False for a in term}, {a: {} for a in term}


def test_adapter_masks_agents_that_finish_early() -> None:
    env = PettingZooVecEnv(EarlyExitEnv, {}, 2, 0, torch.device("cpu"))
    ts = env.reset()
    assert ts.avail[0, 1].tolist() == [True, True, False, False]  # b_0 has 2 of 4 actions
    alive = []
    for _ in range(4):
        ts = env.step(torch.zeros(2, 2, dtype=torch.long))
        alive.append(ts.alive[0].tolist())
    assert alive[:3] == [[True, True], [True, False], [True, False]]
    assert ts.done.all() and ts.terminated[0, 0] and not ts.truncated.any()
    assert alive[3] == [True, True]  # auto-reset: both back


def test_gae_matches_hand_computed() -> None:
    r = torch.tensor([[1.0], [0.0], [2.0]]).view(3, 1, 1)
    v = torch.tensor([0.5, 0.4, 0.3]).view(3, 1, 1)
    nv = torch.tensor([0.4, 0.3, 0.9]).view(3, 1, 1)  # step 2 ends by truncation: bootstrap 0.9
    term = torch.zeros(3, 1, 1, dtype=torch.bool)
    done = torch.tensor([False, False, True]).view(3, 1)
    g, lam = 0.9, 0.8
    d2 = 2.0 + g * 0.9 - 0.3
    d1 = 0.0 + g * 0.3 - 0.4
    d0 = 1.0 + g * 0.4 - 0.5
    want = [d0 + g * lam * (d1 + g * lam * d2), d1 + g * lam * d2, d2]
    assert torch.allclose(gae(r, v, nv, term, done, g, lam).flatten(), torch.tensor(want))
    term[2] = True  # terminated: no bootstrap
    assert torch.isclose(gae(r, v, nv, term, done, g, lam)[2].squeeze(), torch.tensor(2.0 - 0.3))


def test_results_tree_and_checkpoint_contract(compose_cfg) -> None:
    cfg = compose_cfg("train.total_steps=400", "train.eval_interval=200", "train.checkpoint_interval=200",
                      "train.log_interval=100")
    out = train(cfg)
    assert out == Path(cfg.results_dir) / "spread" / "mappo" / "test" / "seed_0"
    assert {p.name for p in out.iterdir()} >= {"config.yaml", "metrics.jsonl", "checkpoints", "train.log"}
    assert {p.name for p in (out / "checkpoints").iterdir()} == {"step_200.pt", "step_400.pt", "latest.pt"}
    lines = results.read_metrics(out / "metrics.jsonl")
    assert all("step" in r and "time_s" in r for r in lines)
    evals = [r for r in lines if "eval/return_mean" in r]
    assert [r["step"] for r in evals] == [0, 200, 400]
    assert {"eval/return_std", "eval/return/agent_0", "eval/return/agent_2"} <= set(evals[-1])
    payload = results.load_checkpoint(out / "checkpoints" / "latest.pt")
    assert payload["step"] == 400 and {"actor", "learner", "rng", "env", "config", "counters"} <= set(payload)
    assert "optim" in payload["learner"] and "value_norm" in payload["learner"]
    assert results.checkpoint_config(payload).algo.name == "mappo"


@pytest.mark.parametrize("backend", ["native", "pettingzoo"])
def test_resume_continues_exactly(compose_cfg, tmp_path: Path, backend: str) -> None:
    # extending a run's budget continues it exactly when nothing depends on train.total_steps
    common = [f"env.backend={backend}", "train.eval_interval=200", "train.checkpoint_interval=200",
              "train.log_interval=100", "algo.lr_schedule=constant"]
    full = train(compose_cfg("run=full", "train.total_steps=600", *common))
    half = train(compose_cfg("run=half", "train.total_steps=300", *common))
    resumed = train(compose_cfg(f"resume={half}", "train.total_steps=600"))
    assert resumed == half
    a = strip_time(results.read_metrics(full / "metrics.jsonl"))
    b = strip_time(results.read_metrics(half / "metrics.jsonl"))
    # the interrupted run evaluated once more at its end (step 300); everything else is identical
    b = [r for r in b if not (r["step"] == 300 and "eval/return_mean" in r)]
    a = [r for r in a if not (r["step"] == 300 and "eval/return_mean" in r)]
    assert a == b


def test_same_seed_same_metrics(compose_cfg) -> None:
    one = train(compose_cfg("run=one", "train.total_steps=300", "train.log_interval=100"))
    two = train(compose_cfg("run=two", "train.total_steps=300", "train.log_interval=100"))
    assert strip_time(results.read_metrics(one / "metrics.jsonl")) == \
        strip_time(results.read_metrics(two / "metrics.jsonl"))


@pytest.mark.parametrize("sharing", ["all", "none", "role"])
def test_actor_is_decentralized(compose_cfg, sharing: str) -> None:
    """Agent i's action does not change when the other agents' observations change."""
    cfg = compose_cfg("env=tag", f"sharing={sharing}")
    env = make_env(cfg.env, 8, 0, torch.device("cpu"))
    actor = load_family(cfg.algo).make_actor(env.spec, cfg)
    ts = env.reset()
    obs = ts.obs + torch.randn_like(ts.obs)
    logits = actor.dist(obs, ts.avail).logits
    for i in range(env.spec.n_agents):
        other = obs.clone()
        mask = torch.ones(env.spec.n_agents, dtype=torch.bool)
        mask[i] = False
        other[:, mask] = torch.randn_like(other[:, mask]) * 5
        assert torch.allclose(actor.dist(other, ts.avail).logits[:, i], logits[:, i])


def test_evaluate_path_is_marl_eval_and_needs_the_pool_of_a_self_play_run(compose_cfg) -> None:
    """``marlcli.evaluate`` is where ``marl eval`` lives: ``evaluate_path`` given the self-play opponents (as the CLI
    passes them) writes the row ``marl eval`` writes; without them a self-play run is refused, never evaluated
    against something else. ``load_actor`` restores the checkpoint's actor, in eval mode."""
    out = train(compose_cfg("env=rps", "env.backend=native", "algo=ippo", "env.num_envs=4", "algo.rollout_steps=10",
                            "selfplay=latest", "selfplay.snapshot_interval=40", "train.total_steps=80"))
    with pytest.raises(ConfigError, match="self-play run"):
        evaluate_path(out, episodes=4, envs=4, write=False)
    row = evaluate_path(out, episodes=4, envs=4, write=False, opponents=selfplay.opponents_for_eval)[0]
    assert main(["eval", str(out), "episodes=4", "envs=4"]) == 0
    assert json.loads((out / "eval.json").read_text()) == json.loads(json.dumps(row))
    payload = results.load_checkpoint(out)
    cfg = results.checkpoint_config(payload)
    env = selfplay.opponents_for_eval(cfg, env_for_eval(cfg, 2, 0, torch.device("cpu")), payload, torch.device("cpu"))
    actor = load_actor(payload, cfg, env.spec)
    env.close()
    assert not actor.training
    assert all(torch.equal(v, payload["actor"][k]) for k, v in actor.state_dict().items())


def test_eval_cli_on_fresh_checkpoint(compose_cfg, capsys) -> None:
    out = train(compose_cfg("train.total_steps=200", "env=tag", "sharing=role", "critic=independent"))
    assert main(["eval", str(out), "episodes=6", "seed=3"]) == 0
    report = json.loads((out / "eval.json").read_text())
    assert report["episodes"] == 6 and report["step"] == 200 and report["eval_seed"] == 3
    assert {"return_mean", "return_ci95", "return/adversary_0", "return_role/adversary",
            "return_role/agent", "catches"} <= set(report)
    assert "marl eval" in capsys.readouterr().out
    # a run dir evaluates every seed in it; a .pt file works too
    assert main(["eval", str(out.parent), "episodes=2"]) == 0
    assert main(["eval", str(out / "checkpoints" / "latest.pt"), "episodes=2"]) == 0


def _marl(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "marlcli.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_bad_inputs_give_one_line_and_exit_2(tmp_path: Path) -> None:
    bad_pt = tmp_path / "corrupt.pt"
    bad_pt.write_bytes(b"\x80\x02not a checkpoint")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    cases = [
        ("train", "algo=nope"),
        ("train", "env=nope"),
        ("train", "train.total_stepz=5"),
        ("train", "seed=abc"),
        ("train", "sharing=everything"),
        ("train", "env=pettingzoo", "env.factory=no_such_pkg.envs:make"),
        ("train", "env=pettingzoo", "env.factory=marlcli.envs:no_such_factory"),
        ("train", "resume=/no/such/dir"),
        ("train", "device=cuda:7"),
        ("train", "algo=qmix", "algo.mixer_embed=-1"),  # sizes below 1 would fail deep inside torch
        ("train", "env.num_envs=0"),
        ("eval", str(tmp_path / "missing")),
        ("eval", str(bad_pt)),
        ("eval", str(foreign)),
        ("eval", str(tmp_path), "episodez=3"),
        ("frobnicate",),
    ]
    for args in cases:
        proc = _marl(*args, "logger.progress=false" if args[0] == "train" else "", cwd=tmp_path) \
            if args[0] == "train" else _marl(*args, cwd=tmp_path)
        err = proc.stderr.strip()
        assert proc.returncode == 2, (args, proc.stdout, err)
        assert len(err.splitlines()) == 1 and "Traceback" not in err and err.startswith("marl "), (args, err)


def test_incompatible_pair_is_rejected(compose_cfg) -> None:
    from marlcli.algos import check_compatible
    from marlcli.algos.base import Capabilities

    class DiscreteOnly:
        CAPS = Capabilities(continuous=False)

    cfg = compose_cfg("env.continuous_actions=true")
    env = make_env(cfg.env, 1, 0, torch.device("cpu"))
    with pytest.raises(ConfigError, match="discrete actions only"):
        check_compatible(DiscreteOnly, env.spec, cfg)


def test_continuous_mappo_update_follows_the_advantage(compose_cfg, monkeypatch) -> None:  # noqa: ANN001
    """One continuous MAPPO update (sharing=none) makes the actions with positive advantage more likely.

    The Gaussian policy's log-probabilities of the rollout's own actions move in the
    direction of their GAE advantages (a wrong sign, a detached actor or a no-op update
    fails), every agent's network takes part, and the value loss falls on that rollout.
    """
    from marlcli.algos import ppo

    cfg = compose_cfg("env.continuous_actions=true", "sharing=none", "env.num_envs=8", "algo.epochs=4")
    env = make_env(cfg.env, 8, 0, torch.device("cpu"))
    torch.manual_seed(0)
    algo = ppo.make(env.spec, cfg, torch.device("cpu"))
    seen: list[torch.Tensor] = []
    real_gae = ppo.gae
    monkeypatch.setattr(ppo, "gae", lambda *a: seen.append(real_gae(*a)) or seen[-1])
    r = collect_rollout(algo, env)
    with torch.no_grad():
        before, _ = algo.actor.log_prob_entropy(r.obs, r.avail, r.actions)
    first = algo.update(r, r.num_steps)
    with torch.no_grad():
        after, _ = algo.actor.log_prob_entropy(r.obs, r.avail, r.actions)
    adv = seen[0]
    adv = (adv - adv.mean()) / adv.std()
    per_agent = (adv * (after - before)).mean((0, 1))  # [N]: > 0 where the policy followed its advantages
    assert (per_agent > 0).all(), per_agent
    assert float(algo.update(r, 2 * r.num_steps)["loss/value"]) < float(first["loss/value"])


def test_pettingzoo_factory_kwargs_from_the_command_line(tmp_path: Path) -> None:
    """`env=pettingzoo env.factory=... env.kwargs={...}` passes free-form kwargs to the factory."""
    args = ["train", "env=pettingzoo", "env.factory=mpe2.simple_spread_v3:parallel_env", "env.kwargs={N:2}",
            "env.name=spread2", "env.num_envs=2", "train.total_steps=100", "train.eval_episodes=2",
            "train.eval_envs=2", "run=kw", f"results_dir={tmp_path}", "logger.progress=false"]
    proc = _marl(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-500:]
    evals = [r for r in results.read_metrics(tmp_path / "spread2" / "mappo" / "kw" / "seed_0" / "metrics.jsonl")
             if "eval/return_mean" in r]
    assert set(k for k in evals[-1] if k.startswith("eval/return/")) == {"eval/return/agent_0", "eval/return/agent_1"}
    bad = _marl("train", "env=pettingzoo", "env.kwargs={bogus:1}", cwd=tmp_path)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "bogus" in bad.stderr


def test_keep_freed_memory_sets_glibc_thresholds(monkeypatch) -> None:  # noqa: ANN001
    import ctypes

    from marlcli.trainer import keep_freed_memory

    calls: dict[int, int] = {}

    class FakeLibc:
        def mallopt(self, param: int, value: int) -> int:
            calls[param] = value
            return 1

    monkeypatch.setattr(ctypes, "CDLL", lambda name: FakeLibc())
    keep_freed_memory()
    assert calls == {-3: 32 << 20, -1: 256 << 20, -2: 16 << 20}  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, M_TOP_PAD

    def no_glibc(name: str) -> None:
        raise OSError(name)

    monkeypatch.setattr(ctypes, "CDLL", no_glibc)
    keep_freed_memory()  # macOS, musl: nothing to tune, no error


def test_shared_group_linear_is_x_times_weight_plus_bias() -> None:
    from marlcli.nets.mlp import GroupLinear

    torch.manual_seed(0)
    layer = GroupLinear(7, 5, [0, 0, 0])
    x = torch.randn(4, 3, 7, requires_grad=True)
    out = layer(x)
    ref = x @ layer.weight[0] + layer.bias[0]
    torch.testing.assert_close(out, ref)
    g_out = torch.autograd.grad(out.square().sum(), [x, layer.weight])
    g_ref = torch.autograd.grad(ref.square().sum(), [x, layer.weight])
    for a, b in zip(g_out, g_ref, strict=True):
        torch.testing.assert_close(a, b)
