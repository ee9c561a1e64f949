"""Build poetvae/prosody_data/repeats.json, the table of the repetition rule (poetvae.repetition).

What human verse repeats and what it avoids, counted in the public corpora shipped in data/
(the Tang and Song quatrains and the stanzas of longer five-character poems: 262,700
different poems of 4 x 5 characters), so that the rule is learnt from the corpus, not
written by hand:

- doubles: 叠字. For each place in a line (characters 1-2, 2-3, 3-4, 4-5: keys "0" to
  "3"), the characters that the corpus writes twice in a row there in at least
  --min-double poems (处处 and 年年 open lines, 纷纷 and 悠悠 close them; 水水 in the
  middle of a line is one poem's accident). Any other double is a stutter.
- repeated_bigrams: the two-character words (of two different characters, separated by
  spaces) that at least --min-bigram corpus poems use twice (不可 ... 不可: parallelism).
  Any other word used twice in a poem is a loop (一枝千万里，一片一枝香).
- max_uses: the most uses of one character in a poem that at least --min-share of the
  corpus poems reach (2: a third use of a character is rare in human verse).
- line_end_pairs: the pairs of lines ("2-4": lines 2 and 4) whose last characters are the
  same in less than --max-end-share of the corpus poems (all six: no two lines end on one
  character; for lines 2 and 4 that is 重韵).
- corpus: the counts and rates behind these choices, for the record.

Usage (from the repository root; needs nothing but poetvae itself):

    python tools/build_repeats.py
"""

from __future__ import annotations

import argparse
import itertools
import json
from collections import Counter
from pathlib import Path

from poetvae.corpus import read_corpus
from poetvae.form import FORM

ROOT = Path(__file__).resolve().parent.parent
OUT_PATH = ROOT / "poetvae" / "prosody_data" / "repeats.json"
SOURCES = ("data/tang_quatrains.jsonl.gz", "data/song_quatrains.jsonl.gz", "data/stanzas.txt.gz")


def build(
    poems: list[tuple[str, ...]], min_double: int, min_bigram: int, min_share: float, max_end_share: float
) -> dict:
    n = len(poems)
    doubles: Counter[tuple[str, int]] = Counter()  # (character, column of its first use) -> poems
    bigrams: Counter[str] = Counter()  # word used twice in a poem -> poems
    most_uses: Counter[int] = Counter()  # the most uses of one character in a poem -> poems
    same_end: Counter[tuple[int, int]] = Counter()  # (line i, line j) ending on one character -> poems
    doubled_poems = looped_poems = 0
    for lines in poems:
        found = {(line[k], k) for line in lines for k in range(len(line) - 1) if line[k] == line[k + 1]}
        doubles.update(found)
        doubled_poems += bool(found)
        words = Counter(line[k : k + 2] for line in lines for k in range(len(line) - 1))
        twice = [w for w, c in words.items() if c >= 2 and w[0] != w[1]]
        bigrams.update(twice)
        looped_poems += bool(twice)
        most_uses[max(Counter("".join(lines)).values())] += 1
        same_end.update((i, j) for i, j in itertools.combinations(range(FORM.lines), 2) if lines[i][-1] == lines[j][-1])
    at_least = {u: sum(c for m, c in most_uses.items() if m >= u) / n for u in range(1, max(most_uses) + 1)}
    max_uses = max(u for u, share in at_least.items() if share >= min_share)
    kept = sum(c for (_, _), c in doubles.items() if c >= min_double) / sum(doubles.values())
    end_rates = {(i, j): same_end[i, j] / n for i, j in itertools.combinations(range(FORM.lines), 2)}
    return {
        "about": "poetvae.repetition's table, built by tools/build_repeats.py from " + ", ".join(SOURCES),
        "thresholds": {
            "min_double": min_double,
            "min_bigram": min_bigram,
            "min_share": min_share,
            "max_end_share": max_end_share,
        },
        "doubles": {
            str(k): "".join(sorted(ch for (ch, col), c in doubles.items() if col == k and c >= min_double))
            for k in range(FORM.chars_per_line - 1)
        },
        "repeated_bigrams": " ".join(sorted(w for w, c in bigrams.items() if c >= min_bigram)),
        "max_uses": max_uses,
        "line_end_pairs": [f"{i + 1}-{j + 1}" for (i, j), rate in end_rates.items() if rate < max_end_share],
        "corpus": {
            "poems": n,
            "doubled": round(doubled_poems / n, 5),  # share of poems with a character twice in a row
            "doubles_kept": round(kept, 5),  # share of the corpus's doubles that the table keeps
            "poems_using_a_character_at_least": {str(u): round(s, 5) for u, s in at_least.items() if s >= 1e-4},
            "repeated_bigram": round(looped_poems / n, 5),  # share of poems with a word used twice
            "same_line_end": {f"{i + 1}-{j + 1}": round(rate, 5) for (i, j), rate in end_rates.items()},
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--min-double", type=int, default=2, help="poems that must double a character at a place")
    ap.add_argument("--min-bigram", type=int, default=2, help="poems that must use a word twice")
    ap.add_argument("--min-share", type=float, default=0.02, help="share of poems that make max_uses")
    ap.add_argument("--max-end-share", type=float, default=0.005, help="a pair of line ends shared less often")
    ap.add_argument("-o", "--output", type=Path, default=OUT_PATH)
    args = ap.parse_args()
    poems, _ = read_corpus([ROOT / s for s in SOURCES], t2s="never")
    table = build([p.lines for p in poems], args.min_double, args.min_bigram, args.min_share, args.max_end_share)
    # one entry per line: small diffs when the corpus or a threshold changes
    text = json.dumps(table, ensure_ascii=False, indent=1)
    args.output.write_text(text + "\n", encoding="utf-8")
    c = table["corpus"]
    doubles, words = sum(map(len, table["doubles"].values())), len(table["repeated_bigrams"].split())
    print(
        f"wrote {args.output}: {c['poems']:,} poems; 叠字 {doubles} (character, place) pairs "
        f"({c['doubles_kept']:.1%} of the corpus's doubles); {words} words used twice; "
        f"max_uses {table['max_uses']}; line-end pairs {table['line_end_pairs']}"
    )


if __name__ == "__main__":
    main()
