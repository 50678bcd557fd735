"""The training loop: collect -> update -> log / evaluate / checkpoint, and resume.

``train(cfg)`` is a plain function of the composed config, so tests call it through
Hydra's ``compose()`` without the CLI. Rollouts stay on the env's device; the loop
syncs with the host only when it logs, evaluates or checkpoints.

Stopping (issue 25): SIGINT, SIGTERM, SIGUSR1 and SIGUSR2 (Slurm's ``--signal`` before the
time limit; submitit uses USR2) only set a flag. At the next update boundary the loop writes
a checkpoint, closes metrics.jsonl, train.log and wandb, and raises :class:`Stopped`: the CLI
prints one line with the ``marl train resume=<seed dir>`` command and exits 128 + the signal
number (SIGINT 130, SIGTERM 143, SIGUSR1 138, SIGUSR2 140). A second Ctrl-C while stopping
aborts at once, still as one line. ``train.checkpoint_minutes`` adds a wall-clock checkpoint,
so a slow run killed without a signal (SIGKILL, a node failure) loses at most that much.
"""

from __future__ import annotations

import math
import os
import random
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from marlcli import results, selfplay
from marlcli.algos import check_compatible, load_family
from marlcli.algos.base import Algorithm
from marlcli.buffers import Rollout
from marlcli.compat import check_pairings
from marlcli.distributed import collectives as distributed
from marlcli.envs import make_env
from marlcli.envs.base import TimeStep, VecEnv
from marlcli.errors import CheckpointError, ConfigError, TrainingError
from marlcli.evaluate import run_episodes
from marlcli.nets.comm import comm_stats
from marlcli.tracking import Tracker

EVAL_SEED_OFFSET = 1_000_003  # evaluation envs never share episodes with training envs


def resolve_device(name: str, job_num: int | None = None, gpus: int | None = None) -> torch.device:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``.

    In a sweep (``job_num`` given; ``$MARL_JOB_NUM`` when called from ``train``) job k is
    pinned to GPU ``k % gpus`` round-robin, so parallel jobs spread over the visible GPUs
    (issue 6). ``gpus`` defaults to ``torch.cuda.device_count()``.
    """
    if name == "auto":
        n = torch.cuda.device_count() if gpus is None else gpus
        if n <= 0:
            return torch.device("cpu")
        return torch.device("cuda" if job_num is None else f"cuda:{job_num % n}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but no CUDA GPU is visible; use device=cpu or device=auto")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device '{name}': use auto, cpu, cuda or cuda:N") from None


def keep_freed_memory() -> None:
    """Tell glibc malloc to keep freed blocks instead of returning them to the OS.

    A learner step allocates a few MB of activations and frees them again; by default
    glibc unmaps (or trims) those blocks and the next step page-faults them back in. On
    the 2-core VM that cost about a fifth of the VDN learner's time (564k page faults in
    80 rollouts and their updates, 83k with this; issue 7). Does nothing off glibc.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3  # mallopt parameters (malloc.h)
    libc.mallopt(m_mmap_threshold, 32 << 20)  # blocks below 32 MB come from the heap
    libc.mallopt(m_trim_threshold, 256 << 20)  # keep up to 256 MB of free heap
    libc.mallopt(m_top_pad, 16 << 20)


