"""Pretrain, then fine-tune: `train --init RUN` starts a new run from another run's best
weights, vocabulary and model, with its own schedule and directory, and records where it
started. Its corpus is prepared with that vocabulary (unknown characters become <unk>,
counted); a fine-tuning run resumes like any other."""

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from helpers import TINY, TINY_MODEL_FLAGS, one_line_error
from typer.testing import CliRunner

import poetvae.train
from poetvae import checkpoint as ckpt
from poetvae import rundir
from poetvae.cli import app
from poetvae.config import load_config
from poetvae.errors import ConfigError
from poetvae.prep import load_prepared, prepare
from poetvae.records import StepRecord, read_log
from poetvae.train import train
from poetvae.vocab import UNK

runner = CliRunner()
# characters the shipped corpus (the init run's vocabulary) does not have
RARE = "龘靐齉爩麤鱻灥厵飝羴"
NEW_POEMS = [
    "龘靐齉爩麤，明月照高楼。鱻灥来何处，春风入客舟。",
    "厵飝羴山水，白云生远峰。孤舟归去晚，龘靐一声钟。",
]


def cli(*args) -> object:
    return runner.invoke(app, [str(a) for a in args])


def assert_usage_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    text = " ".join(result.output.replace("│", " ").split())
    assert all(f in text for f in fragments), result.output


@pytest.fixture(scope="module")
def fine_corpus(tmp_path_factory, shipped_corpus) -> list[Path]:
    """The fine-tuning corpus: the shipped poems and two with characters they lack."""
    extra = tmp_path_factory.mktemp("fine") / "new.txt"
    extra.write_text("\n".join(NEW_POEMS) + "\n", encoding="utf-8")
    return [shipped_corpus, extra]


@pytest.fixture(scope="module")
def init(trained_run):
    return rundir.RunDir(trained_run).open_for_init()


@pytest.fixture(scope="module")
def fine_prep(tmp_path_factory, init, fine_corpus):
    """The fine-tuning corpus prepared with the init run's vocabulary and embeddings."""
    path = tmp_path_factory.mktemp("fine_prep")
    result = prepare(fine_corpus, path, TINY.prep, TINY.model.embed_dim, vocab=init.vocab, embeddings=init.embeddings)
    return result, load_prepared(path)


def fine_config(init, **train):
    """A fine-tuning config: the init run's model, a schedule of its own."""
    settings = {"epochs": 3, "batch_size": 16, "log_every": 1, "lr": 1e-3, "kl_schedule": "constant", **train}
    return load_config(overrides=settings, fixed=init.fixed_settings(), inherited=init.refit_settings())


