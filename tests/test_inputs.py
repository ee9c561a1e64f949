"""Careless and hostile input (issue 10): seeds, NaN, markup, damaged run files, devices,
sizes, unreadable files, a closed pipe. Each ends in a result or a one-line error, never a
traceback."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import one_line_error
from typer.testing import CliRunner

import poetvae.train
from poetvae.config import MAX_SEED, load_config, user_fields
from poetvae.data_files import small_corpus
from poetvae.decode import DecodeOptions
from poetvae.errors import CheckpointError, ConfigError, CorpusError
from poetvae.prep import load_prepared
from poetvae.records import ElboTerms
from poetvae.rundir import RunDir
from poetvae.vocab import Vocab

JING_YE_SI = "床前明月光，疑是地上霜。举头望明月，低头思故乡。"
DENG_GUAN_QUE_LOU = "白日依山尽，黄河入海流。欲穷千里目，更上一层楼。"
runner = CliRunner()


def run(*args):
    return runner.invoke(app_(), [str(a) for a in args])


def app_():
    from poetvae.cli import app

    return app


def usage_error(result, fragment: str = "") -> None:
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert fragment in " ".join(result.output.replace("│", " ").split()), result.output


@pytest.fixture
def run_copy(trained_run, tmp_path) -> Path:
    """A copy of the tiny trained run, free to damage."""
    return Path(shutil.copytree(trained_run, tmp_path / "run"))


# ---- case 1: one seed range ---------------------------------------------------------------
@pytest.mark.parametrize("seed", [-1, 2**32, 2**64])
def test_seed_flags_out_of_range_are_usage_errors(trained_run, seed):
    usage_error(run("sample", "-m", trained_run, "-n", 1, "--seed", seed), "--seed")
    usage_error(run("interpolate", "-m", trained_run, JING_YE_SI, DENG_GUAN_QUE_LOU, "--seed", seed), "--seed")
    usage_error(run("evaluate", "-m", trained_run, "--seed", seed), "--seed")


def test_seed_settings_share_the_range(tmp_path):
    assert load_config(None, {"seed": MAX_SEED, "split_seed": 0}).train.seed == MAX_SEED
    # the epoch order's seed still fits a 64-bit generator seed
    assert MAX_SEED * 100_003 + load_config().train.epochs < 2**63
    for key in ("seed", "split_seed"):
        for bad in (-1, MAX_SEED + 1, 2**70):
            with pytest.raises(ConfigError, match=f"{key} must be a whole number from 0 to {MAX_SEED}"):
                load_config(None, {key: bad})
    with pytest.raises(ConfigError):
        DecodeOptions(seed=2**64)
    one_line_error(run("train", "-o", tmp_path / "r", "--seed", "-1"), "train.seed must be a whole number")
    one_line_error(run("prep", JING_YE_SI, "--split-seed", 2**32), "prep.split_seed")
    conf = tmp_path / "c.toml"
    conf.write_text("[train]\nseed = 184467440737095516160\n", encoding="utf-8")
    one_line_error(run("train", "-c", conf, "-o", tmp_path / "r"), "train.seed")
    assert not (tmp_path / "r").exists()  # refused before anything was written


# ---- case 2: NaN and infinity -------------------------------------------------------------
FLOAT_SETTINGS = [f.name for _, f in user_fields() if f.type in ("float", float)]


@pytest.mark.parametrize("name", FLOAT_SETTINGS)
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_every_float_setting_must_be_finite(name, value):
    with pytest.raises(ConfigError, match=f"{name} must be a finite number"):
        load_config(None, {name: value})


def test_nan_from_flags_and_toml(tmp_path, trained_run):
    assert {"lr", "weight_decay", "free_bits", "grad_clip", "max_minutes", "bn_gamma", "kl_max"} <= set(FLOAT_SETTINGS)
    one_line_error(run("train", "-o", tmp_path / "r", "--lr", "nan"), "train.lr must be a finite number")
    conf = tmp_path / "c.toml"
    conf.write_text("[train]\nweight_decay = nan\n", encoding="utf-8")
    one_line_error(run("train", "-c", conf, "-o", tmp_path / "r"), "train.weight_decay must be a finite number")
    conf.write_text("[train]\nlr = 1" + "0" * 400 + "\n", encoding="utf-8")
    one_line_error(run("train", "-c", conf, "-o", tmp_path / "r"), "train.lr must be a finite number")
    for flags in (
        ["--temp", "inf"],
        ["--temp", "nan"],
        ["--top-p", "nan"],
        ["--prosody-weight", "nan"],
        ["--bigram-correction", "nan"],
        ["--bigram-correction", "1.5"],
        ["--bigram-correction", "-1"],
    ):
        usage_error(run("sample", "-m", trained_run, "-n", 1, *flags), flags[0])
    usage_error(run("evaluate", "-m", trained_run, "--temp", "inf"), "--temp")
    with pytest.raises(ValueError):
        DecodeOptions(temperature=math.inf)
    with pytest.raises(ValueError):
        DecodeOptions(prosody_weight=math.nan)


# ---- case 3: user text is never markup ---------------------------------------------------
@pytest.mark.parametrize("path", ["runs/[bold]x", "runs/x[/red]", "a[/]b"])
def test_paths_print_as_given(tmp_path, path):
    line = one_line_error(run("sample", "-m", tmp_path / path), "no such run directory")
    assert line.endswith(str(tmp_path / path))
    line = one_line_error(run("prep", tmp_path / f"{path}.txt", "-o", tmp_path / "p"), "no such file")
    assert str(tmp_path / f"{path}.txt") in line


def test_poems_and_tables_print_as_given(trained_run, tmp_path):
    one_line_error(run("interpolate", "-m", trained_run, "[/]", "x"), "[/]")
    corpus = tmp_path / "[red]c[bold].txt"
    lines = small_corpus().read_text(encoding="utf-8").splitlines()[:40]
    corpus.write_text("\n".join(lines) + '\n{"body": "[red]白日[/]依山尽"}\n', encoding="utf-8")
    out = tmp_path / "p[bold]"
    result = run("prep", corpus, "-o", out, "--w2v-epochs", 1, "--min-count", 1, "--embed-dim", 8)
    assert result.exit_code == 0, result.output
    text = result.output.replace("\n", "")
    assert str(corpus.name) in text and "p[bold]" in text and "[red]白日[/]依山尽" in text


# ---- case 5: damaged but parseable run files ---------------------------------------------
@pytest.mark.parametrize(
    "content,fragment",
    [(b"[1, 2]", "must hold an object"), (b'"config"', "must hold an object"), (b"\xff\xfe{}", "not UTF-8")],
)
def test_damaged_config_json(run_copy, content, fragment):
    (run_copy / "config.json").write_bytes(content)
    line = one_line_error(run("sample", "-m", run_copy, "-n", 1), fragment)
    assert "config.json" in line


@pytest.mark.parametrize("damage", ["not utf-8", "null token", "repeated token", "counts"])
def test_damaged_vocab_json(run_copy, damage):
    path = run_copy / "vocab.json"
    d = json.loads(path.read_text(encoding="utf-8"))
    if damage == "not utf-8":
        path.write_bytes(b"\xff" + path.read_bytes())
    else:
        if damage == "null token":
            d["tokens"][5] = None
        elif damage == "repeated token":
            d["tokens"][5] = d["tokens"][6]
        else:
            d["counts"] = d["counts"][:-1]
        path.write_text(json.dumps(d, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(CheckpointError, match="vocab.json"):
        Vocab.load(path)
    assert "vocab.json" in one_line_error(run("sample", "-m", run_copy, "-n", 1), "vocab.json")


def resume(run_dir: Path, prepared) -> None:
    poetvae.train.train(RunDir(run_dir).read_header().config, prepared, run_dir, resume=True)


def test_resume_from_a_copy_of_the_best_weights(run_copy, prepared):
    shutil.copy(run_copy / "model.safetensors", run_copy / "last.safetensors")
    with pytest.raises(CheckpointError, match="last.safetensors holds model weights only, not a resume point"):
        resume(run_copy, prepared)


def test_resume_point_with_wrong_metadata(run_copy, prepared):
    from poetvae.checkpoint import load_tensors, save_tensors

    tensors, meta = load_tensors(run_copy / "last.safetensors")
    for bad in ({**meta, "step": "six"}, {k: v for k, v in meta.items() if k != "elapsed"}):
        save_tensors(run_copy / "last.safetensors", tensors, bad)
        with pytest.raises(CheckpointError, match="last.safetensors is not a valid resume point"):
            resume(run_copy, prepared)
    # tensors of another shape: named, not a torch traceback
    tensors = {k: (v[:1] if k.startswith("model.embedding") else v) for k, v in tensors.items()}
    save_tensors(run_copy / "last.safetensors", tensors, meta)
    with pytest.raises(CheckpointError, match="last.safetensors does not fit"):
        resume(run_copy, prepared)


def test_metadata_that_is_not_an_object(run_copy):
    from safetensors.torch import load_file, save_file

    from poetvae.checkpoint import load_tensors

    path = run_copy / "model.safetensors"
    save_file(load_file(path), path, metadata={"poetvae": "[1, 2]"})
    with pytest.raises(CheckpointError, match="model.safetensors: its poetvae metadata is not a JSON object"):
        load_tensors(path)


@pytest.mark.parametrize("damage", ["key", "shape"])
def test_prep_embeddings_of_the_wrong_key_or_shape(prep_dir, tmp_path, damage):
    from poetvae.checkpoint import load_tensors, save_tensors

    prep = Path(shutil.copytree(prep_dir, tmp_path / "prep"))
    weight = load_tensors(prep / "embeddings.safetensors")[0]["weight"]
    tensors = {"vectors": weight} if damage == "key" else {"weight": weight[:-1]}
    save_tensors(prep / "embeddings.safetensors", tensors)
    with pytest.raises(CheckpointError, match="embeddings.safetensors"):
        load_prepared(prep)


# ---- case 6: devices, sizes, deep JSON ----------------------------------------------------
def test_devices_that_hold_no_data(trained_run, tmp_path):
    usage_error(run("sample", "-m", trained_run, "-n", 1, "--device", "meta"), "unknown device 'meta'")
    usage_error(run("bench", "--device", "meta"), "unknown device 'meta'")
    one_line_error(run("train", "-o", tmp_path / "r", "--device", "meta"), "unknown device 'meta'")
    for ok in ("auto", "cpu", "cuda", "cuda:1", "mps"):
        assert load_config(None, {"device": ok}).train.device == ok


def test_absurd_sizes(tmp_path):
    one_line_error(run("train", "-o", tmp_path / "r", "--latent-dim", 100000000000), "latent_dim must be at most")
    conf = tmp_path / "c.toml"
    conf.write_text("[model]\nhidden_dim = 99999999999999999999999\n", encoding="utf-8")
    one_line_error(run("train", "-c", conf, "-o", tmp_path / "r"), "hidden_dim must be at most")
    with pytest.raises(ConfigError, match="epochs must be at most"):
        load_config(None, {"epochs": 2**63})


@pytest.mark.parametrize(
    "name,text", [("deep.json", "[" * 100_000 + "]" * 100_000), ("deep.jsonl", '{"body":' + "[" * 100_000)]
)
def test_deeply_nested_json_corpus(tmp_path, name, text):
    from poetvae.corpus import read_corpus

    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(CorpusError, match=name):
        read_corpus([path])


# ---- case 11: unreadable files, pipes, empty prefixes, bounds, huge numbers --------------
def test_unreadable_file_is_an_error_not_a_usage_box(tmp_path, monkeypatch):
    corpus = tmp_path / "c.txt"
    corpus.write_text(JING_YE_SI + "\n", encoding="utf-8")
    monkeypatch.setattr(os, "access", lambda *a, **k: False)  # what an unreadable file looks like to click
    monkeypatch.setattr(
        Path, "read_bytes", lambda self: (_ for _ in ()).throw(PermissionError(13, "Permission denied", str(self)))
    )
    one_line_error(run("prep", corpus, "-o", tmp_path / "p"), "Permission denied")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads a chmod 000 file")
def test_chmod_000_corpus(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(JING_YE_SI + "\n", encoding="utf-8")
    corpus.chmod(0)
    one_line_error(run("prep", corpus, "-o", tmp_path / "p"), "Permission denied")


def test_closed_pipe_is_quiet(trained_run):
    cmd = [
        sys.executable,
        "-m",
        "poetvae",
        "sample",
        "-m",
        str(trained_run),
        "-n",
        "3000",  # ~216 KB: more than the pipe buffer holds, so the writer is still writing at the close
        "-f",
        "oneline",
        "--seed",
        "1",
    ]
    env = {**os.environ, "PYTHONPATH": str(Path(poetvae.train.__file__).parent.parent)}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    proc.stdout.readline()
    proc.stdout.close()  # what `| head -1` does
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141, stderr
    assert stderr == ""


def test_empty_prefix_and_bounds(trained_run):
    for flag in ("--prefix", "--first-line"):
        usage_error(run("sample", "-m", trained_run, "-n", 1, flag, "，，，"), "hold no characters")
    usage_error(run("sample", "-m", trained_run, "-n", 1, "--beam", 100_000), "--beam")
    usage_error(run("sample", "-m", trained_run, "-n", 1, "--rerank", 100_000), "--rerank")


def test_diverged_perplexity_prints_readably(tmp_path, monkeypatch, prep_dir):
    huge = ElboTerms(rec=1e200, kl=1.0, nelbo=1e200, ppl=math.inf, poems=3)
    monkeypatch.setattr(
        poetvae.train,
        "train",
        lambda cfg, data, run_dir, **k: poetvae.train.TrainResult(run_dir, 1, 1, 0.0, huge, huge),
    )
    result = run("train", prep_dir, "-o", tmp_path / "r")
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "rec 1e+200" in text and "ppl inf" in text and "0" * 30 not in text


def test_prep_flags_with_a_prep_directory(prep_dir, tmp_path):
    usage_error(
        run("train", prep_dir, "-o", tmp_path / "r", "--min-count", 3, "--split-seed", 2), "--min-count, --split-seed"
    )
    assert not (tmp_path / "r").exists()
