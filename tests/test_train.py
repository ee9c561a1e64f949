import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import TINY, tiny

from poetvae import checkpoint as ckpt
from poetvae import rundir
from poetvae.config import TrainConfig, load_config
from poetvae.decode import DecodeOptions
from poetvae.errors import CheckpointError, ConfigError
from poetvae.poet import Poet
from poetvae.records import ElboTerms, EpochRecord, StepRecord, read_log
from poetvae.train import kl_weight, train


@pytest.mark.parametrize("step,expected", [(0, 0.0), (50, 0.5), (100, 1.0), (500, 1.0)])
def test_linear_schedule(step, expected):
    cfg = TrainConfig(kl_schedule="linear", kl_warmup_steps=100)
    assert kl_weight(step, 1000, cfg) == pytest.approx(expected)


def test_constant_schedule_and_kl_max():
    cfg = TrainConfig(kl_schedule="constant", kl_max=0.7)
    assert [kl_weight(s, 10, cfg) for s in (0, 5, 9)] == [0.7, 0.7, 0.7]
    assert kl_weight(50, 1000, TrainConfig(kl_schedule="linear", kl_warmup_steps=100, kl_max=0.5)) == 0.25


def test_sigmoid_schedule():
    cfg = TrainConfig(kl_schedule="sigmoid", kl_warmup_steps=100)
    assert kl_weight(50, 1000, cfg) == pytest.approx(0.5)
    assert kl_weight(0, 1000, cfg) < 0.01
    assert 0.99 < kl_weight(99, 1000, cfg) <= 1.0
    assert kl_weight(100, 1000, cfg) == 1.0
    values = [kl_weight(s, 1000, cfg) for s in range(0, 101)]
    assert values == sorted(values)


def test_cyclical_schedule():
    cfg = TrainConfig(kl_schedule="cyclical", kl_cycles=4, kl_ratio=0.5)
    # 400 steps in 4 cycles of 100: ramp over 50 steps, then flat
    assert [kl_weight(s, 400, cfg) for s in (0, 25, 50, 99, 100, 125, 350, 399)] == pytest.approx(
        [0.0, 0.5, 1.0, 1.0, 0.0, 0.5, 1.0, 1.0]
    )


def test_run_directory_contents(trained_run):
    for name in (rundir.CONFIG, rundir.VOCAB, rundir.BEST, rundir.LAST, rundir.LOG, rundir.PRIOR):
        assert (trained_run / name).is_file(), name
    assert sorted(p.name for p in trained_run.iterdir()) == sorted(
        [rundir.CONFIG, rundir.VOCAB, rundir.BEST, rundir.LAST, rundir.LOG, rundir.PRIOR]
    )  # and nothing else: no temporary file left (the library's train writes no prep/)
    saved = json.loads((trained_run / rundir.CONFIG).read_text(encoding="utf-8"))
    assert saved["model"]["latent_dim"] == TINY.model.latent_dim and saved["model"]["vocab_size"] > 4
    records = read_log(trained_run)
    steps = [r for r in records if isinstance(r, StepRecord)]
    epochs = [r for r in records if isinstance(r, EpochRecord)]
    assert len(steps) + len(epochs) == len(records)
    assert len(epochs) == TINY.train.epochs
    assert all(None not in (r.rec, r.kl, r.beta, r.loss) for r in steps)
    assert all(isinstance(r.valid, ElboTerms) and None not in (r.valid.rec, r.valid.nelbo) for r in epochs)
    assert [r.step for r in steps] == list(range(1, len(steps) + 1))
    # the file format: these keys in this order
    lines = [json.loads(line) for line in (trained_run / rundir.LOG).read_text(encoding="utf-8").splitlines()]
    assert list(lines[0]) == ["kind", "step", "total_steps", "epoch", "rec", "kl", "loss", "beta", "seconds"]
    epoch_keys = ["kind", "step", "epoch", "seconds", "valid_rec", "valid_kl", "valid_nelbo", "valid_ppl"]
    assert [list(r) for r in lines if r["kind"] == "epoch"] == [epoch_keys + ["valid_poems"]] * len(epochs)
    assert [r.to_json() for r in records] == lines  # read back to the same records
    # nothing that loading reads is pickled: safetensors files start with an 8-byte length and '{'
    assert (trained_run / rundir.BEST).read_bytes()[8:9] == b"{"
    assert (trained_run / rundir.PRIOR).read_bytes()[8:9] == b"{"


def test_save_load_same_samples(trained_run):
    a = Poet.load(trained_run).sample(6, DecodeOptions(temperature=0.8, seed=11))
    b = Poet.load(trained_run).sample(6, DecodeOptions(temperature=0.8, seed=11))
    c = Poet.load(trained_run).sample(6, DecodeOptions(temperature=0.8, seed=12))
    assert [s.lines for s in a] == [s.lines for s in b]
    assert [s.lines for s in a] != [s.lines for s in c]
    assert all(len(s.lines) == 4 and all(len(x) == 5 for x in s.lines) for s in a)


