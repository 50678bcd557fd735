"""IPPO / MAPPO: PPO with an independent or a centralized critic.

One implementation, one switch (``critic.type``): MAPPO's critic sees the global state
(plus a one-hot agent id, so competitive agents get their own values), IPPO's sees only
the agent's own observation. It carries the details Yu et al. (2022, "The Surprising
Effectiveness of PPO in Cooperative Multi-Agent Games") found to matter: GAE, value
normalization, orthogonal init, gradient clipping, several epochs over minibatches and
an entropy bonus.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor, nn
from torch.distributions import Categorical, Normal

from marlcli.algos.base import Capabilities, adam, optimizer_step, schedule_lr
from marlcli.buffers import Rollout
from marlcli.distributed import collectives as distributed
from marlcli.envs.base import EnvSpec, TimeStep
from marlcli.nets import AgentMLP, GroupLinear, RunningNorm, agent_groups, with_agent_id
from marlcli.nets.actor import make_encoder, uses_agent_id
from marlcli.returns import gae

CAPS = Capabilities(discrete=True, continuous=True, on_policy=True, set_critic=True)


@dataclass
class Config:
    """PPO hyperparameters (schema of ``conf/algo/mappo.yaml`` and ``ippo.yaml``)."""

    name: str = "mappo"  # algo name in the results tree
    family: str = "ppo"  # implementation module: marlcli/algos/ppo.py
    rollout_steps: int = 25  # steps per env copy between updates
    lr: float = 7e-4  # Adam learning rate (actor and critic)
    lr_schedule: str = "constant"  # constant | linear (to lr_end at train.total_steps)
    lr_end: float = 0.0  # final learning rate of the linear schedule
    gamma: float = 0.99  # discount
    gae_lambda: float = 0.95  # GAE lambda
    clip: float = 0.2  # PPO ratio clip
    epochs: int = 10  # passes over each rollout
    minibatches: int = 1  # minibatches per pass
    ent_coef: float = 0.01  # entropy bonus
    vf_coef: float = 1.0  # value loss weight
    max_grad_norm: float = 10.0  # gradient clipping
    value_norm: bool = True  # normalize value targets with running statistics
    hidden: int = 64  # hidden units per layer
    layers: int = 2  # hidden layers (actor and critic)
    activation: str = "relu"  # relu | tanh | gelu
    init_log_std: float = -0.5  # continuous actions: initial Gaussian log std


class PolicyActor(nn.Module):
    """Categorical (discrete) or diagonal Gaussian (continuous) policy per agent: encoder -> MLP head."""

    def __init__(self, spec: EnvSpec, cfg: DictConfig, hidden: int, layers: int, activation: str,
                 init_log_std: float = -0.5) -> None:
        super().__init__()
        groups = agent_groups(cfg.sharing.mode, spec)
        self.discrete = spec.discrete
        self.encoder = make_encoder(spec, cfg)
        self.net = AgentMLP(self.encoder.out_dim, spec.act_dim, groups, hidden, layers, activation, out_gain=0.01)
        self.register_buffer("groups", torch.tensor(groups), persistent=False)
        self.register_buffer("act_mask", spec.action_mask().float(), persistent=False)
        if not spec.discrete:
            self.log_std = nn.Parameter(torch.full((max(groups) + 1, spec.act_dim), init_log_std))

    def dist(self, obs: Tensor, avail: Tensor) -> Categorical | Normal:
        out = self.net(self.encoder(obs))
        if self.discrete:
            return Categorical(logits=out.masked_fill(~avail, -1e9))
        return Normal(out, self.log_std[self.groups].exp().expand_as(out))

    def initial_hidden(self, batch: int) -> None:
        return None

    def act(self, obs: Tensor, avail: Tensor, hidden: Tensor | None, deterministic: bool) -> tuple[Tensor, None]:
        d = self.dist(obs, avail)
        if deterministic:
            return (d.probs.argmax(-1) if self.discrete else d.mean), None
        return d.sample(), None

    def log_prob_entropy(self, obs: Tensor, avail: Tensor, actions: Tensor) -> tuple[Tensor, Tensor]:
        """Per-agent log-probability and entropy ``[..., N]`` (padded action dims ignored)."""
        d = self.dist(obs, avail)
        if self.discrete:
            return d.log_prob(actions), d.entropy()
        return (d.log_prob(actions) * self.act_mask).sum(-1), (d.entropy() * self.act_mask).sum(-1)


class ValueCritic(nn.Module):
    """V per agent: from the global state (centralized), the own observation (independent), or the set of
    every agent's observation (``critic.arch=set``: own embedding + mean over agents, any N)."""

    def __init__(self, spec: EnvSpec, cfg: DictConfig, hidden: int, layers: int, activation: str) -> None:
        super().__init__()
        sharing = cfg.sharing.mode
        self.centralized = cfg.critic.type == "centralized"
        self.set = self.centralized and cfg.critic.arch == "set"
        self.n = spec.n_agents
        groups = agent_groups(sharing, spec)
        if self.set:  # size-free: no one-hot id (roles still get their own weights through the groups)
            self.encoder = make_encoder(spec, cfg, add_id=False, channel=False)
            self.embed = GroupLinear(self.encoder.out_dim, hidden, groups)
            self.net = AgentMLP(2 * hidden, 1, groups, hidden, max(layers - 1, 0), activation)
            return
        self.add_id = self.centralized or uses_agent_id(sharing, cfg.sharing.agent_id)
        in_dim = (spec.state_dim if self.centralized else spec.obs_dim) + (spec.n_agents if self.add_id else 0)
        self.net = AgentMLP(in_dim, 1, groups, hidden, layers, activation)

    def forward(self, obs: Tensor, state: Tensor) -> Tensor:
        """``obs [..., N, O]``, ``state [..., S]`` -> values ``[..., N]``."""
        if self.set:
            e = torch.tanh(self.embed(self.encoder(obs)))  # [..., N, H]
            pooled = e.mean(-2, keepdim=True).expand_as(e)
            return self.net(torch.cat([e, pooled], -1)).squeeze(-1)
        x = state.unsqueeze(-2).expand(*state.shape[:-1], self.n, state.shape[-1]) if self.centralized else obs
        return self.net(with_agent_id(x) if self.add_id else x).squeeze(-1)


