"""Shared fixtures: a tiny config, the shipped corpus prepared once, a tiny trained run."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from poetvae.config import Config, ModelConfig, PrepConfig, TrainConfig
from poetvae.data_files import default_corpus

# Small enough that a CPU trains it in a second or two, big enough to exercise every part.
TINY = Config(
    prep=PrepConfig(min_count=1, w2v_epochs=1, valid_fraction=0.1, test_fraction=0.1),
    model=ModelConfig(embed_dim=16, highway_layers=1, hidden_dim=24, latent_dim=6, dropout=0.1),
    train=TrainConfig(epochs=2, batch_size=16, log_every=1, seed=0, kl_schedule="linear", kl_warmup_steps=5),
)


def tiny(**train_overrides) -> Config:
    return dataclasses.replace(TINY, train=dataclasses.replace(TINY.train, **train_overrides))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def shipped_corpus() -> Path:
    return default_corpus()


@pytest.fixture(scope="session")
def prep_dir(tmp_path_factory, shipped_corpus) -> Path:
    """The shipped corpus prepared with the TINY settings (read-only for tests)."""
    from poetvae.prep import prepare

    path = tmp_path_factory.mktemp("prep")
    prepare([shipped_corpus], path, TINY.prep, TINY.model.embed_dim)
    return path


@pytest.fixture(scope="session")
def prepared(prep_dir):
    from poetvae.prep import load_prepared

    return load_prepared(prep_dir)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, prepared) -> Path:
    """A run directory with a few epochs of a tiny model (read-only for tests)."""
    from poetvae.train import train

    run_dir = tmp_path_factory.mktemp("run")
    train(TINY, prepared, run_dir)
    return run_dir
