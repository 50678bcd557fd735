"""``marl export PATH``: from a checkpoint to an export dir, step by step, and the command line.

:func:`export` reads top to bottom: check the options, load the checkpoint, record the torch
actor in its env, write one file per agent group and format into a staging dir, refuse them
unless every file matches the recorded steps, time one agent's step, write the manifest, and
only then move the staging dir into place: an export dir is complete or absent.
"""

from __future__ import annotations

import json
import platform
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from marlcli import __version__, results, selfplay
from marlcli.algos import load_family
from marlcli.cliutil import fail, os_error, parse_kv
from marlcli.envs.base import EnvSpec
from marlcli.errors import MarlError
from marlcli.evaluate import env_for_eval
from marlcli.export.formats import FORMATS, OPSET, SUFFIX, load_torchscript, ort_session, sha256, write_onnx, write_torchscript
from marlcli.export.policy import ExportError, Group, GroupPolicy, actor_kind, groups_of
from marlcli.export.run import MANIFEST_FORMAT
from marlcli.export.verify import TOL, latency, parity, record

USAGE = ("marl export PATH [format=onnx,torchscript] [out=DIR] [parity_episodes=16] [seed=0] "
         "[latency_iters=1000] [exporter=legacy|dynamo] [env.factory=M:F]   (PATH: a seed dir or a .pt checkpoint)")


@dataclass
class Source:
    """What an export is made of: the checkpoint, its config, its restored actor and the steps that actor took."""

    payload: dict[str, Any]
    cfg: DictConfig
    spec: EnvSpec  # the env as the actor sees it (a mirrored self-play run: its learning slots only)
    actor: nn.Module
    data: dict[str, Tensor]  # recorded inputs and outputs of actor.act (verify.record)
    mirrored: list[str] | None  # a mirrored self-play run (rps, prisoners): the learning slots its one actor serves


def export(path: Path, formats: tuple[str, ...] = FORMATS, out: Path | None = None, parity_episodes: int = 16,
           seed: int = 0, latency_iters: int = 1000, overrides: dict[str, str] | None = None,
           exporter: str = "legacy") -> dict[str, Any]:
    """Export the actor of the checkpoint at ``path``; returns the manifest (also written to ``out``).

    Nothing is written unless every file passes the parity check.
    """
    check_options(formats, exporter)
    payload = results.load_checkpoint(one_seed_dir(path))
    cfg = results.checkpoint_config(payload, overrides=overrides)
    out = out or default_out(payload)
    check_out(out)
    src = record_source(payload, cfg, parity_episodes, seed)
    groups = groups_of(str(cfg.sharing.mode), src.spec)
    policies = [GroupPolicy(src.actor, src.spec, g).eval() for g in groups]
    tmp = staging_dir(out)
    try:
        files, handles, used = write_files(policies, groups, src.spec, formats, tmp, exporter)
        check = parity(policies, groups, handles, src.data)
        refuse_failed(check, formats)
        lat = {"agent_file": files[0]["name"], "batch": 1, "cpu_threads": 1, "unit": "microseconds",
               "cpu": platform.processor() or platform.machine(),
               **latency(policies[0], {f: tmp / files[0][f] for f in formats}, latency_iters)}
        manifest = make_manifest(src, policies[0], groups, files, formats, used, check, lat)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        (tmp / "latency.json").write_text(json.dumps(lat, indent=2) + "\n")
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


# ----------------------------------------------------------------------------- before anything runs
def check_options(formats: tuple[str, ...], exporter: str) -> None:
    if exporter not in ("legacy", "dynamo"):
        raise ExportError(f"unknown exporter '{exporter}': use legacy or dynamo")
    if not formats:
        raise ExportError(f"give at least one format: {','.join(FORMATS)}")
    for fmt in formats:
        if fmt not in FORMATS:
            raise ExportError(f"unknown format '{fmt}': use {' or '.join(FORMATS)} (comma-separated)")


def one_seed_dir(path: Path) -> Path:
    """A run dir holding one seed dir stands for it; several are refused (an export is one actor)."""
    if path.is_dir() and not (path / "checkpoints").is_dir():
        seeds = results.find_seed_dirs(path)
        if len(seeds) > 1:
            raise ExportError(f"{path} holds {len(seeds)} seed dirs: export one seed dir or one .pt file")
        return seeds[0] if seeds else path
    return path


def default_out(payload: dict[str, Any]) -> Path:
    """``<seed dir>/export`` (next to ``checkpoints/``), or ``<file stem>_export`` beside a loose .pt."""
    ckpt = Path(payload["_path"])
    if ckpt.parent.name == "checkpoints":
        return ckpt.parent.parent / "export"
    return ckpt.with_name(f"{ckpt.stem}_export")


def check_out(out: Path) -> None:
    """An earlier export is replaced; a file or a dir of other things is not."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"out={out} is a file, not a directory; choose out=DIR")
    if out.exists() and any(out.iterdir()) and not (out / "manifest.json").exists():
        raise ExportError(f"{out} exists and is not an earlier export; choose out=DIR")


# ----------------------------------------------------------------------------- the actor and its steps
def record_source(payload: dict[str, Any], cfg: DictConfig, episodes: int, seed: int) -> Source:
    """The restored actor and its steps in ``episodes`` evaluation episodes on CPU (at most 16 env copies)."""
    cpu = torch.device("cpu")
    env = env_for_eval(cfg, min(episodes, 16), seed, cpu)
    try:
        # a mirrored self-play run's actor covers the learning slots only: record it against its pool
        full = env.spec.agents
        env = selfplay.opponents_for_eval(cfg, env, payload, cpu, seed=seed)
        mirrored = list(env.spec.agents) if list(env.spec.agents) != list(full) else None
        actor = exportable_actor(cfg, env.spec, payload)
        return Source(payload, cfg, env.spec, actor, record(actor, env, episodes), mirrored)
    finally:
        env.close()


def exportable_actor(cfg: DictConfig, spec: EnvSpec, payload: dict[str, Any]) -> nn.Module:
    """The checkpoint's actor in eval mode; one that marl export has no adapter for fails before its weights load."""
    actor = load_family(cfg.algo).make_actor(spec, cfg)
    actor_kind(actor)
    results.restore(actor, payload["actor"], "actor", payload)
    return actor.eval()


