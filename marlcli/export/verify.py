"""Checking an export before it is written: parity with the torch actor on recorded episodes, and latency.

Parity compares every file, for every agent it serves, with ``actor.act`` on the steps it took
in real evaluation episodes (tolerance :data:`TOL`); latency is one agent's step at batch 1 on
one CPU thread per format, the number a robot's control loop sees.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from marlcli.evaluate import run_episodes
from marlcli.export.formats import load_torchscript, ort_session, quiet_export
from marlcli.export.policy import Group, GroupPolicy
from marlcli.results import describe

TOL = 1e-5  # max |difference| allowed on continuous outputs (actions, logits, hidden states)


# ----------------------------------------------------------------------------- parity on recorded episodes
class Recorder:
    """An Actor that runs the torch actor and keeps what it saw and did (for the parity check)."""

    def __init__(self, actor: Any) -> None:
        self.actor, self.steps = actor, []

    def initial_hidden(self, batch: int) -> Tensor | None:
        return self.actor.initial_hidden(batch)

    def act(self, obs: Tensor, avail: Tensor, hidden: Tensor | None, deterministic: bool) -> tuple[Tensor, Any]:
        action, nxt = self.actor.act(obs, avail, hidden, deterministic)
        self.steps.append((obs, avail, hidden, action, nxt))
        return action, nxt


def record(actor: Any, env: Any, episodes: int) -> dict[str, Tensor]:
    """Inputs and outputs of ``actor.act`` over ``episodes`` real evaluation episodes, ``[M, N, ...]``.

    Discrete actors get a second copy of every step with random action masks (at least one
    action left), so the masking path is checked too.
    """
    rec = Recorder(actor)
    run_episodes(rec, env, episodes, deterministic=True)
    cat = lambda k: torch.cat([s[k] for s in rec.steps]) if rec.steps[0][k] is not None else None  # noqa: E731
    data = {"obs": cat(0), "avail": cat(1), "hidden": cat(2), "action": cat(3), "hidden_out": cat(4)}
    if env.spec.discrete:
        g = torch.Generator().manual_seed(0)
        avail = data["avail"] & (torch.rand(data["avail"].shape, generator=g) < 0.6)
        first = data["avail"].float().argmax(-1, keepdim=True)  # keep one really available action
        avail = avail.scatter(-1, first, True)
        with torch.no_grad():
            action, nxt = actor.act(data["obs"], avail, data["hidden"], True)
        data = {"obs": data["obs"].repeat(2, 1, 1), "avail": torch.cat([data["avail"], avail]),
                "hidden": None if data["hidden"] is None else data["hidden"].repeat(2, 1, 1),
                "action": torch.cat([data["action"], action]),
                "hidden_out": None if nxt is None else torch.cat([data["hidden_out"], nxt])}
    if not env.spec.discrete:  # what the env applies: the mean clipped into each agent's bounds
        low, high = env.spec.bounds()
        data["action"] = torch.minimum(torch.maximum(data["action"], low), high)
    return data


def agent_inputs(policy: GroupPolicy, data: dict[str, Tensor], i: int) -> tuple[Tensor, ...]:
    """Agent ``i``'s own inputs from recorded ``[M, N, ...]`` data, as the file takes them."""
    m = data["obs"].shape[0]
    ins = [data["obs"][:, i, : policy.obs_size].contiguous()]
    if policy.indexed:
        ins.append(torch.full((m,), i, dtype=torch.long))
    if policy.discrete:
        ins.append(data["avail"][:, i, : policy.act_size].contiguous())
    if policy.hidden_size:
        ins.append(data["hidden"][:, i].contiguous())
    return tuple(ins)


def run_file(fmt: str, handle: Any, policy: GroupPolicy, ins: tuple[Tensor, ...]) -> list[Tensor]:
    """One file's outputs on one agent's inputs, in ``policy.output_names`` order, from either runtime."""
    if fmt == "onnx":
        feed = {n: t.numpy() for n, t in zip(policy.input_names, ins, strict=True)}
        return [torch.from_numpy(np.asarray(o)) for o in handle.run(None, feed)]
    kw = dict(zip(policy.input_names, ins, strict=True))
    with torch.no_grad():
        res = handle(kw.pop("obs"), **kw)
    return [res[n] for n in policy.output_names]


