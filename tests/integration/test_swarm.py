"""Swarms at any team size (issue 17): size-free actors, critics and mixers, swarm spread, eval anywhere."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import make_cfg

from marlcli import cli
from marlcli.algos import load_family
from marlcli.envs import make_env
from marlcli.errors import ConfigError
from marlcli.nets.mixers import SetQMixer
from marlcli.trainer import train, validate

CPU = torch.device("cpu")
SWARM = ["env=spread", "env.num_agent_neighbors=3", "env.num_landmark_neighbors=3", "env.scale_arena=true",
         "env.observe_position=false", "env.global_reward=mean", "sharing=all", "sharing.agent_id=false"]
FAMILIES = {"mappo": ["critic=set"], "qmix": ["critic=set"], "vdn": [], "maddpg": [], "coma": []}


def build(algo: str, actor: str, n: int, *extra: str):  # noqa: ANN201
    cfg = make_cfg(f"algo={algo}", f"actor={actor}", f"env.N={n}", *SWARM, *FAMILIES[algo], *extra)
    env = make_env(cfg.env, 3, 0, CPU)
    torch.manual_seed(0)
    return cfg, env, load_family(cfg.algo).make(env.spec, cfg, CPU)


@pytest.mark.parametrize("actor", ["mlp", "deepsets", "attention"])
@pytest.mark.parametrize("algo", list(FAMILIES))
def test_same_weights_run_at_two_team_sizes(algo: str, actor: str) -> None:
    """The actor (and the set critic / mixer) trained at N=4 load and run at N=16, each agent on its own obs."""
    _, env4, a4 = build(algo, actor, 4)
    _, env16, a16 = build(algo, actor, 16)
    a16.actor.load_state_dict(a4.actor.state_dict())  # strict: every weight has the same shape
    if algo in ("mappo", "qmix"):  # the critic over the set of agents / the set mixer too
        part = "critic" if algo == "mappo" else "mixer"
        getattr(a16, part).load_state_dict(getattr(a4, part).state_dict())
    ts = env16.reset()
    act, _ = a16.actor.act(ts.obs, ts.avail, a16.actor.initial_hidden(3), True)
    assert act.shape[:2] == (3, 16)
    # decentralized: agent 0's action is what the N=4 actor does on agent 0's observation alone
    solo, _ = a4.actor.act(ts.obs[:, :4], ts.avail[:, :4], a4.actor.initial_hidden(3), True)
    torch.testing.assert_close(act[:, 0], solo[:, 0])


def test_entity_encoders_are_permutation_invariant_and_mask_padding() -> None:
    for actor in ("deepsets", "attention"):
        cfg, env, algo = build("mappo", actor, 6)
        enc = algo.actor.encoder
        obs = env.reset().obs
        lm = [s for g in env.spec.entities if g.name == "landmark" for s in g.slots]
        perm = obs.clone()
        perm[..., [i for s in lm[::-1] for i in s]] = obs[..., [i for s in lm for i in s]]  # reverse the landmark slots
        torch.testing.assert_close(enc(perm), enc(obs))
        padded = obs.clone()
        padded[..., [i for i in lm[-1]]] = 0.0  # one landmark slot empty: the mean over the others, not a zero entity
        out = enc(padded)
        assert not torch.allclose(out, enc(obs))
        kept = obs.clone()
        kept[..., [i for i in lm[-1]]] = obs[..., [i for i in lm[0]]]  # duplicate slot 0: same mean as two slots
        if actor == "deepsets":
            lm_part = slice(64, 128)  # [self | landmark | agent] embeddings of width 64
            two = enc(kept)[..., lm_part]
            assert not torch.allclose(two, out[..., lm_part])  # a real entity counts, padding does not


def test_set_mixer_is_monotonic_and_size_free() -> None:
    torch.manual_seed(0)
    mixer = SetQMixer(obs_dim=10, embed=8, hyper_hidden=16)
    for n in (3, 12):
        obs, q = torch.randn(256, n, 10), torch.randn(256, n)
        base = mixer(q, obs)
        up = q.clone()
        up[:, 1] += torch.rand(256)
        assert (mixer(up, obs) >= base - 1e-6).all()


def test_swarm_spread_options() -> None:
    """Observation size free of N, no position, mean reward; scale_arena at N=3 is the default arena."""
    def env_of(*o: str, n: int = 3):  # noqa: ANN202
        return make_env(make_cfg("env=spread", f"env.N={n}", *o).env, 4, 7, CPU)

    sizes = {n: env_of(*SWARM[1:4], n=n).spec.obs_dim for n in (4, 16, 64)}
    assert len(set(sizes.values())) == 1, sizes
    no_pos = env_of(*SWARM[1:5], n=4)
    assert no_pos.spec.obs_dim == sizes[4] - 2
    default, scaled = env_of(), env_of("env.scale_arena=true")
    assert torch.equal(default.reset().obs, scaled.reset().obs)  # sqrt(3/3) = 1: mpe2's arena, bit for bit
    big = env_of("env.scale_arena=true", n=48)
    pos = big.world.pos
    assert pos.abs().max() > 1.5 and pos.abs().max() <= 4.0  # sqrt(16) = 4 times the square
    total, mean = env_of("env.local_ratio=1.0"), env_of("env.local_ratio=0.0", "env.global_reward=mean")
    summed = env_of("env.local_ratio=0.0")
    a = torch.zeros(4, 3, dtype=torch.long)
    torch.testing.assert_close(mean.step(a).reward * 3, summed.step(a).reward)
    assert total.spec.entities and [g.name for g in total.spec.entities] == ["self", "landmark", "agent"]


def test_swarm_options_are_native_only_and_entity_actors_need_a_layout() -> None:
    with pytest.raises(ConfigError, match="native"):
        make_env(make_cfg("env=spread", "env.backend=pettingzoo", "env.scale_arena=true").env, 1, 0, CPU)
    with pytest.raises(ConfigError, match="entity"):
        validate_cfg = make_cfg("env=tag", "actor=deepsets")
        env = make_env(validate_cfg.env, 1, 0, CPU)
        load_family(validate_cfg.algo).make_actor(env.spec, validate_cfg)
    with pytest.raises(ConfigError, match="critic=set"):
        validate(make_cfg("algo=maddpg", "critic=set"))


@pytest.mark.parametrize("algo,actor", [("mappo", "deepsets"), ("qmix", "attention"), ("maddpg", "deepsets"),
                                        ("coma", "attention"), ("iql", "deepsets")])
def test_tiny_training_run_with_new_network_options(compose_cfg, algo: str, actor: str) -> None:  # noqa: ANN001
    extra = ["critic=set"] if algo in ("mappo", "qmix") else []
    extra += ["algo.learning_starts=8", "algo.batch_episodes=4"] if algo in ("qmix", "iql") else []
    extra += ["algo.learning_starts=50", "algo.batch_size=32"] if algo == "maddpg" else []
    out = train(compose_cfg(f"algo={algo}", f"actor={actor}", "env.N=4", *SWARM, *extra, "train.total_steps=400",
                            "env.max_cycles=10", "algo.rollout_steps=10"))
    assert (out / "done").exists()


def test_eval_at_another_team_size(compose_cfg, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:  # noqa: ANN001
    free = train(compose_cfg("env.N=4", *SWARM, "train.total_steps=200", "run=free"))
    assert cli.main(["eval", str(free), "env.N=12", "episodes=4", "envs=4"]) == 0
    row = json.loads((free / "eval.json").read_text())
    assert row["env_overrides"] == {"env.N": "12"} and row["n_agents"] == 12 and row["env_config"]["N"] == 12
    assert "return/agent_11" in row
    fixed = train(compose_cfg("env.N=4", "env.num_agent_neighbors=3", "env.num_landmark_neighbors=3",
                              "train.total_steps=200", "run=fixed"))  # sharing=all with the one-hot id
    capsys.readouterr()
    assert cli.main(["eval", str(fixed), "env.N=12", "episodes=4", "envs=4"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "sharing.agent_id=false" in err
    assert cli.main(["eval", str(free), "env.NN=12"]) == 2
    assert "has no key 'NN'" in capsys.readouterr().err
    assert cli.main(["eval", str(free), "env.scale_arena=false", "episodes=4", "envs=4"]) == 0  # a YAML bool, not "false"
    assert json.loads((free / "eval.json").read_text())["env_config"]["scale_arena"] is False