def seed_everything(seed: int) -> None:
    """The one seeding function: same seed and config on CPU -> same metrics."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def prepare(cfg: DictConfig, given: list[str] | None = None) -> tuple[DictConfig, dict[str, Any] | None]:
    """Apply ``resume``: returns the config to run and the checkpoint to continue from.

    ``given``: the command line's overrides (``key=value``; the CLI passes them). With
    ``resume=<dir>`` a given key whose value differs from the saved run's is refused (issue 25:
    ``algo=qmix resume=<a mappo run>`` used to be ignored silently); the keys of
    ``RESUME_FREE`` may differ, and those of ``RESUME_HONOURED`` are taken from today's command.
    """
    resume = cfg.get("resume")
    if not resume:
        return cfg, None
    trusted = [str(cfg.env.get("factory") or "")]  # the factory of today's command line (or marlcli's conf)
    if resume == "auto":  # multirun: skip finished seeds, continue from the newest readable checkpoint
        out = results.seed_dir(cfg)
        if (out / results.DONE_FILE).exists() or not results.checkpoints_newest_first(out):
            return cfg, None
        try:
            payload = results.load_checkpoint(out, results.RESUME_KEYS)
        except CheckpointError as exc:  # nothing readable: start fresh (train() clears the dir)
            print(f"marl: warning: resume=auto starts {out} afresh: {exc}", file=sys.stderr)
            return cfg, None
        _same_run(results.checkpoint_config(payload, trusted), cfg, out)
        return cfg, payload
    payload = results.load_checkpoint(Path(str(resume)), results.RESUME_KEYS)
    saved = results.checkpoint_config(payload, trusted)
    given = [o.split("=", 1)[0].lstrip("+~") for o in given or []]
    _refuse_conflicts(saved, cfg, given, str(resume))
    # continue the saved run; a larger train.total_steps extends it, logger settings are today's
    saved.train.total_steps = max(int(saved.train.total_steps), int(cfg.train.total_steps))
    saved.logger = cfg.logger
    for key in RESUME_HONOURED:
        if key in given and OmegaConf.select(cfg, key) is not None:
            OmegaConf.update(saved, key, OmegaConf.select(cfg, key), force_add=True)
    saved.resume = None
    saved.results_dir = results.results_root(Path(payload["_path"]), saved)  # a moved tree resumes where it is
    return saved, payload


# keys a resume=<dir> command may give with any value (train.total_steps: a larger one extends the run;
# run: `marl train` adds a fresh run name; logger, device and checkpoint settings do not change what is learnt)
RESUME_FREE = ("logger.", "logger", "resume", "device", "launcher.", "launcher", "results_dir", "train.total_steps",
               "dist.", "dist", "run", "hydra.", "hydra", "train.checkpoint_interval", "train.keep_checkpoints",
               "train.checkpoint_minutes")
RESUME_HONOURED = ("device", "train.checkpoint_interval", "train.keep_checkpoints", "train.checkpoint_minutes")
# what names a config group's choice: `algo=qmix` conflicts with a saved algo.name of mappo
GROUP_ID = {"env": ("name",), "algo": ("name",), "critic": ("type", "arch"), "sharing": ("mode",),
            "actor": ("type",), "comm": ("type",), "selfplay": ("mode",)}


def _refuse_conflicts(saved: DictConfig, cfg: DictConfig, given: list[str], where: str) -> None:
    """One line naming the first given key whose value is not the saved run's (resume=<dir> continues that run)."""
    for key in given:
        key = key.lstrip("+~")
        if key in RESUME_FREE or key.startswith(tuple(k for k in RESUME_FREE if k.endswith("."))):
            continue
        for path in [f"{key}.{f}" for f in GROUP_ID[key]] if key in GROUP_ID else [key]:
            a, b = _plain_value(OmegaConf.select(saved, path)), _plain_value(OmegaConf.select(cfg, path))
            if a != b:
                shown = key if key in GROUP_ID and path == f"{key}.{GROUP_ID[key][0]}" else path
                raise ConfigError(f"resume={where} continues a run trained with {shown}={a}, not {shown}={b}; "
                                  f"drop {key}= to continue it as it was (only train.total_steps, logger.*, device and "
                                  "checkpoint settings may change), or start a new run without resume=")


def _plain_value(v: Any) -> Any:
    return OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v


def _same_run(saved: DictConfig, cfg: DictConfig, out: Path) -> None:
    """resume=auto continues a run only under the config it was started with (issue 16)."""
    ignore = ("logger.", "resume", "device", "launcher.", "results_dir", "train.total_steps", "dist.",
              "train.checkpoint_minutes")
    a, b = _flat(OmegaConf.to_container(saved, resolve=True)), _flat(OmegaConf.to_container(cfg, resolve=True))
    diff = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k) and not k.startswith(ignore)]
    if diff:
        raise ConfigError(f"resume=auto: {out} was started with {diff[0]}={a.get(diff[0])!r}, not "
                          f"{b.get(diff[0])!r}; continue it as it was with resume={out}, or start a new run with "
                          "run=NAME")


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(node, dict):
        return {prefix.rstrip("."): node}
    out: dict[str, Any] = {}
    for k, v in node.items():
        out.update(_flat(v, f"{prefix}{k}."))
    return out


