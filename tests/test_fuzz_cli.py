"""The command line under generated arguments (hypothesis): whatever the numbers (NaN, inf,
huge, negative), strings (empty, markup-looking), paths (missing, directories, not a run)
and poems (wrong shape, unknown characters, punctuation only), and whatever the weights of
the run (NaN, huge), every command ends in its output, a one-line `error:` (exit 1) or a
usage error (exit 2): never a Python traceback.

Commands run in-process (CliRunner) against copies of the session's tiny run. Nothing is
trained or benchmarked for real in the loop: train runs at most a step or two on a corpus
of six poems, and bench's measurements are replaced by a stand-in, so that only its flag
handling and its table are exercised.
"""

from __future__ import annotations

import dataclasses
import gzip
import itertools
import json
import math
import shutil
from pathlib import Path
from unittest import mock

import pytest
from helpers import TINY
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import poetvae.bench
import poetvae.corpus
from poetvae.checkpoint import load_tensors, save_tensors
from poetvae.cli import app
from poetvae.config import user_fields
from poetvae.train import train

runner = CliRunner()
JING_YE_SI = "床前明月光，疑是地上霜。举头望明月，低头思故乡。"
DENG_GUAN_QUE_LOU = "白日依山尽，黄河入海流。欲穷千里目，更上一层楼。"
TINY_CORPUS = [
    JING_YE_SI,
    DENG_GUAN_QUE_LOU,
    "千山鸟飞绝，万径人踪灭。孤舟蓑笠翁，独钓寒江雪。",
    "红豆生南国，春来发几枝。愿君多采撷，此物最相思。",
    "松下问童子，言师采药去。只在此山中，云深不知处。",
    "君自故乡来，应知故乡事。来日绮窗前，寒梅著花未。",
]

# ---- the values arguments are drawn from --------------------------------------------------
# Mostly values that parse (so that the command gets to use them), some that do not.
FLOATS = ["nan", "NaN", "inf", "-inf", "1e308", "1e400", "-1e308", "-1", "0", "-0.0", "1e-9", "0.5", "1", "2", "1e6"]
FLOATS += ["18446744073709551616"]
INTS = ["-1", "0", "1", "2", "3", "18446744073709551616", "99999999999999999999999", "-18446744073709551617"]
INTS += ["100000000000", "10000000000000000000000", "2147483648"]  # past every count's bound
# for counts that a correct program loops over (epochs, layers, poems): nothing so large
# that it would take long, but every kind of wrong one
SMALL_INTS = ["-1", "0", "1", "2", "3"]
NOT_NUMBERS = ["abc", "", "[red]", "0x10", "１"]
NOT_INTS = NOT_NUMBERS + ["nan", "inf", "1.5", "1e3"]
TEXT = ["", " ", "[/]", "[bold]x", "[red]", "x[/red]", "[", "]", "\\[x]", "春夏秋冬", "白日依山尽", "七阳", "一东"]
TEXT += ["白日依山尽，黄河入海流", "，，，", "。", "pingshui", "xinyun", "char", "jieba", "auto", "cpu", "meta"]
TEXT += ["cuda", "cuda:7", "a\nb", "-", "--x", "linear", "slerp", "json", "table", "text", "oneline"]
HAN = "白日依山尽黄河入海流春夏秋冬龘𠀀"
POEMS = [JING_YE_SI, DENG_GUAN_QUE_LOU, "白日依山尽", "，，，，。。。。", "。", "", "[/]", "[bold]x"]
POEMS += ["龘龘龘龘龘，龘龘龘龘龘。龘龘龘龘龘，龘龘龘龘龘。", "白日依山尽黄河入海流欲穷千里目更上一层楼"]
POEMS += ["abcde,fghij.klmno,pqrst.", JING_YE_SI + DENG_GUAN_QUE_LOU, "白日依山尽，黄河入海流。欲穷千里目，更上一层。"]


def text() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(TEXT), st.text(st.sampled_from(HAN + "，。[]/ ,.abx\\"), max_size=12))


