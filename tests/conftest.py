"""Shared fixtures: the small shipped corpus prepared once, a tiny trained run (TINY: helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import TINY

from poetvae.data_files import small_corpus


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models on a busy 2-core machine: one intra-op thread for a module's tests
    (restored afterwards); a module asks for it with pytest.mark.usefixtures."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def shipped_corpus() -> Path:
    """The small shipped corpus (data/quatrains.jsonl, 122 poems): quick to train on."""
    return small_corpus()


@pytest.fixture(scope="session")
def prep_dir(tmp_path_factory, shipped_corpus) -> Path:
    """The small shipped corpus prepared with the TINY settings (read-only for tests)."""
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
