"""Writing and opening the files: ONNX (opset 18, dynamic batch) and TorchScript, each one :class:`GroupPolicy`.

onnx, onnxscript and onnxruntime are optional (``pip install 'marlcli[export]'``): each is
imported where a format needs it, so ``format=torchscript`` runs without them and a missing
one is a one-line :class:`ExportError`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.distributions import Distribution

from marlcli.export.policy import AllInputs, ExportError, GroupPolicy, TorchScriptPolicy
from marlcli.results import describe

OPSET = 18
FORMATS = ("onnx", "torchscript")
SUFFIX = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}


@contextlib.contextmanager
def quiet_export() -> Iterator[None]:
    """No distribution argument checks (data-dependent branches) and no exporter chatter."""
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
        import onnx  # deferred: an optional dependency (marlcli[export]), needed only for format=onnx
    except ImportError:
        raise ExportError("format=onnx needs onnx: pip install 'marlcli[export]'") from None
    names = policy.input_names
    buf = io.BytesIO()
    try:
        with quiet_export():
            if exporter == "legacy":
                try:
                    torch.onnx.export(policy, policy.example(), buf, input_names=names, output_names=policy.output_names,
                                      opset_version=OPSET, dynamo=False, do_constant_folding=True,
                                      dynamic_axes={n: {0: "batch"} for n in names + policy.output_names})
                except (TypeError, NotImplementedError, AttributeError):  # a torch without the legacy exporter
                    exporter = "dynamo"
            if exporter == "dynamo":
                try:
                    import onnxscript  # noqa: F401 - deferred: optional, only the dynamo exporter needs it
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
        raise ExportError(f"torch.onnx.export failed for {path.name} ({describe(exc)})") from None
    model = onnx.load_from_string(buf.getvalue())
    if policy.discrete:  # an initializer named like an input is its default: the mask becomes optional
        model.graph.initializer.append(onnx.numpy_helper.from_array(np.ones((1, policy.act_size), np.bool_), "mask"))
    model.producer_name, model.doc_string = "marlcli", "marlcli export (see manifest.json)"
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString(deterministic=True))
    return exporter


def write_torchscript(policy: GroupPolicy, path: Path) -> None:
    """A traced core with every input (tracing sees one branch per input set) behind a scripted
    signature with defaults, so one file loads without marlcli and takes only the inputs it needs."""
    try:
        with quiet_export():
            b = 2
            ex = (torch.zeros(b, policy.obs_size), torch.zeros(b, dtype=torch.long),
                  torch.ones(b, policy.act_size, dtype=torch.bool), torch.zeros(b, max(1, policy.hidden_size)))
            core = torch.jit.trace(AllInputs(policy), ex, check_trace=False)
            scripted = torch.jit.script(TorchScriptPolicy(core, policy))
            torch.jit.save(scripted, str(path))
    except Exception as exc:  # noqa: BLE001
        raise ExportError(f"TorchScript export failed for {path.name} ({describe(exc)})") from None


def load_torchscript(path: Path, device: torch.device | None = None) -> Any:
    """``torch.jit.load`` without its deprecation warning (TorchScript is frozen upstream, still loads)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.load(str(path), map_location=device)


def ort_session(path: Path, threads: int = 1, providers: list[str] | None = None) -> Any:
    """An onnxruntime session as a robot would run it: sequential, ``threads`` CPU threads, quiet."""
    try:
        import onnxruntime as ort  # deferred: optional (marlcli[export]); format=torchscript runs without it
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
        raise ExportError(f"{path}: onnxruntime cannot load it ({describe(exc)[:160]}); re-export with marl export") \
            from None


def sha256(path: Path) -> str:
    """A file's sha256, streamed: the manifest pins each file (and the checkpoint) by its bytes."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
