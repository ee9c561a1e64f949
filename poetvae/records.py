"""The training log: typed records, one JSON object per line of RUN_DIR/log.jsonl.

    append_log(run_dir, StepRecord(...))   # train.py: every log_every steps, and per epoch
    read_log(run_dir)                      # -> [StepRecord | EpochRecord, ...] (CLI, plots)
    truncate_log(run_dir, step)            # on resume: drop what came after the resume point

Each record is a dataclass with one name per metric. `to_json` is the one place a record
becomes a line of the file (its keys and their order are the file format) and `read_log`
the one place a line becomes a record again.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from poetvae.errors import CheckpointError
from poetvae.files import atomic_write
from poetvae.form import FORM
from poetvae.rundir import LOG


def perplexity(nats_per_poem: float) -> float:
    """Perplexity per token position: exp(nats / 21), 20 characters + <eos> whatever the
    tokenizer, so char and word models compare; inf where exp leaves the float range (a
    diverged model), NaN stays NaN."""
    per_token = nats_per_poem / FORM.seq_len
    return math.exp(per_token) if not per_token > 700 else math.inf


@dataclass(frozen=True)
class ElboTerms:
    """The validation pass (train.elbo_terms): means per poem in nats, beta = 1, one z per poem."""

    rec: float  # reconstruction, -E_q log p(x|z)
    kl: float  # KL(q(z|x) || N(0, I))
    nelbo: float  # rec + kl: the negative ELBO
    ppl: float  # exp(nelbo / 21): perplexity per token position (20 characters + <eos>)
    poems: int  # how many poems were measured

    def to_dict(self) -> dict[str, float | int]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ElboTerms | None:
        """The terms from their dict form (a checkpoint's metadata); None for an empty dict,
        which stands for "no validation"."""
        if not values:
            return None
        return cls(**{f.name: values.get(f.name) for f in dataclasses.fields(cls)})


@dataclass(frozen=True)
class StepRecord:
    """A training-step line: the mean loss terms over the steps since the previous one."""

    step: int  # optimizer steps done
    total_steps: int  # steps the run will take
    epoch: int  # the (0-based) epoch this step is in
    rec: float  # reconstruction, nats per poem
    kl: float  # KL, nats per poem
    loss: float  # the objective minimised: rec + beta * KL, with free bits
    beta: float  # the KL weight at this step
    seconds: float  # training time so far, over every session of the run

    def to_json(self) -> dict[str, Any]:
        return {"kind": "step", **dataclasses.asdict(self)}


@dataclass(frozen=True)
class EpochRecord:
    """An end-of-epoch line (also written when a time budget ends an epoch early)."""

    step: int  # optimizer steps done
    epoch: float  # epochs done, to 3 decimals
    seconds: float  # training time so far
    valid: ElboTerms | None  # the validation pass; None without a validation split

    def to_json(self) -> dict[str, Any]:
        # The validation terms are flattened as valid_rec, valid_kl, ...
        valid = self.valid.to_dict() if self.valid is not None else {}
        return {
            "kind": "epoch",
            "step": self.step,
            "epoch": self.epoch,
            "seconds": self.seconds,
            **{f"valid_{name}": value for name, value in valid.items()},
        }


LogRecord = StepRecord | EpochRecord


def append_log(run_dir: Path, record: LogRecord) -> None:
    # Appending one line is atomic enough for a log: a crash loses at most the last line.
    with open(Path(run_dir) / LOG, "a", encoding="utf-8") as f:
        f.write(json.dumps(record.to_json(), ensure_ascii=False) + "\n")


MAX_LINE = 64 * 1024  # bytes: a record is a few hundred; a longer line is not one of them


def _from_json(obj: Any, where: str) -> LogRecord | None:
    """The record a parsed line holds; None for an unknown kind. A field missing from the
    line (an older log, a hand-written one) reads as None; one of the wrong type (a string,
    a list, an object) is a CheckpointError naming `where`."""
    if not isinstance(obj, dict):
        return None
    if obj.get("kind") == "step":
        values = {f.name: obj.get(f.name) for f in dataclasses.fields(StepRecord)}
        _check_numbers(values, where)
        return StepRecord(**values)
    if obj.get("kind") == "epoch":
        flat = {name[len("valid_") :]: v for name, v in obj.items() if name.startswith("valid_")}
        _check_numbers({"step": obj.get("step"), "epoch": obj.get("epoch"), "seconds": obj.get("seconds")}, where)
        _check_numbers({f"valid_{k}": v for k, v in flat.items()}, where)
        return EpochRecord(obj.get("step"), obj.get("epoch"), obj.get("seconds"), ElboTerms.from_dict(flat))
    return None


def _check_numbers(values: dict[str, Any], where: str) -> None:
    for name, value in values.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise CheckpointError(f"{where}: {name} must be a number, got {type(value).__name__}")


def _log_lines(path: Path) -> list[tuple[bytes, Any]]:
    """Each line of a log (its bytes, newline included) with its parsed JSON, or None for a
    line that is not JSON (cut short by a crash). CheckpointError naming the file and the
    line for what no crash leaves: bytes that are not UTF-8, a line far longer than any
    record, JSON nested too deeply to read."""
    out = []
    for number, raw in enumerate(path.read_bytes().splitlines(keepends=True), 1):
        where = f"{path} line {number}"
        whole = raw.endswith(b"\n")
        if len(raw) > MAX_LINE:
            raise CheckpointError(f"{where} is {len(raw):,} bytes long, not a log record; the log is damaged")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            if not whole:
                out.append((raw, None))  # the last line, cut short inside a character
                continue
            raise CheckpointError(f"{where} is not UTF-8 text; the log is damaged") from None
        try:
            obj = json.loads(text)
        except json.JSONDecodeError:
            obj = None
        except RecursionError:
            raise CheckpointError(f"{where} is JSON nested too deeply to be a log record") from None
        out.append((raw, obj))
    return out


def read_log(run_dir: Path) -> list[LogRecord]:
    """Every record of RUN_DIR/log.jsonl in file order ([] when there is no log). Lines
    cut short by a crash and records of unknown kinds are skipped; a line no crash leaves
    (not UTF-8, nested JSON, a field of the wrong type) is a CheckpointError naming it."""
    path = Path(run_dir) / LOG
    if not path.is_file():
        return []
    out = []
    for number, (_, obj) in enumerate(_log_lines(path), 1):
        record = _from_json(obj, f"{path} line {number}")
        if record is not None:
            out.append(record)
    return out


def truncate_log(run_dir: Path, step: int) -> None:
    """Keep only the lines of RUN_DIR/log.jsonl up to optimizer step `step` (the resume
    point), so that a resumed run appends after them without repeating a step: records of
    steps a killed run did past its last resume point are dropped, and so is a line cut
    short. Rewritten atomically, and only when something is dropped. CheckpointError for a
    damaged log (see read_log)."""
    path = Path(run_dir) / LOG
    if not path.is_file():
        return
    lines = _log_lines(path)
    for number, (_, obj) in enumerate(lines, 1):
        _from_json(obj, f"{path} line {number}")  # a record of the wrong types: damaged, not cut short
    kept = [raw for raw, obj in lines if _up_to(raw, obj, step)]
    if len(kept) != len(lines):
        atomic_write(path, b"".join(kept))


def _up_to(raw: bytes, obj: Any, step: int) -> bool:
    """Whether a log line is whole and belongs to a step <= `step`."""
    if not raw.endswith(b"\n") or obj is None:
        return False  # cut short by a crash
    at = obj.get("step") if isinstance(obj, dict) else None
    return not (isinstance(at, (int, float)) and at > step)
