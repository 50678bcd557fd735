"""Where the message channel meets other capabilities (issue 25, items 3-5).

* Information flow: agent i's decision depends on agent j's observation only when j may message
  i (directly or over the rounds) on i's own team's channel; never across teams, never between
  two agents without a channel; for every actor type, channel and neighbour graph, on a
  cooperative env and on envs with competing roles (tag, adversary).
* The same, seen as the self-play and cross-play paths use it: a side played by one actor next to
  another actor's side acts exactly as it would with the other side's observations replaced;
  cross-play refuses a channel when its sides are single agents of one team; the matrix games
  whose players are opponents of one role refuse a channel.
* Channel capacity: with ``bits = k`` a receiver (its own observation fixed) gets at most as many
  distinct values as k bits per sender (and per round) allow, for CommNet and TarMAC.
* Dropout: every round delivers a share 1 - p of the links, independently of the other rounds.
"""

from __future__ import annotations

import copy
import functools
import math
from dataclasses import replace

import pytest
import torch
from conftest import actor_outputs as outputs
from conftest import make_cfg
from omegaconf import DictConfig

from marlcli.algos import check_compatible, load_family
from marlcli.envs import make_env, role_of
from marlcli.errors import ConfigError
from marlcli.nets.comm import CommEncoder
from marlcli.selfplay.crossplay import SideBySide, evaluate_vs
from marlcli.trainer import train

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny nets: one thread is faster on a loaded machine


def expected_graph(obs: torch.Tensor, agents: list[str], position: list[int], neighbors: str, k: int,
                   radius: float) -> torch.Tensor:
    """Who may message whom ``[B, N_recv, N_send]``, written out independently of ``marlcli.nets.comm``:
    teammates only (a team is a role), then the neighbour rule among them."""
    b, n = obs.shape[0], obs.shape[1]
    mates = torch.tensor([[role_of(a) == role_of(c) and i != j for j, c in enumerate(agents)]
                          for i, a in enumerate(agents)])
    graph = mates.expand(b, n, n).clone()
    if neighbors == "all":
        return graph
    pos = obs[..., position]
    for e in range(b):
        for i in range(n):
            d = {j: float((pos[e, i] - pos[e, j]).norm()) for j in range(n) if mates[i, j]}
            keep = ({j for j, v in d.items() if v <= radius} if neighbors == "radius"
                    else set(sorted(d, key=d.get)[:k]))
            for j in range(n):
                graph[e, i, j] = j in keep
    return graph


def reach(graph: torch.Tensor, rounds: int) -> torch.Tensor:
    """Agent i's decision may depend on j when j reaches i in at most ``rounds`` hops (or j == i)."""
    n = graph.shape[-1]
    g = graph.float()
    out = torch.eye(n).expand_as(g).clone()
    step = out.clone()
    for _ in range(rounds):
        step = ((g @ step) > 0).float()
        out = ((out + step) > 0).float()
    return out > 0


def jacobian_support(actor: torch.nn.Module, obs: torch.Tensor, avail: torch.Tensor) -> torch.Tensor:
    """``[B, N_i, N_j]``: |d decision_i / d obs_j| summed over actions and features (copies are independent)."""
    n = obs.shape[1]
    rows = []
    for i in range(n):
        x = obs.clone().requires_grad_(True)
        outputs(actor, x, avail)[:, i].sum().backward()
        rows.append(x.grad.abs().sum(-1))  # [B, N_j]
    return torch.stack(rows, 1)


# (env overrides, spec rename): spread is cooperative (one team); tag and adversary have competing
# sides; "spread_teams" is spread's observation (with positions and entities) read as two teams, so
# that the range graphs also meet teams
ENVS = {
    "spread": (["env=spread", "env.N=4"], None),
    "spread_teams": (["env=spread", "env.N=4"], ["adversary_0", "adversary_1", "agent_0", "agent_1"]),
    "tag": (["env=tag", "env.num_good=2", "env.num_adversaries=2"], None),
    "adversary": (["env=adversary", "env.N=2"], None),
}
CASES = []
for env_name in ENVS:
    spatial = env_name.startswith("spread")
    for actor_type in (("mlp", "deepsets", "attention") if spatial else ("mlp",)):
        for comm in ("none", "commnet", "tarmac"):
            for nb in (("all", "nearest", "radius") if spatial and comm != "none" else ("all",)):
                CASES.append((env_name, actor_type, comm, nb))


