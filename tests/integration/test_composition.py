"""Composition test (issue 25): where the options meet, each pairing is refused up front or runs end to end.

The option space is every algorithm (``conf/algo``) x every kind of env marlcli ships x the options
that change who acts and what an actor sees (``sharing``, ``actor``, ``critic``, ``comm``,
``selfplay``, ``algo.agent``, ``algo.last_action``). ``RULES`` is the model of what must be refused:
each rule names the options it depends on, when it fires, and a phrase of the one-line error
the code gives (``marlcli.compat.check_pairings`` holds the pairing refusals that had no home;
the others live where they were). A combination is

* refused when a rule fires: composing + validating it (what ``marl train`` does before anything
  runs) must raise one ``MarlError`` (or Hydra's composition error) whose text is one line and
  says what a firing rule says;
* accepted otherwise: it must pass validation and then train -> be killed right after a
  checkpoint -> resume with a larger budget -> ``marl eval`` -> ``marl export`` (refused with one
  line for communicating actors, which marl export cannot split per agent) -> ``marl report``,
  with tiny budgets and without an exception.

The normal suite runs a *sampled tier*: a pairwise covering array built here by a deterministic
greedy algorithm (every pair of option values, the algorithm and env kind included, is in an
accepted combination, or, when no accepted combination can hold it, in a refused one). The full
product runs with ``pytest -m composition`` (one test per algorithm x env, looping over the rest;
refusals are checked once per distinct value of the options their rule depends on).
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import train_killed_after
from omegaconf import DictConfig

from marlcli import results
from marlcli.errors import MarlError

# ----------------------------------------------------------------------------- the option space
# The first value of each factor is its default (what a combination that does not care about it gets).
FACTORS: dict[str, list[str]] = {
    "algo": ["mappo", "ippo", "iql", "vdn", "qmix", "coma", "maddpg"],
    "env": ["spread", "reference", "rendezvous", "tag", "adversary", "rps", "prisoners", "coordination",
            "pz_speaker_listener", "pz_adversary", "testbed", "vmas"],
    "sharing": ["all", "none", "role"],
    "actor": ["mlp", "deepsets", "attention"],
    "critic": ["centralized", "independent", "set"],
    "comm": ["none", "commnet", "tarmac"],
    "selfplay": ["none", "latest", "pool"],
    "agent": ["mlp", "rnn"],
    "last_action": ["false", "true"],
}

KIND = {  # what each env stands for in issue 25's list of env kinds
    "spread": "cooperative (native)", "reference": "cooperative, speaker/listener (native)",
    "rendezvous": "cooperative, continuous actions (native)", "tag": "competing roles (native)",
    "adversary": "competing roles (native)", "rps": "mirrored game", "prisoners": "mirrored game, repeated",
    "coordination": "mirrored game, cooperative", "pz_speaker_listener": "heterogeneous PettingZoo",
    "pz_adversary": "heterogeneous PettingZoo, competing roles", "testbed": "the testbed (early termination, masks)",
    "vmas": "VMAS, continuous actions",
}

ENV_OVERRIDES: dict[str, list[str]] = {
    "spread": ["env=spread", "env.max_cycles=6"],
    "reference": ["env=reference", "env.max_cycles=4"],
    "rendezvous": ["env=rendezvous"],
    "tag": ["env=tag", "env.max_cycles=6"],
    "adversary": ["env=adversary", "env.max_cycles=6"],
    "rps": ["env=rps"],
    "prisoners": ["env=prisoners", "env.max_cycles=4"],
    "coordination": ["env=coordination"],
    "pz_speaker_listener": ["env=pettingzoo", "env.name=speaker_listener",
                            "env.factory=mpe2.simple_speaker_listener_v4:parallel_env", "++env.kwargs.max_cycles=6"],
    "pz_adversary": ["env=pettingzoo", "env.name=pz_adversary", "env.factory=mpe2.simple_adversary_v3:parallel_env",
                     "++env.kwargs.max_cycles=6"],
    "testbed": ["env=testbed", "env.max_cycles=4", "env.need_low=1", "env.need_high=3"],
    "vmas": ["env=vmas", "env.n_agents=2", "env.max_steps=6"],
}

Q_FAMILY = ("iql", "vdn", "qmix")  # the algorithms with algo.agent and algo.last_action

ALGO_OVERRIDES: dict[str, list[str]] = {
    "mappo": ["algo.epochs=1", "algo.minibatches=1"],
    "ippo": ["algo.epochs=1", "algo.minibatches=1"],
    "coma": ["algo.critic_epochs=1", "algo.actor_epochs=1"],
    "maddpg": ["algo.learning_starts=10", "algo.batch_size=8", "algo.updates_per_rollout=1", "algo.buffer_size=200"],
    **{q: ["algo.learning_starts=1", "algo.batch_episodes=2", "algo.replay_ratio=1", "algo.buffer_episodes=8", "algo.eps_anneal_steps=20",
           "algo.mixer_embed=4", "algo.hypernet_hidden=8"] for q in Q_FAMILY},
}

ROLLOUT = 5  # steps per env copy per update; 2 copies -> 10 env steps per update
TINY = ["device=cpu", "logger.progress=false", "env.num_envs=2", f"algo.rollout_steps={ROLLOUT}", "algo.hidden=8",
        "actor.embed=8", "comm.size=4", "train.eval_episodes=2", "train.eval_envs=2", "train.log_interval=10",
        "train.eval_interval=20", "selfplay.snapshot_interval=20", "selfplay.pool_size=2"]
KILL_AT, FIRST_TOTAL, RESUMED_TOTAL = 20, 30, 40  # killed after the step-20 checkpoint; resumed to 40


def overrides(row: dict[str, str]) -> list[str]:
    """The ``marl train`` overrides of a combination (tiny budgets not included)."""
    out = [f"algo={row['algo']}", *ENV_OVERRIDES[row["env"]], *ALGO_OVERRIDES[row["algo"]]]
    out += [f"{k}={row[k]}" for k in ("sharing", "actor", "critic", "comm", "selfplay")]
    # algo.agent / algo.last_action exist in the Q-learning schema only; elsewhere a non-default value is a
    # key the schema refuses (the rule below), a default one is simply not given
    out += [f"algo.{k}={row[k]}" for k in ("agent", "last_action") if row["algo"] in Q_FAMILY or row[k] != FACTORS[k][0]]
    return out


# ----------------------------------------------------------------------------- the model of what is refused
@dataclass(frozen=True)
class Rule:
    """A refusal: fires on a combination when ``when`` holds for the values of ``keys``."""

    keys: tuple[str, ...]
    when: Callable[..., bool]
    says: str  # a phrase of the one-line error
    why: str  # why the pairing has no sensible meaning (the closing note's table)
    where: str  # the check that refuses it

    def fires(self, row: dict[str, str]) -> bool:
        return all(k in row for k in self.keys) and bool(self.when(*(row[k] for k in self.keys)))


ENTITY_ENVS = ("spread",)  # envs that declare their observation layout as entity groups (not VMAS: issue 25 item 9)
CONTINUOUS_ENVS = ("rendezvous", "vmas")  # Box actions
UNMIRRORED_ENVS = ("spread", "rendezvous", "testbed")  # one role whose first agent has no mirror image
ASYMMETRIC_ENVS = ("tag", "adversary", "reference", "pz_speaker_listener", "pz_adversary")  # self-play by roles
RIVAL_ENVS = ("rps", "prisoners")  # two opponents of one role

RULES: list[Rule] = [
    Rule(("algo", "agent"), lambda a, g: a not in Q_FAMILY and g != "mlp", "'algo.agent'",
         "only the Q-learning agents (IQL/VDN/QMIX) have a recurrent variant", "the typed schema (marlcli/config.py)"),
    Rule(("algo", "last_action"), lambda a, x: a not in Q_FAMILY and x == "true", "'algo.last_action'",
         "only the Q-learning agents take their last action as input", "the typed schema (marlcli/config.py)"),
    Rule(("actor", "env"), lambda a, e: a != "mlp" and e not in ENTITY_ENVS, "declares its observation layout",
         "an entity encoder needs the observation's entity groups", "algos.check_compatible"),
    Rule(("algo", "env"), lambda a, e: a in (*Q_FAMILY, "coma") and e in CONTINUOUS_ENVS, "supports discrete actions only",
         "Q-learning and COMA pick one of finitely many actions", "algos.check_compatible"),
    Rule(("algo", "critic"), lambda a, c: c == "set" and a in ("coma", "maddpg"),
         "critic=set (a centralized critic over the set of agents) is available",
         "the set critic exists for PPO's value and QMIX's mixer only", "algos.check_compatible"),
    Rule(("selfplay", "env"), lambda s, e: s != "none" and e in UNMIRRORED_ENVS, "selfplay needs opponents that mirror",
         "one role whose agents outnumber (or differ from) the learner: no opponent to freeze", "selfplay.learners"),
    Rule(("algo", "selfplay", "env"), lambda a, s, e: a in ("vdn", "qmix") and s != "none" and e in ASYMMETRIC_ENVS,
         "mixes every agent into one team value",
         "asymmetric self-play learns per agent; a mixer's team value would mix in the frozen agents", "selfplay.check"),
    Rule(("comm", "env"), lambda c, e: c != "none" and e in RIVAL_ENVS, "its players are opponents of one role",
         "a channel between two opponents of one role lets one's loss train the other's messages",
         "algos.check_channel (issue 25)"),
    Rule(("algo", "critic"), lambda a, c: a in ("iql", "vdn") and c == "set", "the set critic would be ignored",
         "IQL and VDN have no critic and no mixer reading the state: critic=set would be silently ignored",
         "compat.check_pairings (issue 25)"),
    Rule(("algo", "critic"), lambda a, c: a == "qmix" and c == "independent", "the independent critic would be ignored",
         "QMIX's mixer reads the global state whatever critic.type says", "compat.check_pairings (issue 25)"),
]


def fired(row: dict[str, str]) -> list[Rule]:
    return [r for r in RULES if r.fires(row)]


# ----------------------------------------------------------------------------- the pairwise covering array
def _pairs(row: dict[str, str]) -> Iterator[tuple[tuple[str, str], tuple[str, str]]]:
    for a, b in itertools.combinations(FACTORS, 2):
        if a in row and b in row:
            yield (a, row[a]), (b, row[b])


def _complete(row: dict[str, str], uncovered: set, rest: list[str]) -> dict[str, str] | None:
    """An accepted completion of the partial ``row`` (depth first, values that cover most new pairs first)."""
    if fired(row):
        return None
    if not rest:
        return dict(row)
    name, later = rest[0], rest[1:]

    def gain(v: str) -> int:
        return sum(((name, v), (b, row[b])) in uncovered or ((b, row[b]), (name, v)) in uncovered for b in row)

    for v in sorted(FACTORS[name], key=lambda v: -gain(v)):  # stable: ties keep the factor's order
        done = _complete({**row, name: v}, uncovered, later)
        if done is not None:
            return done
    return None


def covering_array() -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """``(accepted, refused)``: accepted combinations holding every pair some accepted combination can hold,
    and one refused combination for each pair none can (the pair with the other options at their defaults)."""
    names = list(FACTORS)
    uncovered = {((a, va), (b, vb)) for a, b in itertools.combinations(names, 2) for va in FACTORS[a] for vb in FACTORS[b]}
    accepted: list[dict[str, str]] = []
    refused: list[dict[str, str]] = []
    for pair in sorted(uncovered, key=lambda p: (names.index(p[0][0]), FACTORS[p[0][0]].index(p[0][1]),
                                                 names.index(p[1][0]), FACTORS[p[1][0]].index(p[1][1]))):
        if pair not in uncovered:
            continue
        seed = dict(pair)
        row = _complete(seed, uncovered, [n for n in names if n not in seed])
        if row is None:
            refused.append({n: seed.get(n, FACTORS[n][0]) for n in names})
            uncovered.discard(pair)
            continue
        accepted.append({n: row[n] for n in names})
        uncovered.difference_update(_pairs(row))
    return accepted, refused


def row_id(row: dict[str, str]) -> str:
    return "-".join(row[n] for n in FACTORS if row[n] != FACTORS[n][0] or n in ("algo", "env"))


# ----------------------------------------------------------------------------- one combination, end to end
def refusal(extra: list[str]) -> tuple[str | None, DictConfig | None]:
    """What ``marl train`` says before anything runs: ``(None, the config)`` when accepted, else ``(its one error
    line, None)``."""
    from marlcli.cli import validate_overrides
    from marlcli.config import compose
    from marlcli.trainer import validate

    try:
        cfg = compose(extra)
    except Exception:  # noqa: BLE001  composition refused (an unknown key): what marl train prints for it
        return validate_overrides(extra) or "composition failed, but marl train's validation accepted it", None
    try:
        validate(cfg)
    except MarlError as exc:
        return str(exc), None
    return None, cfg


def _cli(argv: list[str]) -> tuple[int, str]:
    """``marl <argv>`` in-process: its exit code and what it wrote to stderr."""
    from marlcli.cli import main

    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = main(argv)
    return code, err.getvalue()


def run_through(row: dict[str, str], cfg: DictConfig, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """train ``cfg`` -> killed after a checkpoint -> resume -> marl eval -> marl export -> marl report, or an assertion."""
    from marlcli.config import compose
    from marlcli.trainer import train

    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
        seed_dir = train_killed_after(cfg, KILL_AT, monkeypatch)
        assert not (seed_dir / results.DONE_FILE).exists()
        resumed = train(compose([f"resume={seed_dir}", f"train.total_steps={RESUMED_TOTAL}", "logger.progress=false"]))
    assert resumed == seed_dir
    assert (seed_dir / results.DONE_FILE).read_text().strip() == str(RESUMED_TOTAL)
    code, err = _cli(["eval", str(seed_dir), "episodes=2", "envs=2"])
    assert code == 0, f"marl eval: {err}"
    assert json.loads((seed_dir / "eval.json").read_text())["step"] == RESUMED_TOTAL
    code, err = _cli(["export", str(seed_dir), "latency_iters=10", "parity_episodes=2"])
    if row["comm"] == "none":
        assert code == 0, f"marl export: {err}"
        assert (seed_dir / "export" / "manifest.json").exists()
    else:  # a communicating actor has no one-file-per-agent export: refused with one line
        assert code == 2 and len(err.strip().splitlines()) == 1 and "communicating actor" in err, err
    from marlcli.selfplay import payoff

    real = payoff.payoff_matrix  # self-play runs: the snapshots' payoff matrix on 4 episodes a cell, not 200
    monkeypatch.setattr(payoff, "payoff_matrix", lambda sdir, episodes=4: real(sdir, episodes))
    code, err = _cli(["report", str(seed_dir.parent), f"out={root / 'report'}"])
    assert code == 0, f"marl report: {err}"


def check(row: dict[str, str], root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One combination: refused as the rules say, or accepted and run through."""
    extra = [f"results_dir={root}", f"run={row_id(row)}", *TINY, f"train.total_steps={FIRST_TOTAL}",
             f"train.checkpoint_interval={KILL_AT // 2}", *overrides(row)]
    rules = fired(row)
    err, cfg = refusal(extra)
    if rules:
        assert err is not None, f"{row_id(row)} ran although {rules[0].where} should refuse it: {rules[0].why}"
        assert len(err.splitlines()) == 1, f"not one line: {err!r}"
        assert any(r.says in err for r in rules), f"{row_id(row)} refused for another reason: {err}"
        return
    assert err is None, f"{row_id(row)} refused, but no rule says so: {err}"
    try:
        run_through(row, cfg, root, monkeypatch)
    except AssertionError:
        raise
    except Exception as exc:  # a crash: the overrides and the traceback's last lines
        tail = "".join(traceback.format_exception(exc)[-6:])
        raise AssertionError(f"{row_id(row)} crashed; overrides: {' '.join(overrides(row))}\n{tail}") from None


