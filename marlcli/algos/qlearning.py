"""IQL / VDN / QMIX: deep Q-learning with an episode replay buffer and one mixer switch.

``algo.mixer`` picks how per-agent utilities Q_i(o_i, a_i) become the learning target:
``none`` is independent Q-learning (each agent its own TD target from its own reward),
``vdn`` sums them (Sunehag et al. 2018), ``qmix`` mixes them monotonically with
hypernetworks on the global state (Rashid et al. 2018). Acting is always decentralized:
each agent takes the argmax of its own utility (ε-greedy while collecting).

With a mixer the team reward is the **mean of the agents' rewards** (identical for
cooperative envs; for competitive envs with per-agent rewards this trains the team as if
it were cooperative). IQL uses each agent's own reward.

The options that the pymarl2 / EPyMARL studies (Hu et al. 2021, Papoudakis et al. 2021)
found to matter are config keys: whole-episode replay, linearly annealed ε, target
networks (hard copy or Polyak), double Q, TD(λ) or n-step targets, Adam, gradient
clipping, reward standardisation, an MLP or GRU agent, the last action as input. The
hysteretic option (Matignon et al. 2007) scales negative TD errors by ``neg_td_scale``.

Speed (issue 7): collection acts for all B env copies at once and never syncs with the
host; each update is a few large batched gradient steps, as many as keep ``replay_ratio``
sampled episodes per new one (so learning per env step does not depend on ``env.num_envs``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor, nn
from torch.nn import functional as F

from marlcli.algos.base import Capabilities, adam, linear, optimizer_step, schedule_lr
from marlcli.buffers import EpisodeReplay, Rollout
from marlcli.distributed import collectives as distributed
from marlcli.envs.base import EnvSpec, TimeStep
from marlcli.errors import ConfigError
from marlcli.nets import AgentMLP, RunningNorm, agent_groups
from marlcli.nets.actor import make_encoder
from marlcli.nets.mixers import make_mixer
from marlcli.nets.rnn import AgentRNN
from marlcli.returns import nstep_returns, td_lambda

CAPS = Capabilities(discrete=True, continuous=False, on_policy=False, set_critic=True)


@dataclass
class Config:
    """Q-learning hyperparameters (schema of ``conf/algo/iql.yaml``, ``vdn.yaml``, ``qmix.yaml``)."""

    name: str = "qmix"  # algo name in the results tree
    family: str = "qlearning"  # implementation module: marlcli/algos/qlearning.py
    mixer: str = "qmix"  # none (IQL) | vdn (sum) | qmix (monotonic hypernetwork mixer)
    agent: str = "mlp"  # mlp | rnn (GRU agent, for partial observability)
    rollout_steps: int = 25  # steps per env copy between updates
    buffer_episodes: int = 5000  # replay capacity in whole episodes
    batch_episodes: int = 32  # episodes per gradient step
    replay_ratio: float = 4.0  # episodes sampled per new episode: gradient steps = new episodes x ratio / batch
    learning_starts: int = 32  # episodes in the buffer before learning starts
    lr: float = 0.003  # Adam learning rate
    lr_schedule: str = "constant"  # constant | linear (to lr_end at train.total_steps)
    lr_end: float = 0.0  # final learning rate of the linear schedule
    adam_eps: float = 1e-5  # Adam epsilon
    gamma: float = 0.99  # discount
    returns: str = "lambda"  # lambda (TD(λ) targets) | nstep
    td_lambda: float = 0.6  # λ of TD(λ) targets (0 = one-step)
    nstep: int = 1  # n of n-step targets when returns=nstep
    double_q: bool = True  # next action from the online net, its value from the target net
    target_update_interval: int = 20  # gradient steps between hard target copies (when tau=1)
    tau: float = 1.0  # 1 = hard copies; < 1 = Polyak averaging after every gradient step
    eps_start: float = 1.0  # ε-greedy exploration at the start
    eps_end: float = 0.05  # ε after annealing
    eps_anneal_steps: int = 300_000  # env steps (all copies) over which ε falls linearly
    max_grad_norm: float = 10.0  # gradient clipping
    standardise_rewards: bool = False  # divide rewards by their running standard deviation
    last_action: bool = False  # append each agent's previous action (one-hot) to its input
    optimism: bool = False  # hysteretic Q-learning: down-weight negative TD errors
    neg_td_scale: float = 0.1  # weight of negative TD errors when optimism=true (β/α)
    hidden: int = 64  # hidden units per layer (MLP) or GRU size
    layers: int = 2  # hidden layers of the MLP agent
    activation: str = "relu"  # relu | tanh | gelu
    mixer_embed: int = 32  # QMIX mixing-layer width
    hypernet_hidden: int = 64  # QMIX hypernetwork hidden width


class QActor(nn.Module):
    """Per-agent utilities ``Q_i(o_i [, a_i^{t-1}] [, id], .)`` from an MLP or a GRU.

    The hidden state carried between steps is ``[B, N, H + A]``: the GRU state (if any)
    followed by the last action one-hot (if used); the trainer zeroes it at episode ends.
    """

    def __init__(self, spec: EnvSpec, cfg: DictConfig) -> None:
        super().__init__()
        a = cfg.algo
        groups = agent_groups(cfg.sharing.mode, spec)
        self.rnn, self.last_action = a.agent == "rnn", bool(a.last_action)
        if a.agent not in ("mlp", "rnn"):
            raise ConfigError(f"unknown algo.agent '{a.agent}': use mlp or rnn")
        self.n_act = spec.act_dim
        # the observation (+ last action) (+ id), or its entity embedding
        self.encoder = make_encoder(spec, cfg, extra=spec.act_dim if self.last_action else 0)
        in_dim = self.encoder.out_dim
        self.h = int(a.hidden) if self.rnn else 0
        self.net = (AgentRNN(in_dim, spec.act_dim, groups, a.hidden) if self.rnn
                    else AgentMLP(in_dim, spec.act_dim, groups, a.hidden, a.layers, a.activation))
        self.n = spec.n_agents

    def initial_hidden(self, batch: int) -> Tensor | None:
        width = self.h + (self.n_act if self.last_action else 0)
        dev = next(self.parameters()).device
        return torch.zeros(batch, self.n, width, device=dev) if width else None

    def _input(self, obs: Tensor, last: Tensor | None) -> Tensor:
        return self.encoder(obs, last)

    def q(self, obs: Tensor, hidden: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """One step: ``obs [B, N, O]`` -> utilities ``[B, N, A]`` and the GRU state (or None)."""
        last = hidden[..., self.h:] if self.last_action and hidden is not None else None
        x = self._input(obs, last)
        if self.rnn:
            return self.net(x, hidden[..., : self.h])
        return self.net(x), None

    def q_sequence(self, obs: Tensor, actions: Tensor) -> Tensor:
        """Whole episodes from their start: ``obs [E, L+1, N, O]``, ``actions [E, L+1, N]`` -> ``[E, L+1, N, A]``."""
        last = None
        if self.last_action:
            last = F.one_hot(actions, self.n_act).to(obs.dtype).roll(1, dims=1)
            last[:, 0] = 0.0
        x = self._input(obs, last)
        if not self.rnn:
            return self.net(x)
        h = obs.new_zeros(*obs.shape[:1], self.n, self.h)
        out = []
        for t in range(obs.shape[1]):
            q, h = self.net(x[:, t], h)
            out.append(q)
        return torch.stack(out, 1)

    def act(self, obs: Tensor, avail: Tensor, hidden: Tensor | None, deterministic: bool,
            epsilon: float = 0.0) -> tuple[Tensor, Tensor | None]:
        """Greedy (or ε-greedy) actions ``[B, N]`` among the available ones; next hidden."""
        q, h = self.q(obs, hidden)
        actions = q.masked_fill(~avail, float("-inf")).argmax(-1)
        if not deterministic and epsilon > 0:
            random = (torch.rand(avail.shape, device=obs.device) * avail).argmax(-1)
            explore = torch.rand(actions.shape, device=obs.device) < epsilon
            actions = torch.where(explore, random, actions)
        parts = [p for p in (h, F.one_hot(actions, self.n_act).to(obs.dtype) if self.last_action else None)
                 if p is not None]
        return actions, (torch.cat(parts, -1) if parts else None)


def make_actor(spec: EnvSpec, cfg: DictConfig) -> QActor:
    return QActor(spec, cfg)


def make(spec: EnvSpec, cfg: DictConfig, device: torch.device) -> QLearner:
    return QLearner(spec, cfg, device)


class QLearner:
    """The learner: ε-greedy collection into episode replay, then TD updates on Q_i or Q_tot."""

    def __init__(self, spec: EnvSpec, cfg: DictConfig, device: torch.device) -> None:
        self.cfg = a = cfg.algo
        if a.returns not in ("lambda", "nstep"):
            raise ConfigError(f"unknown algo.returns '{a.returns}': use lambda or nstep")
        self.rollout_steps, self.spec = int(a.rollout_steps), spec
        self.actor = make_actor(spec, cfg).to(device)
        # critic.arch=set: the mixer reads every agent's observation instead of the flat state (any N)
        self.mix_key = "obs" if cfg.critic.get("arch", "mlp") == "set" else "state"
        self.mixer = make_mixer(a.mixer, spec.n_agents, spec.state_dim, a.mixer_embed, a.hypernet_hidden,
                                spec.obs_dim if self.mix_key == "obs" else None)
        self.mixer = self.mixer.to(device) if self.mixer is not None else None
        self.target_actor = copy.deepcopy(self.actor).requires_grad_(False)
        self.target_mixer = copy.deepcopy(self.mixer).requires_grad_(False) if self.mixer is not None else None
        self.params = list(self.actor.parameters()) + (list(self.mixer.parameters()) if self.mixer else [])
        self.optim = adam(self.params, a.lr, a.adam_eps)
        self.reward_norm = RunningNorm(beta=0.999).to(device)
        self.replay = EpisodeReplay(a.buffer_episodes, int(cfg.env.num_envs), spec.episode_limit, spec.n_agents,
                                    spec.obs_dim, spec.state_dim, spec.act_dim, device)
        self.updates, self.credit = 0, 0.0  # gradient steps done; episodes' worth of steps owed
        self.total_steps = int(cfg.train.total_steps)
        schedule_lr(self.optim, a, 0, self.total_steps)  # a bad schedule fails at start-up

    def epsilon(self, step: int) -> float:
        a = self.cfg
        return linear(a.eps_start, a.eps_end, step, a.eps_anneal_steps)

    def act(self, ts: TimeStep, hidden: Tensor | None, step: int) -> tuple[Tensor, Tensor | None]:
        with torch.no_grad():
            return self.actor.act(ts.obs, ts.avail, hidden, deterministic=False, epsilon=self.epsilon(step))

    def update(self, rollout: Rollout, step: int) -> dict[str, Any]:
        a = self.cfg
        if a.standardise_rewards:
            self.reward_norm.update(rollout.reward)
        new = self.replay.add(rollout)
        lr = schedule_lr(self.optim, a, step, self.total_steps)
        metrics: dict[str, Any] = {"train/epsilon": self.epsilon(step), "train/buffer_episodes": self.replay.size,
                                   "train/lr": lr}
        ready = distributed.sum_int(self.replay.size) >= max(1, a.learning_starts)  # episodes over all ranks
        if not (ready and distributed.all_true(self.replay.size > 0)):
            return metrics
        # all ranks run the same number of steps: global new episodes over the global batch (issue 21)
        self.credit += distributed.sum_int(new) * a.replay_ratio / (a.batch_episodes * distributed.world_size())
        n_updates, self.credit = int(self.credit), self.credit - int(self.credit)
        for _ in range(n_updates):
            metrics.update(self.learn(self.replay.sample(a.batch_episodes)))
        return metrics

    def td_targets(self, b: dict[str, Tensor], q_next: Tensor, reward: Tensor, terminated: Tensor,
                   cut: Tensor | None = None) -> Tensor:
        """Targets ``[E, L, K]`` from next values, rewards and terminations ``[E, L, K]``.

        ``cut [E, L, K]`` ends an agent's return early without terminating it (its own time
        limit): the target there bootstraps fully from ``q_next`` and looks no further.
        """
        a = self.cfg
        cont = b["filled"][:, 1:, None].expand_as(reward)
        if cut is not None:
            cont = cont & ~cut
        tm = [x.transpose(0, 1) for x in (reward, q_next, terminated, cont)]  # time-major [L, E, K]
        g = (td_lambda(*tm, a.gamma, a.td_lambda) if a.returns == "lambda"
             else nstep_returns(*tm, a.gamma, a.nstep))
        return g.transpose(0, 1)

    def learn(self, b: dict[str, Tensor]) -> dict[str, Tensor]:
        """One gradient step on a batch of episodes ``{field: [E, L+1, ...]}``."""
        a = self.cfg
        q = self.actor.q_sequence(b["obs"], b["actions"])  # [E, L+1, N, A]
        chosen = q[:, :-1].gather(-1, b["actions"][:, :-1, :, None]).squeeze(-1)  # [E, L, N]
        # an agent truncated alone at row t (its own time limit, the episode goes on; issue 25) is not
        # terminated: it bootstraps from its final observation (row t + 1, where it no longer acts) under
        # its last masks, and its return stops there (rows after it are padding)
        lone = b.get("agent_truncated")
        lone = lone[:, :-1] & b["alive"][:, :-1] if lone is not None else torch.zeros_like(b["alive"][:, :-1])
        with torch.no_grad():
            tq = self.target_actor.q_sequence(b["obs"], b["actions"])[:, 1:]
            next_avail = b["avail"][:, 1:]
            if "agent_final_avail" in b:
                next_avail = torch.where(lone[..., None], b["agent_final_avail"][:, :-1], next_avail)
            pick = q[:, 1:] if a.double_q else tq
            best = pick.detach().masked_fill(~next_avail, float("-inf")).argmax(-1, keepdim=True)
            q_next = tq.gather(-1, best).squeeze(-1) * (b["alive"][:, 1:] | lone)  # [E, L, N]
            q_next = q_next.masked_fill(~next_avail.any(-1), 0.0)
        reward = b["reward"][:, :-1]
        if a.standardise_rewards:
            reward = reward / self.reward_norm._stats()[1].sqrt()
        terminated, mask = b["terminated"][:, :-1], b["filled"][:, :-1, None]
        chosen = chosen * b["alive"][:, :-1]
        if self.mixer is not None:  # team value: mean reward, episode ends when every agent has
            chosen = self.mixer(chosen, b[self.mix_key][:, :-1])
            with torch.no_grad():
                q_next = self.target_mixer(q_next, b[self.mix_key][:, 1:])
            reward, terminated = reward.mean(-1, keepdim=True), terminated.all(-1, keepdim=True)
        else:  # independent learners: one loss term per agent, masked where it did not act
            mask = mask & b["alive"][:, :-1]
        # per-agent returns stop at a lone truncation; a mixed Q_tot goes on with the team (the truncated
        # agent's value at its final observation is in the mixed next value of that step)
        target = self.td_targets(b, q_next, reward, terminated, lone if self.mixer is None else None)
        delta = target - chosen  # TD error [E, L, K]
        weight = mask.to(delta.dtype)
        if a.optimism:
            weight = weight * torch.where(delta < 0, a.neg_td_scale, 1.0)
        loss = (weight * delta**2).sum() / mask.sum().clamp(min=1)
        self.optim.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = optimizer_step(self.optim, self.params, a.max_grad_norm)
        self.updates += 1
        self._update_targets()
        m = mask.to(delta.dtype)
        return {"loss/td": loss.detach(), "train/grad_norm": grad_norm.detach(),
                "train/q_taken": (chosen.detach() * m).sum() / m.sum().clamp(min=1)}

    @torch.no_grad()
    def _update_targets(self) -> None:
        a = self.cfg
        pairs = [(self.target_actor, self.actor)] + ([(self.target_mixer, self.mixer)] if self.mixer else [])
        for target, online in pairs:
            params = list(target.parameters())
            if a.tau < 1.0:
                if params:  # the VDN sum has no parameters
                    torch._foreach_lerp_(params, list(online.parameters()), a.tau)
            elif self.updates % max(1, a.target_update_interval) == 0:
                target.load_state_dict(online.state_dict())

    def state_dict(self) -> dict[str, Any]:
        return {"mixer": self.mixer.state_dict() if self.mixer else {},
                "target_actor": self.target_actor.state_dict(),
                "target_mixer": self.target_mixer.state_dict() if self.target_mixer else {},
                "optim": self.optim.state_dict(), "reward_norm": self.reward_norm.state_dict(),
                "replay": self.replay.state_dict(), "updates": self.updates, "credit": self.credit}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.mixer is not None:
            self.mixer.load_state_dict(state["mixer"])
            self.target_mixer.load_state_dict(state["target_mixer"])
        self.target_actor.load_state_dict(state["target_actor"])
        self.optim.load_state_dict(state["optim"])
        self.reward_norm.load_state_dict(state["reward_norm"])
        self.replay.load_state_dict(state["replay"])
        self.updates, self.credit = int(state["updates"]), float(state["credit"])
