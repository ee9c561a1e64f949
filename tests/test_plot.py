"""Charts: training curves from a synthetic log, and the latent-space PCA scatter."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest

from poetvae.errors import CheckpointError, PoetVAEError
from poetvae.plot import PlotError, pca2, plot_latent, plot_training
from poetvae.records import ElboTerms, EpochRecord, StepRecord, append_log

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
RHYMES = [
    "一东",
    "二冬",
    "七阳",
    "八庚",
    "十一尤",
    "四支",
    "十一真",
    "一先",
    "六麻",
    "五微",
    "十三元",
    "二萧",
    "十七筱",
]


def assert_png(path, min_bytes=10_000):
    assert path.is_file()
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert min_bytes < len(data) < 5_000_000
    # width and height from the IHDR chunk: about 10 x 7 inches at 120 dpi
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert 900 <= width <= 1500 and 600 <= height <= 1100
    # no temporary file left beside it
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def write_log(run_dir, steps=60, steps_per_epoch=20, valid=True):
    for step in range(5, steps + 1, 5):
        beta = min(1.0, step / 30)
        rec, kl = 60 + 40 * math.exp(-step / 15), 3 + 2 * (1 - math.exp(-step / 20))
        append_log(
            run_dir,
            StepRecord(
                step=step,
                total_steps=steps,
                epoch=step // steps_per_epoch,
                rec=rec,
                kl=kl,
                loss=rec + beta * kl,
                beta=beta,
                seconds=0.1 * step,
            ),
        )
        if step % steps_per_epoch == 0:
            terms = (
                ElboTerms(
                    rec=rec + 3,
                    kl=kl - 0.2,
                    nelbo=rec + kl + 2.8,
                    ppl=math.exp((rec + kl + 2.8) / 24),
                    poems=50,
                )
                if valid
                else None
            )
            append_log(run_dir, EpochRecord(step, step / steps_per_epoch, 0.1 * step, terms))


def append_lines(run_dir, *records):
    """Hand-written log lines (as an older or foreign log may hold: fields missing, unknown kinds)."""
    with open(run_dir / "log.jsonl", "a", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def test_plot_training_writes_png(tmp_path):
    write_log(tmp_path)
    paths = plot_training(tmp_path)
    assert paths == [tmp_path / "plots" / "training.png"]
    assert_png(paths[0])


def test_plot_training_custom_out_dir_and_rerun(tmp_path):
    write_log(tmp_path)
    out = tmp_path / "elsewhere" / "charts"
    first = plot_training(tmp_path, out)
    assert first == [out / "training.png"]
    assert_png(first[0])
    assert plot_training(tmp_path, out) == first  # overwrites in place
    assert_png(first[0])


def test_plot_training_tolerates_partial_logs(tmp_path):
    # no validation split, a line cut short by a crash, a step re-logged after a resume,
    # a record of an unknown kind and a NaN value
    write_log(tmp_path, valid=False)
    append_lines(
        tmp_path,
        {"kind": "step", "step": 10, "rec": 70.0, "kl": 4.0, "loss": 74.0, "beta": 0.3},
        {"kind": "note", "text": "hello"},
        {"kind": "step", "step": 65, "rec": float("nan"), "kl": 4.0, "beta": 1.0},
    )
    with open(tmp_path / "log.jsonl", "a", encoding="utf-8") as f:
        f.write('{"kind": "step", "st')
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert_png(plot_training(tmp_path)[0])


def test_plot_training_only_epochs(tmp_path):
    append_lines(
        tmp_path,
        {
            "kind": "epoch",
            "step": 20,
            "epoch": 1.0,
            "valid_rec": 70.0,
            "valid_kl": 3.0,
            "valid_nelbo": 73.0,
            "valid_ppl": 21.0,
        },
    )
    assert_png(plot_training(tmp_path)[0])


def test_plot_training_without_log_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="no training log"):
        plot_training(tmp_path)
    (tmp_path / "log.jsonl").write_text("", encoding="utf-8")
    with pytest.raises(CheckpointError, match="no training log"):
        plot_training(tmp_path)
    assert not (tmp_path / "plots").exists()
    with pytest.raises(CheckpointError):
        plot_training(tmp_path / "missing")


def test_plot_latent_chinese_labels(tmp_path):
    rng = np.random.default_rng(0)
    labels = list(rng.choice(RHYMES, size=300))  # 13 groups: 10 coloured, 3 "other"
    out = tmp_path / "sub" / "latent.png"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no missing-glyph warnings, whatever fonts are installed
        assert plot_latent(rng.normal(size=(300, 8)), labels, out, title="韵部 of line 2") == out
    assert_png(out)


def test_plot_latent_z1_and_two_points(tmp_path):
    rng = np.random.default_rng(1)
    out = plot_latent(rng.normal(size=(40, 1)), list(rng.choice(RHYMES[:3], size=40)), tmp_path / "z1.png")
    assert_png(out)
    out = plot_latent(np.array([[0.0, 1.0, 2.0], [1.0, 1.0, 1.0]]), ["七阳", "七阳"], tmp_path / "n2.png")
    assert_png(out, min_bytes=5_000)
    # identical points: zero variance, still a chart
    assert_png(plot_latent(np.ones((5, 3)), ["a"] * 5, tmp_path / "same.png"), min_bytes=5_000)


@pytest.mark.parametrize(
    "mu, labels",
    [
        (np.zeros((1, 4)), ["七阳"]),
        (np.zeros((0, 4)), []),
        (np.zeros((3, 2)), ["七阳", "一东"]),  # label count differs
        (np.full((3, 2), np.nan), ["a", "b", "c"]),  # non-finite
        (np.zeros((2, 2, 2)), ["a", "b"]),  # wrong rank
    ],
)
def test_plot_latent_rejects_bad_input(tmp_path, mu, labels):
    with pytest.raises(PlotError):
        plot_latent(mu, labels, tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()
    assert issubclass(PlotError, PoetVAEError)


def test_pca2_matches_variance():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(200, 5)) * np.array([5.0, 2.0, 1.0, 0.5, 0.1])
    coords, ratios = pca2(x)
    assert coords.shape == (200, 2)
    assert abs(coords.mean(axis=0)).max() < 1e-9
    var = x.var(axis=0)
    assert ratios[0] == pytest.approx(coords[:, 0].var() / var.sum())
    assert ratios[0] > ratios[1] > 0 and ratios.sum() <= 1
    coords1, ratios1 = pca2(x[:, :1])
    assert np.all(coords1[:, 1] == 0) and ratios1[0] == pytest.approx(1.0) and ratios1[1] == 0
