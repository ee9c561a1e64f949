"""Build poetvae/prosody_data/bigrams.safetensors, the corpus bigrams of the bigram correction
(poetvae.bigrams: the temperature that does not sharpen the corpus's stock bigrams).

Counted in the public corpora shipped in data/ (the Tang and Song quatrains and the stanzas
of longer five-character poems, the same poems as the repetition rule's table), inside each
line, with the line start as a context of its own. The table keeps the bigrams seen at least
--min-count times and, for every context, the exact number of bigrams and of different
successors that the interpolated model needs.

Usage (from the repository root; needs nothing but poetvae itself):

    python tools/build_bigrams.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

from poetvae.bigrams import MIN_COUNT, TABLE_PATH, BigramTable
from poetvae.corpus import read_corpus
from poetvae.data_files import shipped_corpus


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--min-count", type=int, default=MIN_COUNT, help="bigrams seen fewer times are left to the back-off"
    )
    ap.add_argument("-o", "--output", type=Path, default=TABLE_PATH)
    args = ap.parse_args()
    poems, _ = read_corpus(shipped_corpus("quatrains") + shipped_corpus("stanzas"), t2s="never")
    table = BigramTable.from_lines((line for p in poems for line in p.lines), args.min_count)
    table.save(args.output)
    bigrams, kept = int(table.total.sum()), int(table.count.sum())
    print(
        f"wrote {args.output} ({args.output.stat().st_size:,} bytes): {len(poems):,} poems, {bigrams:,} bigrams "
        f"(line starts included), {len(table.chars) - 1:,} characters; {table.col.numel():,} bigrams seen at "
        f"least {args.min_count} times kept, {kept / bigrams:.1%} of the corpus's"
    )


if __name__ == "__main__":
    main()
