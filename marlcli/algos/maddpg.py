"""MADDPG / independent DDPG: deterministic actors, one Q critic per agent, replay.

Lowe et al. (2017), "Multi-Agent Actor-Critic for Mixed Cooperative-Competitive
Environments". Agent i's actor ``mu_i(o_i)`` sees only its own observation; its critic
``Q_i(x, a_1..a_n)`` sees the global state and every agent's action (``critic.type=
centralized``) or only ``(o_i, a_i)`` (``critic.type=independent``: independent DDPG).
Each critic is trained on agent i's OWN reward, so competitive and mixed games work.

Continuous actions are squashed into each agent's own bounds (``spec.bounds()``) by a sigmoid and
explored with Gaussian noise. Discrete actions use Gumbel-softmax (as the paper): the
critic gets a straight-through one-hot, exploration samples it, evaluation is greedy.
With parameter sharing (``sharing=all``) the per-agent actors and critics are one
network with a one-hot agent id; ``sharing=none`` gives every agent its own networks.
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
from marlcli.buffers import Rollout, TransitionReplay
from marlcli.envs.base import EnvSpec, TimeStep
from marlcli.nets import AgentMLP, agent_groups, with_agent_id
from marlcli.nets.actor import make_encoder, uses_agent_id

CAPS = Capabilities(discrete=True, continuous=True, on_policy=False)


@dataclass
class Config:
    """MADDPG hyperparameters (schema of ``conf/algo/maddpg.yaml``)."""

    name: str = "maddpg"  # algo name in the results tree
    family: str = "maddpg"  # implementation module: marlcli/algos/maddpg.py
    rollout_steps: int = 25  # steps per env copy between update phases
    updates_per_rollout: int = 25  # gradient steps per update phase
    buffer_size: int = 100_000  # transitions kept in the replay buffer
    batch_size: int = 1024  # transitions per gradient step
    learning_starts: int = 5_000  # env steps of uniform random actions before learning starts
    actor_lr: float = 0.001  # Adam learning rate of the actors
    critic_lr: float = 0.001  # Adam learning rate of the critics
    gamma: float = 0.95  # discount
    tau: float = 0.01  # Polyak rate of the target networks
    noise_std: float = 0.1  # continuous actions: Gaussian exploration noise (fraction of the action range)
    gumbel_tau: float = 1.0  # discrete actions: Gumbel-softmax temperature
    logit_reg: float = 0.001  # penalty on the actors' pre-activations (reference implementation)
    max_grad_norm: float = 0.5  # gradient clipping (actors and critics)
    hidden: int = 64  # hidden units per layer
    layers: int = 2  # hidden layers (actors and critics)
    activation: str = "relu"  # relu | tanh | gelu


class DeterministicActor(nn.Module):
    """``mu_i(o_i)``: logits (discrete) or squashed actions (continuous) per agent."""

    def __init__(self, spec: EnvSpec, cfg: DictConfig, hidden: int, layers: int, activation: str) -> None:
        super().__init__()
        self.discrete = spec.discrete
        low, high = spec.bounds()
        self.register_buffer("low", low, persistent=False)  # [N, A]: each agent its own bounds
        self.register_buffer("high", high, persistent=False)
        self.encoder = make_encoder(spec, cfg)
        self.net = AgentMLP(self.encoder.out_dim, spec.act_dim, agent_groups(cfg.sharing.mode, spec), hidden, layers,
                            activation, out_gain=0.01)
        self.register_buffer("act_mask", spec.action_mask(), persistent=False)

    def raw(self, obs: Tensor) -> Tensor:
        """Pre-activations ``[..., N, A]``; agent i's row depends on ``obs[..., i, :]`` only."""
        return self.net(self.encoder(obs))

    def squash(self, raw: Tensor) -> Tensor:
        return self.low + (self.high - self.low) * torch.sigmoid(raw) * self.act_mask

    def initial_hidden(self, batch: int) -> None:
        return None

    def act(self, obs: Tensor, avail: Tensor, hidden: Tensor | None, deterministic: bool) -> tuple[Tensor, None]:
        """Greedy / mean action; exploration noise is added by the learner, not here."""
        out = self.raw(obs)
        if self.discrete:
            return out.masked_fill(~avail, -1e9).argmax(-1), None
        return self.squash(out), None


