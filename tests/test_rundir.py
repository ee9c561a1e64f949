"""The run directory: its layout, creating one, refusing to replace one, opening one, and
finding its prepared data and held-out poems."""

import dataclasses
import json

import pytest
import torch

from poetvae.checkpoint import flatten_train_state, save_tensors
from poetvae.config import Config, ModelConfig, PrepConfig
from poetvae.errors import CheckpointError, ConfigError, PoetVAEError
from poetvae.model import PoetVAE
from poetvae.prep import is_prep_dir
from poetvae.rundir import LAYOUT, RunDir, RunHeader
from poetvae.vocab import Vocab

POEMS = [
    "床前明月光，疑是地上霜。举头望明月，低头思故乡。",
    "白日依山尽，黄河入海流。欲穷千里目，更上一层楼。",
    "千山鸟飞绝，万径人踪灭。孤舟蓑笠翁，独钓寒江雪。",
    "红豆生南国，春来发几枝。愿君多采撷，此物最相思。",
    "君自故乡来，应知故乡事。来日绮窗前，寒梅著花未。",
    "移舟泊烟渚，日暮客愁新。野旷天低树，江清月近人。",
]
SMALL = Config(
    prep=PrepConfig(min_count=1, w2v_epochs=1, valid_fraction=0.2, test_fraction=0.2),
    model=ModelConfig(embed_dim=8, highway_layers=1, hidden_dim=12, latent_dim=4),
)


def small_vocab() -> Vocab:
    return Vocab.build([p.replace("。", "，").split("，")[:4] for p in POEMS])


def write_split(run: RunDir, name: str, poems: list[str]) -> None:
    run.prep.mkdir(parents=True, exist_ok=True)
    (run.prep / f"{name}.txt").write_text("".join(p + "\n" for p in poems), encoding="utf-8")


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(POEMS) + "\n", encoding="utf-8")
    return path


def test_layout_names_every_file():
    run = RunDir("runs/x")
    assert run.config_file.name == "config.json" and run.vocab_file.name == "vocab.json"
    assert run.best.name == "model.safetensors" and run.last.name == "last.safetensors"
    assert run.log.name == "log.jsonl" and run.prior.name == "prior.safetensors"
    assert run.prep.name == "prep" and run.plots.name == "plots"
    files = (run.config_file, run.best, run.last, run.log, run.prior, run.prep, run.plots)
    assert {p.parent for p in files} == {run.path}
    assert {p.name for p in files} | {run.vocab_file.name} == LAYOUT  # a run's own files are not foreign


def test_create_then_open_gives_back_config_and_vocab(tmp_path):
    run = RunDir(tmp_path / "run")
    assert not run.exists()
    vocab = small_vocab()
    run.create(SMALL, vocab)
    assert run.exists()
    header = run.read_header()
    assert isinstance(header, RunHeader)
    assert header.config == SMALL
    assert header.vocab.tokens == vocab.tokens
    saved = json.loads(run.config_file.read_text(encoding="utf-8"))
    assert saved["model"]["latent_dim"] == 4


def test_create_starts_an_empty_log(tmp_path):
    run = RunDir(tmp_path)
    run.log.write_text('{"kind": "step"}\n', encoding="utf-8")
    run.create(SMALL, small_vocab())
    assert not run.log.exists()


def test_refuse_existing_run_unless_overwrite(tmp_path):
    run = RunDir(tmp_path / "run")
    run.refuse_existing(overwrite=False)  # nothing there yet
    run.create(SMALL, small_vocab())
    with pytest.raises(PoetVAEError, match="already holds a run: --resume .* continues it, --overwrite replaces it"):
        run.refuse_existing(overwrite=False)
    run.refuse_existing(overwrite=True)


def test_opening_what_is_not_a_run(tmp_path):
    with pytest.raises(CheckpointError, match="no such run directory"):
        RunDir(tmp_path / "missing").read_header()
    with pytest.raises(CheckpointError, match="not a poetvae run"):
        RunDir(tmp_path).read_header()
    run = RunDir(tmp_path / "broken")
    run.create(SMALL, small_vocab())
    run.config_file.write_text('{"model": {"latent_size": 3}}', encoding="utf-8")
    with pytest.raises(CheckpointError, match="config.json"):
        run.read_header()


