"""`poetvae bench`: how fast training and sampling run here, and how close that is to the
machine's own limit.

    poetvae bench                     # both sizes, this machine's default device
    poetvae bench --size reference --json

For each model size it measures, after warm-up, the median of several timed repeats of
- training: poems/s and tokens/s through the real training step (train.train_step);
- sampling: poems/s of the real constrained decoder (decode.generate), whole batch at once,
  drawing at temperature 1, greedy (argmax), and at temperature 1 with --rhyme --tones;
and relates them to
- the model FLOPs per poem, counted from the layer shapes (multiply-adds x 2; a training
  step counted as 3x the forward pass: forward, and backward for inputs and weights);
- this machine's matrix-multiply rates measured in the same run (fp32, and bf16 where the
  device has a native bf16 path), so `fraction_of_peak` (against the rate of the precision
  training runs in) says how much of the hardware the model code uses;
- peak memory: RSS of the process on CPU, torch.cuda.max_memory_allocated on GPU.
"""

from __future__ import annotations

import dataclasses
import platform
import resource
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from poetvae.config import Config, ModelConfig, TrainConfig
from poetvae.controls import Controls
from poetvae.decode import DecodeOptions, DecodeTables, generate
from poetvae.form import FORM
from poetvae.hardware import autocast_choice, cpu_has_bf16, keep_freed_memory, resolve_device
from poetvae.model import PoetVAE, adaptive_cutoffs
from poetvae.vocab import EOS, SPECIALS, Vocab

SIZES: dict[str, ModelConfig] = {
    "default": ModelConfig(vocab_size=4578),  # the shared corpus's vocabulary at min_count 2
    # the bundled model's shape: stanzas and quatrains, min_count 2, form features
    "bundled": ModelConfig(vocab_size=8277, form_features=True),
    # the small reference implementation this design comes from: embedding 128, hidden 128,
    # 2-layer decoder, latent 128, a vocabulary of about 4,600 characters
    "reference": ModelConfig(vocab_size=4600, embed_dim=128, hidden_dim=128, decoder_layers=2, latent_dim=128),
}


def zipf_weights(vocab_size: int) -> torch.Tensor:
    """(V,) how often each id is a character of verse, for a vocabulary in order of frequency:
    p(rank r) ~ 1/r (Zipf), 0 for the specials. Close to the Tang and Song quatrains, where
    the 2,000 most frequent characters are 92% of the text (Zipf: 85% of 8,273): what the
    adaptive softmax's clusters see decides its cost, so bench feeds it text shaped like verse."""
    w = torch.zeros(vocab_size)
    w[len(SPECIALS) :] = 1.0 / torch.arange(1, vocab_size - len(SPECIALS) + 1, dtype=torch.float)
    return w / w.sum()


