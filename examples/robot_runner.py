"""Run one agent of a ``marl export`` like a robot: onnxruntime and numpy only (no torch, no marlcli).

    python examples/robot_runner.py EXPORT_DIR AGENT [OBS.npy] [--mask MASK.npy] [--out ACTIONS.npy]

``OBS.npy`` holds the agent's own observations, float32 ``[T, obs_size]`` (one episode) or
``[E, T, obs_size]`` (E episodes; the hidden state is reset to zeros at each episode start).
``MASK.npy`` (discrete actions, optional) holds the available actions ``[..., act_size]``
(bool); without it every action is available. Without ``OBS.npy`` a short demo runs on zero
observations. Actions are printed, and written to ``--out`` if given.

``RobotPolicy`` is the part to copy onto a robot: read the manifest, open the agent's file,
``reset()`` at episode start, ``step(obs)`` every control tick.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort


class RobotPolicy:
    """One agent's exported policy: its own observation (and hidden state) in, its action out."""

    def __init__(self, export_dir: str | Path, agent: str) -> None:
        root = Path(export_dir)
        manifest = json.loads((root / "manifest.json").read_text())
        agents = {a["name"]: a for a in manifest["agents"]}
        if agent not in agents:
            raise SystemExit(f"robot_runner: unknown agent '{agent}'; the export serves {', '.join(agents)}")
        me = agents[agent]
        f = next(x for x in manifest["files"] if x["name"] == me["file"])
        opts = ort.SessionOptions()  # batch 1 on one thread: what latency.json measured
        opts.intra_op_num_threads, opts.inter_op_num_threads = 1, 1
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(root / f["onnx"]), opts, providers=["CPUExecutionProvider"])
        self.inputs = [x["name"] for x in f["inputs"]]
        self.outputs = [x["name"] for x in f["outputs"]]
        self.own_obs, self.obs_size = int(me["obs_size"]), int(f["obs_size"])
        self.index = np.array([me["index"]], np.int64)
        self.hidden_size = int(f.get("hidden_size") or 0)
        self.discrete = bool(manifest["action"]["discrete"])
        self.hidden: np.ndarray | None = None
        self.reset()

    def reset(self) -> None:
        """Start of an episode: the hidden state (GRU, last action) is zeros."""
        self.hidden = np.zeros((1, self.hidden_size), np.float32) if self.hidden_size else None

    def step(self, obs: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray | int:
        """The action for one observation of this agent (an int, or a float vector in its bounds)."""
        x = np.zeros((1, self.obs_size), np.float32)  # an observation smaller than the file's is zero-padded
        x[0, : self.own_obs] = np.asarray(obs, np.float32).reshape(-1)[: self.own_obs]
        feed = {"obs": x}
        if "agent_index" in self.inputs:
            feed["agent_index"] = self.index
        if mask is not None and "mask" in self.inputs:
            feed["mask"] = np.asarray(mask, np.bool_).reshape(1, -1)
        if self.hidden is not None:
            feed["hidden"] = self.hidden
        out = dict(zip(self.outputs, self.session.run(None, feed), strict=True))
        if "hidden_out" in out:
            self.hidden = out["hidden_out"]
        action = out["action"][0]
        return int(action) if self.discrete else action


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("export_dir")
    p.add_argument("agent")
    p.add_argument("obs", nargs="?", help="observations .npy: [T, obs_size] or [E, T, obs_size]")
    p.add_argument("--mask", help="available actions .npy (bool), same leading shape as obs")
    p.add_argument("--out", help="write the actions here (.npy)")
    args = p.parse_args(argv)
    policy = RobotPolicy(args.export_dir, args.agent)
    obs = np.load(args.obs) if args.obs else np.zeros((1, 5, policy.own_obs), np.float32)
    episodes = obs if obs.ndim == 3 else obs[None]
    masks = np.load(args.mask) if args.mask else None
    if masks is not None and masks.ndim == 2:
        masks = masks[None]
    actions = []
    for e, episode in enumerate(episodes):
        policy.reset()
        actions.append([policy.step(o, None if masks is None else masks[e, t]) for t, o in enumerate(episode)])
    result = np.asarray(actions)
    if obs.ndim == 2:
        result = result[0]
    if args.out:
        np.save(args.out, result)
    print(json.dumps({"agent": args.agent, "actions": result.tolist()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