# Sizes and counts that must be >= 1: a 0 or a negative would fail deep inside torch.
POSITIVE_KEYS = ("env.num_envs", "train.total_steps", "train.eval_episodes", "train.eval_envs",
                 "algo.hidden", "algo.rollout_steps", "algo.batch_episodes", "algo.buffer_episodes",
                 "algo.mixer_embed", "algo.hypernet_hidden", "algo.epochs", "algo.minibatches",
                 "algo.critic_epochs", "algo.actor_epochs", "algo.updates_per_rollout",
                 "algo.buffer_size", "algo.batch_size", "actor.embed")


def check_sizes(cfg: DictConfig) -> None:
    """One-line error for a size or count below 1 (``algo.mixer_embed=-1``, ``env.num_envs=0``)."""
    for key in POSITIVE_KEYS:
        value = OmegaConf.select(cfg, key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"{key} must be a positive integer, got {value!r}")
    if int(OmegaConf.select(cfg, "algo.layers", default=0)) < 0:
        raise ConfigError(f"algo.layers must be 0 or more, got {cfg.algo.layers}")
    ranks = max(int(OmegaConf.select(cfg, "dist.nproc_per_node", default=1)), int(os.environ.get("WORLD_SIZE", "1")))
    if ranks > 1 and str(OmegaConf.select(cfg, "selfplay.mode", default="none")) != "none":
        raise ConfigError("selfplay runs in one process only (its pool and opponents are not shared across ranks); "
                          "drop dist.nproc_per_node or use selfplay=none")


def validate(cfg: DictConfig) -> None:
    """Fail fast on a bad env/algo pair or size (builds one env copy; runs nothing)."""
    check_sizes(cfg)
    env = make_env(cfg.env, 1, int(cfg.seed), torch.device("cpu"))
    try:
        check_compatible(load_family(cfg.algo), env.spec, cfg)
        check_pairings(cfg, env.spec)  # option pairings with no meaning (marlcli/compat.py, issue 25)
        selfplay.check(cfg, env.spec)
    finally:
        env.close()


STOP_SIGNALS = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGUSR1: 138, signal.SIGUSR2: 140}  # 128 + signum


class Stopped(TrainingError):
    """A run stopped by a signal (after writing its checkpoint): the CLI prints it and exits ``exit_code``."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class _Abort(KeyboardInterrupt):
    """A second Ctrl-C while stopping: leave at once (a KeyboardInterrupt, so no ``except Exception`` eats it)."""


class StopRequest:
    """SIGINT / SIGTERM / SIGUSR1 / SIGUSR2 handlers that only note the signal, for the loop to act on.

    Installed for the duration of ``train()`` in the main thread only (``signal.signal``
    cannot be called elsewhere), and the previous handlers are put back afterwards.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.out: Path | None = None  # the seed dir, for the resume command of an abort
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()

    def _handle(self, signum: int, frame: object) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise _Abort
        if self.signum is None:  # silent here: the one line comes when the run has stopped, with its resume command
            self.signum = signum


def train(cfg: DictConfig, given: list[str] | None = None) -> Path:
    """Train one seed to ``train.total_steps``; returns its seed dir.

    ``given``: the command line's overrides, for :func:`prepare`'s checks of ``resume=<dir>``.

    Raises :class:`Stopped` after a stop signal (its checkpoint written), ``results.WriteError``
    when a results file cannot be written (the run ends at once; earlier files stay valid).
    """
    with StopRequest() as stop:
        try:
            return _train(cfg, stop, given)
        except _Abort:
            where = stop.out or results.seed_dir(cfg)
            raise Stopped(f"aborted by a second Ctrl-C; continue from the last checkpoint with: marl train resume={where}",
                          STOP_SIGNALS[signal.SIGINT]) from None