def make_actor(spec: EnvSpec, cfg: DictConfig) -> PolicyActor:
    a = cfg.algo
    return PolicyActor(spec, cfg, a.hidden, a.layers, a.activation, a.init_log_std)


def make(spec: EnvSpec, cfg: DictConfig, device: torch.device) -> PPO:
    return PPO(spec, cfg, device)


class PPO:
    """The learner: clipped-surrogate PPO over T x B rollouts, all agents at once."""

    def __init__(self, spec: EnvSpec, cfg: DictConfig, device: torch.device) -> None:
        self.cfg, a = cfg.algo, cfg.algo
        self.rollout_steps = int(a.rollout_steps)
        self.actor = make_actor(spec, cfg).to(device)
        self.critic = ValueCritic(spec, cfg, a.hidden, a.layers, a.activation).to(device)
        self.value_norm = RunningNorm().to(device)
        self.params = list(self.actor.parameters()) + list(self.critic.parameters())
        self.optim = adam(self.params, a.lr, 1e-5)
        self.total_steps = int(cfg.train.total_steps)
        schedule_lr(self.optim, a, 0, self.total_steps)  # a bad schedule fails at start-up

    def act(self, ts: TimeStep, hidden: Tensor | None, step: int) -> tuple[Tensor, None]:
        with torch.no_grad():
            return self.actor.act(ts.obs, ts.avail, hidden, deterministic=False)

    def _values(self, obs: Tensor, state: Tensor) -> Tensor:
        v = self.critic(obs, state)
        return self.value_norm.denormalize(v) if self.cfg.value_norm else v

    def update(self, r: Rollout, step: int) -> dict[str, Any]:
        a = self.cfg
        lr = schedule_lr(self.optim, a, step, self.total_steps)
        with torch.no_grad():
            values = self._values(r.obs, r.state)
            next_values = self._values(r.next_obs, r.next_state)
            logp_old, _ = self.actor.log_prob_entropy(r.obs, r.avail, r.actions)
            # an agent truncated alone stops its recursion and bootstraps from its final observation
            adv = gae(r.reward, values, next_values, r.terminated, r.done, a.gamma, a.gae_lambda, r.agent_truncated)
            returns = adv + values
            mask = r.alive
            if a.value_norm:
                self.value_norm.update(returns, mask)
            adv_mean, adv_std = distributed.masked_mean_std(adv, mask)  # over the global batch
            adv = (adv - adv_mean) / (adv_std + 1e-8)
        flat = lambda x: x.reshape(-1, *x.shape[2:])  # noqa: E731  [T, B, ...] -> [T*B, ...]
        obs, state, avail, actions = flat(r.obs), flat(r.state), flat(r.avail), flat(r.actions)
        logp_old, adv, returns, maskf = flat(logp_old), flat(adv), flat(returns), flat(mask).float()
        n = obs.shape[0]
        stats: dict[str, Tensor] = {}
        for _ in range(a.epochs):
            for idx in torch.randperm(n, device=obs.device).chunk(a.minibatches):
                m = maskf[idx]
                denom = m.sum().clamp(min=1.0)
                logp, ent = self.actor.log_prob_entropy(obs[idx], avail[idx], actions[idx])
                ratio = (logp - logp_old[idx]).exp()
                surr = torch.min(ratio * adv[idx], ratio.clamp(1 - a.clip, 1 + a.clip) * adv[idx])
                pg_loss = -(surr * m).sum() / denom
                entropy = (ent * m).sum() / denom
                v = self.critic(obs[idx], state[idx])
                target = self.value_norm.normalize(returns[idx]) if a.value_norm else returns[idx]
                v_loss = (0.5 * (v - target) ** 2 * m).sum() / denom
                loss = pg_loss - a.ent_coef * entropy + a.vf_coef * v_loss
                self.optim.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = optimizer_step(self.optim, self.params, a.max_grad_norm)
        with torch.no_grad():
            approx_kl = (((ratio - 1) - (logp - logp_old[idx])) * m).sum() / denom
        stats = {"loss/policy": pg_loss.detach(), "loss/value": v_loss.detach(), "loss/entropy": entropy.detach(),
                 "train/approx_kl": approx_kl, "train/grad_norm": grad_norm.detach(), "train/lr": lr}
        return stats

    def state_dict(self) -> dict[str, Any]:
        return {"critic": self.critic.state_dict(), "value_norm": self.value_norm.state_dict(),
                "optim": self.optim.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.critic.load_state_dict(state["critic"])
        self.value_norm.load_state_dict(state["value_norm"])
        self.optim.load_state_dict(state["optim"])