@functools.cache
def base_config(env_name: str, algo: str) -> DictConfig:
    extra = ["env.continuous_actions=true"] if algo == "maddpg" else []
    return make_cfg(*ENVS[env_name][0], *extra, f"algo={algo}", "actor=deepsets", "comm=commnet", "comm.k=1",
                    "comm.radius=0.8", "comm.rounds=2")


@pytest.mark.parametrize("env_name,actor_type,comm,neighbors", CASES)
def test_information_flow_stays_within_a_team(env_name: str, actor_type: str, comm: str,
                                              neighbors: str) -> None:
    """d decision_i / d obs_j is zero unless j may message i on i's team's channel (over the rounds), never across
    teams, and zero for every j != i without a channel; nonzero where a message does flow (so the check bites).
    Red at HEAD on tag and adversary (and spread_teams): their channel joined predators and prey."""
    overrides, rename = ENVS[env_name]
    for algo in ("mappo", "iql", "maddpg"):
        cfg = copy.deepcopy(base_config(env_name, algo))  # composing is the slow part: once per env and family
        cfg.actor.type, cfg.comm.type, cfg.comm.neighbors = actor_type, comm, neighbors
        env = make_env(cfg.env, 3, 0, torch.device("cpu"))
        spec = env.spec if rename is None else replace(env.spec, agents=rename, teams=[0, 0, 1, 1])
        torch.manual_seed(0)
        actor = load_family(cfg.algo).make_actor(spec, cfg)
        ts = env.reset()
        obs = ts.obs + 0.3 * torch.randn_like(ts.obs) * (ts.obs != 0)  # keep the padding (entity slots) padding
        support = jacobian_support(actor, obs, ts.avail)
        n = spec.n_agents
        if comm == "none":
            allowed = torch.eye(n, dtype=torch.bool).expand_as(support)
        else:
            allowed = reach(expected_graph(obs, spec.agents, spec.position, neighbors, 1, 0.8), 2)
        leak = support * ~allowed
        assert float(leak.max()) == 0.0, (algo, "decision of agent i moves with an observation it may not hear",
                                          leak.amax(0))
        cross = torch.tensor([[role_of(a) != role_of(c) for c in spec.agents] for a in spec.agents])
        assert float((support * cross).max()) == 0.0, (algo, "gradient crosses teams")
        assert bool((support.diagonal(0, 1, 2) > 0).all()), algo  # every agent's own observation counts
        heard = allowed & ~torch.eye(n, dtype=torch.bool)
        if comm != "none" and bool(heard.any()):
            assert float(support[heard].max()) > 0.0, (algo, "no message flows at all: the check would be vacuous")
        env.close()


@pytest.mark.parametrize("comm", ["commnet", "tarmac"])
def test_side_by_side_acts_as_if_the_other_side_were_elsewhere(compose_cfg, comm: str) -> None:
    """Cross-play and asymmetric self-play run two actors on the full observation and keep each one's agents
    (``SideBySide``, ``RoleSelfPlayVecEnv``): on tag each side's actions must not move when the other side's
    observations do, so a frozen or foreign side's messages come from the actor that plays it. Red at HEAD."""
    cfg = compose_cfg("env=tag", "env.num_good=2", "env.num_adversaries=2", "sharing=role", f"comm={comm}",
                      "comm.rounds=2")
    env = make_env(cfg.env, 64, 0, torch.device("cpu"))
    spec = env.spec
    torch.manual_seed(1)
    a = load_family(cfg.algo).make_actor(spec, cfg).eval()
    b = load_family(cfg.algo).make_actor(spec, cfg).eval()
    predators = [role_of(x) == "adversary" for x in spec.agents]
    both = SideBySide(a, b, predators)
    ts = env.reset()
    obs = ts.obs + torch.randn_like(ts.obs)
    with torch.no_grad():
        base, _ = both.act(obs, ts.avail, both.initial_hidden(64), True)
        for side in (True, False):
            mine = torch.tensor(predators) == side
            moved = obs.clone()
            moved[:, ~mine] = torch.randn_like(moved[:, ~mine]) * 3  # the other side sees something else
            act, _ = both.act(moved, ts.avail, both.initial_hidden(64), True)
            assert torch.equal(act[:, mine], base[:, mine]), (side, "a side's actions depend on the other side")
    env.close()


