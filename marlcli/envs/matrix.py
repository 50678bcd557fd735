"""Two-player matrix games: PettingZoo ParallelEnvs and a batched native torch version.

* ``coordination``: 3x3 shared-reward game, optimum 10 at (0, 0) flanked by
  miscoordination ``penalty`` (-10), safe 2s on the diagonal; one step per episode.
* ``prisoners``: iterated prisoner's dilemma, payoffs (C,C)=(3,3), (C,D)=(0,5),
  (D,C)=(5,0), (D,D)=(1,1); observation = last joint action one-hot (zeros at the start),
  seen from the observer's own seat (``seat_index``); ``max_cycles`` rounds per episode.
* ``rps``: rock-paper-scissors, zero-sum (+1 / -1 / 0); one step per episode.

Every episode ends by termination after ``max_cycles`` steps (the game is over, nothing
to bootstrap). Stateless games observe a constant ``[1.0]``.

**Seats.** Each player observes the last joint action from its own side: its own move first,
the other's second (``seat_index``). Both seats of a mirrored game thus mean the same thing
by the same input, which is what self-play needs: a snapshot trained in seat 0 that plays
seat 1 (``marlcli.selfplay.mirrored``) reads "my last move" as its own, not the learner's, so a
tit-for-tat snapshot retaliates. Swapping the players swaps their observations.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from pettingzoo import ParallelEnv
from torch import Tensor

from marlcli.envs.base import EnvSpec, TimeStep, empty_step
from marlcli.envs.outcome import teams_of
from marlcli.errors import ConfigError


def coordination_payoff(penalty: float = -10.0) -> np.ndarray:
    """``[3, 3, 2]`` payoffs: both agents get ``R[a0, a1]`` (seed-studies section 1)."""
    r = np.array([[10.0, penalty, penalty], [penalty, 2.0, 0.0], [penalty, 0.0, 2.0]])
    return np.stack([r, r], -1)


def prisoners_payoff() -> np.ndarray:
    """``[2, 2, 2]``: action 0 = cooperate, 1 = defect."""
    return np.array([[[3.0, 3.0], [0.0, 5.0]], [[5.0, 0.0], [1.0, 1.0]]])


def rps_payoff() -> np.ndarray:
    """``[3, 3, 2]``: rock, paper, scissors; zero-sum."""
    win = np.array([[0.0, -1.0, 1.0], [1.0, 0.0, -1.0], [-1.0, 1.0, 0.0]])
    return np.stack([win, -win], -1)


def seat_index(last: Any, n1: int, seat: int, n0: int | None = None) -> Any:
    """Index of joint action ``last = a0 * n1 + a1`` in seat ``seat``'s one-hot: own move first.

    Seat 0 sees ``a0 * n1 + a1``, seat 1 ``a1 * n0 + a0`` (``n0`` defaults to ``n1``: square
    games). Works on ints, numpy arrays and tensors alike.
    """
    if seat == 0:
        return last
    a0, a1 = last // n1, last % n1
    return a1 * (n1 if n0 is None else n0) + a0


GAMES: dict[str, tuple[Any, bool, list[str]]] = {  # name -> (payoff factory, observe last action, agents)
    "coordination": (coordination_payoff, False, ["agent_0", "agent_1"]),
    "prisoners": (prisoners_payoff, True, ["player_0", "player_1"]),
    "rps": (rps_payoff, False, ["player_0", "player_1"]),
}


class MatrixGame(ParallelEnv):
    """A repeated two-player matrix game as a PettingZoo ParallelEnv."""

    metadata = {"name": "matrix_game_v0", "render_modes": []}

    def __init__(self, payoff: np.ndarray, agents: list[str], observe_last: bool, max_cycles: int = 1) -> None:
        if int(max_cycles) < 1:
            raise ConfigError(f"env.max_cycles={max_cycles} must be >= 1")
        self.payoff, self.observe_last, self.max_cycles = np.asarray(payoff, np.float32), observe_last, int(max_cycles)
        self.possible_agents = list(agents)
        self.agents: list[str] = []
        self.render_mode = None  # nothing to render (PettingZoo's API test asks)
        n0, n1 = self.payoff.shape[:2]
        self.obs_dim = n0 * n1 if observe_last else 1
        self._act = {agents[0]: spaces.Discrete(n0), agents[1]: spaces.Discrete(n1)}
        self._obs_space = spaces.Box(0.0, 1.0, (self.obs_dim,), np.float32)
        self.t, self.last = 0, None

    def observation_space(self, agent: str) -> spaces.Box:
        return self._obs_space

    def action_space(self, agent: str) -> spaces.Discrete:
        return self._act[agent]

    def _obs(self) -> dict[str, np.ndarray]:
        """Each seat its own view of the last joint action (``seat_index``)."""
        out = {}
        n0, n1 = self.payoff.shape[:2]
        for seat, a in enumerate(self.possible_agents):
            if a not in self.agents:
                continue
            o = np.zeros(self.obs_dim, np.float32) if self.observe_last else np.ones(1, np.float32)
            if self.observe_last and self.last is not None:
                o[seat_index(self.last, n1, seat, n0)] = 1.0
            out[a] = o
        return out

    def reset(self, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        self.agents, self.t, self.last = list(self.possible_agents), 0, None
        return self._obs(), {a: {} for a in self.agents}

    def step(self, actions: dict[str, int]) -> tuple[dict, dict, dict, dict, dict]:
        a0, a1 = (int(actions[a]) for a in self.possible_agents)
        r = self.payoff[a0, a1]
        self.t += 1
        self.last = a0 * self.payoff.shape[1] + a1
        obs = self._obs()
        over = self.t >= self.max_cycles
        rew = {a: float(r[i]) for i, a in enumerate(self.possible_agents)}
        term = {a: over for a in self.possible_agents}
        trunc = {a: False for a in self.possible_agents}
        info = {a: {} for a in self.possible_agents}
        if over:
            self.agents = []
        return obs, rew, term, trunc, info


def coordination(penalty: float = -10.0, max_cycles: int = 1) -> MatrixGame:
    return MatrixGame(coordination_payoff(penalty), GAMES["coordination"][2], False, max_cycles)


def prisoners(max_cycles: int = 10) -> MatrixGame:
    return MatrixGame(prisoners_payoff(), GAMES["prisoners"][2], True, max_cycles)


def rps(max_cycles: int = 1) -> MatrixGame:
    return MatrixGame(rps_payoff(), GAMES["rps"][2], False, max_cycles)


class MatrixVecEnv:
    """``num_envs`` copies of a matrix game as batched tensors (``env.backend=native``)."""

    def __init__(self, env_cfg: Any, num_envs: int, seed: int, device: torch.device,
                 dtype: torch.dtype = torch.float32) -> None:
        name = str(env_cfg.get("name"))
        make_payoff, self.observe_last, agents = GAMES[name]
        kwargs = {"penalty": float(env_cfg.get("penalty", -10.0))} if name == "coordination" else {}
        self.payoff = torch.as_tensor(make_payoff(**kwargs), dtype=dtype, device=device)
        self.max_cycles = int(env_cfg.get("max_cycles", 1))
        if self.max_cycles < 1:
            raise ConfigError(f"env.max_cycles={self.max_cycles} must be >= 1")
        n0, n1 = self.payoff.shape[:2]
        self.obs_dim = n0 * n1 if self.observe_last else 1
        self.num_envs, self.device, self.dtype = num_envs, torch.device(device), dtype
        self.spec = EnvSpec(name, agents, [self.obs_dim] * 2, [n0, n1], True, 2 * self.obs_dim, self.max_cycles)
        self.spec.teams = teams_of(name, agents)  # prisoners, rps: two opponents; coordination: one team
        self.t = torch.zeros(num_envs, dtype=torch.long, device=self.device)
        self.last = torch.full((num_envs,), -1, dtype=torch.long, device=self.device)

    def _obs(self) -> tuple[Tensor, Tensor]:
        """``[B, 2, O]``: each seat its own view of the last joint action (``seat_index``)."""
        b = self.num_envs
        if not self.observe_last:
            obs = torch.ones(b, 2, 1, dtype=self.dtype, device=self.device)
            return obs, obs.reshape(b, -1)
        n0, n1 = self.payoff.shape[:2]
        obs = torch.zeros(b, 2, self.obs_dim, dtype=self.dtype, device=self.device)
        seen = self.last >= 0
        rows = seen.nonzero().squeeze(1)
        for seat in (0, 1):
            obs[rows, seat, seat_index(self.last[rows], n1, seat, n0)] = 1.0
        return obs, obs.reshape(b, -1)

    def _avail(self) -> Tensor:
        return self.spec.action_mask().to(self.device).expand(self.num_envs, -1, -1).clone()

    def reset(self) -> TimeStep:
        self.t.zero_()
        self.last.fill_(-1)
        obs, state = self._obs()
        return empty_step(self.spec, obs, state, self._avail())

    def step(self, actions: Tensor) -> TimeStep:
        a0, a1 = actions[:, 0], actions[:, 1]
        reward = self.payoff[a0, a1]  # [B, 2]
        self.t += 1
        self.last = a0 * self.payoff.shape[1] + a1
        done = self.t >= self.max_cycles
        final_obs, final_state = self._obs()
        self.t = torch.where(done, 0, self.t)
        self.last = torch.where(done, -1, self.last)
        obs, state = self._obs()
        b = self.num_envs
        terminated = done[:, None].expand(b, 2).clone()
        avail = self._avail()
        return TimeStep(obs=obs, state=state, avail=avail, reward=reward,
                        terminated=terminated, truncated=torch.zeros_like(done),
                        done=done, alive=torch.ones(b, 2, dtype=torch.bool, device=self.device),
                        final_obs=final_obs, final_state=final_state,
                        final_avail=avail & ~terminated[..., None],  # a finished agent has no actions left
                        final_alive=~terminated, info={})

    def state_dict(self) -> dict[str, Tensor]:
        return {"t": self.t.clone(), "last": self.last.clone()}

    def load_state_dict(self, state: dict[str, Tensor]) -> TimeStep:
        self.t.copy_(state["t"])
        self.last.copy_(state["last"])
        obs, state_ = self._obs()
        return empty_step(self.spec, obs, state_, self._avail())

    def close(self) -> None:
        return None
