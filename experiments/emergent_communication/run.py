"""Do learned messages carry what only one agent sees? (issue 19)

    python experiments/emergent_communication/run.py [results_dir=results/experiments/emergent_communication]
        [seeds=5] [steps=25600] [episodes=1000] [tasks=reference,reference3,reference_k2] [threads=1]

Tasks (``env=reference``, marlcli/envs/native/reference.py): agent 0 sees a goal out of K = 4, the
listeners must pick it; a new goal every step, T = 10 steps, team reward = fraction of listeners right.
Optimum T = 10 (the speaker tells), best without a channel T/K = 2.5 (chance). ``reference`` has one
listener, ``reference3`` three (N = 4), ``reference_k2`` one listener and K = 2 goals (one bit says it all:
optimum 10, chance 5). MAPPO (64 env copies), seeds 100.., per task:

* ``comm_on``: ``comm=commnet`` (16 continuous numbers per message), evaluated as trained;
* ``comm_off``: trained without a channel (``comm=none``);
* ``comm_cut``: the comm_on actors evaluated with the channel cut (``marl eval PATH comm=off``);
* ``bits_dropout``: ``comm.bits=log2(K) comm.dropout=0.2`` (hard ±1 bits, each message lost with p = 0.2 at
  training and evaluation); ``bits_kept`` = (bits_dropout - comm_off) / (comm_on - comm_off), of which 0.8 is
  the most a listener can keep when a fifth of the messages are lost (``bits_ceiling``);
* ``bits_tarmac``: the same discrete, lossy channel with ``comm=tarmac`` (attention can single out the speaker,
  where CommNet's mean mixes in the listeners' own constant bits);
* ``mi_bits``: mutual information (bits) between the speaker's message and the goal, per bit and jointly
  (log2 K is all there is to say), on the evaluation episodes of the bits runs.

The cost of a channel is a benchmark: ``make bench ARGS="--sections comm"`` (docs/bench.json).
Evaluation seed 9000, ``episodes`` episodes. Writes results.json (per seed),
summary.json (per task: comm_on, comm_off, comm_cut, optimum, chance), results.md, progress.json and
channel_progress.png (I(message; goal) at every checkpoint and the bits' entropy logged in training, against
env steps, per seed) into results_dir.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from marlcli import results
from marlcli.cliutil import experiment_options
from marlcli.config import compose
from marlcli.envs import make_env
from marlcli.evaluate import evaluate_path, load_actor
from marlcli.nets.comm import CommEncoder
from marlcli.stats import ci95
from marlcli.trainer import train

TASKS = {"reference": ["env=reference", "env.N=2"], "reference3": ["env=reference", "env.N=4"],
         "reference_k2": ["env=reference", "env.N=2", "env.goals=2"]}
VARIANTS = {"comm_on": ["comm=commnet"], "comm_off": ["comm=none"],
            "bits_dropout": ["comm=commnet", "comm.dropout=0.2"],  # + comm.bits=log2(goals): all there is to say
            "bits_tarmac": ["comm=tarmac", "comm.dropout=0.2"]}


def variant(task: str, name: str) -> list[str]:
    """The overrides of ``name`` on ``task``: the bits variant sends log2(goals) bits (1 on reference_k2)."""
    if not name.startswith("bits"):
        return VARIANTS[name]
    goals = int(compose(TASKS[task]).env.goals)
    return [*VARIANTS[name], f"comm.bits={max(1, round(math.log2(goals)))}"]
EVAL_SEED = 9000


def run(out: Path, task: str, name: str, seed: int, steps: int) -> Path:
    cfg = compose([*TASKS[task], *variant(task, name), f"seed={seed}", f"run={task}-{name}", f"results_dir={out}",
                   "env.num_envs=64", "device=cpu", "logger.progress=false", f"train.total_steps={steps}",
                   f"train.eval_interval={steps}", "train.eval_episodes=200", "train.eval_envs=200",
                   "train.checkpoint_interval=1600", "train.log_interval=1600"])
    seed_dir = out / "reference" / "mappo" / f"{task}-{name}" / f"seed_{seed}"
    if (seed_dir / results.DONE_FILE).exists():
        return seed_dir
    return train(cfg)


def evaluate(seed_dir: Path, episodes: int, overrides: list[str] | None = None) -> float:
    return float(evaluate_path(seed_dir, episodes=episodes, seed=EVAL_SEED, envs=episodes, overrides=overrides,
                               write=False)[0]["return_mean"])


def rollout_messages(path: Path, episodes: int, observe: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Play ``episodes`` evaluation episodes with the actor at ``path`` (a seed dir or one ``step_<n>.pt``);
    returns ``observe(obs, cfg)`` and the hard messages ``last_sent > 0`` of every step, stacked over steps."""
    payload = results.load_checkpoint(path)
    cfg = results.checkpoint_config(payload)
    env = make_env(cfg.env, episodes, EVAL_SEED, torch.device("cpu"))
    actor = load_actor(payload, cfg, env.spec)
    enc = next(m for m in actor.modules() if isinstance(m, CommEncoder))
    ts, seen, sent = env.reset(), [], []
    with torch.no_grad():
        for _ in range(int(cfg.env.max_cycles)):
            seen.append(observe(ts.obs, cfg))
            actions, _ = actor.act(ts.obs, ts.avail, None, True)
            sent.append((enc.last_sent > 0).long())  # ±1 bits -> 0/1
            ts = env.step(actions)
    return torch.cat(seen), torch.cat(sent)


