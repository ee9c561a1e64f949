"""Runs are never lost or mixed: divergence, Ctrl-C inside a step, an overwrite that fails,
two trainings into one directory, a resumed log, file modes, a full disk during prep."""

import dataclasses
import errno
import math
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch
from helpers import TINY, TINY_MODEL_FLAGS, tiny
from typer.testing import CliRunner

import poetvae.checkpoint
import poetvae.train
from poetvae import rundir
from poetvae.cli import app
from poetvae.errors import TrainingDiverged
from poetvae.files import atomic_write
from poetvae.model import PoetVAE
from poetvae.records import StepRecord, read_log
from poetvae.train import train

runner = CliRunner()
# the TINY model as flags, trained on the session's prep directory (6 steps per epoch)
FLAGS = [*TINY_MODEL_FLAGS, "--epochs", "2", "--log-every", "1", "--device", "cpu"]


def cli(*args) -> object:
    return runner.invoke(app, [str(a) for a in args])


def assert_error(result, fragment: str) -> None:
    """Exit 1 with `error: …fragment…` as the last line, and no traceback."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("error:") and fragment in last, result.output


def beside(path: Path) -> list[str]:
    """The hidden names poetvae left beside a run directory (the lock file may stay)."""
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(".") and not p.name.endswith(".lock"))


def files_of(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def all_finite(path: Path) -> bool:
    tensors, _ = poetvae.checkpoint.load_tensors(path)
    return all(torch.isfinite(t).all() for k, t in tensors.items() if t.is_floating_point())


def step_of(path: Path) -> int:
    return poetvae.checkpoint.load_tensors(path)[1]["step"]


@pytest.fixture
def nan_after(monkeypatch):
    """nan_after(k): the training loss becomes NaN from the (k+1)-th training step on."""

    def install(k: int) -> None:
        loss = PoetVAE.loss
        calls = {"n": 0}

        def poisoned(self, *args, **kwargs):
            terms = loss(self, *args, **kwargs)
            if self.training:
                calls["n"] += 1
                if calls["n"] > k:
                    terms = {**terms, "loss": terms["loss"] * math.nan}
            return terms

        monkeypatch.setattr(PoetVAE, "loss", poisoned)

    return install


# ---- case 7: divergence ------------------------------------------------------------------
# caught at a log step (log_every 1) or before the save at the end of epoch 2 (log_every
# 100); with no validation split every epoch's weights are "best", and still not the NaN ones
@pytest.mark.parametrize("log_every,with_validation", [(1, True), (100, False)])
def test_divergence_stops_training_and_keeps_the_last_finite_files(
    prepared, tmp_path, nan_after, log_every, with_validation
):
    data = prepared if with_validation else dataclasses.replace(prepared, splits={**prepared.splits, "valid": []})
    nan_after(8)  # epoch 1 (steps 1-6) is good; step 9 on is NaN
    with pytest.raises(TrainingDiverged, match=r"diverged by step \d+ .*last finite resume point \(step 6\)"):
        train(tiny(epochs=2, log_every=log_every), data, tmp_path)
    assert step_of(tmp_path / rundir.LAST) == 6 and all_finite(tmp_path / rundir.LAST)
    assert step_of(tmp_path / rundir.BEST) == 6 and all_finite(tmp_path / rundir.BEST)
    assert all(math.isfinite(r.loss) for r in read_log(tmp_path) if isinstance(r, StepRecord))


def test_divergence_on_the_command_line(prep_dir, tmp_path, nan_after):
    nan_after(3)  # in the first epoch: no resume point yet, so no run at all
    result = cli("train", prep_dir, "-o", tmp_path / "r", *FLAGS)
    assert_error(result, "training diverged by step 4 (the loss is nan); nothing was saved")
    assert not (tmp_path / "r").exists() and beside(tmp_path / "r") == []


def test_a_huge_learning_rate_is_caught(prep_dir, tmp_path):
    result = cli("train", prep_dir, "-o", tmp_path / "r", *FLAGS, "--lr", "1e6")
    assert_error(result, "training diverged")


# ---- case 8: Ctrl-C ----------------------------------------------------------------------
def ctrl_c_in_step(monkeypatch, at: int, *, again_in_save: bool = False) -> None:
    """SIGINT from inside training step `at` (its noise drawn, its update not yet made);
    with again_in_save, a second one while the resume point is written."""
    step = poetvae.train.train_step
    save = poetvae.checkpoint.save_tensors
    calls = {"n": 0}

    def interrupted_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == at:
            os.kill(os.getpid(), signal.SIGINT)
        return step(*args, **kwargs)

    def interrupted_save(path, *args, **kwargs):
        if path.name == rundir.LAST:
            os.kill(os.getpid(), signal.SIGINT)
        return save(path, *args, **kwargs)

    monkeypatch.setattr(poetvae.train, "train_step", interrupted_step)
    if again_in_save:
        monkeypatch.setattr(poetvae.checkpoint, "save_tensors", interrupted_save)


def test_ctrl_c_inside_a_step_resumes_bit_for_bit(prepared, tmp_path, monkeypatch):
    cfg = tiny(epochs=2, max_steps=8)
    train(cfg, prepared, tmp_path / "whole")
    handler = signal.getsignal(signal.SIGINT)
    with monkeypatch.context() as patch:
        ctrl_c_in_step(patch, 4)
        cut = train(cfg, prepared, tmp_path / "cut")
    assert cut.interrupted and cut.steps == 4
    assert signal.getsignal(signal.SIGINT) is handler  # put back
    resumed = train(cfg, prepared, tmp_path / "cut", resume=True)
    assert resumed.steps == 8 and not resumed.interrupted
    whole, _ = poetvae.checkpoint.load_tensors(tmp_path / "whole" / rundir.LAST)
    again, _ = poetvae.checkpoint.load_tensors(tmp_path / "cut" / rundir.LAST)
    assert all(torch.equal(whole[k], again[k]) for k in whole if not k.startswith("rng.cuda"))
    steps = [r.step for r in read_log(tmp_path / "cut") if isinstance(r, StepRecord)]
    assert steps == list(range(1, 9))


def test_two_ctrl_c_in_quick_succession(prep_dir, tmp_path, monkeypatch):
    ctrl_c_in_step(monkeypatch, 3, again_in_save=True)
    result = cli("train", prep_dir, "-o", tmp_path / "r", *FLAGS, "--epochs", "1")
    assert result.exit_code == 130 and "Traceback" not in result.output, result.output
    assert "interrupted at step 3; continue with: poetvae train --resume" in result.output
    assert step_of(tmp_path / "r" / rundir.LAST) == 3 and (tmp_path / "r" / rundir.BEST).is_file()
    monkeypatch.undo()
    assert cli("train", "--resume", tmp_path / "r").exit_code == 0


# ---- case 9: a new run appears whole, an overwrite is one step ---------------------------
def crash_in_step(monkeypatch, at: int) -> None:
    step = poetvae.train.train_step
    calls = {"n": 0}

    def crashing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == at:
            raise RuntimeError("killed")
        return step(*args, **kwargs)

    monkeypatch.setattr(poetvae.train, "train_step", crashing)


@pytest.fixture
def old_run(trained_run, tmp_path) -> Path:
    path = tmp_path / "runs" / "x"
    shutil.copytree(trained_run, path)
    return path


def test_an_overwrite_that_dies_in_its_first_epoch_leaves_the_old_run(prep_dir, old_run, monkeypatch):
    before = files_of(old_run)
    crash_in_step(monkeypatch, 3)
    result = cli("train", prep_dir, "-o", old_run, *FLAGS, "--latent-dim", "5", "--overwrite")
    assert isinstance(result.exception, RuntimeError)
    assert files_of(old_run) == before and beside(old_run) == []


def test_a_failed_overwrite_does_not_bring_in_its_prep(old_run, tmp_path):
    before = files_of(old_run)
    bad = tmp_path / "bad.txt"
    bad.write_text("床前明月光\n", encoding="utf-8")
    assert_error(cli("train", bad, "-o", old_run, *FLAGS, "--overwrite"), "no valid")
    assert files_of(old_run) == before and beside(old_run) == []


def test_an_overwrite_replaces_the_run_whole(prep_dir, old_run):
    result = cli("train", prep_dir, "-o", old_run, *FLAGS, "--latent-dim", "5", "--epochs", "1", "--overwrite")
    assert result.exit_code == 0, result.output
    header = rundir.RunDir(old_run).read_header()
    assert header.config.model.latent_dim == 5 and step_of(old_run / rundir.LAST) == 6
    assert len([r for r in read_log(old_run) if isinstance(r, StepRecord)]) == 6  # the old log went
    assert beside(old_run) == []


def test_a_new_run_that_dies_early_leaves_nothing_and_can_be_run_again(prep_dir, tmp_path, monkeypatch):
    target = tmp_path / "r"
    with monkeypatch.context() as patch:
        crash_in_step(patch, 2)
        assert isinstance(cli("train", prep_dir, "-o", target, *FLAGS).exception, RuntimeError)
    assert not target.exists() and beside(target) == []
    assert cli("train", prep_dir, "-o", target, *FLAGS, "--epochs", "1").exit_code == 0


def test_what_a_killed_training_left_is_removed_by_the_next(prep_dir, tmp_path):
    target = tmp_path / "r"
    leftover = tmp_path / ".r.staging-dead"  # as kill -9 leaves it
    (leftover / "prep").mkdir(parents=True)
    assert cli("train", prep_dir, "-o", target, *FLAGS, "--epochs", "1").exit_code == 0
    assert not leftover.exists() and beside(target) == []


def test_staging_leftovers_are_matched_by_name_not_by_pattern(prep_dir, tmp_path):
    other = tmp_path / ".ab.staging-1234"  # the staging directory of run "ab", not of "a[b]"
    other.mkdir()
    assert cli("train", prep_dir, "-o", tmp_path / "a[b]", *FLAGS, "--epochs", "1").exit_code == 0
    assert other.is_dir() and rundir.RunDir(tmp_path / "a[b]").exists()


def test_resuming_what_is_not_there_creates_nothing(tmp_path):
    assert_error(cli("train", "--resume", tmp_path / "no" / "run"), "no such run directory")
    assert list(tmp_path.iterdir()) == []


def test_a_directory_of_other_files_is_not_replaced(prep_dir, tmp_path):
    (tmp_path / "notes.txt").write_text("mine", encoding="utf-8")
    assert_error(cli("train", prep_dir, "-o", tmp_path, *FLAGS), "holds files that are not a run's (notes.txt")
    assert (tmp_path / "notes.txt").read_text(encoding="utf-8") == "mine"


# ---- case 10: one training per run directory ---------------------------------------------
def test_a_second_training_into_a_busy_run_is_refused(old_run, prep_dir):
    before = files_of(old_run)
    with rundir.RunDir(old_run).lock():
        assert_error(cli("train", prep_dir, "-o", old_run, *FLAGS, "--overwrite"), "in use by another training")
        assert_error(cli("train", "--resume", old_run), "in use by another training")
    assert files_of(old_run) == before
    with rundir.RunDir(old_run).lock():  # released again
        pass


# ---- case 6: --devices N with a batch that does not split ---------------------------------
def test_devices_must_divide_the_batch_before_torchrun_starts(prep_dir, tmp_path, monkeypatch):
    import subprocess

    monkeypatch.setattr(subprocess, "call", lambda *a, **k: pytest.fail("torchrun started"))
    result = cli("train", prep_dir, "-o", tmp_path / "r", *FLAGS, "--devices", "3")
    assert_error(result, "batch_size 16 does not split evenly over 3 processes")
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists() and beside(tmp_path / "r") == []


# ---- case 11: a resumed log, file modes, a full disk --------------------------------------
def test_the_log_of_a_run_killed_mid_epoch_then_resumed_has_each_step_once(prepared, tmp_path, monkeypatch):
    with monkeypatch.context() as patch:
        crash_in_step(patch, 9)  # steps 7 and 8 are logged past the resume point (step 6)
        with pytest.raises(RuntimeError):
            train(TINY, prepared, tmp_path)
    with open(tmp_path / rundir.LOG, "a", encoding="utf-8") as f:
        f.write('{"kind": "step", "step": 9, "tot')  # and a line cut short
    train(TINY, prepared, tmp_path, resume=True)
    records = read_log(tmp_path)
    assert [r.step for r in records if isinstance(r, StepRecord)] == list(range(1, 13))
    assert [r.step for r in records] == sorted(r.step for r in records)
    assert (tmp_path / rundir.LOG).read_text(encoding="utf-8").endswith("}\n")


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_atomic_files_get_the_usual_mode(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_write(tmp_path / "f.json", "{}")
    finally:
        os.umask(old)
    assert (tmp_path / "f.json").stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_full_disk_during_prep_leaves_no_temporary_file(shipped_corpus, tmp_path, monkeypatch):
    from gensim.models import KeyedVectors

    def disk_full(self, path, *args, **kwargs):
        Path(path).write_text("3 16\n", encoding="utf-8")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(KeyedVectors, "save_word2vec_format", disk_full)
    result = cli("prep", shipped_corpus, "-o", tmp_path / "p", "--w2v-epochs", "1", "--embed-dim", "8")
    assert_error(result, "No space left on device")
    assert list(tmp_path.iterdir()) == []  # no prep directory, no staging, no temporary file, no lock