def output_layer_flops(cfg: ModelConfig) -> dict[str, float]:
    """FLOPs of the output layer for one position: "train", what the loss computes (for the
    adaptive softmax the head for every position and a cluster for the positions whose
    target is in it: the share of Zipf-distributed characters, <eos> in the head, counted
    1 time in 21), and "full", the whole distribution that generation needs."""
    h, v = cfg.hidden_dim, cfg.vocab_size
    if cfg.output_layer == "full":
        return {"train": 2.0 * h * v, "full": 2.0 * h * v}
    cutoffs = adaptive_cutoffs(v, cfg.adaptive_head) + [v]
    weights, chars = zipf_weights(v), FORM.chars / FORM.seq_len  # <eos> is 1 target in 21
    head = 2.0 * h * (cutoffs[0] + len(cutoffs) - 1)
    train = full = head
    for i, (lo, hi) in enumerate(zip(cutoffs, cutoffs[1:])):
        d = int(h // cfg.adaptive_div ** (i + 1))
        cluster = 2.0 * (h * d + d * (hi - lo))
        train += chars * float(weights[lo:hi].sum()) * cluster
        full += cluster
    return {"train": train, "full": full}


def _lstm_flops(size_in: int, hidden: int, layers: int, directions: int = 1) -> int:
    """Forward FLOPs of a stacked LSTM for one time step: 4 gates of (input + hidden) x hidden."""
    total = 0
    for _ in range(layers):
        total += directions * 2 * 4 * hidden * (size_in + hidden)
        size_in = hidden * directions
    return total


def flops_per_poem(cfg: ModelConfig) -> dict[str, float]:
    """Model FLOPs for one poem of FORM.seq_len = 21 positions, from the layer shapes (the
    output layer: output_layer_flops).

    "sample" counts what generation executes (step_decoder.StepDecoder): the first layer's input
    product is a table lookup per token and position plus one product with z per poem, so
    a step is the recurrent products and the output layer. The vocabulary-sized tables
    are built once per batch and not counted per poem."""
    e, h, z, layers = cfg.embed_dim, cfg.hidden_dim, cfg.latent_dim, cfg.decoder_layers
    t = FORM.seq_len
    highway = cfg.highway_layers * 2 * (2 * e * e)  # transform and gate per token
    initial_state = 2 * z * 2 * layers * h
    output = output_layer_flops(cfg)
    decoder = t * (highway + _lstm_flops(e + z, h, layers) + output["train"]) + initial_state
    encoder = 0
    if cfg.use_latent:
        encoder = t * (highway + _lstm_flops(e, h, cfg.encoder_layers, directions=2)) + 2 * (2 * 2 * h * z)
    forward = encoder + decoder
    sample_step = _lstm_flops(e + z, h, layers) - 2 * 4 * h * (e + z) + output["full"]  # minus layer 1's input product
    sample = t * sample_step + initial_state + 2 * 4 * h * z  # + z's share of layer 1's gates, once
    return {"forward": float(forward), "train": 3.0 * forward, "sample": float(sample)}


def _median_rate(fn: Callable[[], None], work: float, repeats: int, device: torch.device) -> float:
    """work / seconds of fn(), the median over `repeats` timed calls (after one warm-up)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fn()
    sync()
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        rates.append(work / (time.perf_counter() - start))
    return statistics.median(rates)


def matmul_rate(device: torch.device, repeats: int = 5, dtype: torch.dtype | None = None) -> dict[str, Any]:
    """FLOP/s of a large square matrix product in `dtype` (default: fp32 on CPU, bf16 on GPU)."""
    n = 2048 if device.type == "cpu" else 8192
    dtype = dtype or (torch.float32 if device.type == "cpu" else torch.bfloat16)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    inner = 4 if device.type == "cpu" else 50

    def run() -> None:
        for _ in range(inner):
            torch.mm(a, b)

    return {"flops": _median_rate(run, 2.0 * n**3 * inner, repeats, device), "n": n, "dtype": str(dtype)}


def _random_vocab(size: int) -> Vocab:
    tokens = [chr(0x4E00 + i) for i in range(size - len(SPECIALS))]
    return Vocab(list(SPECIALS) + tokens, [0] * len(SPECIALS) + [1] * len(tokens))


def bench_size(
    name: str,
    cfg: ModelConfig,
    device: torch.device,
    batch_size: int,
    sample_batch: int,
    steps: int,
    repeats: int,
    peak: float,
    train_amp: bool | None = None,
) -> dict[str, Any]:
    """One size: training with the default settings (TrainConfig: bf16 autocast where
    autocast_choice says so, unless `train_amp` decides), and sampling as `poetvae sample`
    runs it. `peak`: the matmul FLOP/s of the precision training runs in."""
    from poetvae.train import draw_noise, train_step

    torch.manual_seed(0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model = PoetVAE(cfg).to(device)
    config = Config(model=cfg, train=TrainConfig(batch_size=batch_size))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    chars = torch.multinomial(
        zipf_weights(cfg.vocab_size), batch_size * FORM.chars, replacement=True, generator=torch.Generator()
    )
    tokens = torch.cat([chars.view(batch_size, FORM.chars), torch.full((batch_size, 1), EOS)], dim=1).to(device)
    use_amp = autocast_choice(device, config.train.amp)[0] if train_amp is None else train_amp

    def train_steps() -> None:
        for _ in range(steps):
            train_step(
                model, optimizer, tokens, draw_noise(batch_size, config, device), config, beta=1.0, use_amp=use_amp
            )

    model.train()
    train_rate = _median_rate(train_steps, batch_size * steps, repeats, device)
    model.eval()
    vocab = _random_vocab(cfg.vocab_size)
    if cfg.form_features:
        model.use_vocab(vocab)
    z = torch.randn(sample_batch, cfg.latent_dim, device=device)
    generator = torch.Generator(device=device).manual_seed(0)

    tables = DecodeTables(model, vocab, device)  # once per loaded model, as poetvae.Poet does
    sample_amp = device.type == "cuda"  # poetvae sample decodes in fp32 on the CPU

    def sample(options: DecodeOptions) -> Callable[[], None]:
        def run() -> None:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=sample_amp):
                generate(model, z, vocab, options, generator=generator, tables=tables)

        return run

    sample_rate = _median_rate(sample(DecodeOptions(temperature=1.0)), sample_batch, repeats, device)
    greedy_rate = _median_rate(sample(DecodeOptions(greedy=True)), sample_batch, repeats, device)
    controls = Controls(rhyme=True, tones=True)
    controlled_rate = _median_rate(sample(DecodeOptions(controls=controls)), sample_batch, repeats, device)
    flops = flops_per_poem(cfg)
    memory = (
        torch.cuda.max_memory_allocated(device)
        if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )
    return {
        "size": name,
        "config": dataclasses.asdict(cfg),
        "parameters": model.num_parameters(),
        "train_batch": batch_size,
        "train_precision": "bf16" if use_amp else "fp32",
        "train_poems_per_s": train_rate,
        "train_tokens_per_s": train_rate * FORM.seq_len,
        "train_flops_per_poem": flops["train"],
        "train_flops_per_s": train_rate * flops["train"],
        "train_fraction_of_peak": train_rate * flops["train"] / peak,
        "output_layer_flops_per_position": output_layer_flops(cfg),
        "sample_batch": sample_batch,
        "sample_poems_per_s": sample_rate,
        "sample_flops_per_poem": flops["sample"],
        "sample_fraction_of_peak": sample_rate * flops["sample"] / peak,
        "greedy_poems_per_s": greedy_rate,
        "rhyme_tones_poems_per_s": controlled_rate,
        "peak_memory_bytes": memory,
    }


def run_bench(
    sizes: list[str] | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    sample_batch: int | None = None,
    steps: int | None = None,
    repeats: int = 3,
) -> dict[str, Any]:
    """The whole benchmark as a JSON-ready dict: {"machine": {...}, "results": [per size]}."""
    dev = resolve_device(device)
    if dev.type == "cpu":
        keep_freed_memory()
    batch_size = batch_size or (128 if dev.type == "cpu" else 1024)
    sample_batch = sample_batch or (2048 if dev.type == "cpu" else 65536)
    steps = steps or (4 if dev.type == "cpu" else 20)
    fp32 = matmul_rate(dev, dtype=torch.float32)
    # bf16 where the device has a native path (on a CPU without one it is emulated: not a peak)
    bf16 = matmul_rate(dev, dtype=torch.bfloat16) if dev.type == "cuda" or cpu_has_bf16() else None
    use_amp, precision = autocast_choice(dev, TrainConfig().amp)
    peak = bf16 if use_amp and bf16 is not None else fp32
    machine = {
        "device": str(dev) if dev.type == "cpu" else torch.cuda.get_device_name(dev),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "processor": platform.processor() or platform.machine(),
        "training_precision": precision,
        "matmul_flops_per_s": peak["flops"],
        "matmul": f"{peak['n']}x{peak['n']} {peak['dtype']}",
        "matmul_fp32_flops_per_s": fp32["flops"],
        "matmul_bf16_flops_per_s": bf16["flops"] if bf16 is not None else None,
    }
    results = [
        bench_size(name, SIZES[name], dev, batch_size, sample_batch, steps, repeats, peak["flops"], use_amp)
        for name in (sizes or list(SIZES))
    ]
    return {"machine": machine, "results": results}