def test_same_seed_same_run(prepared, tmp_path):
    r1 = train(tiny(epochs=1), prepared, tmp_path / "a")
    r2 = train(tiny(epochs=1), prepared, tmp_path / "b")
    w1, _ = ckpt.load_tensors(tmp_path / "a" / rundir.LAST)
    w2, _ = ckpt.load_tensors(tmp_path / "b" / rundir.LAST)
    assert r1.valid == r2.valid
    assert all(torch.equal(w1[k], w2[k]) for k in w1)


def test_resume_after_interruption_matches_an_uninterrupted_run(prepared, tmp_path):
    cfg = tiny(epochs=3)
    train(cfg, prepared, tmp_path / "whole")

    def ctrl_c_at_step_7(record):
        if isinstance(record, StepRecord) and record.step == 7:  # mid-epoch: 6 steps per epoch
            raise KeyboardInterrupt

    broken = train(cfg, prepared, tmp_path / "cut", on_log=ctrl_c_at_step_7)
    assert broken.interrupted and broken.steps == 7
    resumed = train(cfg, prepared, tmp_path / "cut", resume=True)
    assert not resumed.interrupted and resumed.steps == 18
    whole, _ = ckpt.load_tensors(tmp_path / "whole" / rundir.LAST)
    cut, meta = ckpt.load_tensors(tmp_path / "cut" / rundir.LAST)
    assert meta["step"] == 18
    for k in whole:
        if k.startswith(("model.", "optim.")):
            assert torch.allclose(whole[k], cut[k], atol=1e-6), k
    steps = [r.step for r in read_log(tmp_path / "cut") if isinstance(r, StepRecord)]
    assert steps == list(range(1, 19))


@pytest.mark.parametrize("kl_max", [0.0, 1.0])
def test_best_weights_minimise_the_runs_own_objective(prepared, tmp_path, kl_max):
    # An autoencoder (kl_max = 0) is judged by rec alone: its KL grows freely, and judging it
    # by rec + KL would keep an early epoch. A VAE is judged by the -ELBO.
    cfg = tiny(epochs=4, kl_max=kl_max, free_bits=0.0, word_dropout=0.3, lr=1e-2)
    train(cfg, prepared, tmp_path / "r")
    epochs = [r.valid for r in read_log(tmp_path / "r") if isinstance(r, EpochRecord)]
    score = [v.rec + kl_max * v.kl for v in epochs]
    kept = ElboTerms.from_dict(ckpt.load_tensors(tmp_path / "r" / rundir.BEST)[1]["valid"])
    assert kept == epochs[score.index(min(score))]


def test_encoder_noise_is_part_of_the_seeded_run(prepared, tmp_path):
    cfg = tiny(epochs=1, encoder_word_dropout=0.3)
    a, b = train(cfg, prepared, tmp_path / "a"), train(cfg, prepared, tmp_path / "b")
    plain = train(tiny(epochs=1), prepared, tmp_path / "c")
    assert a.valid == b.valid and a.valid != plain.valid


def test_bn_vae_needs_two_poems_per_batch(prepared, tmp_path):
    cfg = dataclasses.replace(TINY, model=dataclasses.replace(TINY.model, bn_gamma=1.0))
    with pytest.raises(ConfigError, match="bn_gamma"):
        train(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, batch_size=1)), prepared, tmp_path / "r")


def test_resume_needs_a_run(prepared, tmp_path):
    with pytest.raises(CheckpointError):
        train(TINY, prepared, tmp_path / "nothing", resume=True)


def test_embed_dim_must_match_the_prepared_embeddings(prepared, tmp_path):
    import dataclasses

    cfg = dataclasses.replace(TINY, model=dataclasses.replace(TINY.model, embed_dim=20))
    with pytest.raises(ConfigError, match="embed-dim 20"):
        train(cfg, prepared, tmp_path / "r")


def test_no_latent_baseline_trains(prepared, tmp_path):
    import dataclasses

    cfg = dataclasses.replace(TINY, model=dataclasses.replace(TINY.model, use_latent=False))
    result = train(cfg, prepared, tmp_path / "lm")
    assert result.valid.kl == 0.0
    assert Poet.load(tmp_path / "lm").sample(2, DecodeOptions(seed=0))[0].lines


def test_learning_rate_follows_the_square_root_rule_only_when_asked():
    from poetvae.train import learning_rate

    assert learning_rate(TrainConfig(lr=2e-3, batch_size=512)) == 2e-3  # lr_batch 0: as given
    assert learning_rate(TrainConfig(lr=2e-3, batch_size=128, lr_batch=128)) == pytest.approx(2e-3)
    assert learning_rate(TrainConfig(lr=2e-3, batch_size=512, lr_batch=128)) == pytest.approx(4e-3)
    assert learning_rate(TrainConfig(lr=2e-3, batch_size=32, lr_batch=128)) == pytest.approx(1e-3)
    with pytest.raises(ConfigError):
        load_config(overrides={"lr_batch": -1})


def test_training_needs_the_model_alone():
    """Training imports no decoding, controls, prosody or Poet code (a fresh interpreter)."""
    generation = ("poetvae.decode", "poetvae.controls", "poetvae.prosody", "poetvae.poet")
    code = f"import poetvae.train, sys; print([m for m in {generation!r} if m in sys.modules])"
    repo = Path(__file__).resolve().parents[1]
    loaded = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"
