"""A 1-bit channel on spread, trained with MAPPO: what does each agent's bit say? (issue 19, point 5)

    python experiments/emergent_communication/spread.py [results_dir=results/experiments/emergent_communication]
        [seeds=5] [steps=1000000] [episodes=1000] [tasks=spread,spread_limited] [threads=1]

Tasks (native spread, N = 3, 25 steps): ``spread`` (mpe2's observation: every landmark and agent) and
``spread_limited`` (each agent sees only its nearest landmark and its nearest other agent:
``env.num_landmark_neighbors=1 env.num_agent_neighbors=1``). MAPPO with the shipped defaults, seeds 100..,
per task:

* ``comm_on``: ``comm=commnet comm.bits=1`` (each agent sends one hard ±1 bit per step; a receiver gets
  the mean of the others' bits), evaluated as trained;
* ``comm_off``: trained without a channel; ``comm_cut``: the comm_on actors with every message zeroed.

Message statistics against training: the bit's mean and standard deviation over the batch and its
entropy (``comm/...`` in metrics.jsonl), and at each checkpoint the mutual information between an agent's
bit and binary features of its own observation (on the evaluation episodes). Bound: the scripted oracle
(``docs/bench.json`` ``oracle``, full observation) and standing still (about -24). Evaluation seed 9000.
Writes spread_results.json (per seed), spread_progress.json/.png, and adds the tasks to summary.json, all in
results_dir.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from marlcli import results
from marlcli.config import compose
from marlcli.stats import ci95
from marlcli.trainer import train

sys.path.insert(0, str(Path(__file__).parent))
from run import EVAL_SEED, checkpoints, evaluate, mi, options, plot_panels, rollout_messages, training_log  # noqa: E402

TASKS = {"spread": ["env=spread"],
         "spread_limited": ["env=spread", "env.num_landmark_neighbors=1", "env.num_agent_neighbors=1"]}
VARIANTS = {"comm_on": ["comm=commnet", "comm.bits=1"], "comm_off": ["comm=none"]}
FEATURES = ("near_landmark", "landmark_right", "landmark_above", "moving_right", "moving_up")
STAND_STILL = -24.0


def run(out: Path, task: str, variant: str, seed: int, steps: int) -> Path:
    seed_dir = out / "spread" / "mappo" / f"{task}-{variant}" / f"seed_{seed}"
    if (seed_dir / results.DONE_FILE).exists():
        return seed_dir
    every = steps // 5
    cfg = compose(["algo=mappo", *TASKS[task], *VARIANTS[variant], f"seed={seed}", f"run={task}-{variant}",
                   f"results_dir={out}", "device=cpu", "logger.progress=false", f"train.total_steps={steps}",
                   f"train.eval_interval={steps}", "train.eval_episodes=200", f"train.checkpoint_interval={every}",
                   "train.keep_checkpoints=10", f"train.log_interval={every // 4}"])
    return train(cfg)


def features(obs: torch.Tensor, n_lm: int) -> torch.Tensor:
    """Binary features of each agent's own observation ``[..., O]`` (vel 0:2, pos 2:4, ``n_lm`` landmarks from 4)."""
    lm = obs[..., 4:4 + 2 * n_lm].unflatten(-1, (n_lm, 2))
    d = lm.norm(dim=-1)
    near = lm.gather(-2, d.argmin(-1, keepdim=True)[..., None].expand(*d.shape[:-1], 1, 2)).squeeze(-2)
    return torch.stack([d.min(-1).values < 0.1, near[..., 0] > 0, near[..., 1] > 0,
                        obs[..., 0] > 0, obs[..., 1] > 0], -1).long()


