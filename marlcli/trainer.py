"""The training loop: collect -> update -> log / evaluate / checkpoint, and resume.

``train(cfg)`` is a plain function of the composed config, so tests call it through Hydra's
``compose()`` without the CLI. Rollouts stay on the env's device; the loop syncs with the host
only when it logs, evaluates or checkpoints. :func:`_train` reads top to bottom; the helpers below
it do one job each. The process (device, seeds, stop signals) is ``marlcli.runtime``'s, what a
checkpoint holds ``marlcli.checkpoints``', resume preparation ``marlcli.results``'; capabilities
join the loop as hooks (``marlcli.hooks``: self-play and matrix-game measures, message statistics).

A stop signal only sets a flag; at the next update boundary the loop writes a checkpoint, closes
its files and raises ``runtime.Stopped`` (issue 25). ``train.checkpoint_minutes`` adds a wall-clock
checkpoint, so a run killed without a signal (SIGKILL, a node failure) loses at most that much.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from marlcli import hooks as hooking
from marlcli import results, selfplay
from marlcli.algos import check_compatible, load_family
from marlcli.algos.base import Algorithm
from marlcli.buffers import Rollout
from marlcli.checkpoints import Checkpoint, RunState
from marlcli.compat import check_pairings
from marlcli.distributed import collectives as distributed
from marlcli.envs import make_env
from marlcli.envs.base import TimeStep, VecEnv
from marlcli.errors import ConfigError, TrainingError
from marlcli.evaluate import EVAL_SEED_OFFSET, env_for_eval, run_episodes  # noqa: F401 - EVAL_SEED_OFFSET: re-exported
from marlcli.hooks import CommStats, Hook
from marlcli.results import prepare
from marlcli.runtime import STOP_SIGNALS, Abort, Stopped, StopRequest, keep_freed_memory, resolve_device, seed_everything
from marlcli.tracking import Tracker


def train(cfg: DictConfig, given: list[str] | None = None, hooks: list[Hook] | None = None) -> Path:
    """Train one seed to ``train.total_steps``; returns its seed dir.

    ``given``: the command line's overrides, for :func:`prepare`'s checks of ``resume=<dir>``.
    ``hooks``: more hooks (``marlcli.hooks.Hook``), called after self-play's and the message statistics'.

    Raises :class:`Stopped` after a stop signal (its checkpoint written), ``results.WriteError``
    when a results file cannot be written (the run ends at once; earlier files stay valid).
    """
    with StopRequest() as stop:
        try:
            return _train(cfg, stop, given, list(hooks or []))
        except Abort:
            raise stop.aborted(stop.out or results.seed_dir(cfg)) from None


def _train(cfg: DictConfig, stop: StopRequest, given: list[str] | None, extra: list[Hook]) -> Path:
    # Resume or start: the config to run, the checkpoint to continue from
    distributed.setup(cfg)  # a rank (of launch, torchrun or Slurm) joins its process group
    main = distributed.is_main()  # rank 0 alone writes the results tree, evaluates and checkpoints
    cfg, ckpt = prepare(cfg, given)
    out = stop.out = results.seed_dir(cfg)
    if _nothing_to_do(cfg, ckpt, out, main):
        return out

    # Device / seeding
    job = os.environ.get("MARL_JOB_NUM")  # set by marlcli.sweep for multirun jobs
    device = distributed.device(resolve_device(str(cfg.device), job_num=int(job) if job else None))
    check_sizes(cfg)
    keep_freed_memory()
    local = distributed.local_config(cfg)  # this rank's share of env copies and batches (cfg itself at K=1)
    seed_everything(distributed.rank_seed(int(cfg.seed)))

    # Env and algorithm
    env = make_env(local.env, int(local.env.num_envs), distributed.rank_seed(int(cfg.seed)), device)
    ending: dict[str, Any] = {"failed": True}  # how it ended: train.log's last line and wandb's exit code
    with contextlib.ExitStack() as closing, _full_disk(out, ending):  # whatever happens, all is closed (LIFO)
        closing.callback(distributed.teardown)
        closing.callback(env.close)
        module = load_family(cfg.algo)
        check_compatible(module, env.spec, cfg)
        session = selfplay.Session(cfg, env, device, out)  # self-play wraps the env; matrix-game measures
        env = session.env
        algo: Algorithm = module.make(env.spec, local, device)
        distributed.broadcast_modules(algo)  # all ranks start from rank 0's parameters
        hooks: list[Hook] = [session, CommStats(), *extra]
        for hook in hooks:
            hook.start(algo)

        # Resume: this rank's env, RNG, replay, counters and hooks (a foreign or damaged checkpoint: one line)
        state = RunState.fresh(env, algo.actor, device)
        if ckpt is not None:
            state = ckpt.restore(algo, env, hooks, state, device)
            if main:  # no stale done, evaluations, exports or later step_<n>.pt; latest.pt = this checkpoint
                results.forget_after(out, state.step, source=ckpt.path)
        elif cfg.get("resume") == "auto" and main:
            results.clear_run(out)  # nothing readable to continue: start afresh in an empty dir

        # Results: config.yaml, metrics.jsonl, train.log / progress / wandb (rank 0 only)
        keep = state.step if ckpt is not None else None  # resume: trim metrics and train.log past the checkpoint
        writer, tracker = _open_results(cfg, out, main, keep, closing, ending)
        run = Run(cfg, out, main, device, algo, env, hooks, state, writer, tracker,
                  start=_time_origin(state, resumed=ckpt is not None))

        # Loop: collect -> update -> log / evaluate / checkpoint
        t, total = cfg.train, int(cfg.train.total_steps)
        if state.counters["eval"] < 0:
            _evaluate(run)  # step 0: the untrained policy, for learning curves
        run.sps_mark = (state.step, run.elapsed())
        while state.step < total:
            prev = state.step
            rollout = _collect(run)
            step = state.counters["step"] = prev + rollout.num_steps * distributed.world_size()  # over all ranks
            metrics = {**algo.update(rollout, step), **hooking.after_update(hooks, prev, step)}
            if _crossed(prev, step, int(t.log_interval)):
                _log(run, metrics)
            if _crossed(prev, step, int(t.eval_interval)):
                _evaluate(run)
            due = _agree_on_stopping(run, stop)  # every rank checkpoints and stops at the same update
            if _crossed(prev, step, int(t.checkpoint_interval)) or (due and step < total):
                _checkpoint(run)
            tracker.progress(step)
            if stop.signum is not None and step < total:
                raise _stopped(run, stop, ending)

        # End: the final evaluation and checkpoint; every rank leaves the group together
        if state.counters["eval"] != state.step:
            _evaluate(run)
        need = state.counters["ckpt"] != state.step or not (out / "checkpoints" / "latest.pt").exists()
        if distributed.broadcast_object(need):  # rank 0 decides: only it has written checkpoints
            _checkpoint(run)
        distributed.finish()  # after rank 0 saved its last checkpoint
        ending["failed"] = False
    if main:
        results.atomic_write_text(out / results.DONE_FILE, f"{state.step}\n")
    return out


@dataclass
class Run:
    """One run's live parts, for the loop's helpers below."""

    cfg: DictConfig
    out: Path
    main: bool
    device: torch.device
    algo: Algorithm
    env: VecEnv
    hooks: list[Hook]
    state: RunState
    writer: Any  # results.MetricsWriter (distributed.Silent on ranks > 0)
    tracker: Any  # tracking.Tracker (distributed.Silent on ranks > 0)
    start: float  # time.perf_counter() at time_s = 0
    last_ckpt: float = field(default_factory=time.monotonic)  # for train.checkpoint_minutes
    sps_mark: tuple[int, float] = (0, 0.0)  # (step, time_s) of the last log line

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


def _nothing_to_do(cfg: DictConfig, ckpt: Checkpoint | None, out: Path, main: bool) -> bool:
    """A finished run resumed (nothing to train); a fresh run into a used dir is refused."""
    if cfg.get("resume") == "auto" and (out / results.DONE_FILE).exists():
        return True
    if ckpt is not None and cfg.get("resume") != "auto" and ckpt.finished(int(cfg.train.total_steps)):
        step, total = int((ckpt.counters or {})["step"]), int(cfg.train.total_steps)
        if main:  # issue 25: resuming a finished run used to delete eval.json and evaluate it again
            print(f"marl train: {out} already finished at step {step:,}; nothing to do (give train.total_steps=M "
                  f"with M > {total} to extend it)", file=sys.stderr)
        return True
    if not cfg.get("resume") and ckpt is None and results.holds_run(out):  # never mix two runs' files
        raise ConfigError(f"{out} already holds a run; continue it with resume={out}, start a new one with "
                          "run=NAME, or delete that dir")
    return False


@contextlib.contextmanager
def _full_disk(out: Path, ending: dict[str, Any]) -> Iterator[None]:
    """A results file that cannot be written (a full disk): stop now, and say which checkpoint is still good."""
    try:
        yield
    except results.WriteError as exc:
        ending["reason"] = f"stopped: {exc}"
        kept = results.checkpoints_newest_first(out)
        if kept:
            raise results.WriteError(f"{exc}; the run stopped, its checkpoint {kept[0]} is intact (marl train "
                                     f"resume={out} continues from it once the disk has room)") from None
        raise


def _open_results(cfg: DictConfig, out: Path, main: bool, keep: int | None, closing: contextlib.ExitStack,
                  ending: dict[str, Any]) -> tuple[Any, Any]:
    """The seed dir with its config.yaml; the metrics writer and the tracker, closed with the run (rank 0)."""
    if not main:
        return distributed.Silent(), distributed.Silent()
    with results.writing(out):  # a read-only results_dir: one line
        out.mkdir(parents=True, exist_ok=True)
    results.write_config(out, cfg)
    writer = results.MetricsWriter(out / "metrics.jsonl", keep_until_step=keep)
    closing.callback(writer.close)
    tracker = Tracker(cfg, out, keep_until_step=keep)
    closing.callback(lambda: tracker.close(**ending))  # reads `ending` when it runs: failed, reason, exit code
    return writer, tracker


def _time_origin(state: RunState, resumed: bool) -> float:
    """``time.perf_counter()`` at ``time_s = 0``: a resumed run goes on counting from its checkpoint."""
    start = time.perf_counter() - float(state.counters["time_s"])
    if not resumed and os.environ.get("MARL_T0"):  # benchmarks: time_s counts from process launch
        start -= max(0.0, time.time() - float(os.environ["MARL_T0"]))
    return start


def _collect(run: Run) -> Rollout:
    """``algo.rollout_steps`` steps of every env copy, with the joint action the env really played."""
    s, algo = run.state, run.algo
    steps: list[tuple[TimeStep, torch.Tensor, TimeStep]] = []
    for _ in range(algo.rollout_steps):
        actions, s.hidden = algo.act(s.ts, s.hidden, s.step)
        nts = run.env.step(actions)
        steps.append((s.ts, actions if nts.played is None else nts.played, nts))
        s.count_returns(nts)
        if s.hidden is not None:
            s.hidden = s.hidden * (~nts.done).view(-1, *([1] * (s.hidden.dim() - 1)))
        s.ts = nts
    return Rollout.from_steps(steps)


def _log(run: Run, metrics: dict[str, Any]) -> None:
    """A metrics.jsonl / train.log line: returns of the episodes finished since the last one, update metrics."""
    s = run.state
    distributed.all_sum(s.track["ret_sum"], s.track["ret_cnt"])  # episodes of all ranks
    metrics = distributed.mean_metrics(metrics)
    now = run.elapsed()
    sps = (s.step - run.sps_mark[0]) / max(now - run.sps_mark[1], 1e-9)
    run.sps_mark = (s.step, now)
    record = {"step": s.step, "time_s": round(now, 3), "time/sps": round(sps, 1), **s.train_returns(),
              **{k: float(v) for k, v in metrics.items()}, **hooking.log_metrics(run.hooks)}
    run.writer.write(record)
    run.tracker.log(record)
    check_finite(record)


def _evaluate(run: Run) -> None:
    """``train.eval_episodes`` episodes on fresh envs of the evaluation seed stream (rank 0)."""
    if run.main:
        t = run.cfg.train
        env = env_for_eval(run.cfg, min(int(t.eval_episodes), int(t.eval_envs)), int(run.cfg.seed), run.device)
        env = hooking.wrap_eval(run.hooks, env)  # self-play: against the pool
        res = run_episodes(run.algo.actor, env, int(t.eval_episodes), bool(t.eval_deterministic))
        env.close()
        record = {"step": run.state.step, "time_s": round(run.elapsed(), 3), **res.summary()}
        run.writer.write(record)
        run.tracker.eval(record)
    run.state.counters["eval"] = run.state.step


def _checkpoint(run: Run) -> None:
    """``step_<n>.pt`` and ``latest.pt`` (rank 0, holding every rank's own state), then the hooks' files."""
    s = run.state
    s.counters["time_s"] = run.elapsed()
    ckpt = Checkpoint.capture(run.cfg, run.algo, run.env, run.hooks, s, run.device)
    distributed.check_in_sync(run.algo)
    ckpt = ckpt.gathered()  # every rank's env, RNG and replay on rank 0
    if run.main:
        results.save_checkpoint(run.out / "checkpoints", s.step, ckpt, int(run.cfg.train.keep_checkpoints))
        for hook in run.hooks:
            hook.write()
    s.counters["ckpt"] = s.step
    run.last_ckpt = time.monotonic()


def _agree_on_stopping(run: Run, stop: StopRequest) -> bool:
    """Whether a wall-clock checkpoint is due; with several ranks, rank 0's clock and stop signal decide for all."""
    every_s = 60.0 * float(run.cfg.train.get("checkpoint_minutes") or 0)  # 0 = off
    due = every_s > 0 and time.monotonic() - run.last_ckpt >= every_s
    if distributed.world_size() > 1:
        stop.signum, due = distributed.broadcast_object((stop.signum, due))
    return due


def _stopped(run: Run, stop: StopRequest, ending: dict[str, Any]) -> Stopped:
    """A stop signal: checkpoint this step (unless done), leave the group together; the one line to raise."""
    step = run.state.step
    if run.state.counters["ckpt"] != step:
        _checkpoint(run)
    distributed.finish()
    hint, code = f"continue with: marl train resume={run.out}", STOP_SIGNALS[stop.signum]
    ending.update(reason=f"stopped by {stop.name} at step {step:,}; checkpoint written; {hint}", exit_code=code)
    return Stopped(f"stopped by {stop.name} at step {step:,} of {int(run.cfg.train.total_steps):,} (checkpoint "
                   f"written); {hint}", code)


def _crossed(prev: int, now: int, interval: int) -> bool:
    return interval > 0 and now // interval > prev // interval


def check_finite(record: dict[str, Any]) -> None:
    """Stop a diverged run: a NaN/inf ``loss/...`` in a log line raises ``TrainingError``.

    Checked at log lines only, so the loop does not sync with the device every update.
    """
    bad = [k for k, v in record.items() if k.startswith("loss/") and not math.isfinite(float(v))]
    if bad:
        raise TrainingError(f"{', '.join(bad)} is {record[bad[0]]} at step {record['step']:,}: training diverged "
                            "(try a lower algo.lr or check the env rewards)")


# ----------------------------------------------------------------------------- checks before a run
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
