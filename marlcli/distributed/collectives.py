"""Synchronous data-parallel training across processes (issue 21): the collectives, once.

One run, K processes ("ranks"), each stepping its share of ``env.num_envs`` env copies seeded
from (seed, rank). Before every optimizer step the gradients are averaged over the ranks (one
flattened all-reduce, as DDP does), running statistics are reduced, and the initial parameters
are broadcast from rank 0 -- so every rank holds bitwise the same parameters at every step.
Rank 0 alone writes the results tree, evaluates and checkpoints; how a checkpoint holds every
rank's own state (env copies, RNG, replay) is ``marlcli.checkpoints.Checkpoint.gathered`` /
``for_this_rank``, built on :func:`gather_to_main`.

Launching (``marlcli.distributed.launch``, above the trainer) goes through torch's own launcher
(the elastic agent behind ``torchrun``): ``marl train dist.nproc_per_node=K`` starts K copies of
``python -m marlcli.distributed.launch <config.yaml>``; under an external ``torchrun`` (``RANK`` and
``WORLD_SIZE`` set) or a Slurm job step with several tasks, :func:`setup` joins the group the
launcher describes. With one process every function here is a no-op, so single-process runs
are unchanged bit for bit.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from marlcli.errors import ConfigError, TrainingError


class CollectiveError(TrainingError):
    """A collective failed: a peer died or stayed silent past ``dist.timeout``; the group is broken."""

    timed_out = False  # the peer stayed silent (alive but hung) rather than closing its connection


HUNG_DIR = "MARL_DIST_HUNG_DIR"  # launch() -> ranks: where a rank notes that a peer stopped answering
RANK_SEED_STRIDE = 10_000_019  # rank r's env copies and RNG start at seed + r * stride (rank 0: seed itself)
# Global sizes that each rank holds a 1/K share of: env copies, replay capacity and batches.
SPLIT_KEYS = ("env.num_envs", "algo.batch_episodes", "algo.buffer_episodes", "algo.buffer_size", "algo.batch_size")
SPLIT_EXACT = ("env.num_envs", "algo.batch_episodes", "algo.batch_size")  # must divide by K (same global batch)
_OWNED = {"group": False, "broken": False}  # setup() started the group (teardown() may end it); a collective failed


# ----------------------------------------------------------------------------- who am I
def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def is_main() -> bool:
    return rank() == 0


def rank_seed(seed: int, r: int | None = None) -> int:
    """The seed of rank ``r``'s RNG and env copies: (seed, rank) -> one stream per rank; rank 0 keeps ``seed``."""
    r = rank() if r is None else r
    return int(seed) + r * RANK_SEED_STRIDE


# ----------------------------------------------------------------------------- join / leave


def setup(cfg: DictConfig) -> None:
    """Join the process group that ``torchrun``, :func:`launch` or a Slurm job step describes.

    All ranks then agree on rank 0's ``run`` name (``marl train`` draws a fresh one per process).
    """
    if active() or not dist.is_available():
        return
    _slurm_env()
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    backend = str(OmegaConf.select(cfg, "dist.backend", default="auto"))
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() and str(cfg.device) != "cpu" else "gloo"
    timeout = timedelta(seconds=float(OmegaConf.select(cfg, "dist.timeout", default=600)))
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, timeout=timeout)
    _OWNED["group"] = True
    cfg.run = broadcast_object(str(cfg.run))


def _slurm_env() -> None:
    """A Slurm step with several tasks (submitit ``tasks_per_node``) and no ``RANK``: map its variables."""
    if "RANK" in os.environ or int(os.environ.get("SLURM_NTASKS", "1")) <= 1 or "SLURM_PROCID" not in os.environ:
        return
    try:
        from submitit.helpers import TorchDistributedEnvironment  # deferred: submitit is optional (Slurm jobs only)

        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    except Exception as exc:  # noqa: BLE001 - not a submitit job: say what is missing
        raise ConfigError(f"Slurm job with {os.environ['SLURM_NTASKS']} tasks but no torch.distributed "
                          f"environment ({exc}); launch with torchrun or through submitit") from None


