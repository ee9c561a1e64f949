"""Run directories and checkpoints: JSON and safetensors only, every write atomic.

A run directory holds:

    config.json        the resolved Config (prep, model, train sections)
    vocab.json         the vocabulary
    model.safetensors  the best weights by validation negative ELBO (what `sample` loads)
    last.safetensors   the latest weights + optimizer moments + RNG state; its metadata
                       holds the step, epoch and best score as JSON. One file, so a resume
                       point is written in one atomic rename and can never be half-updated.
    log.jsonl          one JSON object per logged step and per epoch
    prep/              the prepared corpus, when `train` was given a raw corpus

Nothing here unpickles: loading a run never runs code from its files.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from poetvae.config import Config, config_from_json
from poetvae.errors import CheckpointError, ConfigError
from poetvae.vocab import Vocab

CONFIG, VOCAB, BEST, LAST, LOG = "config.json", "vocab.json", "model.safetensors", "last.safetensors", "log.jsonl"


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write to a temporary file beside `path`, fsync, then rename over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any] | None = None) -> None:
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    atomic_write(path, st_save(tensors, metadata={"poetvae": json.dumps(meta or {})}))


def load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
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
    except (SafetensorError, ValueError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is not a valid safetensors checkpoint ({e})") from None
    return tensors, meta


# ---- optimizer and RNG state as flat tensors + JSON -------------------------------------
def flatten_train_state(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
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
    """The model's weights out of a resume state's tensors (stored there under "model.")."""
    return {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}


def restore_train_state(
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


# ---- run directories --------------------------------------------------------------------
def is_run_dir(path: Path) -> bool:
    return (Path(path) / CONFIG).is_file() and (Path(path) / VOCAB).is_file()


def write_run_header(run_dir: Path, cfg: Config, vocab: Vocab) -> None:
    atomic_write(Path(run_dir) / CONFIG, json.dumps(cfg.to_dict(), indent=2, ensure_ascii=False))
    atomic_write(Path(run_dir) / VOCAB, vocab.to_json())


def read_run_header(run_dir: Path) -> tuple[Config, Vocab]:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"no such run directory: {run_dir}")
    if not is_run_dir(run_dir):
        raise CheckpointError(
            f"{run_dir} is not a poetvae run (no {CONFIG} and {VOCAB}); train one with `poetvae train`"
        )
    try:
        cfg = config_from_json((run_dir / CONFIG).read_text(encoding="utf-8"))
    except ConfigError as e:
        raise CheckpointError(f"{run_dir / CONFIG}: {e}") from None
    return cfg, Vocab.load(run_dir / VOCAB)


def append_log(run_dir: Path, record: dict[str, Any]) -> None:
    # Appending one line is atomic enough for a log: a crash loses at most the last line.
    with open(Path(run_dir) / LOG, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, ensure_ascii=False) + "\n")


def read_log(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / LOG
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
    return out
