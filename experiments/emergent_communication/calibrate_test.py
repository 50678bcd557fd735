"""Calibration of tests/integration/test_comm.py::test_messages_carry_what_only_the_speaker_sees on seeds 0-2.

Run from the repo root: ``python experiments/emergent_communication/calibrate_test.py``; writes
``experiments/emergent_communication/test_calibration.json``.
"""

import json

import torch

from marlcli.config import compose
from marlcli.evaluate import evaluate_path
from marlcli.trainer import train

torch.set_num_threads(1)
out = {}
for seed in (0, 1, 2):
    for comm in ("commnet", "none"):
        cfg = compose(["env=reference", f"comm={comm}", f"seed={seed}", f"run={comm}", "env.num_envs=64",
                       "results_dir=results/experiments/comm_test_calibration", "device=cpu", "logger.progress=false",
                       "train.total_steps=6400", "train.eval_interval=6400", "train.eval_episodes=200",
                       "train.eval_envs=200", "train.checkpoint_interval=1000000000", "train.log_interval=1000000000"])
        d = train(cfg)
        rec = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines() if "eval/return_mean" in x]
        row = {"final": rec[-1]["eval/return_mean"]}
        if comm != "none":
            row["cut"] = evaluate_path(d, episodes=200, overrides=["comm.cut=true"], write=False)[0]["return_mean"]
        out[f"{comm}_{seed}"] = row
        print(comm, seed, row, flush=True)
with open("experiments/emergent_communication/test_calibration.json", "w") as f:
    json.dump(out, f, indent=1)