def finish() -> None:
    """All ranks reach the end of a successful run together, before any leaves the group.

    Without it a rank that finished first destroyed its gloo group while rank 0 was still
    saving the last checkpoint, and now and then died at exit with std::terminate (SIGABRT).
    """
    if active():
        with _guard("the end of the run"):
            dist.barrier()


def teardown() -> None:
    """Leave the process group this module joined (one started by the caller stays theirs)."""
    if _OWNED["group"] and dist.is_available() and dist.is_initialized():
        if not _OWNED["broken"]:  # destroying a group whose peer died can std::terminate
            dist.destroy_process_group()
        _OWNED["group"] = False


def device(default: torch.device) -> torch.device:
    """Rank r on GPU ``LOCAL_RANK`` of its node; CPU stays CPU."""
    if active() and default.type == "cuda":
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")
    return default


def local_config(cfg: DictConfig) -> DictConfig:
    """The config of one rank: each global size in ``SPLIT_KEYS`` divided by K (K = 1: ``cfg`` itself)."""
    k = world_size()
    if k == 1:
        return cfg
    local = cfg.copy()
    for key in SPLIT_KEYS:
        value = OmegaConf.select(local, key)
        if value is None:
            continue
        if key in SPLIT_EXACT and int(value) % k:
            raise ConfigError(f"{key}={value} does not split over {k} processes; use a multiple of {k}")
        OmegaConf.update(local, key, max(1, int(value) // k))
    return local


# ----------------------------------------------------------------------------- collectives
@contextmanager
def _guard(what: str) -> Iterator[None]:
    """A collective that fails (a peer died, or stayed silent past ``dist.timeout``) -> one line."""
    try:
        yield
    except RuntimeError as exc:  # gloo/NCCL errors (DistBackendError is one)
        if not active():
            raise
        msg = " ".join(str(exc).split())[:160]
        _OWNED["broken"] = True
        err = CollectiveError(f"rank {rank()}: {what} across {world_size()} processes failed ({msg}); "
                              "another rank died or hung past dist.timeout")
        err.timed_out = "timed out" in msg.lower() or "timeout" in msg.lower()
        raise err from None


def all_reduce_grads(params: Iterable[Tensor]) -> None:
    """Average ``.grad`` over the ranks with ONE all-reduce of the flattened gradients.

    A parameter without a gradient counts as zeros on that rank, so every rank sends the same
    sizes and no rank waits for a message that never comes.
    """
    if not active():
        return
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
    with _guard("gradient all-reduce"):
        dist.all_reduce(flat)
    flat /= world_size()
    offset = 0
    for p in params:
        n = p.numel()
        g = flat[offset:offset + n].view_as(p)
        if p.grad is None:
            p.grad = g.clone()
        else:
            p.grad.copy_(g)
        offset += n


def all_sum(*tensors: Tensor) -> list[Tensor]:
    """Sum each tensor over the ranks (in place, one all-reduce for all of them); float tensors."""
    if not active() or not tensors:
        return list(tensors)
    flat = torch.cat([t.reshape(-1).to(torch.float64) for t in tensors])
    with _guard("statistics all-reduce"):
        dist.all_reduce(flat)
    offset = 0
    for t in tensors:
        t.copy_(flat[offset:offset + t.numel()].view_as(t).to(t.dtype))
        offset += t.numel()
    return list(tensors)


def sum_int(x: int | float) -> float:
    """A host number summed over the ranks (episode counts that decide how many updates to run)."""
    if not active():
        return x
    return float(all_sum(torch.tensor([float(x)], dtype=torch.float64))[0])


def all_true(flag: bool) -> bool:
    """True when ``flag`` holds on every rank (so all ranks take the same branch of a collective)."""
    if not active():
        return flag
    return sum_int(0.0 if flag else 1.0) == 0


def masked_mean_std(x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and unbiased std of ``x[mask]`` over ALL ranks (advantage normalization on the global batch)."""
    v = x[mask]
    if not active():
        return v.mean(), v.std()
    stats = torch.stack([v.sum(), (v.double() ** 2).sum().to(v.dtype), v.new_tensor(float(v.numel()))]).double()
    all_sum(stats)
    n = stats[2]
    mean = stats[0] / n
    var = (stats[1] - n * mean**2) / (n - 1).clamp(min=1)
    return mean.to(x.dtype), var.clamp(min=0).sqrt().to(x.dtype)


def moments(flat: Tensor) -> tuple[Tensor, Tensor]:
    """``flat [M, *shape]`` -> mean and mean of squares over all ranks' rows (RunningNorm updates)."""
    if not active():
        return flat.mean(0), (flat**2).mean(0)
    n = flat.new_tensor(float(flat.shape[0]))
    s, sq = flat.sum(0), (flat**2).sum(0)
    all_sum(s, sq, n)
    return s / n, sq / n


def mean_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """Metrics averaged over the ranks (one all-reduce; called at log lines only)."""
    if not active() or not metrics:
        return metrics
    keys = sorted(metrics)
    vals = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64)
    all_sum(vals)
    return {k: float(v) / world_size() for k, v in zip(keys, vals.tolist(), strict=True)}


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not active():
        return obj
    box = [obj]
    with _guard("broadcast"):
        dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_to_main(obj: Any) -> list[Any] | None:
    """Every rank's ``obj`` (tensors moved to CPU) on rank 0; ``None`` elsewhere."""
    if not active():
        return [obj]
    objs: list[Any] | None = [None] * world_size() if is_main() else None
    with _guard("checkpoint gather"):
        dist.gather_object(_cpu(obj), objs, dst=0)
    return objs


def _cpu(obj: Any) -> Any:
    if isinstance(obj, Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu(v) for v in obj)
    return obj


def modules_of(algo: Any) -> list[nn.Module]:
    """The learner's networks (actor, critics, targets, mixers, normalizers), in attribute order."""
    return [v for _, v in sorted(vars(algo).items()) if isinstance(v, nn.Module)]


def broadcast_modules(algo: Any) -> None:
    """Rank 0's parameters and buffers on every rank, so all ranks start identical."""
    if not active():
        return
    with _guard("parameter broadcast"), torch.no_grad():
        for module in modules_of(algo):
            for t in list(module.parameters()) + list(module.buffers()):
                dist.broadcast(t.data, src=0)


def digest(algo: Any) -> str:
    """SHA-1 of every parameter and buffer's bytes: equal digests = bitwise identical networks."""
    h = hashlib.sha1()
    for module in modules_of(algo):
        for t in list(module.parameters()) + list(module.buffers()):
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def check_in_sync(algo: Any) -> None:
    """Raise ``TrainingError`` when the ranks' networks differ (called at each checkpoint)."""
    if not active():
        return
    digests = gather_to_main(digest(algo))
    bad = [r for r, d in enumerate(digests or []) if d != digests[0]]
    if not all_true(not bad):
        raise TrainingError(f"ranks {bad or 'other'} hold parameters different from rank 0's: "
                            "data-parallel training lost sync (a bug; please report it)")


# ----------------------------------------------------------------------------- ranks > 0
class Silent:
    """Stands in for the metrics writer and tracker on ranks > 0: only rank 0 writes."""

    def __getattr__(self, name: str) -> Any:
        return lambda *a, **k: None


# ----------------------------------------------------------------------------- leaving a rank's process


def quick_exit(code: int) -> None:
    """Leave a rank's process without the interpreter's and C++'s exit-time destructors.

    Even after ``destroy_process_group``, gloo's transport threads sometimes outlived the
    interpreter and a rank died at exit with std::terminate (SIGABRT): about 1 run in 6 of a
    2-rank run on 2 cores, after every file was written. Everything a run writes is closed
    by then (metrics, checkpoints, the tracker), so only buffered output needs flushing.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


