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


def _from_json(obj: Any) -> LogRecord | None:
    """The record a parsed line holds; None for an unknown kind. A field missing from the
    line (an older log, a hand-written one) reads as None."""
    if not isinstance(obj, dict):
        return None
    if obj.get("kind") == "step":
        return StepRecord(**{f.name: obj.get(f.name) for f in dataclasses.fields(StepRecord)})
    if obj.get("kind") == "epoch":
        flat = {name[len("valid_") :]: v for name, v in obj.items() if name.startswith("valid_")}
        return EpochRecord(obj.get("step"), obj.get("epoch"), obj.get("seconds"), ElboTerms.from_dict(flat))
    return None


def read_log(run_dir: Path) -> list[LogRecord]:
    """Every record of RUN_DIR/log.jsonl in file order ([] when there is no log). Lines
    cut short by a crash and records of unknown kinds are skipped."""
    path = Path(run_dir) / LOG
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = _from_json(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
        if record is not None:
            out.append(record)
    return out


def truncate_log(run_dir: Path, step: int) -> None:
    """Keep only the lines of RUN_DIR/log.jsonl up to optimizer step `step` (the resume
    point), so that a resumed run appends after them without repeating a step: records of
    steps a killed run did past its last resume point are dropped, and so is a line cut
    short. Rewritten atomically, and only when something is dropped."""
    path = Path(run_dir) / LOG
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = [line for line in lines if _up_to(line, step)]
    if kept != lines:
        atomic_write(path, "".join(kept))


def _up_to(line: str, step: int) -> bool:
    """Whether a log line is whole and belongs to a step <= `step`."""
    if not line.endswith("\n"):
        return False  # cut short by a crash
    try:
        obj = json.loads(line)
    except json.JSONDecodeError:
        return False
    at = obj.get("step") if isinstance(obj, dict) else None
    return not (isinstance(at, (int, float)) and at > step)