def test_channel_refused_between_opponents_of_one_role(compose_cfg) -> None:
    """prisoners and rps: both players have the role `player` but play against each other; a channel would
    join them (red at HEAD: accepted). The cooperative coordination game keeps it."""
    for game, backend in (("prisoners", "pettingzoo"), ("rps", "native")):
        cfg = compose_cfg(f"env={game}", f"env.backend={backend}", "comm=commnet", "algo=ippo")
        env = make_env(cfg.env, 1, 0, torch.device("cpu"))
        with pytest.raises(ConfigError, match="opponents of one role") as err:
            check_compatible(load_family(cfg.algo), env.spec, cfg)
        assert "\n" not in str(err.value)
        env.close()
    cfg = compose_cfg("env=coordination", "comm=commnet", "algo=ippo")
    env = make_env(cfg.env, 1, 0, torch.device("cpu"))
    check_compatible(load_family(cfg.algo), env.spec, cfg)
    env.close()


def test_crossplay_of_one_team_with_a_channel_is_refused(compose_cfg, tmp_path, capsys) -> None:
    """Cross-play on spread plays single agents of one team side by side: with a channel, PATH's agent would
    hear messages PATH's actor makes up for OTHER's agents. One line, exit 2 (red at HEAD: it ran)."""
    from marlcli.cli import main

    out = train(compose_cfg("env=spread", "comm=commnet", "train.total_steps=64", "algo.rollout_steps=16",
                            "train.eval_interval=100000"))
    with pytest.raises(ConfigError, match="cross-play runs without a channel"):
        evaluate_vs(out, out, episodes=4, envs=4)
    capsys.readouterr()
    assert main(["eval", str(out), f"vs={out}", "episodes=4"]) == 2
    err = capsys.readouterr().err.strip()
    assert "cross-play runs without a channel" in err and len(err.splitlines()) == 1


def distinct_rows(x: torch.Tensor) -> int:
    return len(torch.unique(torch.round(x * 1e4) / 1e4, dim=0))


@pytest.mark.parametrize("comm", ["commnet", "tarmac"])
@pytest.mark.parametrize("bits,rounds,dropout", [(1, 1, 0.0), (2, 1, 0.0), (1, 2, 0.0), (1, 1, 0.3)])
def test_channel_capacity_is_k_bits_per_sender(compose_cfg, comm: str, bits: int, rounds: int, dropout: float) -> None:
    """With bits=k a receiver whose own observation is fixed can get at most (2^k)^(rounds (N-1)) distinct values,
    or (2^k + 1)^(N-1) when a message can be lost, whatever the senders see. Red at HEAD for tarmac: its
    continuous key gave thousands of distinct values with 3 agents and 1 bit (CommNet: 3)."""
    cfg = compose_cfg("env=spread", "env.N=3", f"comm={comm}", f"comm.bits={bits}", f"comm.rounds={rounds}",
                      f"comm.dropout={dropout}")
    env = make_env(cfg.env, 1, 0, torch.device("cpu"))
    torch.manual_seed(2)
    enc = load_family(cfg.algo).make_actor(env.spec, cfg).encoder
    assert isinstance(enc, CommEncoder)
    obs = torch.randn(4096, 3, env.spec.obs_dim) * 2.0
    obs[:, 0] = obs[0, 0]  # receiver 0 sees one fixed thing
    with torch.no_grad():
        received = enc(obs)[:, 0, -enc.size:]
    n, codes = 3, 2 ** bits
    bound = (codes + 1) ** (n - 1) if dropout > 0 else codes ** (rounds * (n - 1))
    count = distinct_rows(received)
    assert 2 <= count <= bound, (comm, bits, rounds, dropout, count, bound)
    env.close()


