"""The typed checkpoint: what a run saves, and how it is written, found and read.

A :class:`Checkpoint` is built here (:meth:`Checkpoint.capture`, :func:`load_checkpoint`) and read
here (:meth:`Checkpoint.restore`); the trainer and the distributed collectives never touch its
keys. On disk it is the same ``torch.save`` dict as before the type existed (format tag
``marlcli-checkpoint/1``; keys ``step config algo actor learner env counters track selfplay rng``,
``hidden`` for a recurrent actor, ``world`` and ``ranks`` for a run of several processes), so
checkpoints of earlier versions load and resume unchanged. Keys other than the core ones are
hooks' states under their names (self-play's is ``selfplay``).

Checkpoints never run code (issue 16): ``torch.load(weights_only=True)`` unpickles tensors
and plain containers only; which configs a checkpoint may name is checked by
``marlcli.results.checkpoint_config``.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from marlcli.distributed import collectives as distributed
from marlcli.envs.base import TimeStep
from marlcli.errors import CheckpointError
from marlcli.files import atomic_write, describe, remove, writing

CHECKPOINT_FORMAT = "marlcli-checkpoint/1"
# payload keys: what ``marl eval`` needs, and what ``resume=`` needs on top
EVAL_KEYS = {"step": int, "config": str, "actor": dict}
RESUME_KEYS = {**EVAL_KEYS, "learner": dict, "env": dict, "counters": dict, "track": dict, "rng": dict}
CORE_KEYS = ("format", "step", "config", "algo", "actor", "learner", "env", "counters", "track", "rng", "hidden",
             "world", "ranks")
RANK_LOCAL_LEARNER_KEYS = ("replay", "credit")  # learner state that differs per rank (checkpointed per rank)


@dataclass
class RunState:
    """What the loop carries besides the networks: the time step acted on, the actor's hidden state,
    the counters (``step time_s log eval ckpt``) and the episode-return tracker (on the device)."""

    ts: TimeStep
    hidden: Tensor | None
    counters: dict[str, Any]
    track: dict[str, Tensor]

    @classmethod
    def fresh(cls, env: Any, actor: Any, device: torch.device) -> RunState:
        n, b = env.spec.n_agents, env.num_envs
        track = {"ep_ret": torch.zeros(b, n, device=device), "ret_sum": torch.zeros(n, device=device),
                 "ret_cnt": torch.zeros((), device=device)}
        counters = {"step": 0, "time_s": 0.0, "log": 0, "eval": -1, "ckpt": 0}
        return cls(env.reset(), actor.initial_hidden(b), counters, track)

    @property
    def step(self) -> int:
        return int(self.counters["step"])

    def count_returns(self, ts: TimeStep) -> None:
        """Accumulate finished-episode returns on the device (no host sync per step)."""
        track = self.track
        track["ep_ret"] += ts.reward
        d = ts.done[:, None].to(ts.reward.dtype)
        track["ret_sum"] += (track["ep_ret"] * d).sum(0)
        track["ret_cnt"] += d.sum()
        track["ep_ret"] *= 1 - d

    def train_returns(self) -> dict[str, float]:
        """Mean return of the training episodes finished since the last log line (resets)."""
        cnt = float(self.track["ret_cnt"])
        out = {"train/episodes": cnt}
        if cnt > 0:
            out["train/return_mean"] = float(self.track["ret_sum"].mean() / cnt)
        self.track["ret_sum"].zero_()
        self.track["ret_cnt"].zero_()
        return out


@dataclass(eq=False)
class Checkpoint(Mapping[str, Any]):
    """One saved training state. Also a read-only mapping over its on-disk keys (and ``_path``), for
    readers written against the payload dict (``ckpt["actor"]``, ``ckpt.get("_path")``)."""

    step: int
    config: str  # the run's fully resolved config, as YAML
    actor: dict[str, Any]
    algo: str | None = None
    learner: dict[str, Any] | None = None
    env: dict[str, Any] | None = None
    counters: dict[str, Any] | None = None
    track: dict[str, Tensor] | None = None
    rng: dict[str, Any] | None = None
    hidden: Tensor | None = None
    hooks: dict[str, Any] = field(default_factory=dict)  # hook name -> its state (self-play: "selfplay")
    world: int | None = None  # processes that wrote it (None: one)
    ranks: list[dict[str, Any]] | None = None  # ranks 1..K-1: their env, hidden, track, rng and replay
    path: Path | None = None  # where it was read from

    # ------------------------------------------------------------------------- the on-disk dict
    def to_payload(self) -> dict[str, Any]:
        out = {"format": CHECKPOINT_FORMAT, "step": self.step, "config": self.config, "algo": self.algo,
               "actor": self.actor, "learner": self.learner, "env": self.env, "counters": self.counters,
               "track": self.track, **self.hooks, "rng": self.rng, "hidden": self.hidden, "world": self.world,
               "ranks": self.ranks}
        optional = ("algo", "learner", "env", "counters", "track", "rng", "hidden", "world", "ranks")
        return {k: v for k, v in out.items() if v is not None or k not in optional}

    @classmethod
    def from_payload(cls, payload: dict[str, Any], path: Path | None = None) -> Checkpoint:
        """The checkpoint a payload describes; values are kept as saved (restoring checks them)."""
        get = payload.get
        return cls(step=get("step"), config=get("config"), actor=get("actor"), algo=get("algo"),
                   learner=get("learner"), env=get("env"), counters=get("counters"), track=get("track"),
                   rng=get("rng"), hidden=get("hidden"), world=get("world"), ranks=get("ranks"), path=path,
                   hooks={k: v for k, v in payload.items() if k not in CORE_KEYS})

    def _view(self) -> dict[str, Any]:
        return {**self.to_payload(), **({"_path": str(self.path)} if self.path is not None else {})}

    def __getitem__(self, key: str) -> Any:
        return self._view()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._view())

    def __len__(self) -> int:
        return len(self._view())

    @property
    def where(self) -> str:
        return str(self.path) if self.path is not None else "the checkpoint"

    # ------------------------------------------------------------------------- training
    @classmethod
    def capture(cls, cfg: DictConfig, algo: Any, env: Any, hooks: Iterable[Any], state: RunState,
                device: torch.device) -> Checkpoint:
        """This process's training state (hooks: each with a ``name`` and a ``state_dict()``, None = nothing)."""
        rng = {"torch": torch.get_rng_state(), **({"cuda": torch.cuda.get_rng_state(device)}
                                                  if device.type == "cuda" else {})}
        hooks = list(hooks)
        clash = [h.name for h in hooks if h.name in CORE_KEYS or h.name.startswith("_")]
        if clash:  # a programming error, not a user's: the hook's state would overwrite a part of the checkpoint
            raise ValueError(f"a hook named {clash[0]!r} would overwrite that checkpoint key; give it another name")
        states = {h.name: s for h in hooks if (s := h.state_dict()) is not None}
        return cls(step=state.step, config=OmegaConf.to_yaml(cfg, resolve=True), algo=str(cfg.algo.name),
                   actor=algo.actor.state_dict(), learner=algo.state_dict(), env=env.state_dict(),
                   counters=dict(state.counters), track=state.track, rng=rng, hidden=state.hidden, hooks=states)

    def gathered(self) -> Checkpoint:
        """Rank 0's checkpoint plus ``ranks``: every other rank's env, RNG, tracker and replay.

        The top-level fields stay rank 0's (a K-process checkpoint reads like a 1-process one);
        ``world`` records K so a resume can tell whether the per-rank states fit. Every rank calls it.
        """
        if not distributed.active():
            return self
        mine: dict[str, Any] = {"env": self.env, "hidden": self.hidden, "track": self.track, "rng": self.rng}  # own
        mine["learner"] = {k: v for k, v in (self.learner or {}).items() if k in RANK_LOCAL_LEARNER_KEYS}
        states = distributed.gather_to_main(mine)
        if states is None:
            return self
        return replace(self, world=distributed.world_size(), ranks=states[1:])

    def for_this_rank(self, algo: Any, env: Any, track: dict[str, Tensor]) -> Checkpoint:
        """The checkpoint as this rank must restore it.

        Same number of processes: rank r takes its own env, RNG, tracker and replay (exact resume
        on CPU). A different number: the shared networks, optimizers and counters continue, each
        rank's env copies, replay and RNG start afresh (rank 0 prints one warning).
        """
        saved = int(self.world or 1)
        k, r = distributed.world_size(), distributed.rank()
        if saved == k:
            if r == 0:
                return self
            mine = (self.ranks or [])[r - 1]
            learner = {**(self.learner or {}), **mine["learner"]}
            return replace(self, env=mine.get("env"), hidden=mine.get("hidden"), track=mine.get("track"),
                           rng=mine.get("rng"), learner=learner)
        if r == 0:
            print(f"marl: warning: {self.where} was written by {saved} process(es), this run has {k}: networks, "
                  "optimizers and counters continue; env copies, replay and RNG start afresh (not an exact "
                  "continuation)", file=sys.stderr)
        fresh = algo.state_dict()
        learner = {**(self.learner or {}), **{key: fresh[key] for key in RANK_LOCAL_LEARNER_KEYS if key in fresh}}
        return replace(self, env=env.state_dict(), hidden=None, track=track, rng={"torch": torch.get_rng_state()},
                       learner=learner)

    def restore(self, algo: Any, env: Any, hooks: Iterable[Any], state: RunState, device: torch.device) -> RunState:
        """Load this rank's part into the learner, the env and the hooks; returns the loop state to continue from.

        A foreign or damaged checkpoint fails here with one line (``CheckpointError``), not a traceback.
        """
        ckpt = self.for_this_rank(algo, env, state.track)
        restore(algo.actor, ckpt.actor, "actor", self)
        restore(algo, ckpt.learner, "learner", self)
        ts = restore(env, ckpt.env, "env", self)
        try:
            assert ckpt.counters is not None and ckpt.track is not None and ckpt.rng is not None
            hidden = ckpt.hidden.to(device) if ckpt.hidden is not None else state.hidden
            counters = {k: type(v)(ckpt.counters.get(k, v)) for k, v in state.counters.items()}
            if any(ckpt.track[k].shape != v.shape for k, v in state.track.items()):
                raise ValueError("episode-return tracker shapes differ")
            track = {k: ckpt.track[k].to(device) for k in state.track}
            for hook in hooks:
                hook.load_state_dict(ckpt.hooks.get(hook.name))
            torch.set_rng_state(ckpt.rng["torch"])
            if ckpt.rng.get("cuda") is not None and device.type == "cuda":
                torch.cuda.set_rng_state(ckpt.rng["cuda"], device)
        except Exception as exc:  # noqa: BLE001
            raise CheckpointError(f"{self.where}: its training state does not fit ({describe(exc)})") from None
        return RunState(ts, hidden, counters, track)

    def finished(self, total_steps: int) -> bool:
        """The run's last checkpoint: at ``total_steps`` with its final evaluation done."""
        try:
            step = int((self.counters or {}).get("step", 0))
            return step >= int(total_steps) and int((self.counters or {}).get("eval", -1)) >= step
        except (TypeError, ValueError, AttributeError):  # a damaged file: restoring it gives the one-line error
            return False


