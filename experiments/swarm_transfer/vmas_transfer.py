"""Train small, deploy large on VMAS navigation: a shared actor trained at one N, evaluated zero-shot at larger N.

    python experiments/swarm_transfer/vmas_transfer.py [out=experiments/swarm_transfer/vmas] [seeds=100,101]
        [train_n=3] [eval_ns=3,6,12] [steps=128000] [retrain_ns=] [episodes=100]

VMAS navigation (``env=vmas env.scenario=navigation``): each agent observes its position,
velocity, the offset to its own goal and a 12-ray lidar, so the observation size does not depend
on N. Rewards are per agent (``shared_rew: false``: each agent's own progress to its goal), so a
per-agent return means the same at every N; the arena stays VMAS's default, so larger N is also
more crowded. MAPPO with one actor shared by every agent and no one-hot agent id
(``sharing=all sharing.agent_id=false``), trained at ``train_n``; every seed's actor is evaluated
at each N of ``eval_ns`` through ``marl eval PATH env.n_agents=M``'s code path, beside a uniform
random policy on the same episodes (evaluation seed 9000). With ``retrain_ns`` (e.g. ``6``),
policies trained at those N (every seed) give the normalized transfer score
(mean zero-shot - random) / (mean retrained - random), with a 95% CI over the per-seed ratios.
Writes ``results.json`` into ``out``.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from marlcli import config
from marlcli.evaluate import env_for_eval, evaluate_path, run_episodes
from marlcli.stats import ci95
from marlcli.trainer import train

EVAL_SEED = 9000


def base(n: int) -> list[str]:
    return ["algo=mappo", "env=vmas", "env.scenario=navigation", f"env.n_agents={n}", "env.max_steps=100",
            "env.kwargs={shared_rew: false}", "env.continuous_actions=true", "env.num_envs=64", "algo.rollout_steps=100",
            "sharing=all", "sharing.agent_id=false", "device=cpu", "logger.progress=false",
            "train.eval_episodes=100", "train.eval_envs=100", "train.eval_interval=1000000000",
            "train.log_interval=1000000000", "train.checkpoint_interval=1000000000"]


class Random:
    """Uniform in each agent's box."""

    def __init__(self, spec: Any) -> None:
        self.low, self.high = spec.bounds()
        self.gen = torch.Generator().manual_seed(0)

    def initial_hidden(self, batch: int) -> None:
        return None

    def act(self, obs: torch.Tensor, avail: torch.Tensor, hidden: None, deterministic: bool) -> tuple[torch.Tensor, None]:
        u = torch.rand(obs.shape[0], *self.low.shape, generator=self.gen)
        return self.low + (self.high - self.low) * u, None


def random_return(n: int, episodes: int) -> float:
    config.register()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config.CONF_DIR), version_base=None):
        cfg = compose("config", overrides=base(n))
    env = env_for_eval(cfg, episodes, EVAL_SEED, torch.device("cpu"))  # marl eval's env seed
    return run_episodes(Random(env.spec), env, episodes).summary()["eval/return_mean"]


def trained(n: int, seed: int, steps: int, root: Path) -> Path:
    config.register()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config.CONF_DIR), version_base=None):
        cfg = compose("config", overrides=[*base(n), f"seed={seed}", f"train.total_steps={steps}",
                                           f"results_dir={root}", f"run=n{n}"])
    return train(cfg)


def main(argv: list[str]) -> None:
    a = dict(x.split("=", 1) for x in argv)
    out = Path(a.get("out", Path(__file__).parent / "vmas"))
    seeds = [int(s) for s in a.get("seeds", "100,101").split(",")]
    train_n, steps, episodes = int(a.get("train_n", 3)), int(a.get("steps", 128_000)), int(a.get("episodes", 100))
    eval_ns = [int(m) for m in a.get("eval_ns", "3,6,12").split(",")]
    retrain_ns = [int(m) for m in a.get("retrain_ns", "").split(",") if m]
    torch.set_num_threads(1)
    res: dict[str, Any] = {"train_n": train_n, "seeds": seeds, "env_steps": steps, "episodes": episodes,
                           "eval_seed": EVAL_SEED, "settings": base(train_n), "random": {}, "zero_shot": {},
                           "retrained": {}}
    with tempfile.TemporaryDirectory() as tmp:
        dirs = [trained(train_n, s, steps, Path(tmp)) for s in seeds]
        for m in eval_ns:
            res["random"][str(m)] = random_return(m, episodes)
            res["zero_shot"][str(m)] = [evaluate_path(d, episodes=episodes, seed=EVAL_SEED, envs=episodes,
                                                      overrides=[f"env.n_agents={m}"], write=False)[0]["return_mean"]
                                        for d in dirs]
            print(m, res["random"][str(m)], res["zero_shot"][str(m)], flush=True)
        for m in retrain_ns:  # every seed retrained at m: the score's denominator has its own seed noise
            res["retrained"][str(m)] = [evaluate_path(trained(m, s, steps, Path(tmp)), episodes=episodes,
                                                      seed=EVAL_SEED, envs=episodes, write=False)[0]["return_mean"]
                                        for s in seeds]
            print("retrained", m, res["retrained"][str(m)], flush=True)
    score, ci = {}, {}
    for m, r in res["retrained"].items():
        zs, rt = sum(res["zero_shot"][m]) / len(seeds), sum(r) / len(r)
        score[m] = (zs - res["random"][m]) / (rt - res["random"][m])
        per = [(z - res["random"][m]) / (x - res["random"][m]) for z, x in zip(res["zero_shot"][m], r, strict=True)]
        ci[m] = ci95(per)
    res["transfer_score"], res["transfer_score_ci95_per_seed_pairs"] = score, ci
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
