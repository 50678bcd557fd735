"""Training cost per env-step against the team size N, with neighbour-limited observations (issue 17).

``swarm_scaling()`` trains MAPPO on swarm spread (3 nearest agents and landmarks seen, shared actor
without an agent id, ``critic=set``) for a few updates at each N with the same number of env copies,
and reports the median wall time per env-step of the whole loop (acting, env, learner) and that time
divided by N. Linear cost means a flat per-agent column; the env's all-pairs distances are the only
O(N^2) part, and no network input grows with N.
"""

from __future__ import annotations

import json
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from marlcli.algos import load_family
from marlcli.config import compose
from marlcli.envs import make_env
from marlcli.results import read_metrics
from marlcli.trainer import train

SWARM = ["env=spread", "env.num_agent_neighbors=3", "env.num_landmark_neighbors=3", "env.scale_arena=true",
         "env.observe_position=false", "env.global_reward=mean", "algo=mappo", "sharing=all",
         "sharing.agent_id=false", "critic=set"]


ACTORS = {"mlp": ["actor=mlp"], "deepsets": ["actor=deepsets"]}
CHANNELS = {"none": ["comm=none"], "commnet": ["comm=commnet"], "tarmac": ["comm=tarmac"]}


def swarm_scaling(n_values: tuple[int, ...] = (3, 10, 30, 100), num_envs: int = 64, updates: int = 6,
                  variants: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """``{"us_per_env_step": {variant: {N: µs}}, "us_per_agent_step": {variant: {N: µs}}, ...}``.

    ``variants``: label -> overrides (default: the mlp and deepsets actors)."""
    per_step: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for actor, extra in (variants or ACTORS).items():
            per_step[actor] = {}
            for n in n_values:
                chunk = 25 * num_envs
                cfg = compose([*SWARM, *extra, f"env.N={n}", f"env.num_envs={num_envs}",
                               f"results_dir={tmp}", f"run={actor}_{n}", "device=cpu", "logger.progress=false",
                               f"train.total_steps={chunk * updates}", f"train.log_interval={chunk}",
                               "train.eval_interval=0", "train.eval_episodes=1", "train.eval_envs=1",
                               f"train.checkpoint_interval={10 * chunk * updates}"])
                out = train(cfg)
                sps = [r["time/sps"] for r in read_metrics(Path(out) / "metrics.jsonl") if "time/sps" in r][1:]
                per_step[actor][str(n)] = 1e6 / statistics.median(sps)
    return {"us_per_env_step": per_step,
            "us_per_agent_step": {a: {n: v / int(n) for n, v in d.items()} for a, d in per_step.items()},
            "num_envs": num_envs, "updates": updates, "torch_threads": torch.get_num_threads()}


def channel_cost(n: int = 10, copies: int = 512, reps: int = 10, rounds: int = 9) -> dict[str, Any]:
    """The price of a message channel at N agents (issue 19), two ways, against no channel:

    * ``act_ms``: the actor's forward per env-step (``copies`` spread copies), acting as in collection;
    * ``train_us_per_env_step``: the whole training loop per env-step (swarm spread, MAPPO), as above.

    The forward timings interleave the three actors ``rounds`` times and keep each one's fastest
    round, so a busy spell slows all of them instead of whichever ran during it."""
    actors, best = {}, {}
    for comm, extra in CHANNELS.items():
        cfg = compose(["env=spread", f"env.N={n}", *extra])
        env = make_env(cfg.env, copies, 0, torch.device("cpu"))
        actors[comm], best[comm] = load_family(cfg.algo).make_actor(env.spec, cfg), math.inf
    ts = env.reset()
    with torch.no_grad():
        for _ in range(rounds):
            for comm, actor in actors.items():
                actor.act(ts.obs, ts.avail, None, False)
                t0 = time.perf_counter()
                for _ in range(reps):
                    actor.act(ts.obs, ts.avail, None, False)
                best[comm] = min(best[comm], 1000 * (time.perf_counter() - t0) / reps)
    loop = swarm_scaling((n,), variants=CHANNELS)["us_per_env_step"]
    train_us = {c: loop[c][str(n)] for c in CHANNELS}
    return {"N": n, "copies": copies, "act_ms": best, "train_us_per_env_step": train_us,
            "act_ratio": {c: best[c] / best["none"] for c in ("commnet", "tarmac")},
            "train_ratio": {c: train_us[c] / train_us["none"] for c in ("commnet", "tarmac")},
            "torch_threads": torch.get_num_threads()}


if __name__ == "__main__":
    print(json.dumps(swarm_scaling(), indent=2))
