"""Who won an episode of a game with several roles: one score per role, 1 win, 0.5 draw, 0 loss.

An env declares its rule in ``EnvSpec.outcome`` (``marlcli.envs.base.Outcome``) when "the
side with the higher return wins" is wrong. On ``tag`` the returns are not zero-sum: the
prey also pays for leaving the square, so a prey that is never touched but strays can have
a lower return than predators that never caught it. Tag's rule (``OUTCOMES["tag"]``): the
predators (``adversary``) win an episode when they touch the prey at least once (the env's
``catches`` statistic >= 1), otherwise the prey wins. There is no draw.

Without a declared rule, a role wins when its agents' mean return is higher than every other
role's (a tie with the best is a draw, 0.5): the rule mirrored self-play has always used.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor

from marlcli.envs.base import EnvSpec, Outcome, role_of

OUTCOMES: dict[str, Outcome] = {
    "tag": Outcome(stat="catches", winner="adversary", threshold=1.0),
}

# Competitive games and their sides (issue 25: a message channel must never join opponents).
# "roles": each role is a side; "seats": each agent is a side (two players of one role); a dict
# maps roles onto sides (world_comm's lead adversary hunts with the adversaries). A game not
# listed here is cooperative: one team, whatever its roles (speaker_listener, reference, spread).
SIDES: dict[str, str | dict[str, str]] = {
    "tag": "roles", "simple_tag": "roles", "adversary": "roles", "simple_adversary": "roles",
    "simple_push": "roles", "simple_world_comm": {"leadadversary": "adversary"},
    "simple_crypto": {"alice": "alicebob", "bob": "alicebob"}, "prisoners": "seats", "rps": "seats",
}


def game_of(factory: str) -> str:
    """The game a PettingZoo factory makes: ``mpe2.simple_tag_v3:parallel_env`` -> ``simple_tag``,
    ``marlcli.envs.matrix:rps`` -> ``rps``."""
    module, _, attr = factory.partition(":")
    if module.startswith("marlcli."):
        return attr
    return re.sub(r"_v[0-9]+$", "", module.rpartition(".")[2])


def teams_of(game: str, agents: list[str]) -> list[int]:
    """``EnvSpec.teams`` for ``game``: a side index per agent, or ``[]`` for a cooperative game."""
    rule = SIDES.get(game)
    if rule is None:
        return []
    if rule == "seats":
        return list(range(len(agents)))
    side = [rule.get(role_of(a), role_of(a)) if isinstance(rule, dict) else role_of(a) for a in agents]
    order = list(dict.fromkeys(side))
    return [order.index(s) for s in side]


def role_scores(spec: EnvSpec, returns: Tensor, stats: dict[str, Tensor]) -> Tensor:
    """Score of every role in each finished episode.

    ``returns [E, N]`` (episode return per agent), ``stats {name: [E]}`` (episode statistics,
    aggregated as ``spec.stats`` says) -> ``[E, R]`` float64, ``R = len(spec.roles)``.
    """
    roles = spec.roles
    ri = torch.tensor(spec.role_index, device=returns.device)
    if spec.outcome is not None:
        won = stats[spec.outcome.stat].to(returns.device).double() >= spec.outcome.threshold  # [E]
        winner = torch.tensor([r == spec.outcome.winner for r in roles], device=returns.device)  # [R]
        return torch.where(winner[None, :], won[:, None], ~won[:, None]).double()
    mean = torch.stack([returns[:, ri == r].double().mean(1) for r in range(len(roles))], 1)  # [E, R]
    out = torch.zeros_like(mean)
    for r in range(len(roles)):
        others = torch.cat([mean[:, :r], mean[:, r + 1:]], 1)
        if others.shape[1] == 0:
            out[:, r] = 0.5
            continue
        best = others.max(1).values
        out[:, r] = (mean[:, r] > best).double() + 0.5 * (mean[:, r] == best).double()
    return out