class QCritic(nn.Module):
    """``Q_i(x, a_1..a_n)`` (centralized) or ``Q_i(o_i, a_i)`` (independent), per agent."""

    def __init__(self, spec: EnvSpec, centralized: bool, sharing: str, agent_id: bool, hidden: int, layers: int,
                 activation: str) -> None:
        super().__init__()
        self.centralized, self.n = centralized, spec.n_agents
        self.add_id = centralized or uses_agent_id(sharing, agent_id)
        base = spec.state_dim + spec.n_agents * spec.act_dim if centralized else spec.obs_dim + spec.act_dim
        self.in_dim = base + (spec.n_agents if self.add_id else 0)
        self.net = AgentMLP(self.in_dim, 1, agent_groups(sharing, spec), hidden, layers, activation)

    def inputs(self, obs: Tensor, state: Tensor, actions: Tensor) -> Tensor:
        """``obs [M, N, O]``, ``state [M, S]``, ``actions [M, N, A]`` (one-hot or continuous) -> ``[M, N, in]``."""
        if self.centralized:
            joint = torch.cat([state, actions.flatten(-2)], -1)
            x = joint.unsqueeze(-2).expand(*joint.shape[:-1], self.n, joint.shape[-1])
        else:
            x = torch.cat([obs, actions], -1)
        return with_agent_id(x) if self.add_id else x

    def forward(self, obs: Tensor, state: Tensor, actions: Tensor) -> Tensor:
        """Q values ``[M, N]``: one per agent, each for that agent's own reward."""
        return self.net(self.inputs(obs, state, actions)).squeeze(-1)


def make_actor(spec: EnvSpec, cfg: DictConfig) -> DeterministicActor:
    a = cfg.algo
    return DeterministicActor(spec, cfg, a.hidden, a.layers, a.activation)


def make(spec: EnvSpec, cfg: DictConfig, device: torch.device) -> MADDPG:
    return MADDPG(spec, cfg, device)


def soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """Polyak averaging: ``target <- (1 - tau) target + tau source``."""
    with torch.no_grad():
        for t, s in zip(target.parameters(), source.parameters(), strict=True):
            t.lerp_(s, tau)


