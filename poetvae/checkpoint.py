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


FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_dtypes(tensors: dict[str, torch.Tensor], model: torch.nn.Module, source: str | Path) -> None:
    """CheckpointError (naming `source`) unless every tensor that `model` has a place for is
    of the kind of dtype that place holds: a float of 16 to 64 bits for a floating-point
    parameter or buffer, the model's own dtype for an integer buffer. load_state_dict would
    cast an int, bool or complex tensor silently (complex losing its imaginary part)."""
    own = model.state_dict()
    for name, value in tensors.items():
        mine = own.get(name)
        if mine is None:
            continue  # load_state_dict names what the model does not have
        ok = value.dtype in FLOAT_DTYPES if mine.is_floating_point() else value.dtype == mine.dtype
        if not ok:
            want = "a float tensor" if mine.is_floating_point() else str(mine.dtype)
            raise CheckpointError(f"{source}: {name} is {value.dtype}, not {want}")


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
    check_dtypes(model_state(tensors), model, source)
    problem = optimizer_state_problem(optimizer, tensors, meta["optimizer"])
    if problem:
        raise CheckpointError(f"{source} is not a valid resume point: {problem}")
    try:
        _restore(model, optimizer, tensors, meta)
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{source} does not fit this model and optimizer ({first})") from None


def optimizer_state_problem(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], saved: dict
) -> str | None:
    """What is wrong with a saved optimizer state (flatten_train_state's tensors and JSON
    half) for `optimizer`, or None: checked before it is loaded, since torch takes any
    values and fails only in the first step (an lr of "x", betas of [2.0, 5], a moment of
    another shape). Each setting of a param group must be of the kind the optimizer's own
    is, in its range; each moment a finite float tensor of its parameter's shape; each step
    count a finite number >= 0."""
    template = optimizer.state_dict()["param_groups"]
    groups = saved.get("param_groups")
    if not isinstance(groups, list) or len(groups) != len(template):
        return f"the optimizer has {len(template)} param groups, the resume point {_count(groups)}"
    for i, (group, own) in enumerate(zip(groups, template)):
        if not isinstance(group, dict):
            return f"param group {i} is not an object"
        for key, default in own.items():
            problem = _setting_problem(key, group.get(key, _MISSING), default)
            if problem:
                return f"param group {i}: {problem}"
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for name, value in tensors.items():
        if not name.startswith("optim."):
            continue
        _, pid, what = name.split(".", 2)
        if int(pid) >= len(params):
            return f"{name} belongs to no parameter (the model has {len(params)})"
        problem = _moment_problem(what, value, params[int(pid)].shape)
        if problem:
            return f"{name}: {problem}"
    for pid, values in saved.get("scalars", {}).items():
        if int(pid) >= len(params):
            return f"optimizer scalars of parameter {pid}, which the model does not have"
        for what, value in values.items():
            if what != "step" or not (_is_number(value) and math.isfinite(value) and value >= 0):
                return f"optimizer scalar {what} = {value!r} of parameter {pid}"
    return None


_MISSING = object()
_POSITIVE = {"eps"}  # settings that must be > 0; the other numbers must be >= 0


def _count(value: Any) -> str:
    return str(len(value)) if isinstance(value, list) else "none"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _setting_problem(key: str, value: Any, default: Any) -> str | None:
    """What is wrong with one saved param-group setting, judged by the optimizer's own value."""
    if value is _MISSING:  # a switch an older torch did not save gets its default; a number may not be missing
        return None if isinstance(default, bool) or default is None else f"no {key}"
    if key == "params":
        ok = isinstance(value, list) and value == default
        return None if ok else f"params must be {default}, got {str(value)[:60]}"
    if isinstance(default, bool) or default is None:
        return None if value is None or isinstance(value, bool) else f"{key} must be true, false or null"
    if _is_number(default):
        if not (_is_number(value) and math.isfinite(value)):
            return f"{key} must be a finite number, got {str(value)[:60]!r}"
        return None if (value > 0 if key in _POSITIVE else value >= 0) else f"{key} out of range: {value}"
    if isinstance(default, (tuple, list)):  # betas
        ok = isinstance(value, (tuple, list)) and len(value) == len(default)
        ok = ok and all(_is_number(v) and math.isfinite(v) and 0 <= v < 1 for v in value)
        return None if ok else f"{key} must be {len(default)} numbers in [0, 1), got {str(value)[:60]}"
    return None if type(value) is type(default) else f"{key} must be a {type(default).__name__}"


def _moment_problem(what: str, value: torch.Tensor, shape: torch.Size) -> str | None:
    """What is wrong with one saved tensor of the optimizer state of a parameter of `shape`."""
    if not (value.is_floating_point() or (what == "step" and value.dtype in (torch.int32, torch.int64))):
        return f"must be floating point, not {value.dtype}"
    if what == "step":
        if value.numel() != 1 or not bool(value.isfinite().all()) or float(value.reshape(-1)[0]) < 0:
            return "the step count must be one finite number >= 0"
        return None
    if value.shape != shape:
        return f"has shape {tuple(value.shape)}, its parameter {tuple(shape)}"
    if not bool(value.isfinite().all()):
        return "is not finite"
    return None


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