def mutual_information(path: Path, episodes: int) -> list[float]:
    """I(bit_b ; goal) per bit and I(message ; goal) jointly, from the speaker's messages at evaluation."""
    g, sent = rollout_messages(path, episodes, lambda obs, cfg: obs[:, 0, 1:].argmax(-1))
    g, m = g.numpy(), sent[:, 0].numpy()  # the speaker's bits
    codes = [m[:, b] for b in range(m.shape[1])] + [m @ (2 ** np.arange(m.shape[1]))]
    return [mi(c, g) for c in codes]


def checkpoints(seed_dir: Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of every ``step_<n>.pt`` of a seed dir, in training order."""
    pts = [(int(pt.stem.split("_")[1]), pt) for pt in (seed_dir / "checkpoints").glob("step_*.pt")]
    return sorted(pts, key=lambda x: x[0])


def training_log(seed_dir: Path, keys: dict[str, str]) -> dict[str, list[float]]:
    """``{name: [values]}`` of the metrics lines that hold comm statistics, plus ``log_steps``."""
    logs = [json.loads(x) for x in (seed_dir / "metrics.jsonl").read_text().splitlines()]
    logs = [r for r in logs if "comm/mean_0" in r]
    return {"log_steps": [r["step"] for r in logs], **{k: [r.get(m, float("nan")) for r in logs] for k, m in keys.items()}}


def channel_progress(seed_dir: Path, episodes: int) -> dict[str, list[float]]:
    """Along training: I(message; goal) from each step checkpoint, bit entropy and return from the training log."""
    pts = checkpoints(seed_dir)
    return {"steps": [s for s, _ in pts], "mi": [mutual_information(pt, episodes)[-1] for _, pt in pts],
            **training_log(seed_dir, {"bit_entropy": "comm/bit_entropy", "train_return": "train/return_mean"})}


def plot_panels(progress: dict[str, list[dict[str, list[float]]]], path: Path, curves: list[tuple[str, str, str, str]],
                title: str, ylabel: str) -> None:
    """One panel per task, one line per seed and curve ``(x key, y key, matplotlib style, label)``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(progress), figsize=(5.5 * len(progress), 3.6), squeeze=False)
    for ax, (task, runs) in zip(axes[0], progress.items(), strict=True):
        for i, r in enumerate(runs):
            for c, (x, y, style, label) in enumerate(curves):
                ax.plot(r[x], r[y], style, color=f"C{c}", alpha=0.6, label=label if i == 0 else None)
        ax.set_title(f"{task}: {title}")
        ax.set_xlabel("env steps")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def mi(x: np.ndarray, y: np.ndarray) -> float:
    joint = np.zeros((x.max() + 1, y.max() + 1))
    np.add.at(joint, (x, y), 1.0)
    joint /= joint.sum()
    px, py = joint.sum(1, keepdims=True), joint.sum(0, keepdims=True)
    nz = joint > 0
    return float((joint[nz] * np.log2(joint[nz] / (px @ py)[nz])).sum())


def options(argv: list[str], steps: int, tasks: str) -> tuple[dict[str, str], Path, int, int, list[int]]:
    """``key=value`` options -> (options, results_dir, steps, episodes, seeds 100..); sets torch's threads."""
    opts = experiment_options(argv, {"results_dir": "results/experiments/emergent_communication", "seeds": "5",
                                     "steps": str(steps), "episodes": "1000", "tasks": tasks, "threads": "1"},
                              Path(sys.argv[0]).name)
    torch.set_num_threads(int(opts["threads"]))
    seeds = [100 + i for i in range(int(opts["seeds"]))]
    return opts, Path(opts["results_dir"]), int(opts["steps"]), int(opts["episodes"]), seeds