class MADDPG:
    """The learner: replay, per-agent critics on own rewards, deterministic policy gradient."""

    def __init__(self, spec: EnvSpec, cfg: DictConfig, device: torch.device) -> None:
        self.cfg, a = cfg.algo, cfg.algo
        self.spec, self.device = spec, device
        self.rollout_steps = int(a.rollout_steps)
        self.actor = make_actor(spec, cfg).to(device)
        self.critic = QCritic(spec, cfg.critic.type == "centralized", cfg.sharing.mode, cfg.sharing.agent_id,
                              a.hidden, a.layers, a.activation).to(device)
        self.actor_target, self.critic_target = copy.deepcopy(self.actor), copy.deepcopy(self.critic)
        self.actor_optim = adam(self.actor.parameters(), a.actor_lr)
        self.critic_optim = adam(self.critic.parameters(), a.critic_lr)
        self.replay = TransitionReplay(a.buffer_size, device)
        self.act_mask = spec.action_mask().to(device)
        self.low, self.high = (x.to(device) for x in spec.bounds())  # [N, A]

    # ------------------------------------------------------------------ acting
    def _one_hot(self, actions: Tensor) -> Tensor:
        return F.one_hot(actions, self.spec.act_dim).to(torch.float32)

    def _policy_action(self, actor: DeterministicActor, obs: Tensor, avail: Tensor, explore: bool) -> Tensor:
        """Differentiable action for the critic: straight-through Gumbel one-hot or squashed output."""
        raw = actor.raw(obs)
        if not self.spec.discrete:
            return actor.squash(raw)
        logits = raw.masked_fill(~avail, -1e9)
        if explore:
            return F.gumbel_softmax(logits, tau=self.cfg.gumbel_tau, hard=True)
        return self._one_hot(logits.argmax(-1))

    def act(self, ts: TimeStep, hidden: Tensor | None, step: int) -> tuple[Tensor, None]:
        with torch.no_grad():
            if step < self.cfg.learning_starts:  # uniform random warm-up
                if self.spec.discrete:
                    probs = ts.avail.flatten(0, 1).float()
                    probs[:, 0] += probs.sum(-1) == 0  # an agent with no action (finished early) gets a placeholder 0
                    return torch.multinomial(probs, 1).view(ts.avail.shape[:2]), None
                u = torch.rand(ts.obs.shape[:2] + (self.spec.act_dim,), device=ts.obs.device)
                return (self.low + (self.high - self.low) * u) * self.act_mask, None
            if self.spec.discrete:
                return self._policy_action(self.actor, ts.obs, ts.avail, explore=True).argmax(-1), None
            mean, _ = self.actor.act(ts.obs, ts.avail, None, deterministic=True)
            noisy = mean + self.cfg.noise_std * (self.high - self.low) * torch.randn_like(mean)
            return torch.minimum(torch.maximum(noisy, self.low), self.high) * self.act_mask, None

    # ------------------------------------------------------------------ learning
    def update(self, r: Rollout, step: int) -> dict[str, Any]:
        a = self.cfg
        self.replay.add(r)
        if step < a.learning_starts or len(self.replay) < a.batch_size:
            return {}
        for _ in range(a.updates_per_rollout):
            stats = self._gradient_step()
        return stats

    def _gradient_step(self) -> dict[str, Tensor]:
        a, b = self.cfg, self.replay.sample(self.cfg.batch_size)
        actions = self._one_hot(b["actions"]) if self.spec.discrete else b["actions"]
        alive = b["alive"].float()
        denom = alive.sum().clamp(min=1.0)
        with torch.no_grad():  # y_i = r_i + gamma * Q'_i(x', mu'(o')); only termination cuts it
            # an agent truncated alone bootstraps too, acting under its last masks (its next_avail is off)
            next_avail = b["next_avail"] | b["agent_final_avail"]
            next_act = self._policy_action(self.actor_target, b["next_obs"], next_avail, explore=False)
            q_next = self.critic_target(b["next_obs"], b["next_state"], next_act)
            y = b["reward"] + a.gamma * (~b["terminated"]).float() * q_next
        q = self.critic(b["obs"], b["state"], actions)
        critic_loss = (((q - y) ** 2) * alive).sum() / denom
        self.critic_optim.zero_grad(set_to_none=True)
        critic_loss.backward()
        optimizer_step(self.critic_optim, self.critic.parameters(), a.max_grad_norm)

        # actor: agent i's action from its current policy, the others' from replay (as the paper)
        raw = self.actor.raw(b["obs"])
        mine = self._policy_action(self.actor, b["obs"], b["avail"], explore=True)
        n = self.spec.n_agents
        eye = torch.eye(n, device=self.device)[:, :, None]  # [N(i), N(j), 1]
        joint = eye * mine.unsqueeze(1) + (1 - eye) * actions.unsqueeze(1)  # [M, N(i), N(j), A]
        if self.critic.centralized:  # Q_i with a_i = mu_i(o_i), a_-i from replay: one pass per i
            x = self.critic.inputs(b["obs"], b["state"], actions)
            x = x.clone()
            start = self.spec.state_dim
            x[..., start:start + n * self.spec.act_dim] = joint.flatten(-2)
            q_pi = self.critic.net(x).squeeze(-1)
        else:
            q_pi = self.critic(b["obs"], b["state"], mine)
        reg = (raw.pow(2) * self.act_mask).mean()
        actor_loss = -(q_pi * alive).sum() / denom + a.logit_reg * reg
        self.actor_optim.zero_grad(set_to_none=True)
        actor_loss.backward()
        optimizer_step(self.actor_optim, self.actor.parameters(), a.max_grad_norm)
        soft_update(self.actor_target, self.actor, a.tau)
        soft_update(self.critic_target, self.critic, a.tau)
        return {"loss/critic": critic_loss.detach(), "loss/actor": actor_loss.detach(), "train/q_mean": q.mean().detach()}

    def state_dict(self) -> dict[str, Any]:
        return {"critic": self.critic.state_dict(), "actor_target": self.actor_target.state_dict(),
                "critic_target": self.critic_target.state_dict(), "actor_optim": self.actor_optim.state_dict(),
                "critic_optim": self.critic_optim.state_dict(), "replay": self.replay.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.critic.load_state_dict(state["critic"])
        self.actor_target.load_state_dict(state["actor_target"])
        self.critic_target.load_state_dict(state["critic_target"])
        self.actor_optim.load_state_dict(state["actor_optim"])
        self.critic_optim.load_state_dict(state["critic_optim"])
        self.replay.load_state_dict(state["replay"])
