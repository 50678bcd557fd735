"""Self-play: the session the trainer runs (a hook), the league, the mirrored and role wrappers,
payoff matrices, cross-play and exact exploitability on the matrix games."""

from marlcli.selfplay.session import Session, check, learners, learning_roles, opponents_for_eval

__all__ = ["Session", "check", "learners", "learning_roles", "opponents_for_eval"]