def main(argv: list[str]) -> None:
    opts, out, steps, episodes, seeds = options(argv, 25_600, "reference,reference3,reference_k2")
    per_seed: dict[str, Any] = {}
    progress: dict[str, list[dict[str, list[float]]]] = {}
    old = out / "summary.json"  # spread.py's tasks live in the same file
    summary: dict[str, Any] = json.loads(old.read_text()) if old.exists() else {}
    for task in opts["tasks"].split(","):
        rows: dict[str, list[float]] = {k: [] for k in ("comm_on", "comm_off", "comm_cut", "bits_dropout",
                                                          "bits_tarmac")}
        mis: list[list[float]] = []
        for seed in seeds:
            on = run(out, task, "comm_on", seed, steps)
            rows["comm_on"].append(evaluate(on, episodes))
            rows["comm_cut"].append(evaluate(on, episodes, ["comm.cut=true"]))
            rows["comm_off"].append(evaluate(run(out, task, "comm_off", seed, steps), episodes))
            bits = run(out, task, "bits_dropout", seed, steps)
            rows["bits_dropout"].append(evaluate(bits, episodes))
            rows["bits_tarmac"].append(evaluate(run(out, task, "bits_tarmac", seed, steps), episodes))
            mis.append(mutual_information(bits, episodes))
            progress.setdefault(task, []).append(channel_progress(bits, episodes))
            print(task, seed, {k: v[-1] for k, v in rows.items()}, "MI", [round(x, 3) for x in mis[-1]], flush=True)
        env_cfg = compose(TASKS[task]).env
        t, k = int(env_cfg.max_cycles), int(env_cfg.goals)
        mean = {name: float(np.mean(v)) for name, v in rows.items()}
        gain = mean["comm_on"] - mean["comm_off"]
        summary[task] = {**mean, **{f"{name}_ci95": ci95(v) for name, v in rows.items()},
                         "optimum": float(t), "chance": t / k,
                         "gap_closed": gain / (t - mean["comm_off"]) if t > mean["comm_off"] else float("nan"),
                         "bits_kept": (mean["bits_dropout"] - mean["comm_off"]) / gain if gain > 0 else float("nan"),
                         "bits_tarmac_kept": (mean["bits_tarmac"] - mean["comm_off"]) / gain if gain > 0 else float("nan"),
                         "bits_ceiling": 0.8, "bits": max(1, round(math.log2(k))),
                         "mi_bits": [float(x) for x in np.mean(mis, 0)], "seeds": seeds, "steps": steps,
                         "episodes": episodes, "eval_seed": EVAL_SEED}
        per_seed[task] = {**rows, "mi_bits": mis}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(per_seed, indent=1) + "\n")
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    lines = ["| task | comm-on | comm-off | comm-cut | log2(K) bits, 20% dropout | same, tarmac | optimum | chance | "
             "gap closed | gain kept (bits: commnet, tarmac) | I(message; goal) bits |", "|" + "---|" * 11]
    for task, s in summary.items():
        if task.startswith("channel") or "bits_dropout" not in s:
            continue
        lines.append(f"| {task} | {s['comm_on']:.2f} ± {s['comm_on_ci95']:.2f} | {s['comm_off']:.2f} ± "
                     f"{s['comm_off_ci95']:.2f} | {s['comm_cut']:.2f} ± {s['comm_cut_ci95']:.2f} | "
                     f"{s['bits_dropout']:.2f} ± {s['bits_dropout_ci95']:.2f} | "
                     f"{s['bits_tarmac']:.2f} ± {s['bits_tarmac_ci95']:.2f} | {s['optimum']:.0f} | {s['chance']:.1f} | "
                     f"{s['gap_closed']:.2f} | {s['bits_kept']:.2f}, {s['bits_tarmac_kept']:.2f} | "
                     f"{s['mi_bits'][-1]:.2f} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    (out / "progress.json").write_text(json.dumps(progress, indent=1) + "\n")
    plot_panels(progress, out / "channel_progress.png", [("steps", "mi", "o-", "I(message; goal)"),
                ("log_steps", "bit_entropy", "s--", "bit entropy (training)")], "log2(K)-bit channel, 20% dropout", "bits")
    print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1:])
