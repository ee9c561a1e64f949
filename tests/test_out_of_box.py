"""Out of the box: which model a command uses when not told (-m, else the newest run in ./runs,
else the bundled model), bundles written by `poetvae export` (float16 included), `train`
without -o writing a fresh runs/<corpus name>, the corpora shipped in data/, and gzip corpora."""

from __future__ import annotations

import fnmatch
import gzip
import json
import os
import re
import shutil
import tomllib
from pathlib import Path

import pytest
import torch
from helpers import TINY_MODEL_FLAGS, one_line_error
from typer.testing import CliRunner

import poetvae.evaluate
import poetvae.models
from poetvae import data_files
from poetvae.checkpoint import load_tensors, save_tensors
from poetvae.cli import app
from poetvae.corpus import read_corpus
from poetvae.decode import DecodeOptions
from poetvae.errors import CheckpointError, CorpusError, PoetVAEError
from poetvae.models import BUNDLED, GIVEN, NEWEST_RUN, export_bundle, resolve_model
from poetvae.poet import Poet
from poetvae.prior import FittedPrior
from poetvae.rundir import RunDir, fresh_run, run_name

runner = CliRunner()
REPO = Path(__file__).resolve().parent.parent
TRAIN_FLAGS = [*TINY_MODEL_FLAGS, "--epochs", "1", "--w2v-epochs", "1", "--min-count", "1"]
POEMS = [
    "床前明月光，疑是地上霜。举头望明月，低头思故乡。",
    "白日依山尽，黄河入海流。欲穷千里目，更上一层楼。",
    "千山鸟飞绝，万径人踪灭。孤舟蓑笠翁，独钓寒江雪。",
    "红豆生南国，春来发几枝。愿君多采撷，此物最相思。",
    "松下问童子，言师采药去。只在此山中，云深不知处。",
    "君自故乡来，应知故乡事。来日绮窗前，寒梅著花未。",
]


def cli(*args) -> object:
    return runner.invoke(app, [str(a) for a in args])


def set_mtime(run: Path, seconds: float) -> None:
    os.utime(run / "model.safetensors", (seconds, seconds))


@pytest.fixture(scope="module")
def bundles(trained_run, tmp_path_factory) -> dict[str, Path]:
    """The session's tiny run exported as a float32 and a float16 bundle."""
    root = tmp_path_factory.mktemp("bundles")
    return {
        "fp32": export_bundle(trained_run, root / "fp32").path,
        "fp16": export_bundle(trained_run, root / "fp16", half=True).path,
    }


@pytest.fixture
def no_bundle(monkeypatch) -> None:
    """An install without a bundled model, whatever this checkout holds."""
    monkeypatch.setattr(poetvae.models, "bundled_model", lambda name="classical": None)


# ---- which model ----------------------------------------------------------------------------
def test_explicit_model_wins_then_newest_run_then_bundle(tmp_path, trained_run, bundles, monkeypatch):
    monkeypatch.setattr(poetvae.models, "bundled_model", lambda name="classical": bundles["fp16"])
    assert resolve_model(None, tmp_path).source == BUNDLED  # no ./runs at all
    runs = tmp_path / "runs"
    for name in ("old", "new"):
        shutil.copytree(trained_run, runs / name)
    set_mtime(runs / "old", 1_000_000)
    set_mtime(runs / "new", 2_000_000)
    # newer-looking entries that are not whole runs: a training's staging directory, a
    # directory without weights, a file
    shutil.copytree(trained_run, runs / ".next.staging-1234abcd")
    set_mtime(runs / ".next.staging-1234abcd", 3_000_000)
    (runs / "broken").mkdir()
    shutil.copy(trained_run / "config.json", runs / "broken" / "config.json")
    (runs / "notes.txt").write_text("x", encoding="utf-8")

    resolved = resolve_model(None, tmp_path)
    assert (resolved.path, resolved.source) == (runs / "new", NEWEST_RUN)
    assert str(runs / "new") in resolved.note and "-m" in resolved.note
    set_mtime(runs / "old", 4_000_000)  # old was trained (or resumed) last: it is the newest model now
    assert resolve_model(None, tmp_path).path == runs / "old"

    given = resolve_model(runs / "new", tmp_path)
    assert (given.path, given.source, given.note) == (runs / "new", GIVEN, None)
    assert resolve_model(None, tmp_path, bundled=False).path == runs / "old"


