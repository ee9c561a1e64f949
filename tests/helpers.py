"""Shared test helpers (not a test file): the tiny config every training test uses."""

from __future__ import annotations

import dataclasses

from poetvae.config import Config, ModelConfig, PrepConfig, TrainConfig

# Small enough that a CPU trains it in a second or two, big enough to exercise every part.
TINY = Config(
    prep=PrepConfig(min_count=1, w2v_epochs=1, valid_fraction=0.1, test_fraction=0.1),
    model=ModelConfig(embed_dim=16, highway_layers=1, hidden_dim=24, latent_dim=6, dropout=0.1),
    train=TrainConfig(epochs=2, batch_size=16, log_every=1, seed=0, kl_schedule="linear", kl_warmup_steps=5),
)


def tiny(**train_overrides) -> Config:
    """TINY with some train settings changed."""
    return dataclasses.replace(TINY, train=dataclasses.replace(TINY.train, **train_overrides))
