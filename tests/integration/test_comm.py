"""Learned communication (issue 19): the channel in every family, decentralization with messages,
gradients into the senders, exact bits, dropout and the cut. The tasks that need the channel: tests/learning/test_comm_learns.py."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import actor_outputs as outputs

from marlcli.algos import load_family
from marlcli.cli import main
from marlcli.envs import make_env
from marlcli.errors import ConfigError
from marlcli.nets.comm import CommEncoder
from marlcli.trainer import train

FAMILIES = ["mappo", "ippo", "coma", "iql", "vdn", "qmix", "maddpg"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny nets: one thread is faster on a loaded machine


def build(compose_cfg, *overrides: str):
    cfg = compose_cfg(*overrides)
    env = make_env(cfg.env, 6, 0, torch.device("cpu"))
    actor = load_family(cfg.algo).make_actor(env.spec, cfg)
    ts = env.reset()
    return cfg, env, actor, ts.obs + torch.randn_like(ts.obs), ts.avail


@pytest.mark.parametrize("algo", FAMILIES)
def test_gradient_reaches_the_sender_in_every_family(compose_cfg, algo: str) -> None:
    """d out_i / d obs_j != 0 for j != i with a channel, == 0 without (agent i hears j only through j's message)."""
    for comm, hears in (("commnet", True), ("tarmac", True), ("none", False)):
        _, env, actor, obs, avail = build(compose_cfg, f"algo={algo}", "env=spread", f"comm={comm}")
        assert isinstance(actor.encoder, CommEncoder) == hears
        obs.requires_grad_(True)
        outputs(actor, obs, avail)[:, 0].sum().backward()
        grad = obs.grad.abs().sum((0, 2))  # [N]
        assert grad[0] > 0 and bool((grad[1:] > 0).all()) == hears, (comm, grad)


@pytest.mark.parametrize("comm", ["commnet", "tarmac"])
def test_decentralized_with_messages(compose_cfg, comm: str) -> None:
    """Agent i's decision changes with agent j's observation only through j's message: cut the channel and
    it never does; keep it and j's message is a function of j's own observation alone."""
    _, env, actor, obs, avail = build(compose_cfg, f"comm={comm}", "comm.rounds=2", "sharing=none")
    enc = actor.encoder
    n = env.spec.n_agents
    base = outputs(actor, obs, avail)
    for i in range(n):
        other = obs.clone()
        others = torch.arange(n) != i
        other[:, others] = torch.randn_like(other[:, others]) * 5
        assert not torch.allclose(outputs(actor, other, avail)[:, i], base[:, i])  # messages carry j's obs
        enc.cut = True
        assert torch.allclose(outputs(actor, other, avail)[:, i], outputs(actor, obs, avail)[:, i])
        enc.cut = False
    # round 1's message of agent j depends only on j's own features
    x = enc.base(obs)
    sent = enc.emit(torch.cat([x, x.new_zeros(*x.shape[:-1], enc.size)], -1), 0)
    other = obs.clone()
    other[:, 1:] += 3.0
    x2 = enc.base(other)
    sent2 = enc.emit(torch.cat([x2, x2.new_zeros(*x2.shape[:-1], enc.size)], -1), 0)
    assert torch.equal(sent[:, 0], sent2[:, 0]) and not torch.allclose(sent[:, 1:], sent2[:, 1:])


def test_discrete_channel_emits_exact_bits_and_trains_through_them(compose_cfg) -> None:
    _, _, actor, obs, avail = build(compose_cfg, "comm=commnet", "comm.bits=3")
    obs.requires_grad_(True)
    enc = actor.encoder
    outputs(actor, obs, avail)[:, 0].sum().backward()
    bits = enc.last_sent
    assert bits.shape[-1] == 3 and set(bits.unique().tolist()) <= {-1.0, 1.0}
    assert obs.grad[:, 1:].abs().sum() > 0  # straight-through: the tanh's gradient reaches the senders
    actor.eval()
    with torch.no_grad():
        actor.act(obs, avail, None, True)
    assert set(enc.last_sent.unique().tolist()) <= {-1.0, 1.0}


def test_dropout_one_equals_the_cut_and_zero_changes_nothing(compose_cfg) -> None:
    _, _, actor, obs, avail = build(compose_cfg, "comm=tarmac", "comm.rounds=2")
    enc = actor.encoder
    full = outputs(actor, obs, avail)
    enc.cut = True
    cut = outputs(actor, obs, avail)
    enc.cut, enc.dropout = False, 1.0
    assert torch.equal(outputs(actor, obs, avail), cut) and not torch.allclose(full, cut)
    enc.dropout = 0.5  # some messages lost: between the two, and random
    assert not torch.equal(outputs(actor, obs, avail), outputs(actor, obs, avail))


def test_neighbor_graph_from_positions(compose_cfg) -> None:
    """nearest k: agent i hears exactly k others; radius 0: nobody (= the cut); no positions: one line."""
    _, _, actor, obs, avail = build(compose_cfg, "comm=commnet", "comm.neighbors=nearest", "comm.k=1", "env.N=4")
    from marlcli.nets.comm import links

    hear = links(obs, actor.encoder.spec, actor.encoder.comm)
    assert hear.shape == (6, 4, 4) and (hear.sum(-1) == 1).all() and not hear.diagonal(0, -2, -1).any()
    _, _, actor, obs, avail = build(compose_cfg, "comm=commnet", "comm.neighbors=radius", "comm.radius=0")
    enc = actor.encoder
    none = outputs(actor, obs, avail)
    enc.cut = True
    assert torch.equal(none, outputs(actor, obs, avail))
    with pytest.raises(ConfigError, match="needs agent positions"):
        build(compose_cfg, "comm=commnet", "comm.neighbors=nearest", "env.observe_position=false")


def test_every_family_trains_with_a_channel_and_logs_message_statistics(compose_cfg) -> None:
    for algo in FAMILIES:
        out = train(compose_cfg(f"algo={algo}", "env=reference", "comm=commnet", "comm.bits=1",
                                "train.total_steps=100", "train.log_interval=100", "train.eval_interval=10000"))
        logs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        assert any("comm/bit_entropy" in r and "comm/mean_0" in r for r in logs), algo


def test_eval_ablation_and_export_refusal(compose_cfg, capsys) -> None:
    out = train(compose_cfg("env=reference", "comm=commnet", "train.total_steps=100"))
    assert main(["eval", str(out), "episodes=8", "comm=off"]) == 0
    cut = json.loads((out / "eval_comm.json").read_text())
    assert cut["comm_overrides"] == {"comm.cut": "true"} and "return_mean_intact" in cut
    assert main(["eval", str(out), "episodes=8", "comm.dropout=0.2"]) == 0
    assert main(["eval", str(out), "episodes=8"]) == 0 and "comm_overrides" not in json.loads(
        (out / "eval.json").read_text())
    assert main(["export", str(out)]) == 2
    assert "cannot export a communicating actor" in capsys.readouterr().err
    assert main(["eval", str(out), "comm.nope=1"]) == 2


def test_range_graph_on_vmas_positions(compose_cfg) -> None:
    """VMAS observations that start with the agent's position declare it (EnvSpec.position), so a channel
    can hear only the agents in range there too."""
    pytest.importorskip("vmas")
    out = train(compose_cfg("env=vmas", "env.scenario=navigation", "env.n_agents=3", "comm=tarmac",
                            "comm.neighbors=nearest", "comm.k=1", "train.total_steps=200", "train.eval_interval=10000"))
    assert (out / "metrics.jsonl").exists()
    from marlcli.envs import make_env

    env = make_env(compose_cfg("env=vmas", "env.scenario=navigation").env, 2, 0, torch.device("cpu"))
    assert env.spec.position == [0, 1]
    assert torch.allclose(env.reset().obs[..., :2], env.positions())
