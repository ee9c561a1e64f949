"""The command line end to end on the shipped corpus, and every kind of bad input."""

import json
import shutil
from pathlib import Path

import pytest
from helpers import TINY_MODEL_FLAGS, one_line_error
from typer.testing import CliRunner

import poetvae.train
from poetvae.cli import app
from poetvae.config import load_config

runner = CliRunner()
TINY_FLAGS = [*TINY_MODEL_FLAGS, "--epochs", "1", "--w2v-epochs", "1", "--min-count", "1"]
JING_YE_SI = "床前明月光，疑是地上霜。举头望明月，低头思故乡。"
DENG_GUAN_QUE_LOU = "白日依山尽，黄河入海流。欲穷千里目，更上一层楼。"


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory) -> Path:
    """`poetvae train --corpus small`: the small shipped corpus."""
    run_dir = tmp_path_factory.mktemp("cli") / "run"
    result = run("train", "--corpus", "small", "-o", run_dir, *TINY_FLAGS)
    assert result.exit_code == 0, result.output
    return run_dir


def well_formed(text_poem: str) -> bool:
    body = text_poem.replace("\n", "")
    parts = [p for p in body.replace("。", "，").split("，") if p]
    return len(parts) == 4 and all(len(p) == 5 for p in parts)


def test_prep_reports_what_it_kept_and_skipped(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(
        "\n".join(
            [
                JING_YE_SI,
                DENG_GUAN_QUE_LOU,
                JING_YE_SI,
                "春眠不觉晓，处处闻啼鸟。",
                "千山鸟飞绝，万径人踪灭。孤舟蓑笠翁，独钓寒江雪。",
                "红豆生南国，春来发几枝。愿君多采撷，此物最相思。",
            ]
        ),
        encoding="utf-8",
    )
    result = run(
        "prep",
        corpus,
        "-o",
        tmp_path / "p",
        "--embed-dim",
        "8",
        "--w2v-epochs",
        "1",
        "--min-count",
        "1",
        "--valid-fraction",
        "0.25",
        "--test-fraction",
        "0.25",
    )
    assert result.exit_code == 0, result.output
    assert "kept" in result.output and "duplicates dropped" in result.output
    assert "skipped: wrong number of lines" in result.output and "春眠不觉晓" in result.output
    manifest = json.loads((tmp_path / "p" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["kept"] == 4 and manifest["duplicates"] == 1 and manifest["read"] == 6
    assert sum(manifest["splits"].values()) == 4
    assert manifest["versions"]["torch"]


def test_train_sample_interpolate_end_to_end(cli_run):
    result = run("sample", "-m", cli_run, "-n", "5", "--temp", "0.8", "--seed", "3")
    assert result.exit_code == 0, result.output
    poems = [p for p in result.output.strip().split("\n\n")]
    assert len(poems) == 5 and all(well_formed(p) for p in poems)
    again = run("sample", "-m", cli_run, "-n", "5", "--temp", "0.8", "--seed", "3")
    assert again.output == result.output

    js = run("sample", "-m", cli_run, "-n", "3", "--seed", "1", "--format", "json", "--with-z")
    records = [json.loads(line) for line in js.output.splitlines()]
    assert len(records) == 3 and all(len(r["z"]) == 6 and r["logprob"] < 0 for r in records)
    assert all(len(r["lines"]) == 4 for r in records)

    one = run("sample", "-m", cli_run, "-n", "4", "--greedy", "--format", "oneline")
    assert len(one.output.splitlines()) == 4 and all(well_formed(x) for x in one.output.splitlines())

    # 床 may be missing from a tiny vocabulary: --allow-unk makes the walk possible either way
    inter = run(
        "interpolate",
        "-m",
        cli_run,
        "君自故乡来，应知故乡事。来日绮窗前，寒梅著花未。",
        "红豆生南国，春来发几枝。愿君多采撷，此物最相思。",
        "--steps",
        "4",
        "--format",
        "json",
        "--allow-unk",
    )
    assert inter.exit_code == 0, inter.output
    path = [json.loads(line) for line in inter.output.splitlines()]
    assert [p["t"] for p in path] == [0.0, 0.3333, 0.6667, 1.0]
    assert all(len(p["lines"]) == 4 and all(len(x) == 5 for x in p["lines"]) for p in path)
    table = run("interpolate", "-m", cli_run, JING_YE_SI, DENG_GUAN_QUE_LOU, "--allow-unk", "--method", "slerp")
    assert table.exit_code == 0 and JING_YE_SI in table.output


def test_train_refuses_to_overwrite_and_resumes(cli_run):
    again = run("train", "--corpus", "small", "-o", cli_run, *TINY_FLAGS)
    one_line_error(again, "already holds a run")
    resumed = run("train", "--resume", cli_run)  # already finished: resumes to the same end
    assert resumed.exit_code == 0, resumed.output


def test_train_flags_and_config_file_reach_the_library(tmp_path, monkeypatch):
    seen = {}

    def fake_train(cfg, data, run_dir, resume=False, on_log=None, staging=None, init=None):
        seen["cfg"], seen["run_dir"] = cfg, run_dir
        return poetvae.train.TrainResult(run_dir, 0, 0, 0.0)

    monkeypatch.setattr(poetvae.train, "train", fake_train)
    conf = tmp_path / "c.toml"
    conf.write_text("[model]\nlatent_dim = 7\nhidden_dim = 20\n[train]\nkl_schedule = 'linear'\n", encoding="utf-8")
    result = run(
        "train",
        "--corpus",
        "small",
        "-o",
        tmp_path / "r",
        "-c",
        conf,
        "--latent-dim",
        "9",
        "--free-bits",
        "0",
        "--embed-dim",
        "8",
        "--w2v-epochs",
        "1",
        "--amp",
        "off",
    )
    assert result.exit_code == 0, result.output
    cfg = seen["cfg"]
    assert cfg.model.latent_dim == 9  # flag beats file
    assert cfg.model.hidden_dim == 20  # file beats default
    assert cfg.train.kl_schedule == "linear" and cfg.train.free_bits == 0.0 and cfg.train.amp == "off"


@pytest.mark.parametrize(
    "content,fragment",
    [
        ("", "no valid"),
        ("春眠不觉晓，处处闻啼鸟。\n", "no valid"),
        (b"\xff\xfe\x00garbage", "not UTF-8"),
    ],
)
def test_prep_bad_corpus(tmp_path, content, fragment):
    corpus = tmp_path / "bad.txt"
    corpus.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    one_line_error(run("prep", corpus, "-o", tmp_path / "p"), fragment)
    assert not (tmp_path / "p" / "manifest.json").exists()


def test_missing_corpus_file(tmp_path):
    one_line_error(run("prep", tmp_path / "nope.txt", "-o", tmp_path / "p"), "no such file")
    one_line_error(run("train", tmp_path / "nope.txt", "-o", tmp_path / "r"), "no such file")


def test_not_a_run_dir(tmp_path):
    one_line_error(run("sample", "-m", tmp_path), "not a poetvae run")
    one_line_error(run("sample", "-m", tmp_path / "missing"), "no such run directory")
    one_line_error(run("train", "--resume", tmp_path), "not a poetvae run")


def test_bad_poem_arguments(cli_run):
    one_line_error(run("interpolate", "-m", cli_run, "床前明月光，疑是地上霜。", DENG_GUAN_QUE_LOU), "4 lines")
    one_line_error(
        run("interpolate", "-m", cli_run, "床前明月光，疑是地上。举头望明月，低头思故乡。", DENG_GUAN_QUE_LOU),
        "4 characters",
    )


def test_unknown_characters_are_named(cli_run):
    result = run("interpolate", "-m", cli_run, "龘龘龘龘龘，龘龘龘龘龘。龘龘龘龘龘，龘龘龘龘龘。", DENG_GUAN_QUE_LOU)
    one_line_error(result, "not in the model's vocabulary: 龘")


def test_bad_config(tmp_path):
    conf = tmp_path / "c.toml"
    conf.write_text("[model]\nlatent_size = 7\n", encoding="utf-8")
    one_line_error(run("train", "-c", conf, "-o", tmp_path / "r"), "unknown config key model.latent_size")
    conf.write_text("[train]\nkl_schedule = 'zigzag'\n", encoding="utf-8")
    one_line_error(run("train", "-c", conf, "-o", tmp_path / "r"), "kl_schedule must be one of")
    conf.write_text("[train\n", encoding="utf-8")
    one_line_error(run("train", "-c", conf, "-o", tmp_path / "r"), "not valid TOML")
    one_line_error(run("train", "--latent-dim", "0", "-o", tmp_path / "r"), "latent_dim must be positive")


def test_usage_errors_exit_2(cli_run):
    assert run("sample", "-m", cli_run, "--format", "xml").exit_code == 2
    assert run("sample", "-m", cli_run, "--temp", "0").exit_code == 2
    assert run("evaluate", "-m", cli_run, "--iw", "99999999999999999999999").exit_code == 2  # not a tensor size
    assert run("train", "--bogus").exit_code == 2


def test_jieba_mode_end_to_end(tmp_path):
    run_dir = tmp_path / "jieba"
    result = run("train", "--corpus", "small", "-o", run_dir, *TINY_FLAGS, "--tokenizer", "jieba")
    assert result.exit_code == 0, result.output
    vocab = json.loads((run_dir / "vocab.json").read_text(encoding="utf-8"))
    assert vocab["tokenizer"] == "jieba" and any(len(t) > 1 for t in vocab["tokens"][4:])
    out = run("sample", "-m", run_dir, "-n", "50", "--seed", "0", "--temp", "1.5", "--format", "oneline")
    lines = out.output.splitlines()
    assert len(lines) == 50 and all(well_formed(x) for x in lines)


def test_evaluate_and_plot_read_the_runs_own_splits(cli_run, tmp_path):
    result = run("evaluate", "-m", cli_run, "--samples", "5", "--iw", "2", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["meta"]["poems"] > 0 and report["samples"]["poems"] == 5
    table = run("evaluate", "-m", cli_run, "--samples", "5", "--iw", "2")
    assert table.exit_code == 0 and "the run's test split" in table.output
    plots = run("plot", cli_run, "-o", tmp_path / "plots")
    assert plots.exit_code == 0, plots.output
    assert (tmp_path / "plots" / "training.png").is_file() and (tmp_path / "plots" / "latent.png").is_file()


def test_evaluate_needs_a_run_with_its_splits_or_a_corpus(cli_run, tmp_path):
    one_line_error(run("evaluate", "-m", tmp_path), "not a poetvae run")
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "vocab.json", "model.safetensors"):
        shutil.copy(cli_run / name, bare / name)
    one_line_error(run("evaluate", "-m", bare), "keeps no test split")
    one_line_error(run("train", "--resume", bare), "not a prepared corpus")


def test_every_config_in_the_repo_loads():
    # the recipes that docs/experiments.md and the README name must stay valid settings
    repo = Path(__file__).resolve().parent.parent
    files = sorted((repo / "configs").rglob("*.toml"))
    assert len(files) >= 10
    for f in files:
        load_config(f)
