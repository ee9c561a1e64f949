"""What the latent space holds of a poem: reconstruct, vary, the ends of an interpolation, and
the fitted prior (poetvae.prior) from its fitting through training to `sample --prior fitted`."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import TINY, TINY_MODEL_FLAGS, one_line_error, tiny
from rich.cells import cell_len
from typer.testing import CliRunner

from poetvae import prior as pr
from poetvae import rundir
from poetvae.checkpoint import load_tensors, save_tensors
from poetvae.cli import app
from poetvae.cli.common import _marked
from poetvae.controls import Controls
from poetvae.decode import DecodeOptions
from poetvae.errors import CheckpointError, ConfigError, VocabError
from poetvae.evaluate import reconstruction_accuracy
from poetvae.form import FORM, Poem, matching_chars, parse_poem
from poetvae.model import PoetVAE
from poetvae.poet import Poet, Reconstruction, Sample
from poetvae.records import StepRecord
from poetvae.train import train

runner = CliRunner()
TINY_FLAGS = [*TINY_MODEL_FLAGS, "--epochs", "1", "--w2v-epochs", "1", "--min-count", "1"]
JINGYESI = parse_poem("床前明月光，疑是地上霜。举头望明月，低头思故乡。")


def run(*args) -> object:
    return runner.invoke(app, [str(a) for a in args])


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory) -> Path:
    """`poetvae train` on the shipped corpus (read-only for the tests: copy it to change it)."""
    run_dir = tmp_path_factory.mktemp("latent") / "run"
    result = run("train", "-o", run_dir, *TINY_FLAGS)
    assert result.exit_code == 0, result.output
    return run_dir


@pytest.fixture(scope="module")
def poet(cli_run) -> Poet:
    return Poet.load(cli_run, device="cpu")


@pytest.fixture(scope="module")
def known(poet, prepared) -> list[Poem]:
    """Held-out poems whose characters the tiny vocabulary knows."""
    poems = [p for p in prepared.splits["test"] + prepared.splits["valid"] if not poet.vocab.unknown(p.lines)]
    assert len(poems) >= 3
    return poems


@pytest.fixture(scope="module")
def untrained(poet) -> Poet:
    """The run's model with random weights: what reconstruct and vary promise holds for any
    weights. Not loaded from a run: it has no fitted prior to read."""
    torch.manual_seed(1)
    model = PoetVAE(poet.config.model)
    model.use_vocab(poet.vocab)
    return Poet(model, poet.vocab, poet.config, torch.device("cpu"))


def with_char(poem: Poem, position: int, ch: str) -> Poem:
    text = poem.text[:position] + ch + poem.text[position + 1 :]
    return Poem(tuple(text[i : i + 5] for i in range(0, 20, 5)))


def changed_at(poem: Poem, *positions: int) -> Poem:
    """The poem with a different character at each of the positions."""
    for position in positions:
        poem = with_char(poem, position, "地" if poem.text[position] == "天" else "天")
    return poem


# ---- one definition of "the same character" ---------------------------------------------------
def test_matching_chars_compares_position_by_position():
    assert matching_chars(JINGYESI.lines, JINGYESI.lines) == (True,) * FORM.chars
    other = with_char(with_char(JINGYESI, 0, "天"), 17, "天")
    same = matching_chars(JINGYESI.lines, other.lines)
    assert [i for i, s in enumerate(same) if not s] == [0, 17]
    # a shorter poem (a word row cut short): the positions it lacks differ, out of 20 still
    short = matching_chars(JINGYESI.lines, JINGYESI.lines[:3])
    assert len(short) == FORM.chars and short == (True,) * 15 + (False,) * 5
    rec = Reconstruction.of(JINGYESI, Sample(other.lines))
    assert rec.same == same and rec.accuracy == 18 / 20
    assert Reconstruction.of(JINGYESI, Sample(JINGYESI.lines)).accuracy == 1.0


def test_evaluate_and_reconstruct_count_the_same_thing(poet, prepared):
    poems = prepared.splits["test"]
    recs = poet.reconstruct(poems, allow_unk=True)
    mean = sum(r.accuracy for r in recs) / len(recs)
    tokens = poet.tokens(poems, allow_unk=True)
    assert reconstruction_accuracy(poet.model, tokens, poet.vocab) == pytest.approx(mean, abs=1e-12)


# ---- reconstruct ---------------------------------------------------------------------------------
def test_reconstruct_under_random_weights(untrained, known):
    recs = untrained.reconstruct(known)
    assert [r.given for r in recs] == known
    for rec in recs:
        assert FORM.fits(rec.decoded.lines)
        direct = tuple(a == b for a, b in zip(rec.given.text, rec.decoded.text))
        assert rec.same == direct and rec.accuracy == sum(direct) / 20
    # greedy: no randomness, and the batch a poem is decoded in does not matter
    again = untrained.reconstruct(known, batch_size=2)
    assert [r.decoded.lines for r in again] == [r.decoded.lines for r in recs]
    # poems as text or as lines work too
    assert untrained.reconstruct([known[0].oneline(), known[0].lines])[1].decoded == recs[0].decoded


def test_reconstruct_names_unknown_characters(poet, known):
    odd = with_char(known[0], 3, "龘")
    with pytest.raises(VocabError, match="龘"):
        poet.reconstruct([odd])
    [rec] = poet.reconstruct([odd], allow_unk=True)
    assert rec.same[3] is False  # <unk> never matches: the decoder does not write it


# ---- vary ----------------------------------------------------------------------------------------
def test_vary_gives_n_well_formed_poems_fixed_by_the_seed(untrained, known):
    options = DecodeOptions(temperature=1.0, seed=5)
    poems = untrained.vary(known[0], 6, options)
    assert len(poems) == 6 and all(FORM.fits(p.lines) for p in poems)
    assert untrained.vary(known[0], 6, options) == poems
    assert len({p.lines for p in poems}) > 1  # sampled: not six times the same poem
    assert untrained.vary(known[0], 6, DecodeOptions(temperature=1.0, seed=6)) != poems


def test_vary_draws_z_around_the_posterior(poet, known):
    mu, logvar = poet.encode([known[0]])
    sigma = torch.exp(0.5 * logvar)
    zs = {}
    for spread in (1.0, 2.5):
        out = poet.vary(known[0], 4, DecodeOptions(seed=3), spread=spread, with_z=True)
        zs[spread] = torch.tensor([s.z for s in out])
    # z - mu = spread * sigma * eps, eps the first draws of the generator seeded 3
    eps = torch.randn(4, mu.size(1), generator=torch.Generator().manual_seed(3))
    for spread, z in zs.items():
        assert torch.allclose(z, mu + spread * sigma * eps, atol=1e-5)
    with pytest.raises(ValueError):
        poet.vary(known[0], 2, spread=-1.0)
    with pytest.raises(ValueError):
        poet.vary(known[0], 2, spread=float("nan"))


def test_vary_with_no_spread_is_the_reconstruction(untrained, known):
    [rec] = untrained.reconstruct([known[1]])
    poems = untrained.vary(known[1], 4, DecodeOptions(greedy=True, seed=0), spread=0.0)
    assert [p.lines for p in poems] == [rec.decoded.lines] * 4


def test_vary_keeps_the_controls(untrained, known):
    controls = Controls(acrostic="春夏秋冬")
    poems = untrained.vary(known[0], 5, DecodeOptions(seed=2, controls=controls), spread=1.5)
    assert all(FORM.fits(p.lines) and [line[0] for line in p.lines] == list("春夏秋冬") for p in poems)


# ---- the fitted prior ------------------------------------------------------------------------
def test_fit_prior_has_the_moments_of_the_aggregate_posterior(poet, prepared):
    poems = prepared.splits["train"]
    fitted = pr.fit_prior(poet, poems)
    mu, logvar = poet.encode(poems, allow_unk=True)
    mu, var = mu.double(), logvar.double().exp()
    covariance = torch.cov(mu.T, correction=0) + torch.diag(var.mean(dim=0))
    assert fitted.poems == len(poems) and fitted.latent_dim == TINY.model.latent_dim
    assert torch.allclose(fitted.mean.double(), mu.mean(dim=0), atol=1e-6)
    assert torch.allclose(fitted.covariance.double(), covariance, atol=1e-5)
    assert torch.equal(fitted.scale_tril, fitted.scale_tril.tril())
    # the model and token rows give the same prior
    same = pr.fit_prior(poet.model, poet.tokens(poems, allow_unk=True), batch_size=7)
    assert torch.allclose(same.scale_tril, fitted.scale_tril, atol=1e-6)


def test_samples_of_a_fitted_prior_have_its_moments():
    torch.manual_seed(0)
    z = torch.randn(300, 4) * torch.tensor([0.3, 1.0, 2.0, 0.5]) + torch.tensor([1.0, -2.0, 0.0, 0.5])
    z[:, 3] += 0.8 * z[:, 0]  # correlated dims
    fake = pr.FittedPrior(z.mean(0), torch.linalg.cholesky(torch.cov(z.T)), poems=300)
    draws = fake.sample(200_000, torch.Generator().manual_seed(0))
    assert draws.shape == (200_000, 4)
    # standard errors at 200k draws are ~0.005 of a std: 0.03 is six of them
    std = fake.covariance.diagonal().sqrt()
    assert torch.allclose((draws.mean(0) - fake.mean) / std, torch.zeros(4), atol=0.03)
    assert torch.allclose(torch.cov(draws.T), fake.covariance, atol=0.03 * float(std.max() ** 2))


def test_a_singular_covariance_gets_a_jitter():
    v = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    singular = torch.outer(v, v)  # rank 1
    assert torch.linalg.cholesky_ex(singular).info.item() != 0
    factor = pr._cholesky(singular)
    assert torch.allclose(factor @ factor.T, singular, atol=1e-4) and (factor.diagonal() > 0).all()


def test_a_prior_round_trips_through_safetensors(poet, prepared, tmp_path):
    fitted = dataclasses.replace(pr.fit_prior(poet, prepared.splits["train"]), weights_sha256="ab" * 32)
    path = tmp_path / "prior.safetensors"
    fitted.save(path)
    assert path.read_bytes()[8:9] == b"{"  # a safetensors header, not a pickle
    back = pr.FittedPrior.load(path)
    assert torch.equal(back.mean, fitted.mean) and torch.equal(back.scale_tril, fitted.scale_tril)
    assert (back.poems, back.latent_dim, back.weights_sha256) == (fitted.poems, fitted.latent_dim, "ab" * 32)
    _, meta = load_tensors(path)
    assert meta["poems"] == fitted.poems and meta["latent_dim"] == fitted.latent_dim
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # written atomically


@pytest.mark.parametrize(
    "tensors,meta,fragment",
    [
        ({"mean": torch.zeros(3)}, {"latent_dim": 3, "poems": 1}, "no mean and scale_tril"),
        ({"mean": torch.zeros(3), "scale_tril": torch.eye(2)}, {"latent_dim": 3, "poems": 1}, "(Z, Z)"),
        ({"mean": torch.zeros(3), "scale_tril": torch.eye(3)}, {"latent_dim": 4, "poems": 1}, "latent_dim"),
        ({"mean": torch.zeros(2), "scale_tril": torch.ones(2, 2)}, {"latent_dim": 2, "poems": 1}, "lower-triangular"),
        ({"mean": torch.full((2,), float("nan")), "scale_tril": torch.eye(2)}, {"latent_dim": 2}, "not finite"),
        ({"mean": torch.zeros(2), "scale_tril": torch.eye(2)}, {"latent_dim": 2, "poems": 0}, "poems"),
    ],
)
def test_a_damaged_prior_is_refused(tmp_path, tensors, meta, fragment):
    path = tmp_path / "prior.safetensors"
    save_tensors(path, tensors, meta)
    with pytest.raises(CheckpointError, match="is not a fitted prior") as e:
        pr.FittedPrior.load(path)
    assert fragment in str(e.value)


def test_a_no_latent_model_has_no_prior(prepared, tmp_path):
    cfg = dataclasses.replace(TINY, model=dataclasses.replace(TINY.model, use_latent=False))
    train(cfg, prepared, tmp_path / "lm")
    assert (tmp_path / "lm" / rundir.BEST).is_file() and not (tmp_path / "lm" / rundir.PRIOR).exists()
    with pytest.raises(ConfigError, match="--no-latent"):
        pr.fit_run_prior(tmp_path / "lm")
    lm = Poet.load(tmp_path / "lm", device="cpu")
    with pytest.raises(ConfigError):
        pr.fit_prior(lm, prepared.splits["train"])
    with pytest.raises(ConfigError):
        lm.sample(1, prior="fitted")


def test_training_writes_the_prior_of_its_best_weights_and_a_resume_refits_it(prepared, tmp_path):
    def ctrl_c_at_step_3(record):
        if isinstance(record, StepRecord) and record.step == 3:
            raise KeyboardInterrupt

    cut = train(tiny(epochs=2), prepared, tmp_path / "r", on_log=ctrl_c_at_step_3)
    assert cut.interrupted and not (tmp_path / "r" / rundir.PRIOR).exists()  # not at the end yet
    train(tiny(epochs=2), prepared, tmp_path / "r", resume=True)
    fitted = pr.FittedPrior.load(tmp_path / "r" / rundir.PRIOR)
    assert fitted.weights_sha256 == hashlib.sha256((tmp_path / "r" / rundir.BEST).read_bytes()).hexdigest()


def test_cli_train_writes_a_prior_that_fit_prior_rewrites(cli_run, tmp_path):
    written = pr.FittedPrior.load(cli_run / rundir.PRIOR)
    n_train = len(rundir.RunDir(cli_run).train_poems())
    assert written.poems == min(n_train, pr.MAX_POEMS) and written.latent_dim == TINY.model.latent_dim
    copy = tmp_path / "run"
    shutil.copytree(cli_run, copy)
    (copy / rundir.PRIOR).unlink()
    result = run("fit-prior", "-m", copy)
    assert result.exit_code == 0, result.output
    assert f"{n_train:,} training poems" in result.output and "mean norm" in result.output
    refit = pr.FittedPrior.load(copy / rundir.PRIOR)
    assert torch.allclose(refit.mean, written.mean, atol=1e-6)
    assert torch.allclose(refit.scale_tril, written.scale_tril, atol=1e-6)
    fewer = run("fit-prior", "-m", copy, "--max-poems", "10")
    assert fewer.exit_code == 0 and pr.FittedPrior.load(copy / rundir.PRIOR).poems == 10


def test_sample_from_the_fitted_prior(cli_run, tmp_path):
    args = ["sample", "-m", cli_run, "-n", "4", "--seed", "2", "-f", "json", "--with-z"]
    fitted = run(*args, "--prior", "fitted")
    assert fitted.exit_code == 0, fitted.output
    records = [json.loads(line) for line in fitted.output.splitlines()]
    assert len(records) == 4 and all(FORM.fits(r["lines"]) for r in records)
    assert run(*args, "--prior", "fitted").output == fitted.output
    # the same eps as the normal prior, moved and shaped by the fitted one: z = mean + L eps
    normal = [json.loads(line) for line in run(*args).output.splitlines()]
    prior = pr.FittedPrior.load(cli_run / rundir.PRIOR)
    eps = torch.tensor([r["z"] for r in normal])
    assert torch.allclose(torch.tensor([r["z"] for r in records]), prior.mean + eps @ prior.scale_tril.T, atol=1e-4)


def test_sample_from_a_missing_or_stale_prior_is_a_one_line_error(cli_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(cli_run, copy)
    (copy / rundir.PRIOR).unlink()
    one_line_error(run("sample", "-m", copy, "--prior", "fitted"), f"poetvae fit-prior -m {copy}")
    assert run("sample", "-m", copy, "-n", "1").exit_code == 0  # the normal prior needs no file
    pr.fit_run_prior(copy)
    tensors, meta = load_tensors(copy / rundir.BEST)
    save_tensors(copy / rundir.BEST, tensors, {**meta, "step": 999})  # training went on
    one_line_error(run("sample", "-m", copy, "--prior", "fitted"), "refit it with: poetvae fit-prior")
    usage = run("sample", "-m", cli_run, "--prior", "fitted", "--first-line", "白日依山尽", "--infer-z")
    assert usage.exit_code == 2 and "Traceback" not in usage.output
    assert run("sample", "-m", cli_run, "--prior", "uniform").exit_code == 2


def test_fit_prior_on_what_is_no_run_is_a_one_line_error(tmp_path, prepared):
    one_line_error(run("fit-prior", "-m", tmp_path), "not a poetvae run")
    cfg = dataclasses.replace(TINY, model=dataclasses.replace(TINY.model, use_latent=False))
    train(cfg, prepared, tmp_path / "lm")
    one_line_error(run("fit-prior", "-m", tmp_path / "lm"), "trained without a latent (--no-latent)")


def test_evaluate_under_either_prior(cli_run):
    reports = {}
    for prior in ("normal", "fitted"):
        result = run("evaluate", "-m", cli_run, "--samples", "20", "--iw", "2", "--json", "--prior", prior)
        assert result.exit_code == 0, result.output
        reports[prior] = json.loads(result.output)
        assert reports[prior]["meta"]["prior"] == prior
        assert 0 <= reports[prior]["latent"]["train_reconstruction_accuracy"] <= 1
    assert reports["normal"]["latent"] == reports["fitted"]["latent"]  # only the samples change
    table = run("evaluate", "-m", cli_run, "--samples", "5", "--iw", "2", "--prior", "fitted")
    assert table.exit_code == 0 and "on training poems" in table.output and "fitted prior" in table.output


# ---- the command line: reconstruct, vary, interpolate's ends -------------------------------------
def marker_columns(line: str) -> set[int]:
    """The display columns of the ^ characters in a line of the table."""
    return {cell_len(line[:i]) for i, ch in enumerate(line) if ch == "^"}


def expected_columns(row: str, decoded: str, same: list[bool]) -> set[int]:
    """The display columns under the characters of `decoded` (as shown in `row`) that differ."""
    start = cell_len(row[: row.index(decoded)])
    positions = [i for i, ch in enumerate(decoded) if ch not in "，。"]
    cols = set()
    for position, index in enumerate(positions):
        if not same[position]:
            col = start + cell_len(decoded[:index])
            cols |= {col, col + 1}  # a Han character is two columns wide
    return cols


def test_marked_styles_and_underlines_the_differing_characters():
    other = with_char(with_char(JINGYESI, 1, "天"), 12, "天")
    text, marks = _marked(Reconstruction.of(JINGYESI, Sample(other.lines)))
    assert text.plain == other.oneline()
    red = {i for span in text.spans if span.style == "red" for i in range(span.start, span.end)}
    assert red == {1, 14}  # oneline indices: position 12 comes after two punctuation marks
    assert marks == "  ^^" + " " * 24 + "^^"
    text, marks = _marked(Reconstruction.of(JINGYESI, Sample(JINGYESI.lines)))
    assert text.plain == JINGYESI.oneline() and not [span for span in text.spans if span.style] and marks == ""


def test_reconstruct_command_marks_the_differences(cli_run, poet, known):
    poems = [p.oneline() for p in known[:3]]
    js = run("reconstruct", "-m", cli_run, *poems, "--format", "json")
    assert js.exit_code == 0, js.output
    records = [json.loads(line) for line in js.output.splitlines()]
    assert [list(r) for r in records] == [["given", "text", "lines", "same", "accuracy"]] * 3
    recs = poet.reconstruct(known[:3])
    for record, rec in zip(records, recs):
        assert record["given"] == rec.given.oneline() and record["text"] == rec.decoded.oneline()
        assert record["same"] == list(rec.same) and record["accuracy"] == round(rec.accuracy, 4)
    table = run("reconstruct", "-m", cli_run, *poems)
    assert table.exit_code == 0, table.output
    lines = table.output.splitlines()
    for rec in recs:
        decoded = rec.decoded.oneline()
        i = next(i for i, line in enumerate(lines) if decoded in line and "decoded" in line)
        assert f"{rec.accuracy:.0%}" in lines[i]
        if rec.accuracy < 1:
            assert marker_columns(lines[i + 1]) == expected_columns(lines[i], decoded, list(rec.same))
    mean = sum(r.accuracy for r in recs) / 3
    assert f"mean accuracy over 3 poems: {mean:.1%}" in table.output


def test_reconstruct_marks_a_constructed_difference(cli_run, monkeypatch, known):
    """A decoder that returns the given poem with two characters changed: exactly those are marked."""
    changed = changed_at(known[0], 0, 7, 19)

    def fake(self, poems, allow_unk=False, **_):
        return [Reconstruction.of(parse_poem(p) if isinstance(p, str) else p, Sample(changed.lines)) for p in poems]

    monkeypatch.setattr(Poet, "reconstruct", fake)
    table = run("reconstruct", "-m", cli_run, known[0].oneline())
    lines = table.output.splitlines()
    i = next(i for i, line in enumerate(lines) if changed.oneline() in line)
    same = list(matching_chars(known[0].lines, changed.lines))
    assert [i for i, s in enumerate(same) if not s] == [0, 7, 19] and "85%" in lines[i]
    assert marker_columns(lines[i + 1]) == expected_columns(lines[i], changed.oneline(), same)


def test_reconstruct_reads_a_file_and_refuses_bad_poems(cli_run, known, tmp_path):
    poems = tmp_path / "poems.txt"
    poems.write_text(f"{known[0].oneline()}\n\n{known[1].oneline()}\n", encoding="utf-8")
    js = run("reconstruct", "-m", cli_run, "--file", poems, "-f", "json")
    assert js.exit_code == 0 and [json.loads(x)["given"] for x in js.output.splitlines()] == [
        known[0].oneline(),
        known[1].oneline(),
    ]
    one_line_error(run("reconstruct", "-m", cli_run, "床前明月光，疑是地上霜。"), "poem 1: expected 4 lines")
    poems.write_text(f"{known[0].oneline()}\n床前明月光\n", encoding="utf-8")
    one_line_error(run("reconstruct", "-m", cli_run, "--file", poems), "poems.txt line 2")
    poems.write_bytes(b"\xff\xfe garbage")
    one_line_error(run("reconstruct", "-m", cli_run, "--file", poems), "not UTF-8")
    one_line_error(run("reconstruct", "-m", cli_run, "--file", tmp_path / "none.txt"), "No such file")
    odd = with_char(known[0], 2, "龘").oneline()
    one_line_error(run("reconstruct", "-m", cli_run, odd), "not in the model's vocabulary: 龘")
    assert run("reconstruct", "-m", cli_run, odd, "--allow-unk").exit_code == 0
    assert run("reconstruct", "-m", cli_run).exit_code == 2  # no poem at all
    assert run("reconstruct", "-m", cli_run, odd, "-f", "text").exit_code == 2


def test_vary_command(cli_run, known):
    args = ["vary", "-m", cli_run, known[0].oneline(), "-n", "4", "--seed", "1", "-f", "oneline"]
    result = run(*args)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len(lines) == 4 and all(FORM.fits(parse_poem(x).lines) for x in lines)
    assert run(*args).output == result.output
    acro = run(*args, "--acrostic", "春夏秋冬", "--rhyme", "--beam", "2", "--spread", "2")
    assert acro.exit_code == 0, acro.output
    assert all([line[0] for line in parse_poem(x).lines] == list("春夏秋冬") for x in acro.output.splitlines())
    greedy = run("vary", "-m", cli_run, known[0].oneline(), "-n", "3", "--spread", "0", "--greedy", "-f", "json")
    rec = json.loads(run("reconstruct", "-m", cli_run, known[0].oneline(), "-f", "json").output)
    assert [json.loads(x)["text"] for x in greedy.output.splitlines()] == [rec["text"]] * 3
    assert run(*args, "--spread", "-1").exit_code == 2 and run(*args, "--spread", "nan").exit_code == 2
    one_line_error(run("vary", "-m", cli_run, "床前明月光"), "expected 4 lines")


def test_interpolate_ends_are_the_reconstructions(cli_run, known):
    a, b = known[0].oneline(), known[1].oneline()
    recs = [json.loads(x) for x in run("reconstruct", "-m", cli_run, a, b, "-f", "json").output.splitlines()]
    for method in ("linear", "slerp"):
        path = run("interpolate", "-m", cli_run, a, b, "--steps", "5", "--method", method, "-f", "json")
        assert path.exit_code == 0, path.output
        points = [json.loads(x) for x in path.output.splitlines()]
        assert [list(p) for p in points[1:-1]] == [["t", "lines", "text", "logprob", "backoff"]] * 3
        assert list(points[0]) == ["t", "lines", "text", "logprob", "backoff", "accuracy"]
        assert (points[0]["text"], points[0]["accuracy"]) == (recs[0]["text"], recs[0]["accuracy"])
        assert (points[-1]["text"], points[-1]["accuracy"]) == (recs[1]["text"], recs[1]["accuracy"])
    table = run("interpolate", "-m", cli_run, a, b, "--steps", "3")
    assert table.exit_code == 0, table.output
    assert "rec. A" in table.output and "rec. B" in table.output
    lines = table.output.splitlines()
    for rec, name in zip(recs, "AB"):
        rows = [i for i, line in enumerate(lines) if rec["text"] in line]
        i = rows[0] if name == "A" else rows[-1]  # the ends may decode to the same poem
        assert f"{rec['accuracy']:.0%}" in lines[i]
        if rec["accuracy"] < 1:
            assert f"rec. {name}" in lines[i + 1]
            assert marker_columns(lines[i + 1]) == expected_columns(lines[i], rec["text"], rec["same"])
    sampled = run("interpolate", "-m", cli_run, a, b, "--steps", "3", "--sample", "--seed", "4", "-f", "json")
    points = [json.loads(x) for x in sampled.output.splitlines()]
    for point, given in ((points[0], a), (points[-1], b)):
        same = matching_chars(parse_poem(given).lines, point["lines"])
        assert point["accuracy"] == round(sum(same) / 20, 4)
    plain = run("interpolate", "-m", cli_run, a, b, "--steps", "3", "--sample", "--seed", "4")
    assert "rec. A" not in plain.output and "samples at A and B" in plain.output


def test_a_poet_not_loaded_from_a_run_samples_from_an_assigned_prior(untrained, known):
    with pytest.raises(CheckpointError, match="not loaded from a run"):
        untrained.sample(1, prior="fitted")
    with pytest.raises(ValueError):
        untrained.sample(1, prior="uniform")
    poet = Poet(untrained.model, untrained.vocab, untrained.config, untrained.device)
    poet.fitted_prior = pr.fit_prior(poet, known)
    poems = poet.sample(3, DecodeOptions(seed=0), prior="fitted")
    assert len(poems) == 3 and all(FORM.fits(p.lines) for p in poems)
    with pytest.raises(ValueError):
        poet.fitted_prior = pr.FittedPrior(torch.zeros(2), torch.eye(2), poems=1)  # the wrong size