def _train(cfg: DictConfig, stop: StopRequest, given: list[str] | None) -> Path:
    distributed.setup(cfg)  # a rank (of launch, torchrun or Slurm) joins its process group
    main = distributed.is_main()  # rank 0 alone writes the results tree, evaluates and checkpoints
    cfg, payload = prepare(cfg, given)
    out = stop.out = results.seed_dir(cfg)
    if cfg.get("resume") == "auto" and (out / results.DONE_FILE).exists():
        return out
    if payload is not None and cfg.get("resume") != "auto" and _finished(payload, cfg):
        step, total = int(payload["counters"]["step"]), int(cfg.train.total_steps)
        if main:  # issue 25: resuming a finished run used to delete eval.json and evaluate it again
            print(f"marl train: {out} already finished at step {step:,}; nothing to do (give train.total_steps=M "
                  f"with M > {total} to extend it)", file=sys.stderr)
        return out
    if not cfg.get("resume") and payload is None and results.holds_run(out):  # never mix two runs' files
        raise ConfigError(f"{out} already holds a run; continue it with resume={out}, start a new one with "
                          "run=NAME, or delete that dir")
    job = os.environ.get("MARL_JOB_NUM")  # set by marlcli.sweep for multirun jobs
    device = distributed.device(resolve_device(str(cfg.device), job_num=int(job) if job else None))
    check_sizes(cfg)
    keep_freed_memory()
    local = distributed.local_config(cfg)  # this rank's share of env copies and batches (cfg itself at K=1)
    seed_everything(distributed.rank_seed(int(cfg.seed)))
    env = make_env(local.env, int(local.env.num_envs), distributed.rank_seed(int(cfg.seed)), device)
    cleanup: list[Any] = [distributed.teardown, env.close]  # run in reverse order, whatever happens
    failed = True
    ending: dict[str, Any] = {}  # why the run stops early: train.log's last line and wandb's exit code
    try:  # an error anywhere below still closes the metrics file, the log handler, wandb and the env
        module = load_family(cfg.algo)
        check_compatible(module, env.spec, cfg)
        session = selfplay.Session(cfg, env, device, out)  # self-play wraps the env; matrix-game measures
        env = session.env
        algo: Algorithm = module.make(env.spec, local, device)
        distributed.broadcast_modules(algo)  # all ranks start from rank 0's parameters
        session.start(algo)

        t = cfg.train
        ts = env.reset()
        hidden = algo.actor.initial_hidden(env.num_envs)
        counters = {"step": 0, "time_s": 0.0, "log": 0, "eval": -1, "ckpt": 0}
        track = {"ep_ret": torch.zeros(env.num_envs, env.spec.n_agents, device=device),
                 "ret_sum": torch.zeros(env.spec.n_agents, device=device), "ret_cnt": torch.zeros((), device=device)}
        if payload is not None:  # a foreign or damaged checkpoint fails here with one line, not a traceback
            payload = distributed.for_this_rank(payload, algo, env, track)  # this rank's env, RNG and replay
            results.restore(algo.actor, payload["actor"], "actor", payload)
            results.restore(algo, payload["learner"], "learner", payload)
            ts = results.restore(env, payload["env"], "env", payload)
            try:
                hidden = payload["hidden"].to(device) if payload.get("hidden") is not None else hidden
                counters.update({k: type(v)(payload["counters"].get(k, v)) for k, v in counters.items()})
                saved_track = payload["track"]
                if any(saved_track[k].shape != v.shape for k, v in track.items()):
                    raise ValueError("episode-return tracker shapes differ")
                track = {k: saved_track[k].to(device) for k in track}
                session.load_state_dict(payload.get("selfplay"))
                torch.set_rng_state(payload["rng"]["torch"])
                if payload["rng"].get("cuda") is not None and device.type == "cuda":
                    torch.cuda.set_rng_state(payload["rng"]["cuda"], device)
            except Exception as exc:  # noqa: BLE001
                why = results.describe(exc)
                raise CheckpointError(f"{payload['_path']}: its training state does not fit ({why})") from None
            if main:  # no stale done, evaluations, exports or later step_<n>.pt; latest.pt = this checkpoint
                results.forget_after(out, int(counters["step"]), source=Path(payload["_path"]))
        elif cfg.get("resume") == "auto" and main:
            results.clear_run(out)  # nothing readable to continue: start afresh in an empty dir
        if main:
            with results.writing(out):  # a read-only results_dir: one line
                out.mkdir(parents=True, exist_ok=True)
            results.write_config(out, cfg)
        keep = counters["step"] if payload else None  # resume: trim metrics and train.log past the checkpoint
        writer = results.MetricsWriter(out / "metrics.jsonl", keep_until_step=keep) if main else distributed.Silent()
        cleanup.append(writer.close)
        tracker = Tracker(cfg, out, keep_until_step=keep) if main else distributed.Silent()
        cleanup.append(lambda: tracker.close(failed=failed, **ending))  # reads `failed` when it runs
        start = time.perf_counter() - counters["time_s"]
        if payload is None and os.environ.get("MARL_T0"):  # benchmarks: time_s counts from process launch
            start -= max(0.0, time.time() - float(os.environ["MARL_T0"]))

        def elapsed() -> float:
            return time.perf_counter() - start

        def evaluate() -> None:
            if not main:
                counters["eval"] = counters["step"]
                return
            eval_env = make_env(cfg.env, min(int(t.eval_episodes), int(t.eval_envs)), int(cfg.seed) + EVAL_SEED_OFFSET,
                                device)
            eval_env = session.wrap_eval(eval_env)  # self-play: against the pool
            res = run_episodes(algo.actor, eval_env, int(t.eval_episodes), bool(t.eval_deterministic))
            eval_env.close()
            record = {"step": counters["step"], "time_s": round(elapsed(), 3), **res.summary()}
            writer.write(record)
            tracker.eval(record)
            counters["eval"] = counters["step"]

        def checkpoint() -> None:
            counters["time_s"] = elapsed()
            payload_out = {
                "config": OmegaConf.to_yaml(cfg, resolve=True),
                "algo": str(cfg.algo.name),
                "actor": algo.actor.state_dict(),
                "learner": algo.state_dict(),
                "env": env.state_dict(),
                "counters": dict(counters),
                "track": track,
                "selfplay": session.state_dict(),
                "rng": {"torch": torch.get_rng_state(),
                        **({"cuda": torch.cuda.get_rng_state(device)} if device.type == "cuda" else {})},
            }
            if hidden is not None:
                payload_out["hidden"] = hidden
            distributed.check_in_sync(algo)
            payload_out = distributed.gather_rank_states(payload_out)  # every rank's env, RNG, replay on rank 0
            if main:
                results.save_checkpoint(out / "checkpoints", counters["step"], payload_out, int(t.keep_checkpoints))
                session.write()
            counters["ckpt"] = counters["step"]
            clock["ckpt"] = time.monotonic()

        clock = {"ckpt": time.monotonic()}
        every_s = 60.0 * float(t.get("checkpoint_minutes") or 0)  # wall-clock checkpoints (0 = off)
        world = distributed.world_size()

        if counters["eval"] < 0:
            evaluate()  # step 0: the untrained policy, for learning curves
        sps_mark = (counters["step"], elapsed())
        metrics: dict[str, Any] = {}
        while counters["step"] < int(t.total_steps):
            steps: list[tuple[TimeStep, torch.Tensor, TimeStep]] = []
            for _ in range(algo.rollout_steps):
                actions, hidden = algo.act(ts, hidden, counters["step"])
                nts = env.step(actions)
                played = getattr(env, "played", None)  # asymmetric self-play: frozen agents' actions in their slots
                steps.append((ts, actions if played is None else played, nts))
                _track_returns(track, nts)
                if hidden is not None:
                    hidden = hidden * (~nts.done).view(-1, *([1] * (hidden.dim() - 1)))
                ts = nts
            rollout = Rollout.from_steps(steps)
            prev = counters["step"]
            counters["step"] += rollout.num_steps * distributed.world_size()  # env steps over all ranks
            metrics = {**algo.update(rollout, counters["step"]), **session.after_update(prev, counters["step"])}
            step = counters["step"]
            if _crossed(prev, step, int(t.log_interval)):
                distributed.all_sum(track["ret_sum"], track["ret_cnt"])  # episodes of all ranks
                metrics = distributed.mean_metrics(metrics)
                now = elapsed()
                sps = (step - sps_mark[0]) / max(now - sps_mark[1], 1e-9)
                sps_mark = (step, now)
                record = {"step": step, "time_s": round(now, 3), "time/sps": round(sps, 1), **_train_returns(track),
                          **{k: float(v) for k, v in metrics.items()}, **comm_stats(algo.actor)}
                writer.write(record)
                tracker.log(record)
                check_finite(record)
            if _crossed(prev, step, int(t.eval_interval)):
                evaluate()
            due = every_s > 0 and time.monotonic() - clock["ckpt"] >= every_s
            if world > 1:  # rank 0 decides, so every rank takes part in the same checkpoints and stops together
                stop.signum, due = distributed.broadcast_object((stop.signum, due))
            if _crossed(prev, step, int(t.checkpoint_interval)) or (due and step < int(t.total_steps)):
                checkpoint()
            tracker.progress(step)
            if stop.signum is not None and step < int(t.total_steps):
                if counters["ckpt"] != step:
                    checkpoint()
                distributed.finish()
                name = signal.Signals(stop.signum).name
                hint = f"continue with: marl train resume={out}"
                ending.update(reason=f"stopped by {name} at step {step:,}; checkpoint written; {hint}",
                              exit_code=STOP_SIGNALS[stop.signum])
                raise Stopped(f"stopped by {name} at step {step:,} of {int(t.total_steps):,} (checkpoint written); "
                              f"{hint}", STOP_SIGNALS[stop.signum])
        if counters["eval"] != counters["step"]:
            evaluate()
        need = counters["ckpt"] != counters["step"] or not (out / "checkpoints" / "latest.pt").exists()
        if distributed.broadcast_object(need):  # rank 0 decides: only it has written checkpoints
            checkpoint()
        distributed.finish()  # every rank leaves the group together, after rank 0 saved its last checkpoint
        failed = False
    except results.WriteError as exc:  # a full disk: stop now, say which checkpoint is still good
        ending["reason"] = f"stopped: {exc}"
        kept = results.checkpoints_newest_first(out)
        if kept:
            raise results.WriteError(f"{exc}; the run stopped, its checkpoint {kept[0]} is intact (marl train "
                                     f"resume={out} continues from it once the disk has room)") from None
        raise
    finally:
        for close in reversed(cleanup):
            close()
    if main:
        results.atomic_write_text(out / results.DONE_FILE, f"{counters['step']}\n")
    return out


