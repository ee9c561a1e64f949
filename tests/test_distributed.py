"""Multi-process training with torchrun + DDP on the gloo backend (CPU, 2 processes)."""

import json
import os
import subprocess
import sys

import torch
from helpers import TINY_MODEL_FLAGS

from poetvae import checkpoint as ckpt
from poetvae import rundir
from poetvae.decode import DecodeOptions
from poetvae.poet import Poet
from poetvae.records import StepRecord, read_log

FLAGS = [
    *TINY_MODEL_FLAGS,
    "--epochs",
    "2",
    "--log-every",
    "1",
    "--device",
    "cpu",
    "--seed",
    "3",
    "--free-bits",
    "0.2",
    "--word-dropout",
    "0.3",
    "--kl-schedule",
    "cyclical",
    "--kl-cycles",
    "2",
    # nn.Dropout draws its masks per process: with it on, the curves agree in distribution
    # only; off, they agree to float rounding (the tolerance asserted below)
    "--dropout",
    "0",
    # bf16 rounds differently for a batch of 16 and two halves of 8: in fp32 the two runs
    # agree to float rounding, which is what this checks
    "--amp",
    "off",
]


def steps(run_dir):
    return [r for r in read_log(run_dir) if isinstance(r, StepRecord)]


def test_two_processes_follow_the_single_process_run(prep_dir, tmp_path):
    single, double = tmp_path / "one", tmp_path / "two"
    one = subprocess.run(
        [sys.executable, "-m", "poetvae", "train", str(prep_dir), "-o", str(single), *FLAGS],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert one.returncode == 0, one.stderr
    two = subprocess.run(
        [sys.executable, "-m", "poetvae", "train", str(prep_dir), "-o", str(double), *FLAGS, "--devices", "2"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert two.returncode == 0, two.stdout + two.stderr
    a, b = steps(single), steps(double)
    assert len(a) == len(b) > 5
    for x, y in zip(a, b):
        assert x.step == y.step and x.beta == y.beta
        for key in ("loss", "rec", "kl"):
            a, b = getattr(x, key), getattr(y, key)
            assert abs(a - b) <= 1e-4 * max(1.0, abs(a)), (key, x, y)
    # rank 0 alone wrote the run, and it loads and samples like any other
    assert json.loads((double / rundir.CONFIG).read_text(encoding="utf-8"))["model"]["hidden_dim"] == 24
    w1, _ = ckpt.load_tensors(single / rundir.BEST)
    w2, _ = ckpt.load_tensors(double / rundir.BEST)
    assert all(torch.allclose(w1[k], w2[k], atol=1e-4) for k in w1)
    assert len(Poet.load(double).sample(3, DecodeOptions(seed=0))) == 3


def test_devices_with_corpus_files_and_prep_flags(shipped_corpus, tmp_path):
    """The launcher prepares the corpus with the prep flags once; the workers, which read the
    prepared corpus, are not handed those flags again, and the run records the settings the
    corpus was really prepared with."""
    run_dir = tmp_path / "two"
    two = subprocess.run(
        [sys.executable, "-m", "poetvae", "train", str(shipped_corpus), "-o", str(run_dir), *FLAGS[:-2]]
        + ["--epochs", "1", "--devices", "2", "--min-count", "1", "--valid-fraction", "0.1", "--w2v-epochs", "1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert two.returncode == 0, two.stdout + two.stderr
    prep = json.loads((run_dir / rundir.CONFIG).read_text(encoding="utf-8"))["prep"]
    assert (prep["min_count"], prep["valid_fraction"], prep["w2v_epochs"]) == (1, 0.1, 1)


def test_a_torchrun_process_ends_with_its_own_code_and_output():
    """A process torchrun started skips the interpreter's finalisation (a gloo thread may
    still be releasing the last collective's tensors then): it still says everything it
    printed and ends with the code the command chose, a usage error's 2 as a success's 0."""
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}
    sample = [sys.executable, "-m", "poetvae", "sample", "-m", "classical", "-n", "2", "--seed", "0"]
    ok = subprocess.run(sample, capture_output=True, text=True, env=env, timeout=120)
    alone = subprocess.run(sample, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and ok.stdout == alone.stdout and len(ok.stdout.splitlines()) >= 2, ok.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "poetvae", "sample", "--temp", "-1"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert bad.returncode == 2 and "--temp" in bad.stderr