def test_prepare_data_from_corpus_files_then_resume_reads_it(tmp_path, corpus):
    run = RunDir(tmp_path / "run")
    data = run.load_training_data([corpus], SMALL)
    assert is_prep_dir(run.prep)
    assert sum(len(v) for v in data.splits.values()) == len(POEMS)
    run.create(SMALL, data.vocab)
    resumed = run.open_for_resume()
    assert resumed.config == SMALL
    assert resumed.data.vocab.tokens == data.vocab.tokens
    assert torch.equal(resumed.data.embeddings, data.embeddings)


def test_prepare_data_copies_a_prep_directory(tmp_path, prep_dir):
    run = RunDir(tmp_path / "run")
    assert run.prepare_data(prep_dir, SMALL) == run.prep
    assert (run.prep / "train.txt").read_bytes() == (prep_dir / "train.txt").read_bytes()
    assert is_prep_dir(run.prep)


def test_prepare_data_refuses_a_plain_directory(tmp_path):
    (tmp_path / "plain").mkdir()
    with pytest.raises(CheckpointError, match="not a prepared corpus"):
        RunDir(tmp_path / "run").prepare_data(tmp_path / "plain", SMALL)


def test_prepare_data_under_torchrun_needs_a_prep_directory(tmp_path, corpus, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="multi-process training reads a prepared corpus"):
        RunDir(tmp_path / "run").prepare_data([corpus], SMALL)


def test_heldout_is_the_test_split_then_the_validation_split(tmp_path):
    run = RunDir(tmp_path)
    run.create(SMALL, small_vocab())
    write_split(run, "train", POEMS[:3])
    write_split(run, "valid", POEMS[3:4])
    write_split(run, "test", POEMS[4:])
    held = run.heldout()
    assert held.source == "the run's test split"
    assert [p.oneline() for p in held.poems] == POEMS[4:]
    write_split(run, "test", [])
    held = run.heldout()
    assert held.source == "the run's valid split" and [p.oneline() for p in held.poems] == POEMS[3:4]
    write_split(run, "valid", [])
    with pytest.raises(CheckpointError, match="no held-out poems; pass a corpus"):
        run.heldout()
    assert [p.oneline() for p in run.train_poems()] == POEMS[:3]


def test_heldout_from_a_corpus_given(tmp_path, corpus):
    run = RunDir(tmp_path / "run")
    run.create(SMALL, small_vocab())
    write_split(run, "train", POEMS[:1])
    held = run.heldout([corpus])
    assert held.source == str(corpus) and len(held.poems) == len(POEMS)


def test_heldout_needs_a_run_with_its_training_split(tmp_path):
    with pytest.raises(CheckpointError, match="not a poetvae run"):
        RunDir(tmp_path).heldout()
    run = RunDir(tmp_path)
    run.create(SMALL, small_vocab())
    with pytest.raises(CheckpointError, match="keeps no test split"):
        run.heldout()
    with pytest.raises(CheckpointError, match="has no prep/ directory"):
        run.train_poems()


def test_weights_best_and_last(tmp_path):
    run = RunDir(tmp_path)
    model = PoetVAE(dataclasses.replace(SMALL.model, vocab_size=len(small_vocab())))
    optimizer = torch.optim.AdamW(model.parameters())
    save_tensors(run.best, model.state_dict())
    tensors, meta = flatten_train_state(model, optimizer)
    save_tensors(run.last, tensors, {"optimizer": meta})
    for which in ("best", "last"):
        weights = run.weights(which)
        assert weights.keys() == model.state_dict().keys()
        assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="best or last"):
        run.weights("middle")
    with pytest.raises(CheckpointError, match="no checkpoint"):
        RunDir(tmp_path / "empty").weights()
