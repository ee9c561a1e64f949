"""Decoding settings measured against human verse (issue 21): the table of docs/experiments.md.

    python bench/decoding.py [MODEL] [--n 1000] [--seed 0] [--only NAME ...] [--json out.json]

MODEL is a run or a bundle (default: the bundled model). For each setting it draws n poems
from N(0, I) with the same seed and measures them with poetvae.evaluate.sample_stats; the
human row is the quatrains' test split (the split `poetvae prep` makes of data/'s quatrains
with its defaults: the 773 poems the bundled model's runs held out). Copies are counted
against the training splits of the quatrains and of the stanzas (what the bundled model was
trained on); "phrases" is the share of the poems' 3-character sequences (inside a line) found
in the training quatrains; "reader" is how well a character n-gram classifier tells the poems
from held-out human ones (reader_accuracy; 0.5: it cannot); with --lm RUN, "judge" is the
poems' mean NLL under that language model (`poetvae train --corpus quatrains -c
configs/experiments/lm-form.toml`; lower: more typical; the human row is where verse sits).
Prints one markdown row per setting, and the first poems of each.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import time
from collections import Counter
from pathlib import Path

from latent import lm_nll  # bench/latent.py, beside this script: the same judge

from poetvae.data_files import shipped_corpus
from poetvae.decode import DecodeOptions
from poetvae.evaluate import sample_stats
from poetvae.models import resolve_model
from poetvae.poet import Poet
from poetvae.prep import split_poems

T08 = DecodeOptions(temperature=0.8)
OFF = {"repetition_rule": False}
PLAIN = {"bigram_correction": 0.0}  # plain temperature: the decoding before the bigram correction
DEFAULTS = {"rerank": 3, "prosody_weight": 100.0}  # sample's
# name -> the DecodeOptions fields it changes from T08 (the rule is on unless OFF). The first
# group is the table of the first issue-21 round, in plain temperature; the second measures
# the bigram correction (poetvae.bigrams) at sample's defaults.
SETTINGS: dict[str, dict] = {
    **{f"temp {t}, no rule": {"temperature": t, **OFF, **PLAIN} for t in (0.7, 0.8, 0.9, 1.0)},
    **{f"temp {t}": {"temperature": t, **PLAIN} for t in (0.7, 0.75, 0.8, 0.85, 0.9, 1.0)},
    "temp 0.8, top-p 0.95": {"top_p": 0.95, **PLAIN},
    "temp 0.8, top-p 0.9": {"top_p": 0.9, **PLAIN},
    "temp 0.8, rerank 4 (log-probability alone)": {"rerank": 4, **PLAIN},
    **{
        f"temp 0.8, rerank {r}, prosody {w}": {"rerank": r, "prosody_weight": float(w), **PLAIN}
        for r in (2, 3, 4)
        for w in (5, 20, 100)
    },
    "temp 0.8, rerank 4, prosody 1000": {"rerank": 4, "prosody_weight": 1000.0, **PLAIN},
    "temp 0.8, rerank 8, prosody 5": {"rerank": 8, "prosody_weight": 5.0, **PLAIN},
    "temp 0.8, rerank 3, prosody 100, no rule": {"rerank": 3, "prosody_weight": 100.0, **OFF, **PLAIN},
    **{
        f"temp {t}, rerank 3, prosody 100": {"temperature": t, "rerank": 3, "prosody_weight": 100.0, **PLAIN}
        for t in (0.85, 0.9, 1.0)
    },
    # the bigram correction, at sample's defaults unless named
    **{f"temp 0.8, bigram {k}": {**DEFAULTS, "bigram_correction": k} for k in (0.5, 0.75, 1.0)},
    **{f"temp {t}, bigram 1": {**DEFAULTS, "temperature": t} for t in (0.6, 0.7, 0.9)},
    "temp 0.8, bigram 1, one candidate": {},
    "temp 0.8, bigram 1, no rule": {**DEFAULTS, **OFF},
    "temp 0.8, bigram 1, top-p 0.95": {**DEFAULTS, "top_p": 0.95},
}
COLUMNS = (
    ("rhyme 平水", "rhyme_pingshui", "{:.1%}"),
    ("rhyme 新韵", "rhyme_xinyun", "{:.1%}"),
    ("重韵", "same_char_rhyme", "{:.1%}"),
    ("二四异", "tone_rate", "{:.1%}"),
    ("doubled", "doubled_char", "{:.1%}"),
    ("3 times", "char_3_times", "{:.1%}"),
    ("dist-2", "distinct_2", "{:.3f}"),
    ("distinct", "distinct", "{:d}"),
    ("copied poems / lines", None, None),
    ("phrases", "phrases", "{:.1%}"),
    ("well formed", "well_formed", "{:.0%}"),
    ("reader", "reader", "{:.3f}"),
    ("judge", "judge", "{:.1f}"),
    ("poems/s", "poems_per_s", "{:,.0f}"),
)


def reader_accuracy(human: list[tuple[str, ...]], poems: list[tuple[str, ...]], folds: int = 5) -> float:
    """How well a reader of character n-grams tells poems from human ones: the 5-fold
    cross-validated accuracy of a multinomial naive Bayes classifier on the character 1-, 2-
    and 3-grams inside lines (0.5: indistinguishable). Balanced: as many of each."""
    n = min(len(human), len(poems))
    data = [(grams, y) for y, group in ((0, human[:n]), (1, poems[:n])) for grams in map(_ngrams, group)]
    random.Random(0).shuffle(data)
    right = 0
    for fold in range(folds):
        counts: list[Counter] = [Counter(), Counter()]
        for i, (grams, y) in enumerate(data):
            if i % folds != fold:
                counts[y].update(grams)
        totals = [sum(c.values()) for c in counts]
        size = len(set(counts[0]) | set(counts[1]))
        for grams, y in data[fold::folds]:
            score = [sum(math.log((counts[k][g] + 1) / (totals[k] + size)) for g in grams) for k in (0, 1)]
            right += (score[1] > score[0]) == (y == 1)
    return right / len(data)


def _ngrams(lines: tuple[str, ...]) -> list[str]:
    return [line[k : k + n] for line in lines for n in (1, 2, 3) for k in range(len(line) - n + 1)]


def trigrams(poems: list[tuple[str, ...]]) -> list[str]:
    return [line[k : k + 3] for lines in poems for line in lines for k in range(len(line) - 2)]


def row(name: str, stats: dict) -> str:
    cells = []
    for _, key, fmt in COLUMNS:
        if key is None:
            cells.append(f"{stats['copied_poems']:.1%} / {stats['copied_lines']:.2%}")
        elif key in stats:
            cells.append(fmt.format(stats[key]))
        else:
            cells.append("")
    return f"| {name} | " + " | ".join(cells) + " |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", type=Path)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", nargs="*", help="settings to run (default: all)")
    ap.add_argument("--examples", type=int, default=3, help="poems printed per setting")
    ap.add_argument("--json", type=Path)
    ap.add_argument(
        "--lm", type=Path, help="a --no-latent run of the quatrains: the judge column, its NLL of the poems"
    )
    args = ap.parse_args()
    poet = Poet.load(resolve_model(args.model).path)
    judge = Poet.load(args.lm) if args.lm else None
    quatrains = split_poems(shipped_corpus("quatrains"))[0]
    stanzas = split_poems(shipped_corpus("stanzas"))[0]["train"]
    seen = [p.lines for p in quatrains["train"] + stanzas]
    known = set(trigrams([p.lines for p in quatrains["train"]]))
    human = [p.lines for p in quatrains["test"]]
    readers_human = human + [p.lines for p in quatrains["valid"]]  # held-out poems the reader compares with

    def measure(poems: list[tuple[str, ...]], reader: float | None = None) -> dict:
        stats = sample_stats(poems, seen).to_dict()
        grams = trigrams(poems)
        stats["phrases"] = sum(g in known for g in grams) / len(grams)
        stats["reader"] = reader_accuracy(readers_human, poems) if reader is None else reader
        if judge is not None:
            stats["judge"] = lm_nll(judge, poems)
        return stats

    print("| setting | " + " | ".join(c[0] for c in COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 1) + "|")
    # the reader on human verse alone: the test split against the validation split
    rows = {"human test poems": measure(human, reader_accuracy(human, readers_human[len(human) :]))}
    print(row(f"human test poems ({len(human)})", rows["human test poems"]), flush=True)
    poet.sample(64, T08)  # warm-up: tables, allocator
    for name, changes in SETTINGS.items():
        if args.only and name not in args.only:
            continue
        options = dataclasses.replace(T08, seed=args.seed, **changes)
        start = time.perf_counter()
        samples = poet.sample(args.n, options)
        seconds = time.perf_counter() - start
        stats = measure([s.lines for s in samples])
        stats.update(
            poems_per_s=args.n / seconds,
            backoffs=sum(bool(s.backoff) for s in samples),
            examples=[s.oneline() for s in samples[: args.examples]],
        )
        rows[name] = stats
        print(row(name, stats), flush=True)
    for name, stats in rows.items():
        for example in stats.get("examples", []):
            print(f"{name:40s} {example}")
    if args.json:
        args.json.write_text(json.dumps(rows, ensure_ascii=False, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
