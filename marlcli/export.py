"""``marl export``: the decentralized actor as files a robot runs alone (issue 18).

One file per agent group (``sharing=all``: one file; ``none``: one per agent; ``role``: one
per role) in ONNX and/or TorchScript, plus ``manifest.json`` and ``latency.json``. Each file
is a thin :class:`GroupPolicy` around the family's own actor (``PolicyActor.dist``,
``QActor.q``, ``DeterministicActor.raw/squash``): nothing is re-implemented, and the export
is checked against ``actor.act`` itself on observations recorded in the real env.

A file's interface (one agent's step, batch ``B``; shapes and sizes are in the manifest)::

    inputs   obs          float32 [B, obs_size]  the agent's own raw observation (no normalization
                                                 in marlcli); smaller ones zero-padded at the end
             agent_index  int64   [B]            files serving several agents: the agent's position
                                                 in manifest["agents"] (one-hot id / bounds inside)
             mask         bool    [B, act_size]  discrete only, optional: available actions
                                                 (ONNX: omit it = all available)
             hidden       float32 [B, W]         recurrent only: zeros at episode start
    outputs  action       int64 [B] (argmax) | float32 [B, act_size] (mean or squash, in bounds)
             logits       float32 [B, act_size]  discrete only: the masked scores argmax is taken of
             hidden_out   float32 [B, W]         recurrent only: feed back as ``hidden`` next step
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import platform
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from marlcli.cliutil import os_error
from marlcli.errors import MarlError

MANIFEST_FORMAT = "marlcli-export/1"
OPSET = 18
FORMATS = ("onnx", "torchscript")
SUFFIX = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
TOL = 1e-5  # max |difference| allowed on continuous outputs (actions, logits, hidden states)
USAGE = ("marl export PATH [format=onnx,torchscript] [out=DIR] [parity_episodes=16] [seed=0] "
         "[latency_iters=1000] [exporter=legacy|dynamo] [env.factory=M:F]   (PATH: a seed dir or a .pt checkpoint)")


class ExportError(MarlError):
    """An actor that cannot be exported, a missing exporter or runtime, a failed parity check."""


# ----------------------------------------------------------------------------- the exported module
@dataclass
class Group:
    """One exported file: its name and the agents (env indices) it serves."""

    name: str
    agents: list[int]


def groups_of(sharing: str, spec: Any) -> list[Group]:
    if sharing == "all":
        return [Group("all", list(range(spec.n_agents)))]
    if sharing == "none":
        return [Group(a, [i]) for i, a in enumerate(spec.agents)]
    idx = spec.role_index
    return [Group(r, [i for i in range(spec.n_agents) if idx[i] == g]) for g, r in enumerate(spec.roles)]


def actor_kind(actor: nn.Module) -> str:
    """Which family adapter serves ``actor`` (``policy``, ``q`` or ``deterministic``)."""
    from marlcli.algos.maddpg import DeterministicActor
    from marlcli.algos.ppo import PolicyActor
    from marlcli.algos.qlearning import QActor
    from marlcli.nets.comm import CommEncoder

    if any(isinstance(m, CommEncoder) for m in actor.modules()):
        raise ExportError("cannot export a communicating actor (comm=commnet/tarmac) one file per agent: each agent's "
                          "action depends on the other agents' messages; evaluate it with marl eval")
    for cls, kind in ((PolicyActor, "policy"), (QActor, "q"), (DeterministicActor, "deterministic")):
        if isinstance(actor, cls):
            return kind
    raise ExportError(f"cannot export an actor of type {type(actor).__name__}: marl export knows PolicyActor "
                      "(IPPO/MAPPO/COMA), QActor (IQL/VDN/QMIX) and DeterministicActor (MADDPG)")


class GroupPolicy(nn.Module):
    """One agent's deterministic step through the family's own actor, on that agent's own inputs.

    The agent's observation is padded to the env's padded size and given to every row of an
    ``[B, N, O]`` batch; the actor runs as in training (GroupLinear picks each row's weights,
    ``with_agent_id`` appends the one-hot id) and the agent's row is kept. So the one-hot id,
    parameter groups and per-agent bounds come from the actor itself, at N times the (tiny) cost.
    """

    def __init__(self, actor: nn.Module, spec: Any, group: Group) -> None:
        super().__init__()
        self.actor, self.kind = actor, actor_kind(actor)
        self.n, self.o, self.a, self.discrete = spec.n_agents, spec.obs_dim, spec.act_dim, spec.discrete
        self.obs_size = max(spec.obs_dims[i] for i in group.agents)
        self.act_size = max(spec.act_dims[i] for i in group.agents)
        self.indexed = len(group.agents) > 1  # takes agent_index; a one-agent file has it baked in
        self.fixed = group.agents[0]
        self.hidden_size = 0
        h = actor.initial_hidden(1)
        if h is not None:
            self.hidden_size = int(h.shape[-1])
        low, high = spec.bounds()
        self.register_buffer("low", low, persistent=False)  # [N, A]
        self.register_buffer("high", high, persistent=False)
        self.register_buffer("act_mask", spec.action_mask(), persistent=False)

    @property
    def input_names(self) -> list[str]:
        return ["obs"] + ["agent_index"] * self.indexed + ["mask"] * self.discrete + ["hidden"] * bool(self.hidden_size)

    @property
    def output_names(self) -> list[str]:
        return ["action"] + ["logits"] * self.discrete + ["hidden_out"] * bool(self.hidden_size)

    def signature(self) -> dict[str, list[dict[str, Any]]]:
        """Inputs and outputs with dtype and shape, for the manifest."""
        a, h = ["batch", self.act_size], ["batch", self.hidden_size]
        spec = {"obs": ("float32", ["batch", self.obs_size]), "agent_index": ("int64", ["batch"]),
                "mask": ("bool", a), "hidden": ("float32", h), "hidden_out": ("float32", h), "logits": ("float32", a),
                "action": ("int64", ["batch"]) if self.discrete else ("float32", a)}
        row = lambda n: {"name": n, "dtype": spec[n][0], "shape": spec[n][1]}  # noqa: E731
        ins = [row(n) | ({"optional": True, "default": "all true"} if n == "mask" else {}) for n in self.input_names]
        return {"inputs": ins, "outputs": [row(n) for n in self.output_names]}

    def forward(self, obs: Tensor, *rest: Tensor) -> tuple[Tensor, ...]:
        given = dict(zip(self.input_names[1:], rest, strict=True))
        b = obs.shape[0]
        idx = given["agent_index"] if self.indexed else torch.full((b,), self.fixed, dtype=torch.long,
                                                                    device=obs.device)
        x = F.pad(obs, (0, self.o - self.obs_size)) if self.obs_size < self.o else obs
        x = x.unsqueeze(1).expand(b, self.n, self.o).contiguous()
        avail = self.act_mask[idx]  # [B, A]: the agent's real actions
        if "mask" in given:  # expand: the ONNX default mask is [1, act_size]
            mask = given["mask"].expand(b, self.act_size)
            avail = avail & (F.pad(mask, (0, self.a - self.act_size), value=False) if self.act_size < self.a else mask)
        avail = avail.unsqueeze(1).expand(b, self.n, self.a)
        # contiguous: a stride-0 (expanded) input sends torch's linear to a very slow bmm path
        hidden = given["hidden"].unsqueeze(1).expand(b, self.n, self.hidden_size).contiguous() if self.hidden_size \
            else None
        action, logits, hidden_out = getattr(self, f"_{self.kind}")(x, avail, hidden)
        row = lambda t: t.gather(1, idx.view(b, 1, *[1] * (t.dim() - 2)).expand(b, 1, *t.shape[2:])).squeeze(1)  # noqa: E731
        action = row(action)
        if not self.discrete:  # the env clips into each agent's bounds (mpe2 ClipOutOfBoundsWrapper)
            action = torch.minimum(torch.maximum(action, self.low[idx]), self.high[idx])[:, : self.act_size]
        out = [action] + ([row(logits)[:, : self.act_size]] if self.discrete else [])
        return tuple(out + ([row(hidden_out)] if self.hidden_size else []))

    # Each adapter is the family's act(deterministic=True), keeping the scores it argmaxes.
    def _policy(self, x: Tensor, avail: Tensor, hidden: Tensor | None) -> tuple[Tensor, Tensor | None, None]:
        d = self.actor.dist(x, avail)
        return (d.probs.argmax(-1), d.logits, None) if self.discrete else (d.mean, None, None)

    def _q(self, x: Tensor, avail: Tensor, hidden: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
        q, h = self.actor.q(x, hidden)
        action = q.masked_fill(~avail, float("-inf")).argmax(-1)
        last = F.one_hot(action, self.actor.n_act).to(x.dtype) if self.actor.last_action else None
        parts = [p for p in (h, last) if p is not None]
        return action, q.masked_fill(~avail, -1e9), (torch.cat(parts, -1) if parts else None)

    def _deterministic(self, x: Tensor, avail: Tensor, hidden: Tensor | None) -> tuple[Tensor, Tensor | None, None]:
        raw = self.actor.raw(x)
        if self.discrete:
            logits = raw.masked_fill(~avail, -1e9)
            return logits.argmax(-1), logits, None
        return self.actor.squash(raw), None, None

    def example(self, batch: int = 2) -> tuple[Tensor, ...]:
        ins = [torch.zeros(batch, self.obs_size)]
        if self.indexed:
            ins.append(torch.zeros(batch, dtype=torch.long))
        if self.discrete:
            ins.append(torch.ones(batch, self.act_size, dtype=torch.bool))
        if self.hidden_size:
            ins.append(torch.zeros(batch, self.hidden_size))
        return tuple(ins)


class _AllInputs(nn.Module):
    """:class:`GroupPolicy` with all four inputs and three outputs (empty where unused), for tracing."""

    def __init__(self, policy: GroupPolicy) -> None:
        super().__init__()
        self.policy = policy

    def forward(self, obs: Tensor, agent_index: Tensor, mask: Tensor, hidden: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        p = self.policy
        given = {"agent_index": agent_index, "mask": mask, "hidden": hidden}
        out = dict(zip(p.output_names, p(obs, *[given[n] for n in p.input_names[1:]]), strict=True))
        empty = obs.new_zeros(0)
        return out["action"], out.get("logits", empty), out.get("hidden_out", empty)


class TorchScriptPolicy(nn.Module):
    """The traced policy behind one signature with defaults: ``policy(obs, agent_index=None, mask=None,
    hidden=None) -> {"action", ["logits"], ["hidden_out"]}`` (scripted, loads without marlcli)."""

    def __init__(self, core: torch.jit.ScriptModule, policy: GroupPolicy) -> None:
        super().__init__()
        self.core = core
        self.indexed, self.discrete, self.recurrent = policy.indexed, policy.discrete, bool(policy.hidden_size)
        self.fixed, self.act_size, self.hidden_size = policy.fixed, policy.act_size, max(1, policy.hidden_size)

    def forward(self, obs: Tensor, agent_index: Tensor | None = None, mask: Tensor | None = None,
                hidden: Tensor | None = None) -> dict[str, Tensor]:
        b = obs.shape[0]
        if agent_index is None:
            if self.indexed:
                raise RuntimeError("this file serves several agents: pass agent_index")
            agent_index = torch.full([b], self.fixed, dtype=torch.long, device=obs.device)
        if mask is None:
            mask = torch.ones([b, self.act_size], dtype=torch.bool, device=obs.device)
        if hidden is None:
            hidden = torch.zeros([b, self.hidden_size], device=obs.device)
        action, logits, hidden_out = self.core(obs, agent_index, mask, hidden)
        out = {"action": action}
        if self.discrete:
            out["logits"] = logits
        if self.recurrent:
            out["hidden_out"] = hidden_out
        return out


# ----------------------------------------------------------------------------- writing the files
@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    """No distribution argument checks (data-dependent branches) and no exporter chatter."""
    from torch.distributions import Distribution

    before = Distribution._validate_args
    levels = {n: logging.getLogger(n).level for n in ("torch.onnx", "torch.export", "torch._dynamo")}
    for name in levels:
        logging.getLogger(name).setLevel(logging.ERROR)
    Distribution.set_default_validate_args(False)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        Distribution.set_default_validate_args(before)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def write_onnx(policy: GroupPolicy, path: Path, exporter: str = "legacy") -> str:
    """ONNX at opset 18 with a dynamic batch axis; an omitted ``mask`` means all available.

    ``legacy`` (torch.onnx's TorchScript-based exporter, default) traces these small MLP/GRU
    graphs exactly in a fraction of a second and writes byte-identical files for the same
    weights; the torch.export-based ``dynamo`` exporter (torch 2.13's default, needs onnxscript)
    gives the same numbers but takes 10-20 s per file. ``legacy`` falls back to ``dynamo``
    where a torch no longer has it. Returns the exporter used.
    """
    try:
        import onnx
    except ImportError:
        raise ExportError("format=onnx needs onnx: pip install 'marlcli[export]'") from None
    names = policy.input_names
    buf = io.BytesIO()
    try:
        with _quiet_export():
            if exporter == "legacy":
                try:
                    torch.onnx.export(policy, policy.example(), buf, input_names=names, output_names=policy.output_names,
                                      opset_version=OPSET, dynamo=False, do_constant_folding=True,
                                      dynamic_axes={n: {0: "batch"} for n in names + policy.output_names})
                except (TypeError, NotImplementedError, AttributeError):  # a torch without the legacy exporter
                    exporter = "dynamo"
            if exporter == "dynamo":
                try:
                    import onnxscript  # noqa: F401
                except ImportError:
                    raise ExportError("the dynamo ONNX exporter needs onnxscript: pip install 'marlcli[export]'") from None
                batch = torch.export.Dim("batch", min=1, max=1 << 20)
                prog = torch.onnx.export(policy, policy.example(), None, input_names=names,
                                         output_names=policy.output_names, opset_version=OPSET, dynamo=True,
                                         dynamic_shapes=({0: batch}, tuple({0: batch} for _ in names[1:])),
                                         external_data=False, optimize=True)
                buf = io.BytesIO(prog.model_proto.SerializeToString())
            elif exporter != "legacy":
                raise ExportError(f"unknown exporter '{exporter}': use legacy or dynamo")
    except ExportError:
        raise
    except Exception as exc:  # noqa: BLE001
        from marlcli.results import describe

        raise ExportError(f"torch.onnx.export failed for {path.name} ({describe(exc)})") from None
    model = onnx.load_from_string(buf.getvalue())
    if policy.discrete:  # an initializer named like an input is its default: the mask becomes optional
        model.graph.initializer.append(onnx.numpy_helper.from_array(np.ones((1, policy.act_size), np.bool_), "mask"))
    model.producer_name, model.doc_string = "marlcli", "marlcli export (see manifest.json)"
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString(deterministic=True))
    return exporter


def write_torchscript(policy: GroupPolicy, path: Path) -> None:
    try:
        with _quiet_export():
            b = 2
            ex = (torch.zeros(b, policy.obs_size), torch.zeros(b, dtype=torch.long),
                  torch.ones(b, policy.act_size, dtype=torch.bool), torch.zeros(b, max(1, policy.hidden_size)))
            core = torch.jit.trace(_AllInputs(policy), ex, check_trace=False)
            scripted = torch.jit.script(TorchScriptPolicy(core, policy))
            torch.jit.save(scripted, str(path))
    except Exception as exc:  # noqa: BLE001
        from marlcli.results import describe

        raise ExportError(f"TorchScript export failed for {path.name} ({describe(exc)})") from None


def load_torchscript(path: Path, device: torch.device | None = None) -> Any:
    """``torch.jit.load`` without its deprecation warning (TorchScript is frozen upstream, still loads)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.load(str(path), map_location=device)


def ort_session(path: Path, threads: int = 1, providers: list[str] | None = None) -> Any:
    try:
        import onnxruntime as ort
    except ImportError:
        raise ExportError("format=onnx needs onnxruntime to check and time the export: "
                          "pip install 'marlcli[export]' (or use format=torchscript)") from None
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), opts, providers=providers or ["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime's own NoSuchFile / InvalidProtobuf / Fail
        from marlcli.results import describe

        raise ExportError(f"{path}: onnxruntime cannot load it ({describe(exc)[:160]}); re-export with marl export") \
            from None


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
    from marlcli.evaluate import run_episodes

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
                with torch.no_grad(), _quiet_export():
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
        with torch.inference_mode(), _quiet_export():
            out["torch-eager/cpu"] = _percentiles(lambda: policy(*ins), iters)
    finally:
        torch.set_num_threads(threads)
    if torch.cuda.is_available():
        try:
            out.update(_gpu_latency(policy, paths, ins, kw, iters))
        except Exception as exc:  # noqa: BLE001 - a GPU figure is a bonus, never a reason to fail the export
            from marlcli.results import describe

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
        import onnxruntime as ort

        if "CUDAExecutionProvider" in ort.get_available_providers():
            sess = ort_session(paths["onnx"], providers=["CUDAExecutionProvider"])
            feed = {n: t.numpy() for n, t in zip(policy.input_names, ins, strict=True)}
            out["onnx/cuda"] = _percentiles(lambda: sess.run(None, feed), iters)
    return out


# ----------------------------------------------------------------------------- the command
def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def default_out(path: Path, payload: dict[str, Any]) -> Path:
    """``<seed dir>/export`` (next to ``checkpoints/``), or ``<file stem>_export`` beside a loose .pt."""
    ckpt = Path(payload["_path"])
    if ckpt.parent.name == "checkpoints":
        return ckpt.parent.parent / "export"
    return ckpt.with_name(f"{ckpt.stem}_export")


def export(path: Path, formats: tuple[str, ...] = FORMATS, out: Path | None = None, parity_episodes: int = 16,
           seed: int = 0, latency_iters: int = 1000, overrides: dict[str, str] | None = None,
           exporter: str = "legacy") -> dict[str, Any]:
    """Export the actor of the checkpoint at ``path``; returns the manifest (also written to ``out``).

    Nothing is written unless every file passes the parity check.
    """
    import marlcli
    from marlcli import results, selfplay
    from marlcli.algos import load_family
    from marlcli.trainer import env_for_eval

    if exporter not in ("legacy", "dynamo"):
        raise ExportError(f"unknown exporter '{exporter}': use legacy or dynamo")
    if not formats:
        raise ExportError(f"give at least one format: {','.join(FORMATS)}")
    for fmt in formats:
        if fmt not in FORMATS:
            raise ExportError(f"unknown format '{fmt}': use {' or '.join(FORMATS)} (comma-separated)")
    if path.is_dir() and not (path / "checkpoints").is_dir():
        seeds = results.find_seed_dirs(path)
        if len(seeds) > 1:
            raise ExportError(f"{path} holds {len(seeds)} seed dirs: export one seed dir or one .pt file")
        path = seeds[0] if seeds else path
    payload = results.load_checkpoint(path)
    cfg = results.checkpoint_config(payload, overrides=overrides)
    out = out or default_out(path, payload)
    if out.exists() and not out.is_dir():
        raise ExportError(f"out={out} is a file, not a directory; choose out=DIR")
    if out.exists() and any(out.iterdir()) and not (out / "manifest.json").exists():
        raise ExportError(f"{out} exists and is not an earlier export; choose out=DIR")
    cpu = torch.device("cpu")
    env = env_for_eval(cfg, min(parity_episodes, 16), seed, cpu)
    try:
        # a mirrored self-play run's actor covers the learning slots only: record it against its pool
        full = env.spec.agents
        env = selfplay.opponents_for_eval(cfg, env, payload, cpu, seed=seed)
        mirrored = list(env.spec.agents) if list(env.spec.agents) != list(full) else None
        spec = env.spec
        actor = load_family(cfg.algo).make_actor(spec, cfg)
        actor_kind(actor)  # an actor marl export has no adapter for fails before anything runs
        results.restore(actor, payload["actor"], "actor", payload)
        actor.eval()
        data = record(actor, env, parity_episodes)
    finally:
        env.close()
    sharing = str(cfg.sharing.mode)
    groups = groups_of(sharing, spec)
    policies = [GroupPolicy(actor, spec, g).eval() for g in groups]
    try:  # a read-only, full or misplaced out=DIR: one line before anything is exported
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
        tmp.chmod(0o755)
    except OSError as exc:
        raise ExportError(os_error(out, exc)) from None
    try:
        handles: dict[str, list[Any]] = {f: [] for f in formats}
        used = exporter
        files = []
        for policy, group in zip(policies, groups, strict=True):
            entry: dict[str, Any] = {"name": group.name, "agents": [spec.agents[i] for i in group.agents],
                                     "obs_size": policy.obs_size, "act_size": policy.act_size,
                                     "hidden_size": policy.hidden_size or None,
                                     **policy.signature()}
            for fmt in formats:
                p = tmp / f"actor_{group.name}{SUFFIX[fmt]}"
                if fmt == "onnx":
                    used = write_onnx(policy, p, exporter)
                else:
                    write_torchscript(policy, p)
                handles[fmt].append(ort_session(p) if fmt == "onnx" else load_torchscript(p))
                entry[fmt] = p.name
                entry[f"{fmt}_sha256"] = sha256(p)
            files.append(entry)
        check = parity(policies, groups, handles, data)
        failed = [f for f in formats if not check[f]["passed"]]
        if failed:
            figures = "; ".join(f"{f}: max |diff| {check[f]['max_abs_diff']:.3g} (tolerance {TOL:g})"
                                + (f", discrete agreement {check[f]['discrete_agreement']:.2%}"
                                   if "discrete_agreement" in check[f] else "") for f in failed)
            raise ExportError(f"parity check failed against the torch actor on {check['samples_per_agent']} "
                              f"recorded steps per agent: {figures}; nothing written")
        lat = latency(policies[0], {f: tmp / files[0][f] for f in formats}, latency_iters)
        lat_doc = {"agent_file": files[0]["name"], "batch": 1, "cpu_threads": 1, "unit": "microseconds",
                   "cpu": platform.processor() or platform.machine(), **lat}
        low, high = spec.bounds()
        hidden = None
        if policies[0].hidden_size:
            h = int(getattr(actor, "h", 0))
            hidden = {"input": "hidden", "output": "hidden_out", "size": policies[0].hidden_size,
                      "reset": "zeros at episode start (and whenever the robot restarts its episode)",
                      "layout": f"GRU state [{h}]" * bool(h) + " then " * bool(h and actor.last_action)
                      + f"one-hot of the last action [{spec.act_dim}]" * bool(actor.last_action)}
        versions = {"marlcli": marlcli.__version__, "torch": torch.__version__, "python": platform.python_version()}
        for mod in ("onnx", "onnxruntime", "onnxscript"):
            if mod in sys.modules:
                versions[mod] = getattr(sys.modules[mod], "__version__", "?")
        served = {i: (g.name, k) for g in groups for k, i in enumerate(g.agents)}
        manifest = {
            "format": MANIFEST_FORMAT,
            "source": {"checkpoint": str(Path(payload["_path"]).resolve()), "sha256": sha256(Path(payload["_path"])),
                       "step": int(payload["step"]), "env": str(cfg.env.name), "algo": str(cfg.algo.name),
                       "family": str(cfg.algo.family), "sharing": sharing, "run": str(cfg.run), "seed": int(cfg.seed),
                       "config": "source_config.yaml"},
            "versions": versions,
            # a mirrored self-play run (rps, prisoners): its one actor serves the learning slots listed in agents
            "selfplay": None if mirrored is None else {"mode": str(cfg.selfplay.mode), "learning_slots": mirrored},
            "opset": OPSET if "onnx" in formats else None,
            "onnx_exporter": f"torch.onnx {used}" if "onnx" in formats else None,
            "formats": list(formats),
            "agents": [{"name": a, "index": i, "role": spec.roles[spec.role_index[i]], "file": served[i][0],
                        "obs_size": spec.obs_dims[i], "act_size": spec.act_dims[i],
                        **({} if spec.discrete else {"low": low[i, : spec.act_dims[i]].tolist(),
                                                     "high": high[i, : spec.act_dims[i]].tolist()})}
                       for i, a in enumerate(spec.agents)],
            "observation": {"normalization": None, "padded_size": spec.obs_dim,
                            "layout": "the agent's own env observation (mpe2 order), float32; marlcli normalizes "
                                      "none; an agent whose obs_size is below its file's obs_size appends zeros"},
            "action": {"discrete": bool(spec.discrete),
                       "kind": ("argmax over available actions" if spec.discrete else
                                "mean (PPO) or sigmoid squash (MADDPG), clipped into the agent's [low, high]"),
                       "mask": "optional bool input 'mask' [B, act_size]; omitted = all available" if spec.discrete
                       else None},
            "hidden": hidden,
            "files": files,
            "parity": check,
            "latency": lat_doc,
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        (tmp / "latency.json").write_text(json.dumps(lat_doc, indent=2) + "\n")
        (tmp / "source_config.yaml").write_text(payload["config"])
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except OSError as exc:  # the disk filled up or the dir became unwritable while the files were written
        shutil.rmtree(tmp, ignore_errors=True)
        raise ExportError(os_error(out, exc)) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    manifest["_dir"] = str(out)
    return manifest


def export_main(args: list[str]) -> int:
    """``marl export PATH [format=...] [out=DIR] ...``: one-line errors with exit code 2."""
    from marlcli.cliutil import fail, parse_kv

    if not args or args[0] in ("-h", "--help", "help"):
        print(f"usage: {USAGE}")
        return 0
    known = {"format": ",".join(FORMATS), "out": "", "parity_episodes": 16, "seed": 0, "latency_iters": 1000,
             "exporter": "legacy"}
    try:
        parsed = parse_kv(args, known, passthrough=("env.factory",), positive=("parity_episodes", "latency_iters"))
        flags = [p for p in parsed.paths if p.startswith("-")]
        if flags:
            raise ValueError(f"unknown flag '{flags[0]}': options are key=value (format=onnx out=DIR ...)")
        if len(parsed.paths) != 1:
            raise ValueError("give exactly one PATH (a seed dir or a .pt file)")
        path = Path(parsed.paths[0])
        if not path.exists():
            raise ValueError(f"{path} does not exist; give a seed dir or a .pt file")
    except ValueError as exc:
        return fail("export", str(exc))
    o = parsed.opts
    formats = tuple(f.strip() for f in str(o["format"]).split(",") if f.strip())
    try:
        m = export(path, formats, Path(o["out"]) if o["out"] else None, int(o["parity_episodes"]), int(o["seed"]),
                   max(10, int(o["latency_iters"])), dict(x.split("=", 1) for x in parsed.overrides), str(o["exporter"]))
    except MarlError as exc:
        return fail("export", str(exc))
    print_summary(m)
    return 0


def print_summary(m: dict[str, Any]) -> None:
    s = m["source"]
    print(f"marl export: {s['algo']} on {s['env']} (step {s['step']:,}, sharing={s['sharing']}) -> {m['_dir']}")
    for f in m["files"]:
        names = ", ".join(f[fmt] for fmt in m["formats"])
        print(f"  {names}: agents {', '.join(f['agents'])}")
    p = m["parity"]
    for fmt in m["formats"]:
        agree = f", discrete agreement {p[fmt]['discrete_agreement']:.2%}" if "discrete_agreement" in p[fmt] else ""
        print(f"  parity {fmt}: max |diff| {p[fmt]['max_abs_diff']:.2e} on {p['samples_per_agent']} recorded steps "
              f"per agent{agree}")
    lat = m["latency"]
    print(f"  latency of one agent's step ({lat['agent_file']}, batch 1, 1 CPU thread):")
    for key, v in lat.items():
        if isinstance(v, dict):
            print(f"    {key:18s} p50 {v['p50_us']:8.1f} us   p99 {v['p99_us']:8.1f} us")


# ----------------------------------------------------------------------------- marl eval on an export
def is_export(path: Path) -> bool:
    """An export dir (with ``manifest.json``) or an ``.onnx`` file next to one."""
    return (path.is_dir() and (path / "manifest.json").is_file()) or \
        (path.suffix == ".onnx" and (path.parent / "manifest.json").is_file())


MANIFEST_KEYS = {"format": str, "formats": list, "files": list, "agents": list, "source": dict, "action": dict}


def read_manifest(root: Path) -> dict[str, Any]:
    """An export dir's ``manifest.json``, checked before anything runs: a broken export dir is one line.

    Its keys and types, the source config it names, and each ONNX file it lists (present, and
    the bytes its ``onnx_sha256`` names: a truncated or replaced file is refused before
    onnxruntime reads it).
    """
    where = root / "manifest.json"
    try:
        manifest = json.loads(where.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise ExportError(f"{where} is not a marlcli export manifest ({MANIFEST_FORMAT}); re-export with marl export") \
            from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise ExportError(f"{where} is not a marlcli export manifest ({MANIFEST_FORMAT}); re-export with marl export")
    for key, kind in MANIFEST_KEYS.items():
        if not isinstance(manifest.get(key), kind):
            raise ExportError(f"{where} has no valid '{key}' ({kind.__name__}); the export is broken: re-export it")
    config = manifest["source"].get("config")
    if not isinstance(config, str) or not (root / config).is_file():
        raise ExportError(f"{root}: the source config the manifest names ({config}) is missing; re-export it")
    for f in manifest["files"]:
        name = f.get("onnx") if isinstance(f, dict) else None
        if not isinstance(f, dict) or "name" not in f or not isinstance(f.get("inputs"), list) \
                or not isinstance(f.get("outputs"), list):
            raise ExportError(f"{where}: a 'files' entry lacks its name, inputs or outputs; re-export it")
        if name is None:
            continue
        if not (root / name).is_file():
            raise ExportError(f"{root / name} is missing (listed in {where}); re-export with marl export")
        if f.get("onnx_sha256") and sha256(root / name) != f["onnx_sha256"]:
            raise ExportError(f"{root / name} does not match its sha256 in {where} (truncated or replaced); "
                              "re-export with marl export")
    return manifest


class OnnxActors:
    """The Actor protocol over the exported ONNX files: each agent steps on its own inputs."""

    def __init__(self, root: Path, manifest: dict[str, Any], device: torch.device) -> None:
        self.device = device
        files = {f["name"]: f for f in manifest["files"]}
        self.sessions = {n: ort_session(root / f["onnx"]) for n, f in files.items()}
        self.agents = [(a["index"], files[a["file"]], self.sessions[a["file"]]) for a in manifest["agents"]]
        self.discrete = bool(manifest["action"]["discrete"])
        self.hidden = int((manifest.get("hidden") or {}).get("size") or 0)

    def initial_hidden(self, batch: int) -> Tensor | None:
        n = len(self.agents)
        return torch.zeros(batch, n, self.hidden, device=self.device) if self.hidden else None

    def act(self, obs: Tensor, avail: Tensor, hidden: Tensor | None, deterministic: bool) -> tuple[Tensor, Any]:
        obs_np, avail_np = obs.cpu().numpy(), avail.cpu().numpy()
        h_np = hidden.cpu().numpy() if hidden is not None else None
        acts, nxt = [], []
        for i, f, sess in self.agents:
            feed: dict[str, np.ndarray] = {"obs": np.ascontiguousarray(obs_np[:, i, : f["obs_size"]], np.float32)}
            names = [x["name"] for x in f["inputs"]]
            if "agent_index" in names:
                feed["agent_index"] = np.full(obs_np.shape[0], i, np.int64)
            if "mask" in names:
                feed["mask"] = np.ascontiguousarray(avail_np[:, i, : f["act_size"]])
            if "hidden" in names:
                feed["hidden"] = np.ascontiguousarray(h_np[:, i])
            res = dict(zip([x["name"] for x in f["outputs"]], sess.run(None, feed), strict=True))
            a = res["action"]
            if not self.discrete:
                a = np.pad(a, ((0, 0), (0, avail_np.shape[-1] - a.shape[-1])))
            acts.append(a)
            if "hidden_out" in res:
                nxt.append(res["hidden_out"])
        action = torch.from_numpy(np.stack(acts, 1)).to(self.device)
        return action, (torch.from_numpy(np.stack(nxt, 1)).to(self.device) if nxt else None)


def evaluate_export(path: Path, episodes: int = 1000, seed: int = 0, deterministic: bool = True, device: str = "cpu",
                    envs: int = 1000, overrides: list[str] | None = None) -> list[dict[str, Any]]:
    """``marl eval`` on an export dir (or one of its ``.onnx`` files): rows like ``cli.evaluate_path``.

    The env comes from the source checkpoint's config (kept in the export, checked by
    ``results.checkpoint_config``) with the same evaluation seed stream, so the same
    episodes are played as by ``marl eval`` on the checkpoint.
    """
    from marlcli import results
    from marlcli.cli import check_counts, check_eval_overrides
    from marlcli.evaluate import run_episodes
    from marlcli.trainer import env_for_eval, resolve_device

    check_counts(episodes=episodes, envs=envs)
    root = path if path.is_dir() else path.parent
    if not is_export(path):
        raise ExportError(f"{path} is not an export (no manifest.json next to it); run marl export first")
    manifest = read_manifest(root)
    if path.suffix == ".onnx" and path.name not in {f.get("onnx") for f in manifest["files"]}:
        raise ExportError(f"{path.name} is not listed in {root / 'manifest.json'}")
    if "onnx" not in manifest["formats"]:
        raise ExportError(f"{root} has no ONNX files; marl eval runs exports with onnxruntime (re-export with format=onnx)")
    if not deterministic:
        raise ExportError("exported actors act deterministically (argmax / mean); use deterministic=true")
    src = manifest["source"]
    if manifest.get("selfplay"):
        raise ExportError(f"{root} serves the learning slots of a mirrored self-play run "
                          f"({', '.join(manifest['selfplay']['learning_slots'])}), not every agent of the env; "
                          "evaluate the run itself: marl eval <seed dir>")
    given = dict(o.split("=", 1) for o in overrides or [])
    source = {"config": (root / src["config"]).read_text(), "_path": str(root / src["config"])}
    check_eval_overrides(results.checkpoint_config(source, overrides={k: v for k, v in given.items() if k == "env.factory"}),
                         given)
    cfg = results.checkpoint_config(source, overrides=given)
    dev = resolve_device(device)
    env = env_for_eval(cfg, min(episodes, envs), seed, dev)
    try:
        spec = env.spec
        if list(spec.agents) != [a["name"] for a in manifest["agents"]] or \
                list(spec.obs_dims) != [a["obs_size"] for a in manifest["agents"]]:
            raise ExportError(f"the env built from {src['config']} does not match the manifest's agents")
        res = run_episodes(OnnxActors(root, manifest, dev), env, episodes, deterministic=True)
    finally:
        env.close()
    summary = {k.removeprefix("eval/"): v for k, v in res.summary().items()}
    row = {"env": src["env"], "algo": src["algo"], "run": src["run"], "seed": src["seed"], "step": src["step"],
           "checkpoint": str(path), "format": "onnx", "deterministic": True, "eval_seed": seed, **summary}
    results.atomic_write_text(root / "eval.json", json.dumps(row, indent=2) + "\n")
    return [row]
