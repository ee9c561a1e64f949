"""Training and sampling speed of whichever poetvae is importable, at its own defaults, for
before/after comparisons of two checkouts on the same machine in the same minutes:

    PYTHONPATH=/path/to/old/checkout python bench/ab_speed.py    # the old code
    PYTHONPATH=. python bench/ab_speed.py                         # this one

Unlike `poetvae bench` it uses only what every version since the bench existed has
(PoetVAE, train_step, decode.generate), so it runs against an older checkout too. Sizes:
the default (vocabulary 4,578) and the bundled model's shape (8,277, form features);
training batch 128 on Zipf-distributed text; sampling 2,048 poems of random weights at
temperature 1, greedy, and with --rhyme --tones. Prints one JSON line per size.
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import torch

from poetvae.config import Config, ModelConfig, TrainConfig
from poetvae.controls import Controls
from poetvae.decode import DecodeOptions, DecodeTables, generate
from poetvae.hardware import keep_freed_memory
from poetvae.model import PoetVAE
from poetvae.train import draw_noise, train_step
from poetvae.vocab import EOS, SPECIALS, Vocab

try:  # the bf16 choice of this version's training, where it has one
    from poetvae.hardware import autocast_choice
except ImportError:
    autocast_choice = None


def rate(fn, work: float, repeats: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return work / statistics.median(times)


def measure(name: str, cfg: ModelConfig) -> dict:
    """Training and sampling poems/s of one size at this version's defaults."""
    cpu = torch.device("cpu")
    torch.manual_seed(0)
    model = PoetVAE(cfg)
    config = Config(model=cfg, train=TrainConfig(batch_size=128))
    use_amp = autocast_choice(cpu, config.train.amp)[0] if autocast_choice else False
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    w = torch.zeros(cfg.vocab_size)
    w[len(SPECIALS) :] = 1.0 / torch.arange(1, cfg.vocab_size - len(SPECIALS) + 1, dtype=torch.float)
    chars = torch.multinomial(w, 128 * 20, replacement=True, generator=torch.Generator().manual_seed(0))
    tokens = torch.cat([chars.view(128, 20), torch.full((128, 1), EOS)], dim=1)

    def steps() -> None:
        for _ in range(3):
            train_step(model, optimizer, tokens, draw_noise(128, config, cpu), config, beta=1.0, use_amp=use_amp)

    model.train()
    train = rate(steps, 3 * 128)
    model.eval()
    vocab_tokens = [chr(0x4E00 + i) for i in range(cfg.vocab_size - len(SPECIALS))]
    vocab = Vocab(list(SPECIALS) + vocab_tokens, [0] * len(SPECIALS) + [1] * len(vocab_tokens))
    if cfg.form_features:
        model.use_vocab(vocab)
    tables = DecodeTables(model, vocab, cpu)
    z = torch.randn(2048, cfg.latent_dim, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(0)
    out = {"size": name, "train_precision": "bf16" if use_amp else "fp32", "train_poems_per_s": round(train)}
    for key, options in (
        ("sample", DecodeOptions(temperature=1.0)),
        ("greedy", DecodeOptions(greedy=True)),
        ("rhyme_tones", DecodeOptions(controls=Controls(rhyme=True, tones=True))),
    ):

        def decode(o: DecodeOptions = options) -> None:
            generate(model, z, vocab, o, generator=g, tables=tables)

        out[f"{key}_poems_per_s"] = round(rate(decode, 2048, 3))
    return out


def main() -> None:
    keep_freed_memory()
    sizes = {"default": dict(vocab_size=4578), "bundled": dict(vocab_size=8277, form_features=True)}
    for name, values in sizes.items():
        print(json.dumps(measure(name, ModelConfig(**values))), flush=True)


if __name__ == "__main__":
    sys.exit(main())