def restore(module: Any, state: Any, what: str, payload: Mapping[str, Any]) -> Any:
    """``module.load_state_dict(state)`` with missing keys or wrong shapes as one-line ``CheckpointError``."""
    try:
        return module.load_state_dict(state)
    except Exception as exc:  # noqa: BLE001 - RuntimeError, KeyError, TypeError ... from a foreign file
        raise CheckpointError(f"{payload.get('_path', 'the checkpoint')}: its {what} state does not fit "
                              f"({describe(exc)})") from None


# ----------------------------------------------------------------------------- files
def save_checkpoint(ckpt_dir: Path, step: int, payload: Checkpoint | dict[str, Any], keep: int = 0) -> Path:
    """Write ``step_<n>.pt`` and ``latest.pt`` atomically (temp file, fsync, rename; no temp left on error).

    ``payload``: a :class:`Checkpoint`, or a plain dict of payload keys (the format tag and ``step``
    are added). It is serialized in memory first and written as one buffer: a full disk then
    fails in that write, as ``WriteError: cannot write .../step_<n>.pt: no space left on
    device``, instead of inside torch's zip writer as ``unexpected pos 274496 vs 274384``.
    ``step_<n>.pt`` goes first, so a failure leaves ``latest.pt`` at the previous checkpoint.
    """
    with writing(ckpt_dir):
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    if isinstance(payload, Checkpoint):
        data_dict = payload.to_payload()
    else:
        data_dict = {"format": CHECKPOINT_FORMAT, "step": step, **payload}
    buf = io.BytesIO()
    torch.save(data_dict, buf)
    data = buf.getbuffer()
    target = ckpt_dir / f"step_{step}.pt"
    for path in (target, ckpt_dir / "latest.pt"):
        atomic_write(path, lambda f: f.write(data))
    if keep > 0:
        olds = sorted(ckpt_dir.glob("step_*.pt"), key=checkpoint_step)
        for p in olds[:-keep]:
            remove(p)
    return target