def parity(policies: list[GroupPolicy], groups: list[Group], handles: dict[str, list[Any]],
           data: dict[str, Tensor]) -> dict[str, Any]:
    """Compare every file, for every agent it serves, with ``actor.act`` and the torch module.

    ``action`` and ``hidden_out`` against the torch actor as ``marl eval`` runs it; ``logits``
    against the same torch module the file was made from.
    """
    report: dict[str, Any] = {"samples_per_agent": int(data["obs"].shape[0]), "tolerance": TOL}
    for fmt, files in handles.items():
        worst, agree, total = 0.0, 0, 0
        for policy, group, handle in zip(policies, groups, files, strict=True):
            for i in group.agents:
                ins = agent_inputs(policy, data, i)
                got = run_file(fmt, handle, policy, ins)
                with torch.no_grad(), quiet_export():
                    ref_mod = policy(*ins)
                names = policy.output_names
                for name, out, mod in zip(names, got, ref_mod, strict=True):
                    if name == "action":
                        ref = data["action"][:, i]
                        if policy.discrete:
                            agree += int((out == ref).sum())
                            total += ref.numel()
                            continue
                        ref = ref[:, : policy.act_size]
                    else:
                        ref = data["hidden_out"][:, i] if name == "hidden_out" else mod
                    worst = max(worst, float((out.double() - ref.double()).abs().max()))
        entry: dict[str, Any] = {"max_abs_diff": worst}
        if total:
            entry["discrete_agreement"] = agree / total
        entry["passed"] = worst <= TOL and (not total or agree == total)
        report[fmt] = entry
    return report


# ----------------------------------------------------------------------------- latency
def _percentiles(step: Any, iters: int) -> dict[str, float]:
    """p50/p99 of ``step()`` in microseconds, after a warm-up of a tenth of ``iters``."""
    for _ in range(max(10, iters // 10)):
        step()
    times = np.empty(iters)
    for k in range(iters):
        t = time.perf_counter_ns()
        step()
        times[k] = time.perf_counter_ns() - t
    return {"p50_us": float(np.percentile(times, 50) / 1e3), "p99_us": float(np.percentile(times, 99) / 1e3),
            "iters": iters}


def latency(policy: GroupPolicy, paths: dict[str, Path], iters: int) -> dict[str, Any]:
    """p50/p99 of one agent's step at batch 1 on one CPU thread per format (and on a GPU if present)."""
    ins = policy.example(batch=1)
    kw = dict(zip(policy.input_names[1:], ins[1:], strict=True))
    out: dict[str, Any] = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if "onnx" in paths:
            sess = ort_session(paths["onnx"], threads=1)
            feed = {n: t.numpy() for n, t in zip(policy.input_names, ins, strict=True)}
            out["onnx/cpu"] = _percentiles(lambda: sess.run(None, feed), iters)
        if "torchscript" in paths:
            ts = load_torchscript(paths["torchscript"])
            with torch.inference_mode():
                out["torchscript/cpu"] = _percentiles(lambda: ts(ins[0], **kw), iters)
        with torch.inference_mode(), quiet_export():
            out["torch-eager/cpu"] = _percentiles(lambda: policy(*ins), iters)
    finally:
        torch.set_num_threads(threads)
    if torch.cuda.is_available():
        try:
            out.update(_gpu_latency(policy, paths, ins, kw, iters))
        except Exception as exc:  # noqa: BLE001 - a GPU figure is a bonus, never a reason to fail the export
            out["cuda/error"] = describe(exc)
    return out


def _gpu_latency(policy: GroupPolicy, paths: dict[str, Path], ins: tuple[Tensor, ...], kw: dict[str, Tensor],
                 iters: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    dev = torch.device("cuda")
    if "torchscript" in paths:
        ts = load_torchscript(paths["torchscript"], dev)
        gobs, gkw = ins[0].to(dev), {k: v.to(dev) for k, v in kw.items()}

        def gpu_step() -> None:
            ts(gobs, **gkw)
            torch.cuda.synchronize()

        with torch.inference_mode():
            out["torchscript/cuda"] = _percentiles(gpu_step, iters)
    if "onnx" in paths:
        import onnxruntime as ort  # deferred: optional; the CPU figure above has loaded it already

        if "CUDAExecutionProvider" in ort.get_available_providers():
            sess = ort_session(paths["onnx"], providers=["CUDAExecutionProvider"])
            feed = {n: t.numpy() for n, t in zip(policy.input_names, ins, strict=True)}
            out["onnx/cuda"] = _percentiles(lambda: sess.run(None, feed), iters)
    return out
