"""Markdown table of the recipe comparison: one row per RUN/<recipe>.eval.json.

python bench/experiments_table.py runs/experiments
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from poetvae.records import EpochRecord, read_log

COLUMNS = (
    "recipe",
    "IW-NLL",
    "rec",
    "KL",
    "AU",
    "MI",
    "recon acc",
    "distinct",
    "dist-2",
    "copied poems",
    "copied lines",
    "rhyme",
    "二四异",
    "train s",
)


def row(name: str, report: dict, seconds: float) -> list[str]:
    lk, lt, s = report["likelihood"], report["latent"], report["samples"]
    return [
        name,
        f"{lk['iw_nll']:.2f}",
        f"{lk['rec']:.2f}",
        f"{lk['kl']:.2f}",
        f"{lt['active_units']}/{lt['latent_dim']}",
        f"{lt['mutual_information']:.2f}",
        f"{lt['reconstruction_accuracy']:.1%}",
        f"{s['distinct']}",
        f"{s['distinct_2']:.3f}",
        f"{s['copied_poems']:.1%}",
        f"{s['copied_lines']:.1%}",
        f"{s['rhyme_rate']:.1%}",
        f"{s['tone_rate']:.1%}",
        f"{seconds:.0f}",
    ]


def main(out: Path) -> None:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for path in sorted(out.glob("*.eval.json")):
        name = path.name.removesuffix(".eval.json")
        report = json.loads(path.read_text(encoding="utf-8"))
        epochs = [r for r in read_log(out / name) if isinstance(r, EpochRecord)]
        lines.append("| " + " | ".join(row(name, report, epochs[-1].seconds if epochs else 0.0)) + " |")
    print("\n".join(lines))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
