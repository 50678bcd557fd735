"""A VMAS environment's state as tensors by path, for ``VMASEnv.state_dict`` / ``load_state_dict``.

VMAS has no state API of its own, so resume walks its objects (environment, world,
entities, their states and actions, the scenario) and saves every tensor attribute by
path (``.world._agents[0].state.pos``); references to entities of the world are saved as
``@path`` -> the entity's index. Loading copies each tensor back in place. The RNG states
``VMASEnv`` keeps apart from VMAS's process-wide one (torch CPU and CUDA, numpy, python)
travel as tensors too (``RNG_KEYS``). Exact for VMAS's own scenarios; state a custom
scenario keeps outside tensors is not restored.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor

RNG_KEYS = ("rng.torch", "rng.cuda", "rng.np_keys", "rng.np_gauss", "rng.py_keys", "rng.py_gauss")


def _is_vmas(obj: Any) -> bool:
    from vmas.simulator.scenario import BaseScenario  # deferred: vmas loads only when env.backend=vmas

    return isinstance(obj, BaseScenario) or type(obj).__module__.startswith("vmas.")


def _children(obj: Any) -> Iterator[tuple[str, Any]]:
    """``(token, child)`` pairs: attributes of VMAS objects, items of lists, tuples and dicts."""
    if isinstance(obj, (list, tuple)):
        yield from ((f"[{i}]", x) for i, x in enumerate(obj))
    elif isinstance(obj, dict):
        yield from ((f"{{{k!r}}}", x) for k, x in obj.items())
    elif _is_vmas(obj) and hasattr(obj, "__dict__"):
        yield from ((f".{k}", x) for k, x in vars(obj).items())


def tensors(root: Any) -> dict[str, Tensor]:
    """Every tensor reachable from ``root`` through VMAS objects, by path (first path per object).

    A reference to an entity of the world (speaker_listener's goal landmark, drawn at
    reset) is state too: it is saved as ``@path`` -> the entity's index in the world."""
    from vmas.simulator.core import Entity  # deferred: vmas loads only when env.backend=vmas

    out: dict[str, Tensor] = {}
    seen: set[int] = set()
    entities = {id(e): i for i, e in enumerate(root.world.entities)}

    def walk(obj: Any, path: str) -> None:
        if isinstance(obj, Tensor):
            out.setdefault(path, obj)
            return
        if isinstance(obj, Entity) and id(obj) in entities and path:
            out[f"@{path}"] = torch.tensor([entities[id(obj)]])
        if id(obj) in seen:
            return
        seen.add(id(obj))
        for token, child in _children(obj):
            walk(child, path + token)

    walk(root, "")
    return out


def assign(root: Any, path: str, value: Any) -> None:
    """Put ``value`` at ``path`` (as :func:`tensors` names it): a tensor in place where one of that shape is."""
    tokens, i = [], 0
    while i < len(path):  # split ".name", "[3]", "{'key'}"
        close = {".": None, "[": "]", "{": "}"}[path[i]]
        j = i + 1
        if close is None:
            while j < len(path) and path[j] not in ".[{":
                j += 1
            tokens.append(path[i:j])
        else:
            j = path.index(close, i) + 1
            tokens.append(path[i:j])
        i = j
    parent = root
    for tok in tokens[:-1]:
        parent = dict(_children(parent)).get(tok)
        if parent is None:
            return  # the saved object does not exist here (state outside tensors): nothing to restore
    last = tokens[-1]
    cur = dict(_children(parent)).get(last)
    if not isinstance(value, Tensor):  # an entity reference
        if last.startswith("."):
            setattr(parent, last[1:], value)
        return
    if isinstance(cur, Tensor) and cur.shape == value.shape and cur.dtype == value.dtype:
        try:
            cur.copy_(value)
            return
        except RuntimeError:  # an expanded view: replace it instead
            pass
    if last.startswith("."):
        setattr(parent, last[1:], value.clone())
    elif isinstance(parent, list):
        parent[int(last[1:-1])] = value.clone()
    elif isinstance(parent, dict):
        for k in parent:
            if f"{{{k!r}}}" == last:
                parent[k] = value.clone()


def rng_to_tensors(rng: list[Any], cuda: Tensor | None) -> dict[str, Tensor]:
    _, keys, pos, has_gauss, gauss = rng[1]
    version, py_keys, py_gauss = rng[2]
    return {
        "rng.torch": rng[0].clone(),
        **({"rng.cuda": cuda.clone()} if cuda is not None else {}),
        "rng.np_keys": torch.as_tensor(np.append(keys.astype(np.int64), [pos, has_gauss])),
        "rng.np_gauss": torch.tensor([gauss], dtype=torch.float64),
        "rng.py_keys": torch.tensor([version, *py_keys], dtype=torch.int64),
        "rng.py_gauss": torch.tensor([float("nan") if py_gauss is None else py_gauss], dtype=torch.float64),
    }


def rng_from_tensors(state: dict[str, Tensor]) -> tuple[list[Any], Tensor | None]:
    np_keys = state["rng.np_keys"].cpu().numpy()
    np_state = ("MT19937", np_keys[:-2].astype(np.uint32), int(np_keys[-2]), int(np_keys[-1]),
                float(state["rng.np_gauss"][0]))
    py = state["rng.py_keys"].cpu().tolist()
    gauss = float(state["rng.py_gauss"][0])
    py_state = (py[0], tuple(py[1:]), None if np.isnan(gauss) else gauss)
    cuda = state.get("rng.cuda")
    return [state["rng.torch"].cpu().clone(), np_state, py_state], None if cuda is None else cuda.cpu().clone()