def poem() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(POEMS), st.text(st.sampled_from(HAN + "，。、！？ [/]"), max_size=30))


# ---- the files the arguments point to ------------------------------------------------------
def break_weights(run: Path, fill) -> None:
    """Rewrite the run's best weights: every floating-point tensor through `fill`."""
    tensors, meta = load_tensors(run / "model.safetensors")
    save_tensors(
        run / "model.safetensors", {k: fill(k, v) if v.is_floating_point() else v for k, v in tensors.items()}, meta
    )


SMALL_CEILING = 100_000  # poetvae.corpus.MAX_CORPUS_BYTES while the fuzz runs
# runs with one file damaged each (their cause, issue 18): the log, the optimizer state, the
# vocabulary, the dtype of the weights; and a run trained without a latent
DAMAGED_RUNS = ("badlog_run", "nested_log_run", "badopt_run", "badvocab_run", "int_run", "nolatent_run")


def damage_run_files(root: Path, run: Path, prepared) -> None:
    """The DAMAGED_RUNS, copies of `run` under `root` (and a tiny run without a latent)."""
    for name in DAMAGED_RUNS[:-1]:
        shutil.copytree(run, root / name)
    with open(root / "badlog_run" / "log.jsonl", "ab") as f:
        f.write(b'{"kind": "step", "step": 1}\xff\n')
    with open(root / "nested_log_run" / "log.jsonl", "ab") as f:
        f.write(b"[" * 20_000 + b"]" * 20_000 + b"\n")
    tensors, meta = load_tensors(run / "last.safetensors")
    meta["optimizer"]["param_groups"][0].update(lr="x", betas=[2.0, 5])
    save_tensors(root / "badopt_run" / "last.safetensors", tensors, meta)
    vocab = json.loads((run / "vocab.json").read_text(encoding="utf-8"))
    vocab["tokens"][5] = "\x1b[31m\n"
    (root / "badvocab_run" / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    break_weights(root / "int_run", lambda k, v: v.int() if k == "embedding.weight" else v)
    no_latent = dataclasses.replace(TINY, model=dataclasses.replace(TINY.model, use_latent=False))
    train(
        dataclasses.replace(no_latent, train=dataclasses.replace(TINY.train, epochs=1)), prepared, root / "nolatent_run"
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory, trained_run, prep_dir, prepared) -> dict[str, Path]:
    """The paths the fuzz draws from: runs (sound, NaN weights, huge weights), a corpus, a
    file that is no corpus, a directory, missing paths, names that look like markup."""
    root = tmp_path_factory.mktemp("fuzz")
    run = root / "run"
    shutil.copytree(trained_run, run)
    shutil.copytree(prep_dir, run / "prep")
    for name, fill in (
        ("nan_run", lambda k, v: v.fill_(math.nan)),
        ("inf_run", lambda k, v: v.masked_fill_(v.abs() > v.abs().median(), math.inf)),
        ("huge_run", lambda k, v: v * 1e20 if k.startswith("decoder.out") else v),
    ):
        shutil.copytree(run, root / name)
        break_weights(root / name, fill)
    damage_run_files(root, run, prepared)
    corpus = "\n".join(TINY_CORPUS)
    (root / "tiny.txt").write_text(corpus, encoding="utf-8")
    (root / "bomb.txt.gz").write_bytes(gzip.compress(b"\n" * (2 * SMALL_CEILING)))  # past the (patched) ceiling
    (root / "mine").mkdir()  # the user's own directory, with a file of a prep directory's name
    (root / "mine" / "train.txt").write_text(corpus, encoding="utf-8")
    (root / "a[").mkdir()
    (root / "a[/]b.txt").write_text(corpus, encoding="utf-8")  # the file "]b.txt" in the folder "a["
    (root / "notes.txt").write_text("hello\n", encoding="utf-8")
    (root / "nan.toml").write_text("[train]\nlr = nan\nweight_decay = inf\n", encoding="utf-8")
    (root / "huge.toml").write_text("[model]\nlatent_dim = 99999999999999999999\n", encoding="utf-8")
    (root / "empty").mkdir()
    (root / "out").mkdir()
    return {
        **{name: root / name for name in ("run", "nan_run", "inf_run", "huge_run", "tiny.txt", "a[/]b.txt")},
        **{name: root / name for name in ("notes.txt", "nan.toml", "huge.toml", "empty", "out")},
        **{name: root / name for name in DAMAGED_RUNS + ("bomb.txt.gz", "mine")},
        "run/prep": run / "prep",
        "root": Path("/"),
        "prep": prep_dir,
        "missing": root / "no" / "such",
        "markup missing": root / "x[/red]",
        "bold": Path("runs/[bold]x"),
    }


_fresh = itertools.count()


def fresh_output(world: dict[str, Path], name: str) -> Path:
    """A directory that does not exist yet (under the world's out/): outputs never land in
    the working directory or in the world's runs."""
    return world["out"] / f"{next(_fresh)}{name}"


@st.composite
def paths(draw, world: dict[str, Path], *names: str) -> str:
    return str(world[draw(st.sampled_from(names))])


@st.composite
def output(draw, world: dict[str, Path]) -> str:
    """A directory to write: mostly fresh; else one that exists and must survive whatever
    the command (a file, a run, a prep directory, a run's own prep/, the user's directory,
    the root)."""
    kind = draw(st.sampled_from(["fresh", "fresh markup", "nested", "fresh", "file", "existing"]))
    if kind == "file":
        return str(world["notes.txt"])
    if kind == "existing":
        return str(world[draw(st.sampled_from(["run", "prep", "run/prep", "mine", "root"]))])
    return str(fresh_output(world, {"fresh": "o", "fresh markup": "[bold]o[/]", "nested": "/a/b"}[kind]))


# A flag: None for a switch, else (values that are surely fine, the strategy of probes).
Flag = tuple[list[str], st.SearchStrategy[str]] | None


@st.composite
def flags(draw, options: dict[str, Flag], context: int = 3, probes: int = 2) -> list[str]:
    """A few of `options` with ordinary values (switches too), then one or two probes of the
    flags that take a value (the last value of a flag given twice is the one that counts):
    most command lines then get past the parsing with their probe intact."""
    names = sorted(options)
    ordinary = draw(st.lists(st.sampled_from(names), max_size=context, unique=True))
    valued = [name for name in names if options[name] is not None]
    probed = draw(st.lists(st.sampled_from(valued), min_size=1, max_size=probes, unique=True))
    args: list[str] = []
    for flag in ordinary + probed:
        spec = options[flag]
        if spec is None:
            args.append(flag)
        else:
            args += [flag, draw(st.sampled_from(spec[0]) if flag in ordinary and flag not in probed else spec[1])]
    return args


ANY_NUMBER = st.sampled_from(FLOATS * 3 + NOT_NUMBERS)
ANY_INT = st.sampled_from(INTS * 3 + NOT_INTS)
SMALL_INT = st.sampled_from(SMALL_INTS * 3 + NOT_INTS)
DEVICE: Flag = (
    ["cpu", "auto"],
    st.sampled_from(
        ["auto", "cpu", "cuda", "cuda:7", "meta", "mps", "", "[red]", "cpu:0", "cuda:2147483648", "cuda:128"]
    ),
)
SCHEME: Flag = (["pingshui", "xinyun"], st.sampled_from(["pingshui", "xinyun", "", "[/]", "other"]))
TEMP: Flag = (["0.5", "1", "2"], ANY_NUMBER)
SEED: Flag = (["0", "7"], ANY_INT)
BEAM: Flag = (["1", "2"], ANY_INT)
PRIOR: Flag = (["normal", "fitted"], st.sampled_from(["normal", "fitted", "", "[/]", "uniform"]))
SAMPLE_FLAGS: dict[str, Flag] = {
    "-n": (["1", "2"], SMALL_INT),
    "--temp": TEMP,
    "--seed": SEED,
    "--top-k": (["0", "5"], ANY_INT),
    "--top-p": (["0.9", "1"], ANY_NUMBER),
    "--greedy": None,
    "--format": (["text", "oneline", "json"], st.sampled_from(["text", "oneline", "json", "xml", "[/]", ""])),
    "--with-z": None,
    "--batch-size": (["1", "3"], ANY_INT),
    "--device": DEVICE,
    "--rhyme": None,
    "--rhyme-group": (["七阳", "一东"], text()),
    "--scheme": SCHEME,
    "--tones": None,
    "--acrostic": (["春夏秋冬", "白日依山"], text()),
    "--first-line": (["白日依山尽"], st.one_of(text(), poem())),
    "--prefix": (["白日依山尽，黄河入海流"], st.one_of(text(), poem())),
    "--infer-z": None,
    "--beam": BEAM,
    "--rerank": (["1", "2"], ANY_INT),
    "--prosody-weight": (["0", "1"], ANY_NUMBER),
    "--bigram-correction": (["0", "0.5", "1"], ANY_NUMBER),
    "--prior": PRIOR,
}
INTERPOLATE_FLAGS: dict[str, Flag] = {
    "--steps": (["2", "3"], ANY_INT),
    "--method": (["linear", "slerp"], st.sampled_from(["linear", "slerp", "cubic", "[/]", ""])),
    "--sample": None,
    "--temp": TEMP,
    "--seed": SEED,
    "--allow-unk": None,
    "--format": (["table", "json"], st.sampled_from(["table", "json", "text", "[/]"])),
    "--device": DEVICE,
    "--rhyme": None,
    "--rhyme-group": (["七阳"], text()),
    "--scheme": SCHEME,
    "--tones": None,
    "--beam": BEAM,
    "--bigram-correction": (["0", "1"], ANY_NUMBER),
}
RECONSTRUCT_FLAGS: dict[str, Flag] = {
    "--file": (["tiny.txt"], st.sampled_from(["tiny.txt", "notes.txt", "missing", "empty", "a[/]b.txt", "nan.toml"])),
    "--format": (["table", "json"], st.sampled_from(["table", "json", "text", "[/]"])),
    "--allow-unk": None,
    "--device": DEVICE,
}
VARY_FLAGS: dict[str, Flag] = {
    "-n": (["1", "2"], SMALL_INT),
    "--spread": (["0", "1", "2"], ANY_NUMBER),
    "--temp": TEMP,
    "--greedy": None,
    "--seed": SEED,
    "--format": (["text", "oneline", "json"], st.sampled_from(["text", "oneline", "json", "xml", "[/]"])),
    "--with-z": None,
    "--allow-unk": None,
    "--device": DEVICE,
    "--rhyme": None,
    "--rhyme-group": (["七阳"], text()),
    "--scheme": SCHEME,
    "--tones": None,
    "--acrostic": (["春夏秋冬"], text()),
    "--beam": BEAM,
    "--bigram-correction": (["0", "1"], ANY_NUMBER),
}
EVALUATE_FLAGS: dict[str, Flag] = {
    "--samples": (["0", "2"], SMALL_INT),
    "--iw": (["1", "2"], ANY_INT),
    "--temp": TEMP,
    "--seed": SEED,
    "--scheme": SCHEME,
    "--prior": PRIOR,
    "--json": None,
    "--device": DEVICE,
    "--bigram-correction": (["0", "1"], ANY_NUMBER),
}
BENCH_FLAGS: dict[str, Flag] = {
    "--size": (["default", "reference"], st.sampled_from(["default", "reference", "", "[/]", "huge"])),
    "--device": DEVICE,
    "--batch-size": (["8"], ANY_INT),
    "--sample-batch": (["8"], ANY_INT),
    "--repeats": (["1"], ANY_INT),
    "--json": None,
}
# a training of at most a step or two on the tiny corpus, unless a probe says otherwise
TRAIN_BASE = ["--max-steps", "1", "--epochs", "1", "--w2v-epochs", "1", "--min-count", "1", "--batch-size", "4"]
TRAIN_BASE += ["--embed-dim", "8", "--hidden-dim", "8", "--latent-dim", "2", "--highway-layers", "1"]
# integer settings that are loop counts get SMALL_INT; the others may be of any size
LOOPS = {"epochs", "max_steps", "encoder_layers", "decoder_layers", "highway_layers", "w2v_epochs", "w2v_window"}
LOOPS |= {"kl_cycles"}


def setting_flags(sections: set[str]) -> dict[str, Flag]:
    """The config settings of `sections` as flags; ordinary values: TRAIN_BASE's or the default."""
    base = dict(zip(TRAIN_BASE[::2], TRAIN_BASE[1::2]))
    options: dict[str, Flag] = {}
    for section, f in user_fields():
        if section not in sections:
            continue
        flag = "--" + f.name.replace("_", "-")
        ordinary = [base.get(flag, str(f.default))]
        if f.type in ("bool", bool):
            options[flag] = None
            options["--no-" + flag[2:]] = None
        elif f.type in ("str", str):
            choices = list(f.metadata.get("choices") or [])
            options[flag] = (choices or ordinary, st.one_of(st.sampled_from(choices), text()) if choices else text())
        elif f.type in ("float", float):
            options[flag] = (ordinary, ANY_NUMBER)
        else:
            options[flag] = (ordinary, SMALL_INT if f.name in LOOPS else ANY_INT)
    return options


PREP_FLAGS = setting_flags({"prep"}) | {"--embed-dim": (["8"], ANY_INT)}
TRAIN_FLAGS = setting_flags({"prep", "model", "train"}) | {
    "--overwrite": None,
    "--no-latent": None,
    "--devices": (["1"], st.sampled_from(["-1", "0", "1", "nan", ""])),  # never more: that launches torchrun
}


def weighted(**weights: int) -> st.SearchStrategy[str]:
    """One of the names, each as likely as its weight."""
    return st.sampled_from([name for name, w in weights.items() for _ in range(w)])


@st.composite
def command(draw, world: dict[str, Path]) -> list[str]:
    """One command line: the command, its arguments, some of its flags. Mostly sound runs
    and corpora, so that the flags get past the paths."""
    name = draw(
        weighted(
            sample=8,
            interpolate=4,
            reconstruct=3,
            vary=3,
            fit_prior=1,
            evaluate=3,
            prep=3,
            train=4,
            plot=1,
            bench=2,
            export=2,
        )  # fmt: skip
    )
    model_name = draw(weighted(run=8, nan_run=1, inf_run=1, huge_run=1, bad=3, damaged=3))
    if model_name == "bad":
        model_name = draw(st.sampled_from(["missing", "empty", "notes.txt", "prep", "markup missing", "bold"]))
    if model_name == "damaged":
        model_name = draw(st.sampled_from(DAMAGED_RUNS))
    model = str(world[model_name])
    corpora = paths(
        world,
        "tiny.txt",
        "tiny.txt",
        "a[/]b.txt",
        "notes.txt",
        "empty",
        "missing",
        "markup missing",
        "prep",
        "bomb.txt.gz",
    )
    if name == "sample":
        return ["sample", "-m", model, *draw(flags(SAMPLE_FLAGS))]
    if name == "interpolate":
        return ["interpolate", "-m", model, draw(poem()), draw(poem()), *draw(flags(INTERPOLATE_FLAGS))]
    if name == "reconstruct":
        poems = draw(st.lists(poem(), max_size=3))
        args = draw(flags(RECONSTRUCT_FLAGS))
        if "--file" in args:  # the file's name stands for a path of the world
            i = args.index("--file") + 1
            args[i] = str(world[args[i]])
        return ["reconstruct", "-m", model, *poems, *args]
    if name == "vary":
        return ["vary", "-m", model, draw(poem()), *draw(flags(VARY_FLAGS))]
    if name == "fit_prior":
        return ["fit-prior", "-m", model, *draw(flags({"--max-poems": (["5"], SMALL_INT), "--device": DEVICE}))]
    if name == "evaluate":
        held_out = draw(st.lists(corpora, max_size=2))
        return ["evaluate", "-m", model, *held_out, "--samples", "3", "--iw", "2", *draw(flags(EVALUATE_FLAGS))]
    if name == "plot":
        out = draw(st.one_of(st.just([]), output(world).map(lambda o: ["-o", o])))
        return ["plot", model, *out, *draw(flags({"--device": DEVICE}, context=0, probes=1))]
    if name == "prep":
        corpus = draw(st.lists(corpora, min_size=1, max_size=2))
        return ["prep", *corpus, "-o", draw(output(world)), *draw(flags(PREP_FLAGS))]
    if name == "train":
        corpus = draw(st.lists(corpora, max_size=1))
        if not corpus:  # a shipped corpus by name (the small one: the others take long to read)
            corpus = draw(st.sampled_from([["--corpus", "small"], ["--corpus", "nope"], ["--corpus", ""]]))
        extra = draw(weighted(none=6, resume=1, config=2))
        if extra == "resume":
            corpus = [
                "--resume",
                draw(paths(world, "missing", "empty", "notes.txt", "root", "badlog_run", "badopt_run")),
            ]
        elif extra == "config":
            corpus += ["-c", draw(paths(world, "nan.toml", "huge.toml", "missing", "empty", "notes.txt", "tiny.txt"))]
        train_flags = draw(flags(TRAIN_FLAGS))
        return ["train", *corpus, "-o", draw(output(world)), *TRAIN_BASE, *train_flags]
    if name == "export":
        switches = draw(st.lists(st.sampled_from(["--half", "--overwrite"]), unique=True))
        return ["export", "-m", model, draw(output(world)), *switches]
    return ["bench", *draw(flags(BENCH_FLAGS))]


def _fake_matmul_rate(device, repeats=5, dtype=None) -> dict:
    return {"flops": 1e9, "n": 1, "dtype": str(dtype)}


def _fake_bench_size(name, cfg, device, batch_size, sample_batch, steps, repeats, peak, train_amp=None) -> dict:
    """bench_size's keys without the measuring: the flags' values flow into the table."""
    return {
        "size": name,
        "config": {},
        "parameters": 0,
        "train_batch": batch_size,
        "train_poems_per_s": float(batch_size),
        "train_fraction_of_peak": batch_size / peak,
        "sample_batch": sample_batch,
        "sample_poems_per_s": float(sample_batch),
        "sample_fraction_of_peak": sample_batch / peak,
        "greedy_poems_per_s": float(repeats),
        "rhyme_tones_poems_per_s": float(repeats),
        "peak_memory_bytes": 0,
    }


def traceback_of(args: list[str]) -> str | None:
    """None when the command ended as a command should; else what went wrong."""
    result = runner.invoke(app, args)
    if (result.exception is None or isinstance(result.exception, SystemExit)) and result.exit_code in (0, 1, 2):
        if "Traceback" not in result.output:
            return None
    error = result.exception
    where = ""
    if error is not None and error.__traceback__ is not None:
        tb = error.__traceback__
        while tb.tb_next is not None:
            tb = tb.tb_next
        where = f" at {Path(tb.tb_frame.f_code.co_filename).name}:{tb.tb_lineno}"
    return f"exit {result.exit_code}: {type(error).__name__}: {str(error)[:200]}{where}\n    args: {args!r}"


def test_no_command_line_ends_in_a_traceback(world):
    """Every generated command line; the failures are gathered, each kind listed once with
    the first arguments that caused it."""
    failures: dict[str, str] = {}

    @settings(max_examples=250, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(args=command(world))
    def one_command(args: list[str]) -> None:
        problem = traceback_of(args)
        if problem is not None:
            failures.setdefault(problem.split("\n")[0], problem)

    owned = {name: files_of(world[name]) for name in ("run", "prep", "mine", "notes.txt")}
    with (
        mock.patch.object(poetvae.bench, "bench_size", _fake_bench_size),
        mock.patch.object(poetvae.bench, "matmul_rate", _fake_matmul_rate),
        mock.patch.object(poetvae.corpus, "MAX_CORPUS_BYTES", SMALL_CEILING),
    ):
        one_command()
    assert not failures, f"{len(failures)} kinds of traceback:\n" + "\n".join(failures.values())
    # nothing a user owns was overwritten: no command's output replaced a run, a prepared
    # corpus, a run's own prep/ or the user's files (plot and fit-prior write RUN/plots and
    # RUN/prior.safetensors, as they should)
    assert {name: files_of(world[name]) for name in owned} == owned


def files_of(path: Path) -> dict[str, bytes]:
    """The files under `path` (or the file itself), but what plot and fit-prior write."""
    if path.is_file():
        return {path.name: path.read_bytes()}
    skip = ("plots", "prior.safetensors")
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
            and not str(p.relative_to(path)).startswith(skip)}  # fmt: skip


@pytest.mark.parametrize("run_name", ["nan_run", "inf_run"])
def test_a_run_with_broken_weights_samples_poems_and_valid_json(world, run_name):
    """Case 4: weights that are NaN or infinite still give well-formed poems, and JSON
    output stays JSON (null where a number is not finite)."""
    run = str(world[run_name])
    strict = {"parse_constant": lambda c: pytest.fail(f"{c} is not JSON")}
    for extra in ([], ["--greedy"], ["--beam", "3"], ["--top-k", "3", "--top-p", "0.5"], ["--rerank", "2"]):
        result = runner.invoke(app, ["sample", "-m", run, "-n", "3", "-f", "json", "--with-z", "--seed", "0", *extra])
        assert result.exit_code == 0, result.output
        for line in result.output.splitlines():
            record = json.loads(line, **strict)
            assert len(record["lines"]) == 4 and all(len(x) == 5 for x in record["lines"])
    path = runner.invoke(
        app, ["interpolate", "-m", run, JING_YE_SI, DENG_GUAN_QUE_LOU, "--allow-unk", "-f", "json", "--steps", "3"]
    )
    assert path.exit_code == 0, path.output
    assert all(len(json.loads(line, **strict)["lines"]) == 4 for line in path.output.splitlines())
    for args in (
        ["reconstruct", JING_YE_SI, DENG_GUAN_QUE_LOU],
        ["vary", JING_YE_SI, "-n", "3", "--with-z", "--seed", "0"],
        ["vary", JING_YE_SI, "-n", "2", "--spread", "0", "--greedy"],
    ):
        result = runner.invoke(app, [args[0], "-m", run, *args[1:], "--allow-unk", "-f", "json"])
        assert result.exit_code == 0, result.output
        for line in result.output.splitlines():
            record = json.loads(line, **strict)
            assert len(record["lines"]) == 4 and all(len(x) == 5 for x in record["lines"])
    report = runner.invoke(app, ["evaluate", "-m", run, "--samples", "5", "--iw", "2", "--json"])
    assert report.exit_code == 0, report.output
    assert json.loads(report.output, **strict)["samples"]["well_formed"] == 1.0
    table = runner.invoke(app, ["evaluate", "-m", run, "--samples", "5", "--iw", "2"])
    assert table.exit_code == 0 and "Traceback" not in table.output, table.output


# ---- each cause of issue 18, by name: the fuzz draws them, these make sure ------------------
ISSUE_18: dict[str, list[str]] = {
    "device index past 8 bits (sample)": ["sample", "-m", "{run}", "--device", "cuda:2147483648"],
    "device index past 8 bits (vary)": ["vary", "-m", "{run}", JING_YE_SI, "--device", "cuda:2147483648"],
    "device index past 8 bits (train)": ["train", "{tiny.txt}", "-o", "{fresh}", *TRAIN_BASE, "--device", "cuda:128"],
    "device index past 8 bits (bench)": ["bench", "--device", "cuda:2147483648"],
    "--steps 1e11": ["interpolate", "-m", "{run}", JING_YE_SI, DENG_GUAN_QUE_LOU, "--steps", "100000000000"],
    "--steps 1e22": ["interpolate", "-m", "{run}", JING_YE_SI, DENG_GUAN_QUE_LOU, "--steps", str(10**22)],
    "bench --batch-size 1e22": ["bench", "--batch-size", str(10**22)],
    "bench --sample-batch 1e11": ["bench", "--sample-batch", "100000000000"],
    "vary -n 1e22": ["vary", "-m", "{run}", JING_YE_SI, "-n", str(10**22)],
    "log not UTF-8 (plot)": ["plot", "{badlog_run}", "-o", "{fresh}"],
    "log nested (plot)": ["plot", "{nested_log_run}", "-o", "{fresh}"],
    "log not UTF-8 (resume)": ["train", "--resume", "{badlog_run}"],
    "log nested (resume)": ["train", "--resume", "{nested_log_run}"],
    "optimizer lr 'x', betas [2, 5]": ["train", "--resume", "{badopt_run}"],
    "train -o /": ["train", "{tiny.txt}", "-o", "/", *TRAIN_BASE],
    "train --resume /": ["train", "--resume", "/"],
    "prep -o /": ["prep", "{tiny.txt}", "-o", "/"],
    "prep -o RUN": ["prep", "{tiny.txt}", "-o", "{run}", "--overwrite"],
    "prep -o RUN/prep": ["prep", "{tiny.txt}", "-o", "{run/prep}", "--overwrite"],
    "prep -o the user's dir": ["prep", "{tiny.txt}", "-o", "{mine}", "--overwrite"],
    "prep a gzip bomb": ["prep", "{bomb.txt.gz}", "-o", "{fresh}"],
    "export over a prep dir": ["export", "-m", "{run}", "{prep}", "--overwrite"],
    "vocab tokens of escapes": ["sample", "-m", "{badvocab_run}", "-f", "oneline"],
    "int weights (sample)": ["sample", "-m", "{int_run}"],
    "int weights (export)": ["export", "-m", "{int_run}", "{fresh}"],
    "reconstruct, no latent": ["reconstruct", "-m", "{nolatent_run}", JING_YE_SI, "--allow-unk"],
    "vary, no latent": ["vary", "-m", "{nolatent_run}", JING_YE_SI, "--allow-unk"],
    "interpolate, no latent": ["interpolate", "-m", "{nolatent_run}", JING_YE_SI, DENG_GUAN_QUE_LOU, "--allow-unk"],
    "--first-line ''": ["sample", "-m", "{run}", "--first-line", ""],
    "--init-reset without --init": ["train", "{tiny.txt}", "-o", "{fresh}", *TRAIN_BASE, "--init-reset", "decoder"],
    "--scheme bogus": ["sample", "-m", "{run}", "--scheme", "bogus"],
}
# the exit code of each: 2 a usage error, 1 an error (no case of issue 18 succeeds silently any more)
USAGE = {"--steps 1e11", "--steps 1e22", "bench --batch-size 1e22", "bench --sample-batch 1e11", "vary -n 1e22"}
USAGE |= {name for name in ISSUE_18 if "past 8 bits" in name and "train" not in name}
USAGE |= {"--first-line ''", "--init-reset without --init", "--scheme bogus"}


@pytest.mark.parametrize("case", sorted(ISSUE_18))
def test_each_cause_of_issue_18_ends_in_one_line_and_its_exit_code(world, case):
    places = {**world, "fresh": fresh_output(world, "x")}  # "{name}" stands for that path of the world
    args = [str(places[a[1:-1]]) if a.startswith("{") and a.endswith("}") else a for a in ISSUE_18[case]]
    owned = {name: files_of(world[name]) for name in ("run", "prep", "mine")}
    with mock.patch.object(poetvae.corpus, "MAX_CORPUS_BYTES", SMALL_CEILING):
        problem = traceback_of(args)
        result = runner.invoke(app, args)
    assert problem is None, problem
    assert result.exit_code == (2 if case in USAGE else 1), result.output
    if result.exit_code == 1:
        assert result.output.strip().splitlines()[-1].startswith("error:"), result.output
    assert {name: files_of(world[name]) for name in owned} == owned