@pytest.mark.parametrize("comm", ["commnet", "tarmac"])
def test_dropout_loses_each_message_with_p_in_every_round(compose_cfg, comm: str) -> None:
    """p = 0.5: every round delivers half of the links (at HEAD round 2 delivered a quarter, round 3 an eighth),
    and a link's fates in two rounds are independent (both delivered: a quarter)."""
    p, batch = 0.5, 20_000
    for rounds in (3, 2, 1):  # the compounded rounds first: the behaviour is what HEAD gets wrong
        cfg = compose_cfg("env=spread", "env.N=2", f"comm={comm}", "comm.bits=1", f"comm.rounds={rounds}",
                          f"comm.dropout={p}")
        env = make_env(cfg.env, 1, 0, torch.device("cpu"))
        enc = load_family(cfg.algo).make_actor(env.spec, cfg).encoder
        for layer in enc.message:  # every sender always sends bit +1: what arrives in the last round shows the link
            layer.weight.data.zero_()
            layer.bias.data.fill_(1.0)
        torch.manual_seed(rounds)
        with torch.no_grad():
            received = enc(torch.randn(batch, 2, env.spec.obs_dim))[..., -1]  # [B, 2]: 1 delivered, 0 lost
        assert set(received.unique().tolist()) <= {0.0, 1.0}
        tol = 4 * math.sqrt(p * (1 - p) / received.numel())
        got = float(received.mean())
        assert abs(got - (1 - p)) < tol, (comm, rounds, got)
        heard = torch.stack([h[:, 0, 1] for h in enc.last_heard])  # [rounds, B]: receiver 0 hears sender 1
        assert heard.shape[0] == rounds
        for r in range(rounds):
            assert abs(float(heard[r].mean()) - (1 - p)) < 4 * math.sqrt(p * (1 - p) / batch), (comm, rounds, r)
        if rounds > 1:
            both = float((heard[0] * heard[1]).mean())
            assert abs(both - (1 - p) ** 2) < 4 * math.sqrt(0.25 * 0.75 / batch), (comm, both)
        env.close()


def test_asymmetric_self_play_and_role_cross_play_with_a_channel(tmp_path, capsys) -> None:
    """With messages inside a team, tag's asymmetric self-play (the learner's actor computes the frozen roles'
    messages, which reach only the frozen roles, whose actions the snapshot's own forward replaces) and role-vs-role
    cross-play are exact, so they are accepted: train, `marl eval` and `vs=` run through."""
    from marlcli.cli import main

    def run(name: str, seed: int):
        return train(make_cfg(f"results_dir={tmp_path}", f"run={name}", f"seed={seed}", "device=cpu", "train.log_interval=80",
                              "logger.progress=false", "env=tag", "env.num_envs=8", "env.max_cycles=10", "sharing=role",
                              "selfplay=pool", "selfplay.snapshot_interval=40", "comm=tarmac", "comm.bits=1",
                              "algo.rollout_steps=10", "algo.minibatches=2", "algo.epochs=1", "train.total_steps=80",
                              "train.eval_interval=80", "train.eval_episodes=8", "train.eval_envs=8"))

    a = run("a", 0)
    rows = {r["side"]: r for r in evaluate_vs(a, a, episodes=8, envs=8)}
    assert set(rows) == {"adversary", "agent"}
    capsys.readouterr()
    assert main(["eval", str(a), "episodes=8"]) == 0


@pytest.mark.parametrize("factory,teams", [
    ("mpe2.simple_speaker_listener_v4:parallel_env", []),  # cooperative although it has two roles
    ("mpe2.simple_reference_v3:parallel_env", []),
    ("mpe2.simple_tag_v3:parallel_env", [0, 0, 0, 1]),
    ("mpe2.simple_world_comm_v3:parallel_env", [0, 0, 0, 0, 1, 1]),  # the lead adversary hunts with the adversaries
    ("mpe2.simple_crypto_v3:parallel_env", [0, 1, 1]),  # eve against alice and bob
    ("marlcli.envs.matrix:prisoners", [0, 1]),
    ("marlcli.envs.matrix:coordination", []),
])
def test_sides_of_the_games(factory: str, teams: list[int]) -> None:
    """Who may message whom is who plays with whom, not the role names: speaker and listener are one team."""
    cfg = make_cfg("env=pettingzoo", f"env.factory={factory}")
    env = make_env(cfg.env, 1, 0, torch.device("cpu"))
    assert env.spec.teams == teams, env.spec.agents
    env.close()


def test_speaker_listener_keeps_its_channel() -> None:
    """The listener's decision depends on the speaker's observation through the channel (the speaker and the
    listener are two roles of one cooperative team; a role-based mask would cut the only useful link)."""
    cfg = make_cfg("env=pettingzoo", "env.factory=mpe2.simple_speaker_listener_v4:parallel_env", "algo=mappo",
                   "comm=commnet", "sharing=role")
    env = make_env(cfg.env, 3, 0, torch.device("cpu"))
    torch.manual_seed(0)
    actor = load_family(cfg.algo).make_actor(env.spec, cfg)
    ts = env.reset()
    support = jacobian_support(actor, ts.obs + 0.3 * torch.randn_like(ts.obs), ts.avail)
    speaker, listener = env.spec.agents.index("speaker_0"), env.spec.agents.index("listener_0")
    assert float(support[:, listener, speaker].min()) > 0.0
    env.close()
