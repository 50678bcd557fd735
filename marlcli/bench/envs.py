"""Env throughput: native batched spread vs mpe2's ParallelEnv (and vs VMAS), with random actions.

An env-step is one step of one env copy (all agents). ``env_throughput()`` returns
``{"env_steps_per_s": {"spread": {"native": {B: ...}, "mpe2": ...}},
"per_agent_count": {"native_us_per_env_step": {N: ...}, "mpe2_us_per_env_step": {N: ...}}}``.
Action sampling is outside the timed loop for native and VMAS (pre-drawn) but inside for
mpe2, as a Python user of mpe2 would pay it.

``vmas_throughput()`` measures VMAS through marlcli's adapter (``marlcli.envs.vmas``, what
training sees) side by side with native spread: at each B, VMAS's ``simple_spread`` (its port
of the same task, N=3, discrete), VMAS ``navigation`` (N=3, continuous, 12-ray lidar) and
native spread (N=3) are timed in turn, ``repeats`` times, and the best of each is kept. On the
CPU the clock is this process's CPU time with one torch thread, so other jobs on a shared
machine do not count against either side (on an idle core it equals wall time).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

import torch
from mpe2 import simple_spread_v3
from omegaconf import OmegaConf

from marlcli.envs import native
from marlcli.envs.vmas import VMASEnv


def _timed_steps(env: Any, acts: torch.Tensor, seconds: float, clock: Callable[[], float]) -> float:
    """Env-steps/s of ``env`` cycling through 8 pre-drawn action batches ``acts [8, B, ...]``."""
    env.step(acts[0])  # warm-up
    steps, start = 0, clock()
    while True:
        for k in range(8):
            env.step(acts[k])
        steps += 8
        elapsed = clock() - start
        if elapsed >= seconds:
            return steps * acts.shape[1] / elapsed


def _native_steps_per_s(n: int, b: int, seconds: float, device: torch.device,
                        clock: Callable[[], float] = time.perf_counter) -> float:
    env = native.make(OmegaConf.create({"name": "spread", "N": n, "max_cycles": 25}), b, 0, device)
    env.reset()
    acts = torch.randint(0, 5, (8, b, n), device=device)
    return _timed_steps(env, acts, seconds, clock)


def _vmas_steps_per_s(scenario: str, b: int, seconds: float, device: torch.device, continuous: bool,
                      clock: Callable[[], float] = time.perf_counter) -> float:
    cfg = {"scenario": scenario, "max_steps": 25, "continuous_actions": continuous,
           "n_agents": 3}
    env = VMASEnv(OmegaConf.create(cfg), b, 0, device)
    env.reset()
    spec = env.spec
    if continuous:
        acts = torch.rand(8, b, spec.n_agents, spec.act_dim, device=device) * 2 - 1
    else:
        acts = torch.randint(0, spec.act_dim, (8, b, spec.n_agents), device=device)
    return _timed_steps(env, acts, seconds, clock)


def _mpe2_steps_per_s(n: int, seconds: float) -> float:
    env = simple_spread_v3.parallel_env(N=n, max_cycles=25)
    env.reset(seed=0)
    steps, start = 0, time.perf_counter()
    while True:
        if not env.agents:
            env.reset()
        env.step({a: env.action_space(a).sample() for a in env.agents})
        steps += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return steps / elapsed


def env_throughput(
    b_values: tuple[int, ...] = (1, 64, 1024, 4096, 16384),
    n_values: tuple[int, ...] = (3, 10, 30, 100),
    seconds: float = 1.5,
    device: str = "cpu",
    per_agent_b: int = 256,
) -> dict[str, Any]:
    """Measure spread env-steps/s vs B (N=3) and µs per env-step vs N (B=per_agent_b copies)."""
    dev = torch.device(device)
    by_b = {str(b): _native_steps_per_s(3, b, seconds, dev) for b in b_values}
    native_us = {str(n): 1e6 / _native_steps_per_s(n, per_agent_b, seconds, dev)
                 for n in n_values}
    mpe2_us = {str(n): 1e6 / _mpe2_steps_per_s(n, seconds) for n in n_values}
    return {
        "env_steps_per_s": {"spread": {"native": by_b, "mpe2": 1e6 / mpe2_us[str(n_values[0])]}},
        "per_agent_count": {"native_us_per_env_step": native_us, "mpe2_us_per_env_step": mpe2_us,
                            "native_b": per_agent_b},
        "torch_threads": torch.get_num_threads(),
        "device": str(dev),
    }


def vmas_throughput(b_values: tuple[int, ...] = (1, 64, 1024, 4096, 16384), seconds: float = 0.5,
                    repeats: int = 3, device: str = "cpu") -> dict[str, Any]:
    """``{"env_steps_per_s": {B: {"native_spread": .., "vmas_simple_spread": .., "vmas_navigation": ..}}, ...}``."""
    dev = torch.device(device)
    clock = time.process_time if dev.type == "cpu" else time.perf_counter
    runs = {"native_spread": lambda b: _native_steps_per_s(3, b, seconds, dev, clock),
            "vmas_simple_spread": lambda b: _vmas_steps_per_s("simple_spread", b, seconds, dev, False, clock),
            "vmas_navigation": lambda b: _vmas_steps_per_s("navigation", b, seconds, dev, True, clock)}
    threads = torch.get_num_threads()
    if dev.type == "cpu":
        torch.set_num_threads(1)  # one thread: CPU time = wall time on an idle core
    out: dict[str, dict[str, float]] = {}
    try:
        for b in b_values:
            best = dict.fromkeys(runs, 0.0)
            for _ in range(repeats):  # interleaved: each repeat times all three back to back
                for name, fn in runs.items():
                    best[name] = max(best[name], fn(b))
            out[str(b)] = best
    finally:
        torch.set_num_threads(threads)
    return {"env_steps_per_s": out, "repeats": repeats, "seconds": seconds, "device": str(dev),
            "clock": "process CPU time, 1 torch thread" if dev.type == "cpu" else "wall",
            "load_avg_1min": _load()}


def _load() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


if __name__ == "__main__":
    print(json.dumps(env_throughput(), indent=2))