def test_no_run_and_no_bundle_is_one_error(tmp_path, no_bundle, monkeypatch):
    with pytest.raises(CheckpointError, match="poetvae train"):
        resolve_model(None, tmp_path)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "empty").mkdir(parents=True)
    line = one_line_error(cli("sample", "-n", "1"), "no run in ./runs and no bundled model")
    assert "poetvae train" in line and "-m" in line
    one_line_error(cli("sample", "-m", tmp_path / "missing"), "no such run directory")


def test_sample_says_on_stderr_which_model_and_keeps_stdout_for_poems(tmp_path, trained_run, no_bundle, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name, when in (("a", 1_000_000), ("b", 2_000_000)):
        shutil.copytree(trained_run, tmp_path / "runs" / name)
        set_mtime(tmp_path / "runs" / name, when)
    chosen = cli("sample", "-n", "3", "--seed", "5", "-f", "oneline")
    assert chosen.exit_code == 0, chosen.output
    assert chosen.stderr.splitlines() == ["using runs/b (the newest run in ./runs; -m to choose)"]
    given = cli("sample", "-m", "runs/b", "-n", "3", "--seed", "5", "-f", "oneline")
    assert given.stderr == "" and given.stdout == chosen.stdout  # the same poems, nothing else
    assert len(chosen.stdout.splitlines()) == 3

    path = cli("interpolate", POEMS[3], POEMS[5], "--steps", "3", "--allow-unk", "-f", "json")
    assert path.exit_code == 0, path.output
    assert path.stderr.startswith("using runs/b") and len(path.stdout.splitlines()) == 3


def test_the_bundled_model_is_used_last_and_named(tmp_path, bundles, monkeypatch):
    monkeypatch.setattr(poetvae.models, "bundled_model", lambda name="classical": bundles["fp16"])
    monkeypatch.chdir(tmp_path)
    result = cli("sample", "-n", "2", "--seed", "1", "-f", "oneline")
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == [
        "using the bundled model classical, the poet (no run in ./runs; -m to choose)"
    ]
    assert result.stdout == cli("sample", "-m", bundles["fp16"], "-n", "2", "--seed", "1", "-f", "oneline").stdout


def test_each_command_takes_the_bundled_model_made_for_it(tmp_path, bundles, monkeypatch):
    """sample and evaluate use the poet, interpolate, reconstruct and vary the latent model;
    -m NAME names a bundled model; a run in ./runs still comes first."""
    chosen = []

    def bundled(name="classical"):
        chosen.append(name)
        return bundles["fp16"] if name == "classical" else bundles["fp32"]

    monkeypatch.setattr(poetvae.models, "bundled_model", bundled)
    monkeypatch.chdir(tmp_path)
    latent = "using the bundled model latent, the model whose latent keeps a poem (no run in ./runs; -m to choose)"
    for args in (
        ("interpolate", POEMS[3], POEMS[5], "--steps", "3", "--allow-unk"),
        ("reconstruct", POEMS[3], "--allow-unk"),
        ("vary", POEMS[3], "-n", "2", "--allow-unk"),
    ):
        result = cli(*args)
        assert result.exit_code == 0, result.output
        assert result.stderr.splitlines() == [latent], args
    assert resolve_model(None, tmp_path, purpose="latent").path == bundles["fp32"]
    assert resolve_model(None, tmp_path).path == bundles["fp16"]
    for name, path in (("latent", bundles["fp32"]), ("classical", bundles["fp16"])):
        given = resolve_model(name, tmp_path)
        assert (given.path, given.source) == (path, BUNDLED) and f"-m {name}" in given.note
        result = cli("sample", "-m", name, "-n", "2", "--seed", "1", "-f", "oneline")
        assert result.exit_code == 0 and result.stderr.splitlines() == [f"using the bundled model {name} (-m {name})"]
    (tmp_path / "latent").mkdir()  # a directory of that name is what -m means, as any path
    assert resolve_model("latent", tmp_path).source == GIVEN
    assert chosen.count("latent") >= 4


def test_evaluate_and_plot_take_the_newest_run_and_evaluate_a_bundle_on_a_corpus(
    tmp_path, trained_run, prep_dir, bundles, monkeypatch
):
    monkeypatch.setattr(poetvae.models, "bundled_model", lambda name="classical": bundles["fp16"])
    monkeypatch.chdir(tmp_path)
    # a bundle keeps no splits: evaluating it needs a held-out corpus, and leaves out only
    # the figures that need the training split
    no_corpus = cli("evaluate", "--samples", "2", "--iw", "2")
    assert no_corpus.exit_code == 1 and no_corpus.stderr.startswith("using the bundled model classical")
    assert no_corpus.stdout == "" and "Traceback" not in no_corpus.output
    assert no_corpus.stderr.splitlines()[-1].startswith("error:") and "keeps no test split" in no_corpus.stderr
    one_line_error(cli("plot"), "no run in ./runs; train one")
    corpus = tmp_path / "heldout.txt"
    corpus.write_text("\n".join(POEMS[:6]) + "\n", encoding="utf-8")
    on_bundle = cli("evaluate", corpus, "--samples", "4", "--iw", "2", "--json")
    assert on_bundle.exit_code == 0, on_bundle.output
    assert on_bundle.stderr.startswith("using the bundled model classical")
    report = json.loads(on_bundle.stdout)
    assert report["meta"]["poems"] == 6 and report["samples"]["poems"] == 4
    left_out = {f"{k}.{f}" for k, fields in report.items() for f, v in fields.items() if v is None}
    assert left_out == set(poetvae.evaluate.NEEDS_TRAINING_SPLIT)
    assert 0 <= report["latent"]["reconstruction_accuracy"] <= 1 and report["likelihood"]["iw_nll"] > 0
    table = cli("evaluate", "-m", "classical", corpus, "--samples", "4", "--iw", "2")
    assert table.exit_code == 0 and "n/a" in table.stdout and "training" in table.stdout

    shutil.copytree(trained_run, tmp_path / "runs" / "tiny")
    shutil.copytree(prep_dir, tmp_path / "runs" / "tiny" / "prep")  # a run trained by `poetvae train` has it
    result = cli("evaluate", "--samples", "2", "--iw", "2", "--json")
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith("using runs/tiny") and json.loads(result.stdout)["samples"]["poems"] == 2
    assert all(v is not None for fields in json.loads(result.stdout).values() for v in fields.values())


# ---- bundles --------------------------------------------------------------------------------
def test_a_bundle_is_the_minimal_model_and_loads_like_a_run(trained_run, bundles):
    for kind, path in bundles.items():
        assert sorted(p.name for p in path.iterdir()) == [
            "MODEL_CARD.md",
            "config.json",
            "model.safetensors",
            "prior.safetensors",
            "vocab.json",
        ]
        assert (path / "config.json").read_bytes() == (trained_run / "config.json").read_bytes()
        tensors, meta = load_tensors(path / "model.safetensors")
        dtypes = {t.dtype for t in tensors.values() if t.is_floating_point()}
        assert dtypes == {torch.float16 if kind == "fp16" else torch.float32}
        assert meta["dtype"] == str(dtypes.pop()).removeprefix("torch.")
    run_weights = RunDir(trained_run).weights()
    fp32 = Poet.load(bundles["fp32"], device="cpu").model.state_dict()
    fp16 = Poet.load(bundles["fp16"], device="cpu").model.state_dict()
    for k, w in run_weights.items():
        assert torch.equal(fp32[k], w)
        # loading widens the stored float16 values to float32, exactly
        assert fp16[k].dtype == w.dtype and torch.equal(fp16[k], w.half().float() if w.is_floating_point() else w)
    for path in bundles.values():  # the run's fitted prior, bound to the bundle's weights
        bundle = Poet.load(path, device="cpu")
        assert torch.equal(bundle.fitted_prior.mean, Poet.load(trained_run, device="cpu").fitted_prior.mean)
        assert len(bundle.sample(3, DecodeOptions(seed=0), prior="fitted")) == 3
    size = {k: (p / "model.safetensors").stat().st_size for k, p in bundles.items()}
    assert size["fp16"] < 0.6 * size["fp32"]


def test_a_float32_bundle_decodes_exactly_like_its_run(trained_run, bundles):
    run, bundle = Poet.load(trained_run, device="cpu"), Poet.load(bundles["fp32"], device="cpu")
    for options in (DecodeOptions(greedy=True, seed=0), DecodeOptions(temperature=0.8, seed=1)):
        assert [s.lines for s in run.sample(200, options)] == [s.lines for s in bundle.sample(200, options)]


def test_a_float16_bundle_decodes_like_its_run_but_at_near_ties(trained_run, bundles):
    """Measured on this tiny model (and on one of the shipped.toml size): about 1 poem in 80
    decodes differently, greedy or sampled, because float16 moves each logit by up to ~3e-4.
    So the test is exact where it can be: every greedy poem that differs first differs at a
    step where the run itself was undecided, its two candidates within 1e-3 nats; and most
    poems are the same, greedy and sampled."""
    run, bundle = Poet.load(trained_run, device="cpu"), Poet.load(bundles["fp16"], device="cpu")
    n = 1000  # enough that some differ (a dozen, measured), so the margins are checked
    z = torch.randn(n, run.config.model.latent_dim, generator=torch.Generator().manual_seed(0))
    ours = run.decode(z, DecodeOptions(greedy=True))
    theirs = bundle.decode(z, DecodeOptions(greedy=True))
    differ = [i for i in range(n) if ours[i].lines != theirs[i].lines]
    assert len(differ) <= 0.05 * n, f"{len(differ)} of {n} greedy poems differ"
    if differ:
        a, b = run.tokens([ours[i] for i in differ]), run.tokens([theirs[i] for i in differ])
        with torch.no_grad():
            logits, _ = run.model.decode(z[differ], run.model.teacher_inputs(a))
        logp = logits.log_softmax(-1)
        for row in range(len(differ)):
            t = int((a[row] != b[row]).nonzero()[0])  # the same prefix up to here: the same state
            margin = float(logp[row, t, a[row, t]] - logp[row, t, b[row, t]])
            assert 0 <= margin < 1e-3, f"poem {differ[row]} step {t}: the run preferred its token by {margin} nats"

    options = DecodeOptions(temperature=0.8, seed=3)
    same = sum(x.lines == y.lines for x, y in zip(run.sample(n, options), bundle.sample(n, options)))
    assert same >= 0.95 * n, f"only {same} of {n} sampled poems are the same"


def test_export_refuses_what_exists_and_overwrites_only_a_model(trained_run, bundles, tmp_path):
    dest = tmp_path / "b"
    dest.mkdir()
    (dest / "notes.txt").write_text("mine", encoding="utf-8")
    one_line_error(cli("export", "-m", trained_run, dest), "holds files that are not a model's (notes.txt")
    one_line_error(cli("export", "-m", trained_run, dest, "--overwrite"), "holds files that are not a model's")
    assert [p.name for p in dest.iterdir()] == ["notes.txt"]
    one_line_error(cli("export", "-m", trained_run, bundles["fp32"]), "already holds a model: --overwrite replaces it")

    shutil.copytree(bundles["fp32"], tmp_path / "old")
    result = cli("export", "-m", trained_run, tmp_path / "old", "--half", "--overwrite")
    assert result.exit_code == 0, result.output
    assert "float16" in result.stdout
    tensors, _ = load_tensors(tmp_path / "old" / "model.safetensors")
    assert tensors["embedding.weight"].dtype == torch.float16
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind
    one_line_error(cli("export", "-m", trained_run, trained_run, "--overwrite"), "is the run itself")
    one_line_error(cli("export", "-m", tmp_path / "missing", tmp_path / "c"), "no such run directory")
    assert not (tmp_path / "c").exists()


def test_export_carries_the_prior_evaluation_and_card_and_refuses_overflow(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / "evaluation.json").write_text('{"likelihood": {}}', encoding="utf-8")
    bundle = export_bundle(run, tmp_path / "b").path
    carried, fitted = FittedPrior.load(bundle / "prior.safetensors"), FittedPrior.load(run / "prior.safetensors")
    assert torch.equal(carried.mean, fitted.mean) and torch.equal(carried.scale_tril, fitted.scale_tril)
    assert (bundle / "evaluation.json").read_text(encoding="utf-8") == '{"likelihood": {}}'
    card = (bundle / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert card.startswith("# b\n") and "evaluation.json" in card and "float32" in card

    tensors, meta = load_tensors(run / "model.safetensors")
    tensors["embedding.weight"] = tensors["embedding.weight"] * 1e6  # beyond float16's 65504
    save_tensors(run / "model.safetensors", tensors, meta)
    with pytest.raises(CheckpointError, match="float16"):
        export_bundle(run, tmp_path / "c", half=True)
    assert not (tmp_path / "c").exists()

    shutil.copy(trained_run / "model.safetensors", run / "model.safetensors")
    (run / "prior.safetensors").write_bytes(b"prior bytes")  # damaged: refused, nothing written
    with pytest.raises(CheckpointError, match="prior.safetensors"):
        export_bundle(run, tmp_path / "d")
    assert not (tmp_path / "d").exists()


# ---- train without -o -----------------------------------------------------------------------
def test_run_names_come_from_the_corpus(tmp_path):
    (tmp_path / "prep" / "ts").mkdir(parents=True)
    assert run_name([tmp_path / "tang_quatrains.txt"]) == "tang_quatrains"
    assert run_name([tmp_path / "tang_quatrains.jsonl.gz"]) == "tang_quatrains"
    assert run_name([tmp_path / "poems"]) == "poems"
    assert run_name([tmp_path / "prep" / "ts"]) == "ts"
    assert run_name([tmp_path / ".hidden.txt"]) == "hidden"  # a hidden run would be passed over
    assert run_name([tmp_path / "a.txt", tmp_path / "b.txt", tmp_path / "c.txt"]) == "a-and-2-more"


def test_a_fresh_run_never_takes_a_name_in_use(tmp_path):
    runs = tmp_path / "runs"
    (runs / "x").mkdir(parents=True)  # exists, even empty
    with RunDir(runs / "x-2").lock():  # another training is making x-2 (not published yet)
        with fresh_run("x", runs) as run:
            assert run.path == runs / "x-3"
            with pytest.raises(PoetVAEError, match="in use"):  # and holds it while the body runs
                with RunDir(run.path).lock():
                    pass


def test_train_without_output_writes_a_new_run_named_after_the_corpus(tmp_path, shipped_corpus, monkeypatch):
    monkeypatch.chdir(tmp_path)
    corpus = tmp_path / "my_poems.jsonl.gz"
    corpus.write_bytes(gzip.compress(shipped_corpus.read_bytes()))
    first = cli("train", corpus, *TRAIN_FLAGS)
    assert first.exit_code == 0, first.output
    assert "new run: runs/my_poems" in first.stdout and RunDir(tmp_path / "runs" / "my_poems").best.is_file()
    second = cli("train", corpus, *TRAIN_FLAGS, "--latent-dim", "5")
    assert second.exit_code == 0, second.output
    assert "new run: runs/my_poems-2" in second.stdout
    config = json.loads((tmp_path / "runs" / "my_poems" / "config.json").read_text(encoding="utf-8"))
    assert config["model"]["latent_dim"] == 6  # the first run is untouched
    # sampling now takes the newest run
    assert cli("sample", "-n", "1").stderr.startswith("using runs/my_poems-2 ")
    # -o still names the run, and a run there is still refused
    one_line_error(cli("train", corpus, "-o", "runs/my_poems", *TRAIN_FLAGS), "already holds a run")
    # --overwrite without -o replaces runs/<name> itself
    third = cli("train", corpus, *TRAIN_FLAGS, "--latent-dim", "4", "--overwrite")
    assert third.exit_code == 0, third.output
    config = json.loads((tmp_path / "runs" / "my_poems" / "config.json").read_text(encoding="utf-8"))
    assert config["model"]["latent_dim"] == 4 and not (tmp_path / "runs" / "my_poems-3").exists()


def test_train_claims_no_run_directory_for_a_missing_corpus(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    one_line_error(cli("train", "nope.txt", *TRAIN_FLAGS), "no such file: nope.txt")
    assert not (tmp_path / "runs").exists()


def test_train_corpus_names_a_shipped_corpus(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = cli("train", "--corpus", "small", *TRAIN_FLAGS)
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "runs" / "small" / "prep" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["kept"] == 122
    assert cli("train", "--corpus", "small", tmp_path / "x.txt").exit_code == 2  # files or a name, not both
    assert cli("train", "--corpus", "tang").exit_code == 2
    assert cli("train", "--corpus", "small", "--resume", "runs/small").exit_code == 2


def test_train_with_no_corpus_reads_the_shipped_quatrains(tmp_path, monkeypatch):
    """Stopped where it would prepare the corpus: only what it would read, and where."""
    seen = {}

    def stop(self, source, config, init=None):
        seen["source"] = source
        raise PoetVAEError("stopped here")

    monkeypatch.setattr(RunDir, "load_training_data", stop)
    monkeypatch.chdir(tmp_path)
    result = cli("train", *TRAIN_FLAGS)
    assert result.exit_code == 1 and result.stderr.splitlines() == ["error: stopped here"]
    assert "new run: runs/quatrains" in result.stdout
    assert seen["source"] == data_files.shipped_corpus("quatrains")
    assert not (tmp_path / "runs" / "quatrains").exists()  # nothing published: it never trained


# ---- corpora --------------------------------------------------------------------------------
def _stated_counts() -> dict[str, tuple[str, int]]:
    """data/README.md's table: file -> (the --corpus name, the number of poems it states)."""
    text = (REPO / "data" / "README.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `([^`]+)` \| (\w+) \| ([\d,]+) \|", text, flags=re.M)
    return {name: (corpus, int(count.replace(",", ""))) for name, corpus, count in rows}


def test_the_shipped_corpora_hold_what_the_data_readme_says():
    stated = _stated_counts()
    listed = {f: name for name, files in data_files.SHIPPED_CORPORA.items() for f in files}
    assert set(stated) == set(listed)  # every shipped file is described, and nothing else
    for name in data_files.SHIPPED_CORPORA:
        paths = data_files.shipped_corpus(name)
        assert all(p.is_file() for p in paths)
        total = 0
        for path in paths:
            corpus, count = stated[path.name]
            assert corpus == name
            poems, report = read_corpus([path])
            assert report.read == report.kept == len(poems) == count, path.name  # every line a poem, once
            total += count
        poems, report = read_corpus(paths)
        assert len(poems) == total  # no poem in two files of one corpus
    license_text = (REPO / "data" / "LICENSE-chinese-poetry").read_text(encoding="utf-8")
    assert "Copyright (c) 2016 JackeyGao" in license_text and "Permission is hereby granted" in license_text


def test_package_data_ships_every_data_file():
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    patterns = config["package-data"]["poetvae.data"]
    for path in (REPO / "data").iterdir():
        assert any(fnmatch.fnmatch(path.name, p) for p in patterns), f"{path.name} would not be installed"
    bundled = REPO / "poetvae" / "bundled"
    for model in (d for d in bundled.iterdir() if d.is_dir() and not d.name.startswith(("_", "."))):
        package = f"poetvae.bundled.{model.name}"
        assert package in config["packages"], f"{package} would not be installed"
        for path in model.iterdir():
            assert any(fnmatch.fnmatch(path.name, p) for p in config["package-data"][package]), path.name


def test_the_bundled_models_fit_the_package_budget_together():
    from poetvae.models import BUNDLED_MODELS, bundled_model

    paths = [bundled_model(name) for name in BUNDLED_MODELS]
    assert all(p is not None and p.parent == REPO / "poetvae" / "bundled" for p in paths)
    assert sum(f.stat().st_size for p in paths for f in p.iterdir()) <= 30_000_000  # issues 20 and 21: 30 MB


def test_the_bundled_latent_model_keeps_a_poem():
    """The latent model reconstructs a well-known poem better than the poet does, and its
    interpolation starts and ends at its reconstructions."""
    from poetvae.models import bundled_model

    jingyesi = "床前明月光，疑是地上霜。举头望明月，低头思故乡。"
    latent = Poet.load(bundled_model("latent"), device="cpu")
    poet = Poet.load(bundled_model("classical"), device="cpu")
    kept = latent.reconstruct([jingyesi])[0]
    assert kept.accuracy > poet.reconstruct([jingyesi])[0].accuracy
    path = latent.interpolate(jingyesi, "白日依山尽，黄河入海流。欲穷千里目，更上一层楼。", steps=3)
    assert path[0].lines == kept.decoded.lines
    for poem in path + latent.sample(20, DecodeOptions(temperature=0.8, seed=0)):
        assert len(poem.lines) == 4 and all(len(line) == 5 for line in poem.lines)


def test_the_bundled_model_loads_and_writes_well_formed_poems():
    from poetvae.form import is_han
    from poetvae.models import bundled_model

    path = bundled_model()
    assert path is not None and path.parent == REPO / "poetvae" / "bundled"
    poet = Poet.load(path, device="cpu")
    poems = poet.sample(50, DecodeOptions(temperature=0.8, seed=0))
    poems += poet.sample(5, DecodeOptions(temperature=0.8, seed=0), prior="fitted")
    for poem in poems:  # 4 lines of 5 Han characters, no <unk>
        assert len(poem.lines) == 4 and all(len(line) == 5 and all(map(is_han, line)) for line in poem.lines)
    assert len({p.lines for p in poems[:50]}) == 50
    again = poet.sample(50, DecodeOptions(temperature=0.8, seed=0))
    assert [p.lines for p in again] == [p.lines for p in poems[:50]]  # a seed fixes the poems
    quiet = Poet.load(path, device="cpu")
    recs = quiet.reconstruct(["床前明月光，疑是地上霜。举头望明月，低头思故乡。"])
    assert len(recs) == 1 and 0 <= recs[0].accuracy <= 1


def test_shipped_corpus_names_are_checked():
    with pytest.raises(CorpusError, match="small, quatrains, stanzas"):
        data_files.shipped_corpus("tang")


@pytest.mark.parametrize("kind", ["lines", "jsonl", "stanzas"])
def test_a_gzip_corpus_reads_like_its_plain_form(tmp_path, kind):
    poems = [*POEMS, POEMS[0], "春眠不觉晓，处处闻啼鸟。", "白日依山尽，黄河入海流。欲穷千里目，更上一层。"]
    if kind == "jsonl":
        text = "\n".join(json.dumps({"title": f"t{i}", "body": p}, ensure_ascii=False) for i, p in enumerate(poems))
    elif kind == "stanzas":
        text = "\n\n".join(p.replace("，", "，\n").replace("。", "。\n").strip() for p in poems)
    else:
        text = "\n".join(poems)
    plain, packed = tmp_path / "c.txt", tmp_path / "c.txt.gz"
    plain.write_text(text, encoding="utf-8")
    packed.write_bytes(gzip.compress(text.encode("utf-8")))
    a, ra = read_corpus([plain])
    b, rb = read_corpus([packed])
    assert a == b and len(a) == 6
    assert ra.formats[str(plain)] == rb.formats[str(packed)] == kind
    assert (ra.read, ra.kept, ra.duplicates, ra.skipped) == (rb.read, rb.kept, rb.duplicates, rb.skipped)
    assert {k: [e.replace("c.txt.gz", "c.txt") for e in v] for k, v in rb.examples.items()} == ra.examples


def test_a_damaged_gzip_corpus_is_one_error(tmp_path):
    packed = tmp_path / "c.txt.gz"
    packed.write_bytes(gzip.compress("\n".join(POEMS).encode("utf-8"))[:30])
    with pytest.raises(CorpusError, match="not a readable gzip file"):
        read_corpus([packed])
    packed.write_bytes(gzip.compress(b"\xff\xfe bad"))
    with pytest.raises(CorpusError, match="offset 0 of the decompressed text"):
        read_corpus([packed])
    one_line_error(cli("prep", packed, "-o", tmp_path / "p"), "not UTF-8")