def checkpoint_step(path: Path) -> int:
    """``step_<n>.pt`` -> n (anything else: -1)."""
    tail = path.stem.rpartition("_")[2]
    return int(tail) if tail.isdigit() else -1


def load_checkpoint(path: Path, need: dict[str, type] = EVAL_KEYS) -> Checkpoint:
    """Load safely (``weights_only=True``: no code in the file runs) and check format and keys.

    A dir means its newest readable checkpoint (``latest.pt``, else the highest ``step_<n>.pt``).
    Anything malformed raises ``CheckpointError`` with one line.
    """
    if path.is_dir():
        return newest_readable(path, need)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}; point at a seed dir or a .pt file of a marl run")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"{path} is not a readable marlcli checkpoint ({type(exc).__name__}); "
            "it may be truncated or from another tool"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a marlcli checkpoint (format tag missing)")
    for key, kind in need.items():
        if not isinstance(payload.get(key), kind) or isinstance(payload.get(key), bool):
            got = "missing" if key not in payload else type(payload[key]).__name__
            raise CheckpointError(f"{path} is not a complete marlcli checkpoint ('{key}' is {got})")
    return Checkpoint.from_payload(payload, path)


def checkpoints_newest_first(path: Path) -> list[Path]:
    """``latest.pt`` then ``step_<n>.pt`` by decreasing n, under a seed dir or a checkpoints dir."""
    ckpt = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    steps = sorted(ckpt.glob("step_*.pt"), key=checkpoint_step, reverse=True)
    return [p for p in (ckpt / "latest.pt", *steps) if p.is_file()]


