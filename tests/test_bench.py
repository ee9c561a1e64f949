import dataclasses

import pytest
import torch

from poetvae.bench import bench_size, flops_per_poem, matmul_rate, output_layer_flops, zipf_weights
from poetvae.config import ModelConfig


def test_flops_count_from_layer_shapes():
    cfg = ModelConfig(
        vocab_size=100,
        embed_dim=8,
        highway_layers=1,
        hidden_dim=4,
        encoder_layers=1,
        decoder_layers=1,
        latent_dim=2,
        output_layer="full",
    )
    highway = 2 * 2 * 8 * 8
    dec_step = highway + 2 * 4 * 4 * (8 + 2 + 4) + 2 * 4 * 100
    decoder = 21 * dec_step + 2 * 2 * (2 * 1 * 4)
    encoder = 21 * (highway + 2 * 2 * 4 * 4 * (8 + 4)) + 2 * (2 * 2 * 4 * 2)
    # generation: layer 1's input product is a lookup, plus z's share once per poem
    sample = 21 * (2 * 4 * 4 * 4 + 2 * 4 * 100) + 2 * 2 * (2 * 1 * 4) + 2 * 4 * 4 * 2
    f = flops_per_poem(cfg)
    assert f["forward"] == encoder + decoder
    assert f["train"] == 3 * f["forward"] and f["sample"] == sample
    lm = flops_per_poem(ModelConfig(**{**cfg.__dict__, "use_latent": False}))
    assert lm["forward"] == decoder


def test_bench_measures_a_tiny_model():
    cpu = torch.device("cpu")
    peak = matmul_rate(cpu, repeats=1)
    assert peak["flops"] > 1e8
    cfg = ModelConfig(vocab_size=60, embed_dim=8, hidden_dim=8, latent_dim=4, form_features=True)
    r = bench_size("tiny", cfg, cpu, batch_size=8, sample_batch=16, steps=1, repeats=1, peak=peak["flops"])
    assert r["train_poems_per_s"] > 0 and r["sample_poems_per_s"] > 0 and r["greedy_poems_per_s"] > 0
    assert r["rhyme_tones_poems_per_s"] > 0 and r["train_precision"] in ("bf16", "fp32")
    assert r["train_tokens_per_s"] == r["train_poems_per_s"] * 21
    assert 0 < r["train_fraction_of_peak"] < 1.5 and r["peak_memory_bytes"] > 0


def test_adaptive_output_layer_flops():
    """Generation computes the head and every cluster; training the head for every position
    and a cluster only for the positions whose target is in it (Zipf shares, <eos> 1 in 21)."""
    cfg = ModelConfig(vocab_size=100, hidden_dim=8, adaptive_head=20, adaptive_div=2.0)
    head = 2 * 8 * (20 + 3)  # cutoffs 20, 40, 80: the 20 head ids and 3 cluster entries
    clusters = [2 * (8 * 4 + 4 * 20), 2 * (8 * 2 + 2 * 40), 2 * (8 * 1 + 1 * 20)]
    f = output_layer_flops(cfg)
    assert f["full"] == head + sum(clusters)
    w = zipf_weights(100)
    assert w[:4].sum() == 0 and torch.isclose(w.sum(), torch.tensor(1.0))
    shares = [float(w[20:40].sum()), float(w[40:80].sum()), float(w[80:].sum())]
    assert f["train"] == pytest.approx(head + 20 / 21 * sum(s * c for s, c in zip(shares, clusters)))
    full = output_layer_flops(dataclasses.replace(cfg, output_layer="full"))
    assert f["train"] < f["full"] < full["train"] == full["full"] == 2 * 8 * 100
