"""Poems as JSON records: what `--format json` prints, one record a line, and what the web
API (poetvae.serve) returns, so that both speak the same names.

    sample_record(sample)            {"lines", "text", "logprob", "backoff"} (+ "z" with with_z)
    path_records(a, b, path)         interpolate: those plus "t", and "accuracy" at both ends
    reconstruction_record(rec)       reconstruct: {"given", "text", "lines", "same", "accuracy"}

Numbers are rounded (log-probabilities to 4 places, z to 5), and a number that is not
finite (a model with broken weights) is null: JSON has no NaN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from poetvae.form import Poem, matching_chars

if TYPE_CHECKING:  # poet imports torch; these records need only its dataclasses' fields
    from poetvae.poet import Reconstruction, Sample


def json_number(x: float, digits: int) -> float | None:
    """x rounded for JSON; None (null) when x is NaN or infinite (a model with broken weights)."""
    return round(x, digits) if math.isfinite(x) else None


def sample_record(poem: Sample, *, with_z: bool = False) -> dict[str, Any]:
    """A decoded poem (sample, vary, a point of an interpolation path)."""
    record: dict[str, Any] = {
        "lines": list(poem.lines),
        "text": poem.oneline(),
        "logprob": json_number(poem.logprob, 4),
        "backoff": list(poem.backoff),
    }
    if with_z and poem.z is not None:
        record["z"] = [json_number(v, 5) for v in poem.z]
    return record


def path_records(a: Poem, b: Poem, path: Sequence[Sample], *, compare: bool = False) -> list[dict[str, Any]]:
    """The points of an interpolation path from a to b: each sample's record with its place
    t in [0, 1]; the first and last carry `accuracy`, the share of characters equal to a's
    (t = 0) or b's (t = 1). With `compare`, every point also carries `same_a` and `same_b`,
    20 booleans each: which of its characters are a's and b's at the same place (what the
    web page marks on every row; the terminal table marks only the ends)."""
    records = []
    last = len(path) - 1
    for i, point in enumerate(path):
        record = {"t": round(i / last, 4) if last else 0.0, **sample_record(point)}
        same_a, same_b = matching_chars(a.lines, point.lines), matching_chars(b.lines, point.lines)
        if i == 0:
            record["accuracy"] = round(sum(same_a) / len(same_a), 4)
        if i == last:
            record["accuracy"] = round(sum(same_b) / len(same_b), 4)
        if compare:
            record["same_a"], record["same_b"] = list(same_a), list(same_b)
        records.append(record)
    return records


def reconstruction_record(rec: Reconstruction) -> dict[str, Any]:
    """A poem next to what its latent code decodes to, compared character by character."""
    return {
        "given": rec.given.oneline(),
        "text": rec.decoded.oneline(),
        "lines": list(rec.decoded.lines),
        "same": list(rec.same),
        "accuracy": round(rec.accuracy, 4),
    }
