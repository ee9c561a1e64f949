"""What a model's latent keeps, and what its prior samples are worth (issue 20).

    python bench/latent.py MODEL [MODEL ...] [--lm RUN] [--n 1000] [--pairs 8] [--json out.json]

Each MODEL is a run, a bundle, or a bundled model's name (classical, latent). Measured on the
quatrains' test split (the split `poetvae prep` makes of data/'s quatrains with its defaults:
the 773 poems the bundled models held out) and on 1,000 poems of its training split:

- reconstruction: the share of characters that the greedy decode of the posterior mean puts
  back in place (Poet.reconstruct, as `poetvae reconstruct` and `evaluate` measure it);
- interpolation ends: for `--pairs` pairs of test poems, `poetvae interpolate A B`'s first
  row against A and last row against B (greedy, the command's defaults);
- prior samples at temperature 0.8 with the decoding `poetvae sample` uses by default (best
  of 3, prosody weight 100, the repetition rule), from N(0, I) and from the fitted prior:
  well formed, rhyme (平水韵 and 中华新韵, two different characters), distinct-2, copies;
  with `--lm RUN`, fluency: the samples' mean NLL (nats per poem) under that language model
  (a --no-latent run of the same data: exact likelihoods), beside the human test poems'.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

from poetvae.data_files import shipped_corpus
from poetvae.decode import DecodeOptions
from poetvae.errors import PoetVAEError
from poetvae.evaluate import iw_nll, sample_stats
from poetvae.form import Poem
from poetvae.models import resolve_model
from poetvae.poet import Poet, Reconstruction
from poetvae.prep import split_poems

SAMPLE = DecodeOptions(temperature=0.8, rerank=3, prosody_weight=100.0)  # `poetvae sample`'s defaults


def lm_nll(lm: Poet, poems: list[tuple[str, ...]]) -> float:
    """Mean -log p(poem) in nats under a language model (K = 1 is exact without a latent)."""
    tokens = lm.tokens([Poem(p) for p in poems], allow_unk=True)
    return float(iw_nll(lm.model, tokens, k=1, generator=torch.Generator().manual_seed(0)).mean())


def measure(poet: Poet, test, train, seen, lm: Poet | None, n: int, pairs: int) -> dict:
    out: dict = {}
    start = time.perf_counter()
    recs = poet.reconstruct(test, allow_unk=True)
    out["reconstruction_test"] = sum(r.accuracy for r in recs) / len(recs)
    recs_train = poet.reconstruct(train, allow_unk=True)
    out["reconstruction_train"] = sum(r.accuracy for r in recs_train) / len(recs_train)
    rng = random.Random(0)
    ends, examples = [], []
    for _ in range(pairs):
        a, b = rng.sample(test, 2)
        path = poet.interpolate(a, b, steps=8, allow_unk=True)
        first, last = Reconstruction.of(a, path[0]), Reconstruction.of(b, path[-1])
        ends += [first.accuracy, last.accuracy]
        examples.append([a.oneline(), *(s.oneline() for s in path), b.oneline()])
    out["interpolation_ends"] = sum(ends) / len(ends)
    out["interpolation_examples"] = examples[:2]
    for prior in ("normal", "fitted"):
        try:
            samples = [s.lines for s in poet.sample(n, SAMPLE, prior=prior)]
        except PoetVAEError as e:  # a model without a fitted prior
            out[f"samples_{prior}"] = {"error": str(e)}
            continue
        stats = sample_stats(samples, seen).to_dict()
        if lm is not None:
            stats["lm_nll"] = lm_nll(lm, samples)
        stats["examples"] = [Poem(s).oneline() for s in samples[:4]]
        out[f"samples_{prior}"] = stats
    out["seconds"] = time.perf_counter() - start
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--lm", type=Path, help="a --no-latent run of the same data, to score the samples' fluency")
    ap.add_argument("--n", type=int, default=1000, help="prior samples per prior")
    ap.add_argument("--pairs", type=int, default=8, help="interpolations between test poems")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.manual_seed(0)
    quatrains = split_poems(shipped_corpus("quatrains"))[0]
    stanzas = split_poems(shipped_corpus("stanzas"))[0]["train"]
    seen = [p.lines for p in quatrains["train"] + stanzas]
    test = quatrains["test"]
    train = random.Random(0).sample(quatrains["train"], 1000)
    lm = Poet.load(args.lm) if args.lm else None
    results: dict = {}
    if lm is not None:
        results["human test poems"] = {"lm_nll": lm_nll(lm, [p.lines for p in test])}
        print(f"human test poems: NLL under the LM {results['human test poems']['lm_nll']:.2f} nats", flush=True)
    for name in args.models:
        poet = Poet.load(resolve_model(name).path)
        results[name] = r = measure(poet, test, train, seen, lm, args.n, args.pairs)
        print(
            f"{name}: reconstruction test {r['reconstruction_test']:.1%} train {r['reconstruction_train']:.1%}, "
            f"interpolation ends {r['interpolation_ends']:.1%} ({r['seconds']:.0f} s)",
            flush=True,
        )
        for prior in ("normal", "fitted"):
            s = r[f"samples_{prior}"]
            if "error" in s:
                print(f"  {prior} prior: {s['error']}")
                continue
            fluency = f", LM NLL {s['lm_nll']:.2f}" if "lm_nll" in s else ""
            print(
                f"  {prior} prior: well formed {s['well_formed']:.0%}, rhyme {s['rhyme_pingshui']:.1%} / "
                f"{s['rhyme_xinyun']:.1%}, 重韵 {s['same_char_rhyme']:.1%}, dist-2 {s['distinct_2']:.3f}, "
                f"copies {s['copied_poems']:.1%} / {s['copied_lines']:.2%}{fluency}",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps(results, ensure_ascii=False, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