# ---- the library ------------------------------------------------------------------------
def test_the_corpus_is_prepared_with_the_init_vocabulary_and_unknown_characters_counted(init, fine_prep):
    result, data = fine_prep
    assert data.vocab.tokens == init.vocab.tokens and result.vocab_size == len(init.vocab)
    assert torch.equal(data.embeddings, init.embeddings)  # no word2vec: the init run's table
    assert not (result.prep_dir / "word2vec.txt").exists()
    for split, poems in data.splits.items():
        expected = sum(c not in init.vocab.index for p in poems for line in p.lines for c in line)
        assert result.unk_count[split] == expected == int((data.tokens(split) == UNK).sum()), split
    assert sum(result.unk_count.values()) >= sum(c in RARE for p in NEW_POEMS for c in p)
    assert set(RARE) <= set(result.unknown)
    assert result.unknown["龘"] == 2
    manifest = json.loads((result.prep_dir / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["unk_count"] == result.unk_count and manifest["unknown"]["龘"] == 2


def test_load_config_takes_the_fixed_settings_and_refuses_to_change_them(init):
    cfg = fine_config(init)
    assert cfg.model == init.config.model and cfg.prep.tokenizer == init.vocab.tokenizer
    assert cfg.train.lr == 1e-3 and cfg.train.epochs == 3
    hidden = init.config.model.hidden_dim
    with pytest.raises(ConfigError, match=rf"model.hidden_dim = {hidden + 1} \(it has {hidden}\)"):
        load_config(overrides={"hidden_dim": hidden + 1}, fixed=init.fixed_settings())
    same = load_config(overrides={"hidden_dim": hidden}, fixed=init.fixed_settings(), inherited=init.refit_settings())
    assert same.model == init.config.model


def interrupt_before_the_first_step(monkeypatch) -> None:
    """Ctrl-C as the first training step begins (nothing learnt yet)."""

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(poetvae.train, "train_step", interrupted)


def test_a_fine_tuning_run_starts_from_the_init_weights_and_vocabulary(
    init, fine_prep, trained_run, tmp_path, monkeypatch
):
    _, data = fine_prep
    interrupt_before_the_first_step(monkeypatch)
    result = train(fine_config(init), data, tmp_path / "fine", init=init)
    assert result.interrupted and result.steps == 0
    run = rundir.RunDir(tmp_path / "fine")
    assert run.vocab_file.read_bytes() == rundir.RunDir(trained_run).vocab_file.read_bytes()
    best, _ = ckpt.load_tensors(rundir.RunDir(trained_run).best)
    for weights in (run.weights("best"), run.weights("last")):  # at step 0: the init run's
        assert weights.keys() == best.keys()
        assert all(torch.equal(weights[k], best[k]) for k in best)
    header = run.read_header()
    assert header.config.model == init.config.model
    assert header.config.train == fine_config(init).train  # its own schedule
    sha = hashlib.sha256(rundir.RunDir(trained_run).best.read_bytes()).hexdigest()
    assert header.init_from == {
        "run": os.path.abspath(trained_run),
        "weights": rundir.BEST,
        "step": init.step,
        "sha256": sha,
    }
    assert rundir.RunDir(trained_run).read_header().init_from is None  # trained from scratch


def test_init_reset_decoder_keeps_the_encoder_and_starts_the_decoder_afresh(init, fine_prep, tmp_path, monkeypatch):
    _, data = fine_prep
    interrupt_before_the_first_step(monkeypatch)
    train(fine_config(init, init_reset="decoder"), data, tmp_path / "reset", init=init)
    train(fine_config(init), data, tmp_path / "scratch", init=None)  # what a fresh decoder looks like
    reset = rundir.RunDir(tmp_path / "reset").weights("best")
    fresh = rundir.RunDir(tmp_path / "scratch").weights("best")
    decoder = [k for k in reset if k.startswith("decoder.")]
    assert decoder and all(torch.equal(reset[k], fresh[k]) for k in decoder)
    assert not any(torch.equal(reset[k], init.weights[k]) for k in decoder)
    kept = [k for k in reset if k not in decoder]
    assert "encoder.to_mu.weight" in kept and "embedding.weight" in kept
    assert all(torch.equal(reset[k], init.weights[k]) for k in kept)


def test_resume_of_a_fine_tuning_run_is_bit_identical(init, fine_prep, tmp_path):
    _, data = fine_prep
    cfg = fine_config(init)
    whole = train(cfg, data, tmp_path / "whole", init=init)

    def ctrl_c_at_step_4(record):
        if isinstance(record, StepRecord) and record.step == 4:  # mid-epoch
            raise KeyboardInterrupt

    cut = train(cfg, data, tmp_path / "cut", on_log=ctrl_c_at_step_4, init=init)
    assert cut.interrupted and cut.steps == 4
    resumed = train(cfg, data, tmp_path / "cut", resume=True)  # the init is read at the start only
    assert resumed.steps == whole.steps > 4 and not resumed.interrupted
    for name in (rundir.LAST, rundir.BEST):
        a, _ = ckpt.load_tensors(tmp_path / "whole" / name)
        b, _ = ckpt.load_tensors(tmp_path / "cut" / name)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name  # weights, moments, random state
    assert resumed.best_valid == whole.best_valid
    assert [r.step for r in read_log(tmp_path / "cut")] == [r.step for r in read_log(tmp_path / "whole")]
    assert rundir.RunDir(tmp_path / "cut").read_header().init_from == init.record()


def test_the_library_refuses_a_model_that_is_not_the_init_runs(init, fine_prep, tmp_path):
    _, data = fine_prep
    cfg = load_config(overrides={"embed_dim": TINY.model.embed_dim, "hidden_dim": 25})
    with pytest.raises(ConfigError, match="hidden_dim 25"):
        train(cfg, data, tmp_path / "r", init=init)
    assert not (tmp_path / "r").exists()


# ---- the command line ---------------------------------------------------------------------
def test_the_encoder_and_the_skip_connection_may_be_refit_and_the_rest_is_kept(init, fine_prep, tmp_path, monkeypatch):
    """REFIT_SETTINGS (the encoder's size, the skip connection from z) may change from the
    init run: what they shape starts afresh, everything else is the init run's; an unset one
    stays the init run's; any other model setting is still refused."""
    _, data = fine_prep
    hidden = init.config.model.hidden_dim
    z = init.config.model.latent_dim
    refit = {"encoder_hidden_dim": hidden // 2, "z_skip": "position", "latent_dim": z + 2}
    cfg = fine_config(init, **refit)
    assert cfg.model == dataclasses.replace(init.config.model, **refit)
    interrupt_before_the_first_step(monkeypatch)
    train(cfg, data, tmp_path / "refit", init=init)
    weights = rundir.RunDir(tmp_path / "refit").weights("best")
    fresh = {k for k in weights if k.startswith("encoder.lstm") or k.startswith("decoder.z_out")}
    assert "decoder.z_out.weight" in fresh and not weights["decoder.z_out.weight"].any()  # zero: no change yet
    assert weights["encoder.lstm.weight_hh_l0"].shape[1] == hidden // 2
    for name in ("decoder.lstm.weight_ih_l0", "decoder.init_state.weight"):  # they read z: widened
        old = init.weights[name]
        assert weights[name].shape[-1] == old.shape[-1] + 2 and not weights[name][:, old.shape[-1] :].any()
        assert torch.equal(weights[name][:, : old.shape[-1]], old)
        fresh.add(name)
    kept = [k for k in weights if k not in fresh and not k.startswith("encoder.")]
    assert kept and all(torch.equal(weights[k], init.weights[k]) for k in kept)
    # a run started from the refit one keeps its settings unless it sets them
    again = rundir.RunDir(tmp_path / "refit").open_for_init()
    kept = load_config(overrides={"epochs": 1}, fixed=again.fixed_settings(), inherited=again.refit_settings())
    assert kept.model.z_skip == "position" and kept.model.encoder_hidden_dim == hidden // 2
    assert kept.model.latent_dim == z + 2
    with pytest.raises(ConfigError, match="hidden_dim"):
        load_config(overrides={"hidden_dim": hidden * 2}, fixed=init.fixed_settings())
    with pytest.raises(ConfigError, match="latent_dim"):  # a narrower z: the decoder would lose what it reads
        train(fine_config(init, latent_dim=z - 1), data, tmp_path / "narrow", init=init)


def test_train_init_on_the_command_line(trained_run, fine_corpus, tmp_path):
    out = tmp_path / "fine"
    result = cli("train", *fine_corpus, "--init", trained_run, "-o", out, "--epochs", "1", "--lr", "1e-3")
    assert result.exit_code == 0, result.output
    assert "starts from" in result.output and "龘×2" in result.output
    assert (out / rundir.VOCAB).read_bytes() == (trained_run / rundir.VOCAB).read_bytes()
    saved = json.loads((out / rundir.CONFIG).read_text(encoding="utf-8"))
    init_saved = json.loads((trained_run / rundir.CONFIG).read_text(encoding="utf-8"))
    assert saved["model"] == init_saved["model"] and saved["train"]["lr"] == 1e-3 and saved["train"]["epochs"] == 1
    assert saved["init_from"]["run"] == os.path.abspath(trained_run)
    assert saved["init_from"]["sha256"] == hashlib.sha256((trained_run / rundir.BEST).read_bytes()).hexdigest()
    manifest = json.loads((out / "prep" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["unknown"]["龘"] == 2
    resumed = cli("train", "--resume", out)  # a finished fine-tuning run resumes like any other
    assert resumed.exit_code == 0, resumed.output


def test_a_fine_tuning_runs_training_poems_include_its_pretraining_poems(shipped_corpus, fine_corpus, tmp_path):
    """Copies are counted against everything a model trained on, pretraining data included."""
    pre, fine = tmp_path / "pre", tmp_path / "fine"
    assert cli("train", shipped_corpus, *TINY_MODEL_FLAGS, "-o", pre, "--epochs", "1").exit_code == 0
    assert cli("train", *fine_corpus, "--init", pre, "-o", fine, "--epochs", "1").exit_code == 0
    own = rundir.load_poems(rundir.split_file(fine / "prep", "train"))
    pretraining = rundir.load_poems(rundir.split_file(pre / "prep", "train"))
    assert own and pretraining
    assert rundir.RunDir(fine).train_poems() == own
    assert rundir.RunDir(fine).pretraining_poems() == pretraining and rundir.RunDir(pre).pretraining_poems() == []
    pre.rename(tmp_path / "moved")  # the pretraining run is gone: nothing to follow
    assert rundir.RunDir(fine).pretraining_poems() == []


def test_a_prep_directory_with_the_init_vocabulary_is_accepted(trained_run, prep_dir, tmp_path):
    out = tmp_path / "fine"  # prep_dir is what trained_run was trained on
    result = cli("train", prep_dir, "--init", trained_run, "-o", out, "--epochs", "1")
    assert result.exit_code == 0, result.output
    assert json.loads((out / rundir.CONFIG).read_text(encoding="utf-8"))["init_from"]["step"] is not None


@pytest.fixture
def damaged_run(trained_run, tmp_path) -> Path:
    copy = tmp_path / "damaged"
    shutil.copytree(trained_run, copy)
    return copy


def test_init_errors_exit_1_in_one_line(fine_corpus, damaged_run, tmp_path):
    out = tmp_path / "out"
    one_line_error(cli("train", *fine_corpus, "--init", tmp_path / "nothing", "-o", out), "no such run")
    (tmp_path / "empty").mkdir()
    one_line_error(cli("train", *fine_corpus, "--init", tmp_path / "empty", "-o", out), "not a poetvae run")
    best = damaged_run / rundir.BEST
    best.write_bytes(best.read_bytes()[:100])
    one_line_error(cli("train", *fine_corpus, "--init", damaged_run, "-o", out), "model.safetensors")
    best.unlink()
    one_line_error(cli("train", *fine_corpus, "--init", damaged_run, "-o", out), "model.safetensors")
    assert not out.exists()


def test_init_weights_that_do_not_fit_its_config(fine_corpus, damaged_run, tmp_path):
    config = json.loads((damaged_run / rundir.CONFIG).read_text(encoding="utf-8"))
    config["model"]["hidden_dim"] += 1
    (damaged_run / rundir.CONFIG).write_text(json.dumps(config), encoding="utf-8")
    result = cli("train", *fine_corpus, "--init", damaged_run, "-o", tmp_path / "out")
    one_line_error(result, "does not fit the model")


def test_a_prep_directory_with_another_vocabulary_is_refused(trained_run, tmp_path):
    other = tmp_path / "other"
    (tmp_path / "c.txt").write_text("\n".join(NEW_POEMS) + "\n", encoding="utf-8")
    prep_cfg = dataclasses.replace(TINY.prep, valid_fraction=0.0, test_fraction=0.0)
    prepare([tmp_path / "c.txt"], other, prep_cfg, TINY.model.embed_dim)
    result = cli("train", other, "--init", trained_run, "-o", tmp_path / "out")
    one_line_error(result, "own vocabulary")


def test_init_usage_errors_exit_2(trained_run, fine_corpus, tmp_path):
    out = tmp_path / "out"
    assert_usage_error(cli("train", "--init", trained_run, "--resume", out), "--init", "--resume")
    result = cli("train", *fine_corpus, "--init", trained_run, "-o", out, "--hidden-dim", "25", "--tokenizer", "jieba")
    assert_usage_error(result, "--hidden-dim 25 (it has 24)", "--tokenizer jieba (it has char)")
    assert_usage_error(cli("train", *fine_corpus, "--init", trained_run, "--no-latent", "-o", out), "--no-use-latent")
    assert not out.exists()
    # flags that repeat the init run's model are fine; a config file that contradicts it is bad input
    config = tmp_path / "c.toml"
    config.write_text("[model]\nhidden_dim = 9\n", encoding="utf-8")
    result = cli("train", *fine_corpus, "--init", trained_run, "-o", out, "-c", config)
    one_line_error(result, "model.hidden_dim = 9 (it has 24)")