def _finished(payload: dict[str, Any], cfg: DictConfig) -> bool:
    """The checkpoint is its run's last: at ``train.total_steps`` with its final evaluation done."""
    try:
        counters = payload["counters"]
        step = int(counters.get("step", 0))
        return step >= int(cfg.train.total_steps) and int(counters.get("eval", -1)) >= step
    except (TypeError, ValueError, AttributeError):  # a damaged file: restoring it gives the one-line error
        return False


def check_finite(record: dict[str, Any]) -> None:
    """Stop a diverged run: a NaN/inf ``loss/...`` in a log line raises ``TrainingError``.

    Checked at log lines only, so the loop does not sync with the device every update.
    """
    bad = [k for k, v in record.items() if k.startswith("loss/") and not math.isfinite(float(v))]
    if bad:
        raise TrainingError(f"{', '.join(bad)} is {record[bad[0]]} at step {record['step']:,}: training diverged "
                            "(try a lower algo.lr or check the env rewards)")


def _crossed(prev: int, now: int, interval: int) -> bool:
    return interval > 0 and now // interval > prev // interval


def _track_returns(track: dict[str, torch.Tensor], ts: TimeStep) -> None:
    """Accumulate finished-episode returns on the device (no host sync per step)."""
    track["ep_ret"] += ts.reward
    d = ts.done[:, None].to(ts.reward.dtype)
    track["ret_sum"] += (track["ep_ret"] * d).sum(0)
    track["ret_cnt"] += d.sum()
    track["ep_ret"] *= 1 - d


def _train_returns(track: dict[str, torch.Tensor]) -> dict[str, float]:
    """Mean return of the training episodes finished since the last log line (resets)."""
    cnt = float(track["ret_cnt"])
    out = {"train/episodes": cnt}
    if cnt > 0:
        out["train/return_mean"] = float(track["ret_sum"].mean() / cnt)
    track["ret_sum"].zero_()
    track["ret_cnt"].zero_()
    return out


def env_for_eval(cfg: DictConfig, num_envs: int, seed: int, device: torch.device) -> VecEnv:
    """Evaluation envs for ``marl eval`` (same config, evaluation seed stream)."""
    return make_env(cfg.env, num_envs, seed + EVAL_SEED_OFFSET, device)
