"""The training state: one format for everything a run needs to continue exactly.

    state = capture_state({"model": model, "optimizer": opt, "scheduler": sched, "sampler": sampler},
                          epoch=epoch, step=step, history=history)
    ...
    restore_state(state, {"model": model, "optimizer": opt, "scheduler": sched, "sampler": sampler})

The state is a dict: each named object's `state_dict()`, the RNG states (python, numpy, torch, CUDA)
packed so that a `weights_only=True` load reads them back, the names of the objects saved, and any
plain `values` (epoch, history, plan ...). Checkpoint files (`checkpoint.save_checkpoint`) hold it,
and so does the training loop's in-memory snapshot that a NaN loss rolls back to (`cpu_copy` keeps
that one on the CPU, detached from the live tensors).

Weights alone do not continue a run: Adam's moments, the scheduler's position, the scaler's scale,
the sampler's position and the random streams are part of where training is. So a restore loads
everything or raises, unless the caller passes `allow_partial=True`; what was skipped is then
reported and returned.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from .repro import restore_rng_state, rng_state

__all__ = ["STATE_FORMAT", "capture_state", "cpu_copy", "pack_rng_state", "restore_state", "unpack_rng_state"]

STATE_FORMAT = 1  # layout of the state dict (kept in it as "format"); the file format is checkpoint's

Log = Callable[[str], None]


def pack_rng_state() -> dict[str, Any]:
    """`repro.rng_state()` in a form a weights_only load accepts (numpy's key array as a tensor)."""
    state = rng_state()
    version, internal, gauss = state["python"]
    name, keys, pos, has_gauss, cached = state["numpy"]
    packed: dict[str, Any] = {
        "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": {"bit_generator": str(name), "keys": torch.from_numpy(keys.astype(np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": state["torch"],
    }
    if "cuda" in state:
        packed["cuda"] = list(state["cuda"])
    return packed


def unpack_rng_state(packed: Mapping[str, Any]) -> None:
    """Restore what `pack_rng_state` captured; the next random numbers are then the saved ones."""
    try:
        py, npy = packed["python"], packed["numpy"]
        state: dict[str, Any] = {
            "python": (py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]),
            "numpy": (npy["bit_generator"], npy["keys"].numpy().astype(np.uint32), npy["pos"],
                      npy["has_gauss"], npy["cached_gaussian"]),
            "torch": packed["torch"],
        }
    except (KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"the saved RNG state is incomplete or malformed ({e!r}): it cannot be restored "
                         "exactly. Start fresh, or restore with allow_partial=True to skip it.") from None
    if "cuda" in packed:
        state["cuda"] = packed["cuda"]
    restore_rng_state(state)


def capture_state(objects: Mapping[str, Any], **values: Any) -> dict[str, Any]:
    """Everything a resume needs in one dict: each object's `state_dict()`, the RNG states, `values`.

    The object states are live references (a checkpoint save writes them out at once; keep a copy
    in memory with `cpu_copy`).

    >>> state = capture_state({"model": model, "optimizer": opt}, epoch=3, step=1200)
    """
    state: dict[str, Any] = {"format": STATE_FORMAT, "objects": sorted(objects), "rng": pack_rng_state()}
    for name, obj in objects.items():
        if not callable(getattr(obj, "state_dict", None)):
            raise ValueError(f"objects[{name!r}] ({type(obj).__name__}) has no state_dict(): it cannot be saved.")
        state[name] = obj.state_dict()
    clash = sorted(set(values) & set(state))
    if clash:
        raise ValueError(f"values {clash} clash with names already in the state; rename them.")
    state.update(values)
    return state


def restore_state(
    state: Mapping[str, Any],
    objects: Mapping[str, Any],
    *,
    allow_partial: bool = False,
    log: Log | None = print,
) -> list[str]:
    """Load every object's state and the RNG states from `state`; returns what was not restored.

    Restores everything or raises: an object the state lacks, or a saved one not given here, is a
    ValueError (before anything is loaded) unless `allow_partial=True`, in which case it is
    reported and returned.
    """
    if state.get("format", 0) > STATE_FORMAT:
        raise ValueError(f"the checkpoint's state format {state['format']} is newer than this kagglekit_nb "
                         f"reads ({STATE_FORMAT}): upgrade kagglekit_nb.")
    saved = set(state.get("objects", ()))
    gaps = [f"{n} (not in the checkpoint)" for n in objects if n not in state]
    gaps += [f"{n} (saved, but not given to restore)" for n in sorted(saved - set(objects))]
    if "rng" not in state:
        gaps.append("rng (not in the checkpoint)")
    if gaps and not allow_partial:
        raise ValueError("the checkpoint cannot be restored completely: " + "; ".join(gaps) + ". A partial resume "
                         "would not continue the same run; start fresh, or pass allow_partial=True to accept it.")
    for name, obj in objects.items():
        if name not in state:
            continue
        try:
            obj.load_state_dict(state[name])
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            detail = " ".join(str(e).split()).rstrip(".")
            raise ValueError(f"could not restore {name!r} from the checkpoint: {detail}. The checkpoint was saved "
                             "for a different setup (model, classes, optimizer); start fresh.") from e
    if "rng" in state:
        unpack_rng_state(state["rng"])
    if gaps and log is not None:
        log("partial restore, these start fresh: " + "; ".join(gaps))
    return gaps


def cpu_copy(obj: Any) -> Any:
    """A deep copy with every tensor detached and copied to the CPU (a state kept in memory while
    training goes on; restore from a fresh `cpu_copy` of it so that it can be restored again)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(cpu_copy(v) for v in obj)
    return copy.deepcopy(obj)
