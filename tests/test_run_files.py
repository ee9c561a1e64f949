"""Every file read from a run is checked before use (the log, the optimizer state of the
resume point, the vocabulary, the dtypes of the weights) and a corpus has a size ceiling:
each damage ends in one line `error: …` naming the file, never a traceback or output that
is silently wrong. And a resume after Ctrl-C on an epoch's last step equals the run that was
not interrupted."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch
from helpers import one_line_error, tiny
from typer.testing import CliRunner

import poetvae.corpus
import poetvae.errors
import poetvae.train
from poetvae import rundir
from poetvae.checkpoint import load_tensors, save_tensors
from poetvae.cli import app
from poetvae.prior import FittedPrior
from poetvae.records import read_log
from poetvae.train import train

runner = CliRunner()
JING_YE_SI = "床前明月光，疑是地上霜。举头望明月，低头思故乡。"


def cli(*args) -> object:
    return runner.invoke(app, [str(a) for a in args])


def ends_in_error(result, fragment: str) -> None:
    """Exit 1, no traceback, and `error: …fragment…` as the last line (train --resume prints
    the run's config before it reads the resume point)."""
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("error:") and fragment in last, result.output


@pytest.fixture
def run_copy(trained_run, prep_dir, tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    shutil.copytree(prep_dir, run / "prep")
    return run


# ---- the log -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "line, fragment",
    [(b'{"kind": "step", "step": 1}\xff\xfe\n', "is not UTF-8 text"), (b"[" * 200_000 + b"\n", "bytes long")]
    + [(b"[" * 20_000 + b"]" * 20_000 + b"\n", "nested too deeply")]
    + [(b'{"kind": "step", "step": "x", "loss": [1]}\n', "step must be a number")],
    ids=["not utf-8", "a huge line", "nested", "a string step"],
)
def test_a_damaged_log_is_one_line_in_plot_and_resume(run_copy, line, fragment):
    with open(run_copy / rundir.LOG, "ab") as f:
        f.write(line)
    before = (run_copy / rundir.LOG).read_bytes()
    one_line_error(cli("plot", run_copy, "-o", run_copy.parent / "plots"), "log.jsonl line")
    ends_in_error(cli("train", "--resume", run_copy), fragment)
    assert (run_copy / rundir.LOG).read_bytes() == before  # nothing was cut


def test_a_log_cut_short_inside_a_character_is_still_read(run_copy):
    """The one damage a crash leaves: the last line cut short, even inside a character."""
    records = read_log(run_copy)
    with open(run_copy / rundir.LOG, "ab") as f:
        f.write('{"kind": "step", "note": "春'.encode()[:-1])
    assert read_log(run_copy) == records


# ---- the optimizer state of the resume point --------------------------------------------------
def _edit_resume_point(run: Path, edit) -> None:
    tensors, meta = load_tensors(run / rundir.LAST)
    edit(tensors, meta)
    save_tensors(run / rundir.LAST, tensors, meta)


@pytest.mark.parametrize(
    "edit, fragment",
    [
        (lambda t, m: m["optimizer"]["param_groups"][0].update(lr="x"), "lr must be a finite number"),
        (lambda t, m: m["optimizer"]["param_groups"][0].update(lr=-1), "lr out of range"),
        (lambda t, m: m["optimizer"]["param_groups"][0].update(betas=[2.0, 5]), "betas must be 2 numbers in [0, 1)"),
        (lambda t, m: m["optimizer"]["param_groups"][0].update(eps=0), "eps out of range"),
        (lambda t, m: m["optimizer"]["param_groups"][0].update(params=[0, 1]), "params must be"),
        (lambda t, m: t.update({"optim.0.exp_avg": torch.zeros(3, 3)}), "has shape (3, 3)"),
        (lambda t, m: t.update({"optim.0.exp_avg_sq": t["optim.0.exp_avg_sq"].long()}), "must be floating point"),
        (lambda t, m: t.update({"optim.0.step": torch.tensor(-1.0)}), "the step count must be"),
        (lambda t, m: t.update({"optim.9999.exp_avg": torch.zeros(1)}), "belongs to no parameter"),
        (lambda t, m: t.update({"model.embedding.weight": t["model.embedding.weight"].long()}), "is torch.int64"),
    ],
    ids=["lr x", "lr -1", "betas", "eps 0", "params", "moment shape", "moment dtype", "step", "pid", "int weights"],
)
def test_a_bad_optimizer_state_is_refused_before_the_first_step(run_copy, edit, fragment):
    _edit_resume_point(run_copy, edit)
    before = (run_copy / rundir.LAST).read_bytes()
    ends_in_error(cli("train", "--resume", run_copy), fragment)
    assert (run_copy / rundir.LAST).read_bytes() == before


# ---- the vocabulary -------------------------------------------------------------------------
@pytest.mark.parametrize("token", ["明月", "\x1b[31m", "a\nb", "x", " "])
def test_a_vocabulary_token_that_is_not_one_han_character_is_refused(run_copy, token):
    vocab = json.loads((run_copy / rundir.VOCAB).read_text(encoding="utf-8"))
    vocab["tokens"][10] = token
    (run_copy / rundir.VOCAB).write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    line = one_line_error(cli("sample", "-m", run_copy, "-n", "1", "-f", "oneline"), "token 10 is")
    assert "\x1b" not in line and "not one Han character" in line


def test_a_jieba_vocabulary_holds_words_of_han_characters():
    from poetvae.vocab import SPECIALS, Vocab

    words = [*SPECIALS, "明月", "白日依山尽"]
    vocab = Vocab.from_json(json.dumps({"tokens": words, "counts": [0] * 6, "tokenizer": "jieba", "min_count": 1}))
    assert vocab.tokens == words
    with pytest.raises(poetvae.errors.CheckpointError, match="a word of 1 to 5 Han characters"):
        too_long = {"tokens": [*SPECIALS, "白日依山尽黄"], "counts": [0] * 5, "tokenizer": "jieba", "min_count": 1}
        Vocab.from_json(json.dumps(too_long))


# ---- the dtypes of the weights ----------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.int32, torch.bool, torch.complex64])
def test_weights_of_another_kind_are_refused_not_cast(run_copy, dtype, tmp_path):
    tensors, meta = load_tensors(run_copy / rundir.BEST)
    tensors["embedding.weight"] = tensors["embedding.weight"].to(dtype)
    save_tensors(run_copy / rundir.BEST, tensors, meta)
    one_line_error(cli("sample", "-m", run_copy, "-n", "1"), f"embedding.weight is {dtype}")
    one_line_error(cli("export", "-m", run_copy, tmp_path / "b"), f"embedding.weight is {dtype}")
    assert not (tmp_path / "b").exists()


# ---- the size of a corpus ---------------------------------------------------------------------
def test_a_gzip_bomb_is_refused_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(poetvae.corpus, "MAX_CORPUS_BYTES", 1_000_000)
    bomb = tmp_path / "poems.txt.gz"
    bomb.write_bytes(gzip.compress(b"\n" * 5_000_000))  # 5 MB of text in about 5 KB
    one_line_error(cli("prep", bomb, "-o", tmp_path / "p"), "decompresses to more than 1,000,000 bytes")
    plain = tmp_path / "poems.txt"
    plain.write_bytes((JING_YE_SI + "\n").encode() * 20_000)
    one_line_error(cli("prep", plain, "-o", tmp_path / "p"), "is larger than 1,000,000 bytes")
    assert not (tmp_path / "p").exists()


def test_the_ceiling_is_two_gib():
    assert poetvae.corpus.MAX_CORPUS_BYTES == 2 * 2**30


# ---- Ctrl-C on an epoch's last step ------------------------------------------------------------
def test_ctrl_c_on_an_epochs_last_step_validates_that_epoch_first(prepared, tmp_path, monkeypatch):
    """TINY has 6 steps per epoch. A Ctrl-C at step 6 stops after that epoch's validation, so
    the resumed run has the best weights, log and prior of the run never interrupted."""
    cfg = tiny(epochs=2)
    train(cfg, prepared, tmp_path / "whole")
    step, calls = poetvae.train.train_step, []

    def ctrl_c_in_step_6(*args, **kwargs):  # the SIGINT of a Ctrl-C, inside the epoch's last step
        calls.append(1)
        if len(calls) == 6:
            os.kill(os.getpid(), signal.SIGINT)
        return step(*args, **kwargs)

    monkeypatch.setattr(poetvae.train, "train_step", ctrl_c_in_step_6)
    cut = train(cfg, prepared, tmp_path / "cut")
    monkeypatch.undo()
    assert cut.interrupted and cut.steps == 6 and cut.valid is not None  # validated before it stopped
    train(cfg, prepared, tmp_path / "cut", resume=True)
    whole, cut_run = tmp_path / "whole", tmp_path / "cut"
    for name in (rundir.BEST, rundir.LAST):
        a, meta_a = load_tensors(whole / name)
        b, meta_b = load_tensors(cut_run / name)
        assert all(torch.equal(a[k], b[k]) for k in a if not k.startswith("rng.cuda")), name
        assert meta_a["step"] == meta_b["step"]

    def without_time(records):
        return [{k: v for k, v in vars(r).items() if k != "seconds"} for r in records]

    assert without_time(read_log(cut_run)) == without_time(read_log(whole))
    a, b = FittedPrior.load(whole / rundir.PRIOR), FittedPrior.load(cut_run / rundir.PRIOR)
    assert torch.equal(a.mean, b.mean) and torch.equal(a.scale_tril, b.scale_tril)
