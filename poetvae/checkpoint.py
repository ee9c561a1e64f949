"""Checkpoints: tensors in safetensors with JSON metadata, every write atomic.

    save_tensors(path, tensors, meta)            one file: the tensors + a JSON object
    tensors, meta = load_tensors(path)
    tensors, meta = load_resume_point(path)      load_tensors, checked to be a resume point
    as_float32(tensors)                          half-precision weights (an exported bundle) widened
    file_sha256(path)                            which weights file a derived file (a prior) belongs to
    flatten_train_state(model, optimizer)        the whole training state as flat tensors
    restore_train_state(model, optimizer, ...)   + JSON (optimizer scalars, RNG), and back

Nothing here unpickles: loading a checkpoint never runs code from its file. Which files a
run directory holds, and what each is for, is poetvae.rundir's business.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from poetvae.errors import CheckpointError
from poetvae.files import atomic_write

MODEL_PREFIX = "model."  # the model's tensors in a flattened train state


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any] | None = None) -> None:
    """Write `tensors` (moved to the CPU) and `meta` (JSON, under the key "poetvae") to one file."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    atomic_write(path, st_save(tensors, metadata={"poetvae": json.dumps(meta or {})}))


def load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and the JSON metadata of a file written by save_tensors; CheckpointError
    when it is missing or not safetensors."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {path}") from None
    try:
        tensors = st_load(raw)
        # The metadata lives in the JSON header: 8 bytes of length, then the header.
        header_len = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8 : 8 + header_len])
        meta = json.loads(header.get("__metadata__", {}).get("poetvae", "{}"))
    except (SafetensorError, ValueError, AttributeError, RecursionError) as e:
        raise CheckpointError(f"{path} is not a valid safetensors checkpoint ({e})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: its poetvae metadata is not a JSON object")
    return tensors, meta


def as_float32(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors with every floating-point one in float32: weights stored in float16 or
    bfloat16 (a bundle exported with --half, to halve its size) are computed in float32 like
    any others. Widening is exact, so a model loads the stored values unchanged."""
    return {k: v.float() if v.is_floating_point() and v.dtype != torch.float32 else v for k, v in tensors.items()}


def file_sha256(path: Path) -> str:
    """The hex SHA-256 of a file's bytes: the identity of a weights file, recorded by what is
    derived from it (a run's fitted prior, a fine-tuning run's init_from) and checked later."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_resume_point(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """load_tensors for a resume point (what _save_resume_point in poetvae.train writes),
    checked: CheckpointError naming the file when it is something else, such as a copy of
    model.safetensors (weights alone: no optimizer moments, no random state, no step)."""
    tensors, meta = load_tensors(path)
    if "optimizer" not in meta and "rng.cpu" not in tensors:
        raise CheckpointError(
            f"{path} holds model weights only, not a resume point (no optimizer or random state, "
            "is it a copy of model.safetensors?): it cannot be resumed from"
        )
    problem = _resume_point_problem(tensors, meta)
    if problem:
        raise CheckpointError(f"{path} is not a valid resume point: {problem}")
    return tensors, meta


def _resume_point_problem(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> str | None:
    """What is wrong with a resume point's tensors and metadata, or None."""

    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    step, elapsed, best, opt = meta.get("step"), meta.get("elapsed"), meta.get("best"), meta.get("optimizer")
    if not (isinstance(step, int) and not isinstance(step, bool) and step >= 0):
        return f"step must be a whole number >= 0, got {step!r}"
    if not (number(elapsed) and math.isfinite(elapsed) and elapsed >= 0):
        return f"elapsed must be seconds >= 0, got {elapsed!r}"
    if not (number(best) and not math.isnan(best)):
        return f"best must be a number, got {best!r}"
    if not (isinstance(opt, dict) and isinstance(opt.get("param_groups"), list)):
        return "no optimizer param_groups"
    scalars = opt.get("scalars")
    if not (isinstance(scalars, dict) and all(k.isdigit() and isinstance(v, dict) for k, v in scalars.items())):
        return "optimizer scalars must map parameter ids to objects"
    if "rng.cpu" not in tensors or tensors["rng.cpu"].dtype != torch.uint8:
        return "no random state (rng.cpu)"
    for k in tensors:
        if k.startswith("optim.") and (k.count(".") < 2 or not k.split(".")[1].isdigit()):
            return f"unexpected tensor {k!r}"
    if not any(k.startswith(MODEL_PREFIX) for k in tensors):
        return "no model weights"
    return None


# ---- optimizer and RNG state as flat tensors + JSON -------------------------------------
def flatten_train_state(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[dict[str, torch.Tensor], dict]:
    """Everything a resume needs as flat tensors (model, optimizer moments, RNG states) plus
    the JSON-able rest of the optimizer state (param groups and scalar entries such as step)."""
    tensors = {MODEL_PREFIX + k: v for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in opt["state"].items():
        for name, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optim.{pid}.{name}"] = v
            else:
                scalars.setdefault(str(pid), {})[name] = v
    tensors["rng.cpu"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    return tensors, {"param_groups": opt["param_groups"], "scalars": scalars}


def model_state(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model's state dict inside a flattened train state."""
    return {k.removeprefix(MODEL_PREFIX): v for k, v in tensors.items() if k.startswith(MODEL_PREFIX)}


def restore_train_state(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    tensors: dict[str, torch.Tensor],
    meta: dict,
    source: str | Path = "the resume point",
) -> None:
    """The inverse of flatten_train_state: model, optimizer and RNG as they were saved.
    `meta["optimizer"]` is the JSON half that flatten_train_state returned. CheckpointError
    (naming `source`) when they do not fit the model and optimizer."""
    try:
        _restore(model, optimizer, tensors, meta)
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{source} does not fit this model and optimizer ({first})") from None


def _restore(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict
) -> None:
    model.load_state_dict(model_state(tensors))
    state: dict[int, dict[str, Any]] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, pid, name = k.split(".", 2)
            state.setdefault(int(pid), {})[name] = v
    for pid, sc in meta["optimizer"]["scalars"].items():
        state.setdefault(int(pid), {}).update(sc)
    optimizer.load_state_dict({"state": state, "param_groups": meta["optimizer"]["param_groups"]})
    torch.set_rng_state(tensors["rng.cpu"])
    cuda_states = [tensors[f"rng.cuda.{i}"] for i in range(torch.cuda.device_count()) if f"rng.cuda.{i}" in tensors]
    if cuda_states:
        torch.cuda.set_rng_state_all(cuda_states)
