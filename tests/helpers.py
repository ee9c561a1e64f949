"""Shared test helpers (not a test file): the tiny config every training test uses, and the
well-formedness check of decoded token rows."""

from __future__ import annotations

import dataclasses

import torch

from poetvae.config import Config, ModelConfig, PrepConfig, TrainConfig
from poetvae.vocab import EOS, PAD, Vocab

# Small enough that a CPU trains it in a second or two, big enough to exercise every part.
TINY = Config(
    prep=PrepConfig(min_count=1, w2v_epochs=1, valid_fraction=0.1, test_fraction=0.1),
    model=ModelConfig(embed_dim=16, highway_layers=1, hidden_dim=24, latent_dim=6, dropout=0.1),
    train=TrainConfig(epochs=2, batch_size=16, log_every=1, seed=0, kl_schedule="linear", kl_warmup_steps=5),
)


def _model_flags(config: Config) -> list[str]:
    m, tr = config.model, config.train
    return ["--embed-dim", str(m.embed_dim), "--hidden-dim", str(m.hidden_dim), "--latent-dim", str(m.latent_dim),
            "--highway-layers", str(m.highway_layers), "--batch-size", str(tr.batch_size)]  # fmt: skip


# TINY's model and batch size as command-line flags, for the tests that train through the CLI
TINY_MODEL_FLAGS = _model_flags(TINY)


def tiny(**train_overrides) -> Config:
    """TINY with some train settings changed."""
    return dataclasses.replace(TINY, train=dataclasses.replace(TINY.train, **train_overrides))


def assert_well_formed(vocab: Vocab, ids: torch.Tensor) -> None:
    chars = vocab.token_chars()
    for row in ids.tolist():
        lines = vocab.decode(row)
        assert len(lines) == 4 and all(len(line) == 5 for line in lines), lines
        assert all("\u4e00" <= ch <= "\u9fff" for line in lines for ch in line), lines
        n = row.index(EOS)
        assert sum(chars[i].item() for i in row[:n]) == 20
        assert all(i >= 4 for i in row[:n])  # no special token inside the poem
        assert all(i == PAD for i in row[n + 1 :])
        # word tokens never cross a line break
        pos = 0
        for i in row[:n]:
            assert pos // 5 == (pos + chars[i].item() - 1) // 5
            pos += chars[i].item()


def one_line_error(result, fragment: str) -> str:
    """A CLI result that failed with exit code 1 and one line `error: ...` naming `fragment`
    (no traceback); the line, for further checks."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert fragment in lines[0], lines[0]
    return lines[0]
