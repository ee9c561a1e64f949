"""Nothing a user owns is overwritten: every directory poetvae writes (a run, a prepared
corpus, a bundle) follows one rule (poetvae.rundir.refuse_target and building): an existing
one is refused unless --overwrite and it is of that kind, the new one is built beside it and
appears in one step, and the directory's lock is held meanwhile. Each test shows the old
directory intact after the refusal or the kill."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import TINY_MODEL_FLAGS, one_line_error
from typer.testing import CliRunner

from poetvae import rundir
from poetvae.cli import app
from poetvae.poet import Poet

runner = CliRunner()
PREP = ["--w2v-epochs", "1", "--embed-dim", "8", "--min-count", "1"]


def cli(*args) -> object:
    return runner.invoke(app, [str(a) for a in args])


def files_of(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def hidden_beside(path: Path) -> list[str]:
    """What poetvae left beside a directory: staging directories, lock files."""
    return sorted(p.name for p in Path(path).parent.iterdir() if p.name.startswith(f".{Path(path).name}."))


@pytest.fixture
def run_copy(trained_run, prep_dir, tmp_path) -> Path:
    """`cp -r runs/base runs/x`: a whole run, its prep/ included."""
    run = tmp_path / "runs" / "x"
    shutil.copytree(trained_run, run)
    shutil.copytree(prep_dir, run / "prep")
    return run


def test_prep_into_a_run_is_refused_and_the_run_still_loads(run_copy, shipped_corpus):
    before = files_of(run_copy)
    for extra in ([], ["--overwrite"]):
        result = cli("prep", shipped_corpus, "-o", run_copy, *PREP, *extra)
        one_line_error(result, "holds files that are not a prepared corpus's")
    assert files_of(run_copy) == before
    Poet.load(run_copy)  # still a run
    assert hidden_beside(run_copy) == []  # no lock file, no staging left


def test_prep_into_a_runs_prep_directory_is_refused(run_copy, shipped_corpus):
    """`prep … -o runs/x/prep` would break --resume, and evaluate and fit-prior would read
    the wrong data: a run's directories are the run's."""
    before = files_of(run_copy)
    for extra in ([], ["--overwrite"]):
        one_line_error(cli("prep", shipped_corpus, "-o", run_copy / "prep", *PREP, *extra), "is inside the run")
    assert files_of(run_copy) == before


def test_prep_never_replaces_the_users_own_files(shipped_corpus, tmp_path):
    """`prep … -o d` with the user's own d/train.txt: not a prepared corpus, never replaced."""
    mine = tmp_path / "d"
    mine.mkdir()
    (mine / "train.txt").write_text("my poems\n", encoding="utf-8")
    for extra in ([], ["--overwrite"]):
        one_line_error(cli("prep", shipped_corpus, "-o", mine, *PREP, *extra), "not a whole prepared corpus")
    assert files_of(mine) == {"train.txt": b"my poems\n"}


def test_prep_twice_refuses_then_overwrite_replaces_it_whole(shipped_corpus, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli("prep", shipped_corpus, *PREP).exit_code == 0  # into ./prep
    before = files_of(tmp_path / "prep")
    one_line_error(cli("prep", shipped_corpus, *PREP, "--split-seed", "1"), "prep already holds a prepared corpus")
    assert files_of(tmp_path / "prep") == before
    result = cli("prep", shipped_corpus, *PREP, "--split-seed", "1", "--overwrite")
    assert result.exit_code == 0, result.output
    after = files_of(tmp_path / "prep")
    assert after["train.txt"] != before["train.txt"] and "manifest.json" in after
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prep"]  # nothing left beside it


def test_prep_killed_over_an_existing_prep_leaves_it_whole(shipped_corpus, tmp_path):
    """kill -9 of `prep --overwrite` half way through writing: the old prepared corpus is as
    it was (its manifest included), and the next prep clears what the killed one left."""
    old = tmp_path / "p"
    assert cli("prep", shipped_corpus, "-o", old, *PREP).exit_code == 0
    before = files_of(old)
    # the new corpus is half written (its splits, not yet its vocabulary) when the process dies
    code = textwrap.dedent(f"""
        import os, signal
        import poetvae.prep
        from poetvae import rundir
        from poetvae.cli import main
        def die(path, *args, **kwargs):
            os.kill(os.getpid(), signal.SIGKILL)
        poetvae.prep.atomic_write = die
        import sys
        sys.argv = ["poetvae", "prep", {str(shipped_corpus)!r}, "-o", {str(old)!r}, "--overwrite", *{PREP!r}]
        main()
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr
    assert files_of(old) == before
    assert any(name.startswith(".p.staging-") for name in hidden_beside(old))  # what the killed one left
    result = cli("prep", shipped_corpus, "-o", old, *PREP, "--overwrite")  # the kill's lock file does not block
    assert result.exit_code == 0, result.output
    assert hidden_beside(old) == []


def test_export_over_a_run_in_training_is_refused(run_copy, trained_run, tmp_path):
    """`export -m RUN DEST --overwrite` where DEST is a run being trained: the training's
    lock refuses it, and the run keeps its prep, weights and log."""
    before = files_of(run_copy)
    with rundir.RunDir(run_copy).lock():  # what `train -o` / `--resume` hold while they run
        one_line_error(cli("export", "-m", trained_run, run_copy, "--overwrite"), "in use by another training")
    assert files_of(run_copy) == before


def test_export_copies_no_symbolic_link(run_copy, tmp_path):
    """A symlinked evaluation.json (it could point at any file of the machine) is refused,
    not followed into the bundle."""
    secret = tmp_path / "secret.json"
    secret.write_text('{"password": 1}', encoding="utf-8")
    (run_copy / "evaluation.json").symlink_to(secret)
    one_line_error(cli("export", "-m", run_copy, tmp_path / "b"), "evaluation.json is a symbolic link")
    assert not (tmp_path / "b").exists()


def test_train_reads_no_symbolic_link_out_of_a_prep_directory(prep_dir, tmp_path):
    linked = tmp_path / "prep"
    shutil.copytree(prep_dir, linked)
    (linked / "test.txt").unlink()
    (linked / "test.txt").symlink_to(prep_dir / "test.txt")
    result = cli("train", linked, "-o", tmp_path / "run", *TINY_MODEL_FLAGS, "--epochs", "1")
    one_line_error(result, "test.txt is a symbolic link")
    assert not (tmp_path / "run").exists()


def test_refused_commands_leave_no_lock_file(run_copy, prep_dir, tmp_path):
    one_line_error(cli("train", prep_dir, "-o", run_copy, *TINY_MODEL_FLAGS), "already holds a run")
    one_line_error(cli("train", prep_dir, "-o", run_copy / "prep", *TINY_MODEL_FLAGS), "is inside the run")
    assert hidden_beside(run_copy) == [] and hidden_beside(run_copy / "prep") == []


@pytest.mark.parametrize("args", [["train", "--corpus", "small", "-o", "/"], ["train", "--resume", "/"]])
def test_the_root_is_no_run_directory(args):
    one_line_error(cli(*args), "/ is the root of the file system")


def test_a_lock_released_by_one_holder_is_taken_by_the_next(tmp_path):
    """The lock file goes when its holder lets go; a process that opened it meanwhile finds
    it gone and takes the new one, so two holders never think they both hold it."""
    target = rundir.RunDir(tmp_path / "r")
    with target.lock():
        assert os.path.exists(tmp_path / ".r.lock")
        with pytest.raises(rundir.RunLocked):
            with target.lock():
                pass
    assert not os.path.exists(tmp_path / ".r.lock")
    with target.lock():
        pass
