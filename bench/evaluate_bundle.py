"""A bundled model's evaluation.json, as `poetvae evaluate -m RUN` would write it for its run.

    python bench/evaluate_bundle.py classical|latent|BUNDLE [--iw 20] [--samples 1000] [--write]

A bundle keeps no data, so `poetvae evaluate` on it leaves out the figures that need the
training split. The shipped models were trained on the splits that `poetvae prep` makes of
the shipped corpora with its defaults (fraction 0.05 each, seed 0): this script rebuilds those
splits and calls poetvae.evaluate.evaluate_run exactly as `evaluate -m RUN` does, on the
bundle's own (float16) weights: test split of the quatrains held out, their training split for
training reconstruction and copies, the stanzas' training split as the pretraining poems,
and the samples at `poetvae sample`'s defaults (--temp 0.8, best of 3 by prosody weight 100,
the repetition rule and the bigram correction). Prints the report as JSON; --write puts it in
the bundle's evaluation.json (atomically).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from poetvae.data_files import shipped_corpus
from poetvae.evaluate import evaluate_run
from poetvae.files import atomic_write
from poetvae.models import EVALUATION, resolve_model
from poetvae.poet import Poet
from poetvae.prep import split_poems


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="classical, latent, or a bundle's directory")
    ap.add_argument("--iw", type=int, default=20)
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--write", action="store_true", help="write BUNDLE/evaluation.json")
    args = ap.parse_args()
    path = resolve_model(args.model).path
    quatrains = split_poems(shipped_corpus("quatrains"))[0]
    stanzas = split_poems(shipped_corpus("stanzas"))[0]["train"]
    report = evaluate_run(
        Poet.load(path),
        quatrains["test"],
        quatrains["train"],
        samples=args.samples,
        iw_samples=args.iw,
        temperature=0.8,
        seed=args.seed,
        pretraining=stanzas,
        rerank=3,
        prosody_weight=100.0,
    )
    text = json.dumps(report.to_dict(), ensure_ascii=False, indent=2) + "\n"
    print(text, end="")
    if args.write:
        atomic_write(Path(path) / EVALUATION, text)


if __name__ == "__main__":
    main()