def bit_information(path: Path, episodes: int) -> list[float]:
    """I(agent's bit ; feature) in bits for each of FEATURES, pooled over agents and steps."""
    f, b = rollout_messages(path, episodes, lambda obs, cfg: features(
        obs, int(cfg.env.num_landmark_neighbors or cfg.env.N)).reshape(-1, len(FEATURES)))
    f, b = f.numpy(), b[..., 0].reshape(-1).numpy()
    return [mi(b, f[:, i]) for i in range(len(FEATURES))]


def progress(seed_dir: Path, episodes: int) -> dict[str, list[float]]:
    pts = checkpoints(seed_dir)
    return {"steps": [s for s, _ in pts], "mi_max": [max(bit_information(pt, episodes)) for _, pt in pts],
            **training_log(seed_dir, {"bit_mean": "comm/mean_0", "bit_std": "comm/std_0",
                                      "bit_entropy": "comm/bit_entropy", "train_return": "train/return_mean"})}


def main(argv: list[str]) -> None:
    opts, out, steps, episodes, seeds = options(argv, 1_000_000, "spread,spread_limited")
    oracle = json.loads((Path(__file__).parents[2] / "docs" / "bench.json").read_text())["oracle"]["return_mean"]
    out.mkdir(parents=True, exist_ok=True)
    summary_path = out / "summary.json"  # run.py's tasks live in the same file
    summary: dict[str, Any] = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    per_seed: dict[str, Any] = {}
    prog: dict[str, list[dict[str, list[float]]]] = {}
    for task in opts["tasks"].split(","):
        rows: dict[str, list[float]] = {k: [] for k in ("comm_on", "comm_off", "comm_cut")}
        infos: list[list[float]] = []
        for seed in seeds:
            on = run(out, task, "comm_on", seed, steps)
            rows["comm_on"].append(evaluate(on, episodes))
            rows["comm_cut"].append(evaluate(on, episodes, ["comm.cut=true"]))
            rows["comm_off"].append(evaluate(run(out, task, "comm_off", seed, steps), episodes))
            infos.append(bit_information(on, episodes))
            prog.setdefault(task, []).append(progress(on, episodes))
            print(task, seed, {k: round(v[-1], 3) for k, v in rows.items()}, "MI", [round(x, 3) for x in infos[-1]],
                  flush=True)
        mean = {name: float(np.mean(v)) for name, v in rows.items()}
        summary[task] = {**mean, **{f"{name}_ci95": ci95(v) for name, v in rows.items()},
                         "optimum": oracle, "bound": "scripted oracle with full observation (docs/bench.json)",
                         "stand_still": STAND_STILL, "channel": "commnet, 1 bit (±1), no dropout",
                         "mi_bit_feature": dict(zip(FEATURES, [float(x) for x in np.mean(infos, 0)], strict=True)),
                         "seeds": seeds, "steps": steps, "episodes": episodes, "eval_seed": EVAL_SEED}
        per_seed[task] = {**rows, "mi_bit_feature": infos}
    (out / "spread_results.json").write_text(json.dumps(per_seed, indent=1) + "\n")
    (out / "spread_progress.json").write_text(json.dumps(prog, indent=1) + "\n")
    summary_path.write_text(json.dumps(summary, indent=1) + "\n")
    plot_panels(prog, out / "spread_progress.png", [("log_steps", "bit_entropy", "-", "bit entropy"),
                ("log_steps", "bit_mean", ":", "bit mean (±1)"), ("steps", "mi_max", "o-", "max I(bit; obs feature)")],
                "1-bit CommNet channel, MAPPO", "bits (entropy, MI) / mean")
    for task in per_seed:
        s = summary[task]
        print(f"| {task} | {s['comm_on']:.2f} ± {s['comm_on_ci95']:.2f} | {s['comm_off']:.2f} ± {s['comm_off_ci95']:.2f} "
              f"| {s['comm_cut']:.2f} ± {s['comm_cut_ci95']:.2f} | {s['optimum']:.2f} | "
              + ", ".join(f"{k} {v:.3f}" for k, v in s["mi_bit_feature"].items()) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