# ----------------------------------------------------------------------------- the files
def staging_dir(out: Path) -> Path:
    """A fresh dir beside ``out`` that becomes it once complete; a read-only, full or misplaced out=DIR is
    one line here, before anything is exported."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
        tmp.chmod(0o755)
    except OSError as exc:
        raise ExportError(os_error(out, exc)) from None
    return tmp


def write_files(policies: list[GroupPolicy], groups: list[Group], spec: EnvSpec, formats: tuple[str, ...], tmp: Path,
                exporter: str) -> tuple[list[dict[str, Any]], dict[str, list[Any]], str]:
    """Each group's file in each format, loaded back as a robot would load it (the handles parity runs).

    Returns the manifest's ``files`` entries, the handles per format, and the ONNX exporter used.
    """
    handles: dict[str, list[Any]] = {f: [] for f in formats}
    used, files = exporter, []
    for policy, group in zip(policies, groups, strict=True):
        entry: dict[str, Any] = {"name": group.name, "agents": [spec.agents[i] for i in group.agents],
                                 "obs_size": policy.obs_size, "act_size": policy.act_size,
                                 "hidden_size": policy.hidden_size or None, **policy.signature()}
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
    return files, handles, used


def refuse_failed(check: dict[str, Any], formats: tuple[str, ...]) -> None:
    failed = [f for f in formats if not check[f]["passed"]]
    if failed:
        figures = "; ".join(f"{f}: max |diff| {check[f]['max_abs_diff']:.3g} (tolerance {TOL:g})"
                            + (f", discrete agreement {check[f]['discrete_agreement']:.2%}"
                               if "discrete_agreement" in check[f] else "") for f in failed)
        raise ExportError(f"parity check failed against the torch actor on {check['samples_per_agent']} "
                          f"recorded steps per agent: {figures}; nothing written")


# ----------------------------------------------------------------------------- the manifest
def make_manifest(src: Source, policy: GroupPolicy, groups: list[Group], files: list[dict[str, Any]],
                  formats: tuple[str, ...], used: str, check: dict[str, Any], lat: dict[str, Any]) -> dict[str, Any]:
    """``manifest.json``: where the files came from, and everything a robot needs to feed them."""
    cfg, payload, spec = src.cfg, src.payload, src.spec
    low, high = spec.bounds()
    served = {i: g.name for g in groups for i in g.agents}
    return {
        "format": MANIFEST_FORMAT,
        "source": {"checkpoint": str(Path(payload["_path"]).resolve()), "sha256": sha256(Path(payload["_path"])),
                   "step": int(payload["step"]), "env": str(cfg.env.name), "algo": str(cfg.algo.name),
                   "family": str(cfg.algo.family), "sharing": str(cfg.sharing.mode), "run": str(cfg.run),
                   "seed": int(cfg.seed), "config": "source_config.yaml"},
        "versions": versions(),
        # a mirrored self-play run (rps, prisoners): its one actor serves the learning slots listed in agents
        "selfplay": None if src.mirrored is None else {"mode": str(cfg.selfplay.mode), "learning_slots": src.mirrored},
        "opset": OPSET if "onnx" in formats else None,
        "onnx_exporter": f"torch.onnx {used}" if "onnx" in formats else None,
        "formats": list(formats),
        "agents": [{"name": a, "index": i, "role": spec.roles[spec.role_index[i]], "file": served[i],
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
        "hidden": hidden_state(policy, src.actor, spec),
        "files": files,
        "parity": check,
        "latency": lat,
    }


def versions() -> dict[str, str]:
    """marlcli, torch and python, and each ONNX package this export loaded."""
    out = {"marlcli": __version__, "torch": torch.__version__, "python": platform.python_version()}
    for mod in ("onnx", "onnxruntime", "onnxscript"):
        if mod in sys.modules:
            out[mod] = getattr(sys.modules[mod], "__version__", "?")
    return out


def hidden_state(policy: GroupPolicy, actor: nn.Module, spec: EnvSpec) -> dict[str, Any] | None:
    """A recurrent file's state: its size, when to reset it, and what it holds."""
    if not policy.hidden_size:
        return None
    h = int(getattr(actor, "h", 0))
    return {"input": "hidden", "output": "hidden_out", "size": policy.hidden_size,
            "reset": "zeros at episode start (and whenever the robot restarts its episode)",
            "layout": f"GRU state [{h}]" * bool(h) + " then " * bool(h and actor.last_action)
            + f"one-hot of the last action [{spec.act_dim}]" * bool(actor.last_action)}


# ----------------------------------------------------------------------------- the command
def export_main(args: list[str], run: Callable[..., dict[str, Any]] = export) -> int:
    """``marl export PATH [format=...] [out=DIR] ...``: one-line errors with exit code 2.

    ``run`` is the export step the command calls (:func:`export`; the package face passes its own).
    """
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
        m = run(path, formats, Path(o["out"]) if o["out"] else None, int(o["parity_episodes"]), int(o["seed"]),
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