ACCEPTED, REFUSED = covering_array()


@pytest.mark.parametrize("row", ACCEPTED + REFUSED, ids=[row_id(r) for r in ACCEPTED + REFUSED])
def test_sampled_combination(row: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    check(row, tmp_path, monkeypatch)


def test_covering_array_holds_every_pair() -> None:
    """Every pair of option values is in an accepted combination, or no accepted combination can hold it and a
    refused one does; the array is the same at every collection (deterministic)."""
    covered = {p for row in ACCEPTED for p in _pairs(row)}
    refused_pairs = {p for row in REFUSED for p in _pairs(row)}
    for a, b in itertools.combinations(FACTORS, 2):
        for va, vb in itertools.product(FACTORS[a], FACTORS[b]):
            pair = ((a, va), (b, vb))
            assert pair in covered or (pair in refused_pairs and _complete(dict(pair), set(), [
                n for n in FACTORS if n not in (a, b)]) is None), pair
    assert all(not fired(r) for r in ACCEPTED) and all(fired(r) for r in REFUSED)
    assert covering_array() == (ACCEPTED, REFUSED)


# ----------------------------------------------------------------------------- the full product (pytest -m composition)
def product_rows(algo: str, env: str) -> Iterator[dict[str, str]]:
    rest = [n for n in FACTORS if n not in ("algo", "env")]
    for values in itertools.product(*(FACTORS[n] for n in rest)):
        yield {"algo": algo, "env": env, **dict(zip(rest, values, strict=True))}


@pytest.mark.composition
@pytest.mark.parametrize(("algo", "env"), list(itertools.product(FACTORS["algo"], FACTORS["env"])))
def test_full_product(algo: str, env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every combination with this algorithm and env: each accepted one run through, each refusal checked once
    per distinct value of the options its rule depends on (the other options cannot change a refusal's rule)."""
    seen: set = set()
    failures = []
    for k, row in enumerate(product_rows(algo, env)):
        rules = fired(row)
        if rules:
            key = tuple((n, row[n]) for n in rules[0].keys)
            if key in seen:
                continue
            seen.add(key)
        try:
            check(row, tmp_path / str(k), monkeypatch)
        except AssertionError as exc:
            failures.append(str(exc))
    assert not failures, f"{len(failures)} combinations failed:\n" + "\n".join(failures)


def table() -> str:
    """The closing note's table: each refused pair of option values and why (markdown).

    "direct": a rule on these two options refuses it; "derived": every completion of the pair is refused by
    some rule (e.g. algo.agent=rnn exists for the Q-learners only, which refuse continuous envs)."""
    covered = {p for row in ACCEPTED for p in _pairs(row)}
    total = sum(len(FACTORS[a]) * len(FACTORS[b]) for a, b in itertools.combinations(FACTORS, 2))
    lines = [f"{len(covered)} of {total} pairs of option values run end to end in {len(ACCEPTED)} combinations; "
             f"{total - len(covered)} pairs are refused:", "", "| pair | how | refused by | why |", "|---|---|---|---|"]
    for a, b in itertools.combinations(FACTORS, 2):
        for va, vb in itertools.product(FACTORS[a], FACTORS[b]):
            if ((a, va), (b, vb)) in covered:
                continue
            row = {n: FACTORS[n][0] for n in FACTORS} | {a: va, b: vb}
            rules = [r for r in fired(row) if set(r.keys) <= {a, b, "algo", "env"}]
            direct = [r for r in rules if set(r.keys) <= {a, b}]
            shown = direct or fired(row)
            lines.append(f"| {a}={va} {b}={vb} | {'direct' if direct else 'derived'} | "
                         f"{'; '.join(dict.fromkeys(r.where for r in shown))} | {'; '.join(dict.fromkeys(r.why for r in shown))} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())
