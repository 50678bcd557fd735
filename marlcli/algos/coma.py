"""COMA: counterfactual multi-agent policy gradients (Foerster et al. 2018).

Stochastic (categorical) actors on each agent's own observation and ONE centralized
critic ``Q(x, a_-i, i)`` that outputs the values of all of agent i's actions with the
others' actions held fixed. Agent i's advantage marginalizes out its own action only:

    A_i = Q(x, a) - sum_a' pi_i(a' | o_i) Q(x, (a_-i, a'))

so the baseline removes what the other agents did from agent i's credit. On-policy:
each rollout trains the critic towards TD(lambda) targets (bootstrapped from a Polyak
target critic with the expected value under the current policy, so truncated episodes
and the end of a rollout bootstrap alike) and then takes one policy-gradient step.
``critic.type=independent`` drops the state and the others' actions (``Q(o_i, .)``), an
ablation without counterfactual credit. Discrete actions only.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn

from marlcli.algos.base import Capabilities, adam, optimizer_step
from marlcli.algos.ppo import PolicyActor
from marlcli.buffers import Rollout
from marlcli.distributed import collectives as distributed
from marlcli.envs.base import EnvSpec, TimeStep
from marlcli.nets import AgentMLP, with_agent_id
from marlcli.returns import gae

CAPS = Capabilities(discrete=True, continuous=False, on_policy=True)


@dataclass
class Config:
    """COMA hyperparameters (schema of ``conf/algo/coma.yaml``)."""

    name: str = "coma"  # algo name in the results tree
    family: str = "coma"  # implementation module: marlcli/algos/coma.py
    rollout_steps: int = 25  # steps per env copy between updates
    actor_lr: float = 0.001  # Adam learning rate of the actors
    critic_lr: float = 0.001  # Adam learning rate of the critic
    gamma: float = 0.95  # discount
    td_lambda: float = 0.8  # lambda of the critic's TD(lambda) targets
    critic_epochs: int = 8  # critic passes over each rollout before the policy step
    actor_epochs: int = 2  # policy-gradient steps per rollout (1 = strictly on-policy)
    tau: float = 0.01  # Polyak rate of the target critic
    ent_coef: float = 0.01  # entropy bonus
    norm_adv: bool = True  # standardize the counterfactual advantages over the rollout
    max_grad_norm: float = 10.0  # gradient clipping
    hidden: int = 64  # hidden units per layer
    layers: int = 2  # hidden layers (actors and critic)
    activation: str = "relu"  # relu | tanh | gelu


class CounterfactualCritic(nn.Module):
    """``Q(x, a_-i, i) -> [A]``: the value of each of agent i's actions, the others fixed.

    Centralized input per agent i: ``[state, one-hot actions with agent i's zeroed, own
    observation, one-hot id]``; independent: ``[own observation, one-hot id]``.
    """

    def __init__(self, spec: EnvSpec, centralized: bool, hidden: int, layers: int, activation: str) -> None:
        super().__init__()
        self.centralized, self.n, self.a = centralized, spec.n_agents, spec.act_dim
        in_dim = spec.obs_dim + spec.n_agents + (spec.state_dim + spec.n_agents * spec.act_dim if centralized else 0)
        self.net = AgentMLP(in_dim, spec.act_dim, [0] * spec.n_agents, hidden, layers, activation)

    def forward(self, obs: Tensor, state: Tensor, actions: Tensor) -> Tensor:
        """``obs [..., N, O]``, ``state [..., S]``, ``actions [..., N]`` long -> ``Q [..., N, A]``."""
        x = obs
        if self.centralized:
            others = F.one_hot(actions, self.a).to(obs.dtype).unsqueeze(-3)  # [..., 1, N, A]
            eye = torch.eye(self.n, device=obs.device, dtype=obs.dtype)[:, :, None]
            others = (others * (1 - eye)).flatten(-2)  # [..., N(i), N*A]: agent i's own action removed
            st = state.unsqueeze(-2).expand(*state.shape[:-1], self.n, state.shape[-1])
            x = torch.cat([st, others, obs], -1)
        return self.net(with_agent_id(x))


def counterfactual_advantage(q: Tensor, probs: Tensor, actions: Tensor) -> Tensor:
    """``A_i = Q_i(a_i) - sum_a' pi_i(a') Q_i(a')``.

    ``q [..., N, A]`` (agent i's action values, the others fixed), ``probs [..., N, A]``,
    ``actions [..., N]`` long -> ``[..., N]``.
    """
    taken = q.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    return taken - (probs * q).sum(-1)


def make_actor(spec: EnvSpec, cfg: DictConfig) -> PolicyActor:
    a = cfg.algo
    return PolicyActor(spec, cfg, a.hidden, a.layers, a.activation)


def make(spec: EnvSpec, cfg: DictConfig, device: torch.device) -> COMA:
    return COMA(spec, cfg, device)


class COMA:
    """The learner: TD(lambda) critic, counterfactual-advantage policy gradient."""

    def __init__(self, spec: EnvSpec, cfg: DictConfig, device: torch.device) -> None:
        self.cfg, a = cfg.algo, cfg.algo
        self.rollout_steps = int(a.rollout_steps)
        self.actor = make_actor(spec, cfg).to(device)
        self.critic = CounterfactualCritic(spec, cfg.critic.type == "centralized", a.hidden, a.layers,
                                           a.activation).to(device)
        self.critic_target = copy.deepcopy(self.critic)
        self.actor_optim = adam(self.actor.parameters(), a.actor_lr)
        self.critic_optim = adam(self.critic.parameters(), a.critic_lr)

    def act(self, ts: TimeStep, hidden: Tensor | None, step: int) -> tuple[Tensor, None]:
        with torch.no_grad():
            return self.actor.act(ts.obs, ts.avail, hidden, deterministic=False)

    def _expected_next(self, r: Rollout) -> Tensor:
        """``V_i(x') = sum_a pi_i(a|o'_i) Q'(x', (a'_-i, a))`` with ``a'`` sampled from pi: ``[T, B, N]``.

        An agent truncated alone is valued under its last masks (``Rollout.next_masks``), not
        with none available (which would make its policy uniform over every action).
        """
        d = self.actor.dist(r.next_obs, r.next_masks())
        q = self.critic_target(r.next_obs, r.next_state, d.sample())
        return (d.probs * q).sum(-1)

    def update(self, r: Rollout, step: int) -> dict[str, Any]:
        a = self.cfg
        mask = r.alive.float()
        denom = mask.sum().clamp(min=1.0)
        with torch.no_grad():
            q_taken = self.critic_target(r.obs, r.state, r.actions).gather(-1, r.actions.unsqueeze(-1)).squeeze(-1)
            next_v = self._expected_next(r)
            # TD(lambda) target = GAE(lambda) over Q(x_t, a_t) + Q(x_t, a_t)
            # an agent truncated alone: its target stops there and bootstraps from its final observation
            targets = gae(r.reward, q_taken, next_v, r.terminated, r.done, a.gamma, a.td_lambda,
                          r.agent_truncated) + q_taken
        for _ in range(a.critic_epochs):
            q = self.critic(r.obs, r.state, r.actions).gather(-1, r.actions.unsqueeze(-1)).squeeze(-1)
            critic_loss = (((q - targets) ** 2) * mask).sum() / denom
            self.critic_optim.zero_grad(set_to_none=True)
            critic_loss.backward()
            optimizer_step(self.critic_optim, self.critic.parameters(), a.max_grad_norm)
        with torch.no_grad():
            for t, s in zip(self.critic_target.parameters(), self.critic.parameters(), strict=True):
                t.lerp_(s, a.tau)
            q_all = self.critic(r.obs, r.state, r.actions)
        for _ in range(a.actor_epochs):
            d = self.actor.dist(r.obs, r.avail)
            adv = counterfactual_advantage(q_all, d.probs.detach(), r.actions)
            if a.norm_adv:
                m = r.alive
                adv_mean, adv_std = distributed.masked_mean_std(adv, m)  # over the global batch
                adv = (adv - adv_mean) / (adv_std + 1e-8)
            logp, ent = d.log_prob(r.actions), d.entropy()
            pg_loss = -(logp * adv * mask).sum() / denom
            entropy = (ent * mask).sum() / denom
            loss = pg_loss - a.ent_coef * entropy
            self.actor_optim.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = optimizer_step(self.actor_optim, self.actor.parameters(), a.max_grad_norm)
        return {"loss/critic": critic_loss.detach(), "loss/policy": pg_loss.detach(), "loss/entropy": entropy.detach(),
                "train/grad_norm": grad_norm.detach(), "train/q_taken": q.mean().detach()}

    def state_dict(self) -> dict[str, Any]:
        return {"critic": self.critic.state_dict(), "critic_target": self.critic_target.state_dict(),
                "actor_optim": self.actor_optim.state_dict(), "critic_optim": self.critic_optim.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.critic.load_state_dict(state["critic"])
        self.critic_target.load_state_dict(state["critic_target"])
        self.actor_optim.load_state_dict(state["actor_optim"])
        self.critic_optim.load_state_dict(state["critic_optim"])
