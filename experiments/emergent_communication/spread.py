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
from marlcli.envs import make_env
from marlcli.nets.comm import CommEncoder
from marlcli.trainer import train

sys.path.insert(0, str(Path(__file__).parent))
from run import EVAL_SEED, ci95, evaluate, mi  # noqa: E402

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
    from marlcli.algos import load_family

    payload = results.load_checkpoint(path)
    cfg = results.checkpoint_config(payload)
    env = make_env(cfg.env, episodes, EVAL_SEED, torch.device("cpu"))
    actor = load_family(cfg.algo).make_actor(env.spec, cfg)
    results.restore(actor, payload["actor"], "actor", payload)
    actor.eval()
    enc = next(m for m in actor.modules() if isinstance(m, CommEncoder))
    n_lm = int(cfg.env.num_landmark_neighbors or cfg.env.N)
    ts, feats, bits = env.reset(), [], []
    with torch.no_grad():
        for _ in range(int(cfg.env.max_cycles)):
            feats.append(features(ts.obs, n_lm).reshape(-1, len(FEATURES)))
            actions, _ = actor.act(ts.obs, ts.avail, None, True)
            bits.append((enc.last_sent[..., 0] > 0).reshape(-1).long())
            ts = env.step(actions)
    f, b = torch.cat(feats).numpy(), torch.cat(bits).numpy()
    return [mi(b, f[:, i]) for i in range(len(FEATURES))]


def progress(seed_dir: Path, episodes: int) -> dict[str, list[float]]:
    steps, info = [], []
    for pt in sorted((seed_dir / "checkpoints").glob("step_*.pt"), key=lambda p: int(p.stem.split("_")[1])):
        steps.append(int(pt.stem.split("_")[1]))
        info.append(max(bit_information(pt, episodes)))
    logs = [json.loads(x) for x in (seed_dir / "metrics.jsonl").read_text().splitlines()]
    logs = [r for r in logs if "comm/mean_0" in r]
    return {"steps": steps, "mi_max": info, "log_steps": [r["step"] for r in logs],
            "bit_mean": [r["comm/mean_0"] for r in logs], "bit_std": [r["comm/std_0"] for r in logs],
            "bit_entropy": [r["comm/bit_entropy"] for r in logs],
            "train_return": [r.get("train/return_mean", float("nan")) for r in logs]}


def plot(prog: dict[str, list[dict[str, list[float]]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(prog), figsize=(5.5 * len(prog), 3.6), squeeze=False)
    for ax, (task, runs) in zip(axes[0], prog.items(), strict=True):
        for i, r in enumerate(runs):
            ax.plot(r["log_steps"], r["bit_entropy"], "-", color="C1", alpha=0.6, label="bit entropy" if i == 0 else None)
            ax.plot(r["log_steps"], r["bit_mean"], ":", color="C2", alpha=0.6, label="bit mean (±1)" if i == 0 else None)
            ax.plot(r["steps"], r["mi_max"], "o-", color="C0", alpha=0.7,
                    label="max I(bit; obs feature)" if i == 0 else None)
        ax.set_title(f"{task}: 1-bit CommNet channel, MAPPO")
        ax.set_xlabel("env steps")
        ax.set_ylabel("bits (entropy, MI) / mean")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str]) -> None:
    opts = {"results_dir": "results/experiments/emergent_communication", "seeds": "5", "steps": "1000000",
            "episodes": "1000", "tasks": "spread,spread_limited", "threads": "1"}
    for a in argv:
        k, _, v = a.partition("=")
        if k not in opts:
            sys.exit(f"unknown option {k}; options: {', '.join(opts)}")
        opts[k] = v
    torch.set_num_threads(int(opts["threads"]))
    out, steps, episodes = Path(opts["results_dir"]), int(opts["steps"]), int(opts["episodes"])
    seeds = [100 + i for i in range(int(opts["seeds"]))]
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
    plot(prog, out / "spread_progress.png")
    for task in per_seed:
        s = summary[task]
        print(f"| {task} | {s['comm_on']:.2f} ± {s['comm_on_ci95']:.2f} | {s['comm_off']:.2f} ± {s['comm_off_ci95']:.2f} "
              f"| {s['comm_cut']:.2f} ± {s['comm_cut_ci95']:.2f} | {s['optimum']:.2f} | "
              + ", ".join(f"{k} {v:.3f}" for k, v in s["mi_bit_feature"].items()) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
