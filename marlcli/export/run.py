"""Running an export: ``marl eval`` on an export dir plays its ONNX files with onnxruntime.

The manifest is checked before anything runs (a broken export dir is one line), and the env
is rebuilt from the source config kept in the export, so the same episodes are played as by
``marl eval`` on the checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from marlcli import results
from marlcli.evaluate import check_counts, check_eval_overrides, env_for_eval, run_episodes
from marlcli.export.formats import ort_session, sha256
from marlcli.export.policy import ExportError
from marlcli.runtime import resolve_device

MANIFEST_FORMAT = "marlcli-export/1"
MANIFEST_KEYS = {"format": str, "formats": list, "files": list, "agents": list, "source": dict, "action": dict}


def is_export(path: Path) -> bool:
    """An export dir (with ``manifest.json``) or an ``.onnx`` file next to one."""
    return (path.is_dir() and (path / "manifest.json").is_file()) or \
        (path.suffix == ".onnx" and (path.parent / "manifest.json").is_file())


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
    """``marl eval`` on an export dir (or one of its ``.onnx`` files): rows like ``evaluate.evaluate_path``.

    The env comes from the source checkpoint's config (kept in the export, checked by
    ``results.checkpoint_config``) with the same evaluation seed stream, so the same
    episodes are played as by ``marl eval`` on the checkpoint.
    """
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
