"""The bounds of the count and size flags (poetvae.config: stated once), the memory estimate
where their product matters, and flags that were accepted but meant nothing: each is a usage
error (2) or one line `error: …` (1), never a traceback or a result that is silently wrong."""

from __future__ import annotations

import dataclasses
import json

import pytest
from helpers import TINY, one_line_error
from typer.testing import CliRunner

import poetvae.config
from poetvae.cli import app
from poetvae.decode import DecodeOptions
from poetvae.poet import Poet
from poetvae.train import train

runner = CliRunner()
JING_YE_SI = "床前明月光，疑是地上霜。举头望明月，低头思故乡。"
DENG_GUAN_QUE_LOU = "白日依山尽，黄河入海流。欲穷千里目，更上一层楼。"


def cli(*args) -> object:
    return runner.invoke(app, [str(a) for a in args])


def usage_error(result, fragment: str) -> None:
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert fragment in " ".join(result.output.replace("│", " ").split()), result.output


@pytest.mark.parametrize("command", ["sample", "vary", "train", "bench"])
@pytest.mark.parametrize("index", ["2147483648", "128", "9" * 5000])
def test_a_device_index_beyond_torchs_is_a_usage_error(command, index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    """torch keeps a device index in 8 bits: cuda:2147483648 was a traceback, cuda:256 cuda:0."""
    args = {"vary": ["vary", JING_YE_SI]}.get(command, [command])
    result = cli(*args, "--device", f"cuda:{index}")
    if command == "train":  # a setting of the config, as from a --config file: exit 1, and nothing claimed
        one_line_error(result, "the index must be at most 127")
    else:
        usage_error(result, "the index must be at most 127")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "args, flag",
    [
        (["interpolate", JING_YE_SI, DENG_GUAN_QUE_LOU, "--steps", "100000000000"], "--steps"),
        (["interpolate", JING_YE_SI, DENG_GUAN_QUE_LOU, "--steps", str(10**22)], "--steps"),
        (["bench", "--batch-size", str(10**22)], "--batch-size"),
        (["bench", "--sample-batch", "100000000000"], "--sample-batch"),
        (["bench", "--repeats", str(10**22)], "--repeats"),
        (["sample", "-n", str(10**22)], "-n"),
        (["sample", "--batch-size", str(10**22)], "--batch-size"),
        (["vary", JING_YE_SI, "-n", str(10**22)], "-n"),
        (["evaluate", "--samples", str(10**22)], "--samples"),
        (["fit-prior", "--max-poems", str(10**22)], "--max-poems"),
        (["train", "--devices", str(10**22)], "--devices"),
    ],
)
def test_counts_and_sizes_have_an_upper_bound(args, flag):
    usage_error(cli(*args), flag)


def test_settings_in_range_but_too_large_together_are_refused_by_the_memory_estimate(trained_run, monkeypatch):
    monkeypatch.setattr(poetvae.config, "memory_ceiling", lambda: 2**30)  # a machine with 1 GiB
    line = one_line_error(cli("sample", "-m", trained_run, "-n", "1", "--beam", "256", "--rerank", "1024"), "GiB")
    assert "--beam 256, --rerank 1024" in line and "more than the 1.0 GiB this process may use" in line
    path = ["interpolate", "-m", trained_run, JING_YE_SI, DENG_GUAN_QUE_LOU, "--allow-unk"]
    one_line_error(cli(*path, "--steps", "10000", "--beam", "256"), "--steps 10000, --beam 256")
    one_line_error(cli("bench", "--batch-size", "1048576"), "a training step on 1,048,576 poems")
    assert cli("sample", "-m", trained_run, "-n", "2", "--beam", "2", "--rerank", "2").exit_code == 0


def test_the_memory_ceiling_is_the_smallest_limit(monkeypatch):
    import resource

    real = resource.getrlimit
    monkeypatch.setattr(
        resource, "getrlimit", lambda which: (2**31, -1) if which == resource.RLIMIT_AS else real(which)
    )
    assert poetvae.config.memory_ceiling() <= 2**31


def test_vary_streams_its_variations(trained_run):
    poet = Poet.load(trained_run)
    options = DecodeOptions(seed=3, batch_size=2)
    batches = list(poet.iter_vary(JING_YE_SI, 5, options, allow_unk=True))
    assert [len(b) for b in batches] == [2, 2, 1]
    assert [s for b in batches for s in b] == poet.vary(JING_YE_SI, 5, options, allow_unk=True)


@pytest.fixture(scope="module")
def no_latent_run(tmp_path_factory, prepared):
    cfg = dataclasses.replace(TINY, model=dataclasses.replace(TINY.model, use_latent=False))
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=1))
    run = tmp_path_factory.mktemp("nolatent") / "run"
    train(cfg, prepared, run)
    return run


@pytest.mark.parametrize(
    "args, what",
    [
        (["reconstruct", JING_YE_SI], "cannot reconstruct a poem"),
        (["vary", JING_YE_SI, "-n", "2"], "cannot vary a poem"),
        (["interpolate", JING_YE_SI, DENG_GUAN_QUE_LOU], "cannot interpolate between poems"),
        (["sample", "--first-line", "白日依山尽", "--infer-z"], "cannot infer z from the given lines"),
    ],
)
def test_a_model_without_a_latent_refuses_what_needs_one(no_latent_run, args, what):
    result = cli(*args, "-m", no_latent_run, "--allow-unk" if args[0] != "sample" else "--greedy")
    one_line_error(result, f"has no latent (trained with --no-latent): it {what}")
    assert cli("sample", "-m", no_latent_run, "-n", "2").exit_code == 0  # sampling needs no z of a poem


def test_an_empty_first_line_is_a_usage_error_not_ignored(trained_run):
    for flag in ("--first-line", "--prefix"):
        usage_error(cli("sample", "-m", trained_run, "-n", "1", flag, ""), "hold no characters")
    usage_error(cli("sample", "-m", trained_run, "--first-line", "", "--prefix", "白日依山尽"), "not both")


def test_init_reset_needs_an_init_run(prep_dir, tmp_path):
    usage_error(cli("train", prep_dir, "-o", tmp_path / "r", "--init-reset", "decoder"), "give --init RUN")
    config = tmp_path / "reset.toml"
    config.write_text('[train]\ninit_reset = "decoder"\n', encoding="utf-8")
    result = cli("train", prep_dir, "-o", tmp_path / "r", "-c", config)
    one_line_error(result, "train.init_reset = 'decoder'")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("command", ["sample", "interpolate", "vary", "evaluate"])
def test_an_unknown_scheme_is_a_usage_error(command):
    args = {"interpolate": [JING_YE_SI, DENG_GUAN_QUE_LOU], "vary": [JING_YE_SI]}.get(command, [])
    usage_error(cli(command, *args, "--scheme", "bogus"), "must be pingshui or xinyun")


def test_the_json_of_vary_is_unchanged_by_streaming(trained_run):
    args = ["vary", "-m", trained_run, JING_YE_SI, "-n", "3", "--seed", "1", "-f", "json", "--allow-unk"]
    result = cli(*args)
    assert result.exit_code == 0, result.output
    assert len([json.loads(line) for line in result.output.splitlines()]) == 3