def newest_readable(path: Path, need: dict[str, type] = EVAL_KEYS) -> Checkpoint:
    """The newest checkpoint of a seed dir that loads, skipping (and naming) unreadable ones.

    A crash or a full disk can leave ``latest.pt`` truncated while ``step_<n>.pt`` is fine.
    """
    errors = []
    for cand in checkpoints_newest_first(path):
        try:
            ckpt = load_checkpoint(cand, need)
        except CheckpointError as exc:
            errors.append(str(exc))
            continue
        for err in errors:
            print(f"marl: warning: skipped {err}", file=sys.stderr)
        return ckpt
    if errors:
        raise CheckpointError(errors[0] + f" (and no other readable checkpoint under {path})")
    raise CheckpointError(f"no checkpoint under {path} (expected checkpoints/latest.pt)")


def resolve_checkpoint(path: Path) -> Path:
    """A seed dir -> its ``checkpoints/latest.pt`` (or its newest ``step_<n>.pt``)."""
    found = checkpoints_newest_first(path)
    if not found:
        raise CheckpointError(f"no checkpoint under {path} (expected checkpoints/latest.pt)")
    return found[0]


def find_seed_dirs(path: Path) -> list[Path]:
    """Every ``seed_*`` dir at or below ``path`` that holds a checkpoint."""
    if (path / "checkpoints").is_dir():
        return [path]
    return sorted(p.parent.parent for p in path.rglob("checkpoints/latest.pt"))
