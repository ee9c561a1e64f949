"""The `poetvae` command: a thin Typer layer over the library.

Each command parses its flags, resolves the config, calls one library function and
renders the result with rich. Library errors (PoetVAEError) become a one-line
`error: …` on stderr and exit code 1; Typer's own usage errors exit with 2.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import os
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from poetvae.config import MAX_SEED, check_device, load_config, user_fields
from poetvae.distributed import env_rank
from poetvae.errors import ConfigError, PoetVAEError


class _Group(typer.core.TyperGroup):
    """The command group, plus one thing: a reader that closes the pipe early
    (`poetvae sample | head -1`) ends the command quietly, as it does `yes` or `cat`."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            with contextlib.suppress(OSError, ValueError):  # no real stdout under a test runner
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush error at exit
            raise typer.Exit(128 + 13) from None  # the shell's code for a command ended by SIGPIPE


app = typer.Typer(
    cls=_Group,
    help="Learn and write classical Chinese five-character quatrains (五言绝句) with a text VAE.",
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
# markup off: paths, poems and settings are printed as given ("runs/[bold]x" stays that);
# styling is done with rich Text and styles, never by markup inside a string.
out = Console(highlight=False, soft_wrap=True, markup=False)
err = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)


def _styled(text: str, style: str) -> Text:
    return Text(text, style=style)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn what a user can cause into one line and exit code 1, never a traceback."""
    try:
        yield
    except BrokenPipeError:
        raise  # stdout closed by its reader: not an error (see _Group)
    except (PoetVAEError, OSError) as e:
        msg = " ".join(str(e).split())  # one line, whatever the library put in it
        err.print(Text.assemble(("error:", "red"), " ", msg))
        raise typer.Exit(1) from None


def _finite(value: float | None) -> float | None:
    """Typer callback of every float flag: NaN and infinity are not values (a range check
    alone lets NaN through: every comparison with NaN is false)."""
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"must be a finite number, not {value}")
    return value


def _device(value: str) -> str:
    """Typer callback of --device: a device poetvae can run on (not torch's meta, ...)."""
    try:
        return check_device(value)
    except ConfigError as e:
        raise typer.BadParameter(str(e)) from None


def _number(value: float, spec: str) -> str:
    """`value` formatted with `spec`, or in 3 significant digits when that would be a
    wall of digits (a diverged perplexity is 1e+200, not 200 digits)."""
    return format(value, spec) if math.isfinite(value) and abs(value) < 1e9 else f"{value:.3g}"


# ---- config settings as flags: one name everywhere (field latent_dim = --latent-dim) ------
_TYPES = {"int": int, "float": float, "bool": bool, "str": str}


def _flag(name: str) -> str:
    """The CLI flag of a setting: latent_dim -> --latent-dim."""
    return "--" + name.replace("_", "-")


def _config_params(sections: set[str], extra_fields: set[str] = frozenset()) -> list[inspect.Parameter]:
    params = []
    for section, f in user_fields():
        if section not in sections and f.name not in extra_fields:
            continue
        flag = _flag(f.name)
        typ = _TYPES[f.type] if isinstance(f.type, str) else f.type
        decls = [f"{flag}/--no-{flag[2:]}"] if typ is bool else [flag]
        choices = f.metadata.get("choices")
        # escaped: rich would read "[char|jieba]" as markup and print nothing
        help_text = (
            f.metadata["help"] + (escape(f" [{'|'.join(choices)}]") if choices else "") + f" (default: {f.default})"
        )
        option = typer.Option(*decls, help=help_text, rich_help_panel=f"{section} settings", show_default=False)
        params.append(
            inspect.Parameter(
                f.name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[typ | None, option]
            )
        )
    return params


def _with_config_flags(sections: set[str], extra_fields: set[str] = frozenset()) -> Callable:
    """Add one flag per config setting to a command; the command receives them as
    `settings`: a dict of only the flags the user gave."""
    config_params = _config_params(sections, extra_fields)
    names = {p.name for p in config_params}

    def wrap(fn: Callable) -> Callable:
        sig = inspect.signature(fn, eval_str=True)  # resolve the string annotations of this module
        own = [p for p in sig.parameters.values() if p.name != "settings"]

        def command(**kwargs: Any) -> Any:
            settings = {k: kwargs.pop(k) for k in names if kwargs.get(k) is not None}
            for k in names:
                kwargs.pop(k, None)
            return fn(settings=settings, **kwargs)

        command.__signature__ = sig.replace(parameters=own + config_params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in own + config_params}
        command.__name__, command.__doc__ = fn.__name__, fn.__doc__
        return command

    return wrap


ConfigFile = Annotated[
    Path | None,
    typer.Option("--config", "-c", readable=False, help="TOML file with \\[prep], \\[model], \\[train] sections"),
]


# ---- prep -------------------------------------------------------------------------------
def _print_prep(result: Any) -> None:
    r = result.report
    table = Table(title=f"prepared corpus → {result.prep_dir}", show_header=False, title_justify="left")
    for f in r.files:
        table.add_row("file", Text.assemble(str(f), "  ", (f"({r.formats.get(f, '?')})", "dim")))
    table.add_row("poems read", f"{r.read:,}")
    table.add_row("kept", f"{r.kept:,}")
    table.add_row("duplicates dropped", f"{r.duplicates:,}")
    if r.converted_t2s:
        table.add_row("converted to simplified", f"{r.converted_t2s:,}")
    for reason, count in r.skipped.most_common():
        table.add_row(f"skipped: {reason}", f"{count:,}")
        for example in r.examples.get(reason, [])[:3]:
            table.add_row("", _styled(f"e.g. {example}", "dim"))
    table.add_row("splits", "  ".join(f"{k} {v:,}" for k, v in result.split_sizes.items()))
    table.add_row("vocabulary", f"{result.vocab_size:,} tokens")
    table.add_row("<unk> rate", "  ".join(f"{k} {v:.3%}" for k, v in result.unk_rate.items()))
    out.print(table)


@app.command()
@_with_config_flags({"prep"}, {"embed_dim"})
def prep(
    corpus: Annotated[
        list[Path], typer.Argument(help="corpus files: text, JSONL or chinese-poetry JSON", readable=False)
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="directory to write")] = Path("prep"),
    config: ConfigFile = None,
    settings: dict[str, Any] | None = None,
) -> None:
    """Clean a corpus, split it, build the vocabulary and word2vec embeddings.

    Example: [bold]poetvae prep ../shared/data/tang_quatrains.txt -o prep/tang[/]
    """
    from poetvae.prep import prepare

    with user_errors():
        cfg = load_config(config, settings)
        result = prepare(corpus, output, cfg.prep, cfg.model.embed_dim)
    _print_prep(result)


# ---- train ------------------------------------------------------------------------------
def _config_table(cfg: Any) -> Table:
    table = Table(title="config", show_header=False, title_justify="left")
    for section, values in cfg.to_dict().items():
        table.add_row(_styled(section, "bold"), "  ".join(f"{k}={v}" for k, v in values.items()))
    return table


@app.command()
@_with_config_flags({"prep", "model", "train"})
def train(
    corpus: Annotated[
        list[Path] | None,
        typer.Argument(help="corpus files or a prep directory (default: the corpus shipped in data/)", readable=False),
    ] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="run directory (default: runs/default)")] = None,
    config: ConfigFile = None,
    resume: Annotated[
        Path | None, typer.Option("--resume", help="continue the run in this directory", readable=False)
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="replace a run already in the output directory")
    ] = False,
    no_latent: Annotated[bool, typer.Option("--no-latent", help="train the decoder alone as a language model")] = False,
    devices: Annotated[
        int, typer.Option("--devices", min=1, help="processes (GPUs) for DDP training; >1 launches torchrun")
    ] = 1,
    init: Annotated[
        Path | None,
        typer.Option(
            "--init",
            help="fine-tune: start from this run's best weights, vocabulary and model settings "
            "(the corpus is prepared with its vocabulary; the schedule is this command's)",
            readable=False,
        ),
    ] = None,
    settings: dict[str, Any] | None = None,
) -> None:
    """Train the VAE; writes config, vocabulary, checkpoints and log.jsonl to the run directory.

    Example: [bold]poetvae train ../shared/data/tang_quatrains.txt -o runs/tang --epochs 20[/]

    Pretrain, then fine-tune: [bold]poetvae train stanzas.txt quatrains.txt -o runs/pre[/], then
    [bold]poetvae train quatrains.txt --init runs/pre -o runs/fine --epochs 6 --lr 5e-4[/]
    (the weights, vocabulary and model settings of runs/pre; the schedule of this command)
    """
    from poetvae import rundir

    settings = dict(settings or {})
    if no_latent:
        settings["use_latent"] = False
    if init is not None and resume is not None:
        raise typer.BadParameter("--init starts a new run and --resume continues one: give one of them")
    _refuse_prep_flags(corpus, settings)
    if devices > 1:
        with user_errors():
            raise typer.Exit(
                _launch_torchrun(
                    devices,
                    corpus=corpus,
                    output=output,
                    config=config,
                    resume=resume,
                    overwrite=overwrite,
                    settings=settings,
                    init=init,
                )
            )
    with user_errors(), contextlib.ExitStack() as held:
        if resume is not None:
            if corpus or output or settings or config:
                raise typer.BadParameter("--resume takes the run's own data and config; give no corpus or settings")
            run_dir, stage, init_run = resume, None, None
            held.enter_context(rundir.RunDir(run_dir).lock(resume=True))
            inputs = rundir.RunDir(run_dir).open_for_resume()
            cfg, data = inputs.config, inputs.data
        else:
            run_dir = output or rundir.DEFAULT_RUN
            init_run = _open_init(init, settings)
            run = rundir.RunDir(run_dir)
            held.enter_context(run.lock())  # until training ends: one training per run directory
            run.refuse_existing(overwrite=overwrite)
            cfg = load_config(config, settings, fixed=init_run.fixed_settings() if init_run else None)
            stage = held.enter_context(run.staging())  # None on torchrun ranks > 0, which write nothing
            data = (stage.run if stage else run).load_training_data(corpus or None, cfg, init_run)
        main_process = env_rank() == 0  # under torchrun only rank 0 speaks
        if main_process:
            out.print(_config_table(cfg))
            if init_run is not None:
                _print_init(init_run, data)
        result = _train_with_progress(cfg, data, run_dir, resume is not None, stage, init_run)
    if main_process:
        _print_train_result(result)
    if result.interrupted and main_process:
        err.print(f"interrupted at step {result.steps}; continue with: poetvae train --resume {run_dir}")
        raise typer.Exit(130)


def _open_init(init: Path | None, settings: dict[str, Any]) -> Any:
    """The run given to --init (None without one); flags that would change what it fixes
    (its model, its tokenizer) are usage errors, named."""
    from poetvae import rundir

    if init is None:
        return None
    init_run = rundir.RunDir(init).open_for_init()
    fixed = init_run.fixed_settings()
    clashes = [
        f"{_flags({k: v})[0] if isinstance(v, bool) else ' '.join(_flags({k: v}))} (it has {fixed[k]})"
        for k, v in settings.items()
        if k in fixed and v != fixed[k]
    ]
    if clashes:
        raise typer.BadParameter(
            f"{', '.join(clashes)}: the model and tokenizer come from the --init run {init}; leave these flags out"
        )
    return init_run


def _print_init(init_run: Any, data: Any) -> None:
    """Where the run starts, and how much of its corpus the init run's vocabulary lacks."""
    from collections import Counter

    from poetvae.prep import count_unknown

    table = Table(title=f"starts from {init_run.path}", show_header=False, title_justify="left")
    table.add_row("weights", f"model.safetensors, step {init_run.step}, sha256 {init_run.sha256[:12]}")
    cells, unknown = [], Counter()
    for split, poems in data.splits.items():
        total, missing = count_unknown(data.vocab, poems)
        cells.append(f"{split} {missing.total():,} of {total:,}")
        unknown += missing
    table.add_row("tokens it lacks (<unk>)", "  ".join(cells))
    if unknown:
        table.add_row("", _styled("e.g. " + " ".join(f"{t}×{n}" for t, n in unknown.most_common(10)), "dim"))
    out.print(table)


_PREP_KEYS = frozenset(f.name for section, f in user_fields() if section == "prep")


def _refuse_prep_flags(corpus: list[Path] | None, settings: dict[str, Any]) -> None:
    """A prep directory was prepared with its own settings: flags that would prepare it
    differently cannot apply, so they are refused rather than ignored (and recorded)."""
    if not (corpus and len(corpus) == 1 and corpus[0].is_dir()):
        return
    given = sorted(_flag(k) for k in settings if k in _PREP_KEYS)
    if given:
        raise typer.BadParameter(
            f"{', '.join(given)} set how a corpus is prepared, but {corpus[0]} is already prepared: "
            "give corpus files, or run `poetvae prep` again with these flags"
        )


def _flags(settings: dict[str, Any]) -> list[str]:
    """Command-line flags that reproduce `settings` (the inverse of the config flags)."""
    out_flags = []
    for key, value in settings.items():
        flag = _flag(key)
        out_flags += [flag if value else "--no-" + flag[2:]] if isinstance(value, bool) else [flag, str(value)]
    return out_flags


def _launch_torchrun(
    devices: int,
    *,
    corpus: list[Path] | None,
    output: Path | None,
    config: Path | None,
    resume: Path | None,
    overwrite: bool,
    settings: dict[str, Any],
    init: Path | None = None,
) -> int:
    """Prepare the data once here, then run `poetvae train` under torchrun with N processes.

    This process holds the run's lock and its staging directory for the workers (they
    learn so from the environment), and checks the batch split before any starts."""
    import os
    import signal
    import subprocess

    from poetvae import rundir
    from poetvae.prep import load_prepared
    from poetvae.train import global_batch

    env = {**os.environ, rundir.LOCK_HELD_ENV: "1"}
    with contextlib.ExitStack() as held:
        if resume is not None:
            held.enter_context(rundir.RunDir(resume).lock(resume=True))
            inputs = rundir.RunDir(resume).open_for_resume()
            global_batch(inputs.config.train, len(inputs.data.splits["train"]), devices)
            args = ["--resume", str(resume)]
        else:
            run_dir = output or rundir.DEFAULT_RUN
            init_run = _open_init(init, settings)
            run = rundir.RunDir(run_dir)
            held.enter_context(run.lock())
            run.refuse_existing(overwrite=overwrite)
            cfg = load_config(config, settings, fixed=init_run.fixed_settings() if init_run else None)
            stage = held.enter_context(run.staging())
            env[rundir.STAGING_ENV] = str(stage.path)
            # into the staged run's prep/ once here, which every process then reads
            source = stage.run.prepare_data(corpus or None, cfg, init_run)
            global_batch(cfg.train, len(load_prepared(source).splits["train"]), devices)
            args = [
                str(source),
                "-o",
                str(run_dir),
                *(["-c", str(config)] if config else []),
                *(["--overwrite"] if overwrite else []),
                *(["--init", str(init)] if init else []),
                # the prep settings are in the prepared corpus now, which the workers read
                *_flags({k: v for k, v in settings.items() if k not in _PREP_KEYS}),
            ]
        cmd = [
            sys.executable,
            "-c",
            _TORCHRUN,
            "--standalone",
            f"--nproc-per-node={devices}",
            "--signals-to-handle=SIGTERM,SIGHUP,SIGQUIT",  # and SIGINT as _TORCHRUN says
            "-m",
            "poetvae",
            "train",
            *args,
        ]
        # Ctrl-C here waits for torchrun (a handler, not SIG_IGN, which torchrun would inherit)
        own_signals = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, _ignore_signal) if own_signals else None
        try:
            return subprocess.call(cmd, env=env)
        finally:
            if own_signals:
                signal.signal(signal.SIGINT, previous)


def _ignore_signal(signum: int, frame: Any) -> None:
    pass


# torchrun, with a worker's failure as its exit status (the worker printed its error, or
# "interrupted ...", already: torchrun's traceback would add nothing). Its workers run in
# sessions of their own, so the terminal's Ctrl-C reaches torchrun alone: the first one
# shuts the workers down as torchrun does (SIGINT to each, which stops it at a step
# boundary with its resume point written), and later ones cannot cut that short.
_TORCHRUN = """
import signal
import sys
from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import main

def first_ctrl_c(signum, frame):
    signal.signal(signal.SIGINT, lambda signum, frame: None)
    raise SignalException("Ctrl-C", sigval=signal.Signals(signum))

signal.signal(signal.SIGINT, first_ctrl_c)
try:
    main()
except ChildFailedError as e:
    sys.exit(e.get_first_failure()[1].exitcode or 1)
except SignalException:
    sys.exit(130)
"""


def _train_with_progress(
    cfg: Any, data: Any, run_dir: Path, resume: bool, staging: Any = None, init: Any = None
) -> Any:
    from poetvae.records import EpochRecord, LogRecord, StepRecord
    from poetvae.train import train as train_run

    live = out.is_terminal and env_rank() == 0
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=out,
        disable=not live,
    )
    task = progress.add_task("training", total=None)

    def on_log(r: LogRecord) -> None:
        if isinstance(r, StepRecord):
            progress.update(
                task,
                completed=r.step,
                total=r.total_steps,
                description=f"rec {r.rec:.1f}  KL {r.kl:.2f}  β {r.beta:.2f}",
            )
        if isinstance(r, EpochRecord) and r.valid is not None:  # on_log runs on rank 0 only
            v = r.valid
            line = (
                f"step {r.step:>6}  epoch {r.epoch:.1f}  valid rec {v.rec:.2f}  "
                f"KL {v.kl:.2f}  -ELBO {v.nelbo:.2f}  ppl {_number(v.ppl, '.2f')}  "
                f"({r.seconds:.0f}s)"
            )
            progress.console.print(line) if live else out.print(line)

    with progress:
        fine_tune = {"init": init} if init is not None else {}  # without --init, the call as it always was
        return train_run(cfg, data, run_dir, resume=resume, on_log=on_log, staging=staging, **fine_tune)


def _print_train_result(result: Any) -> None:
    table = Table(title=f"run → {result.run_dir}", show_header=False, title_justify="left")
    table.add_row("steps", f"{result.steps:,} ({result.epochs} epochs, {result.seconds:.0f} s)")
    for name, terms in (("last validation", result.valid), ("best validation", result.best_valid)):
        if terms is not None:
            table.add_row(
                name,
                "  ".join(
                    f"{k} {_number(v, '.3f')}" if isinstance(v, float) else f"{k} {v}"
                    for k, v in terms.to_dict().items()
                ),
            )
    out.print(table)


# ---- sample -------------------------------------------------------------------------------
RunDir = Annotated[Path, typer.Option("--model", "-m", help="run directory written by `poetvae train`", readable=False)]
Rhyme = Annotated[
    bool,
    typer.Option("--rhyme", help="lines 2 and 4 (and a 平 line 1) share a rhyme group", rich_help_panel="controls"),
]
RhymeGroup = Annotated[
    str | None,
    typer.Option("--rhyme-group", help="rhyme in this group, e.g. 七阳 (implies --rhyme)", rich_help_panel="controls"),
]
Scheme = Annotated[
    str, typer.Option("--scheme", help="pingshui (平水韵) or xinyun (中华新韵)", rich_help_panel="controls")
]
Tones = Annotated[
    bool, typer.Option("--tones", help="二四异 and the 粘对 pattern of the regular 五绝", rich_help_panel="controls")
]
Beam = Annotated[
    int, typer.Option("--beam", min=1, max=256, help="beam-search width (1: sample)", rich_help_panel="controls")
]
Device = Annotated[str, typer.Option("--device", callback=_device, help="auto, cpu, cuda, cuda:N, mps")]


def _controls(
    rhyme: bool, rhyme_group: str | None, scheme: str, tones: bool, acrostic: str | None, prefix: str | None
) -> Any:
    """The decoding controls from the flags (a given prefix is parsed into its lines)."""
    from poetvae.controls import Controls
    from poetvae.form import split_verse

    lines = tuple(split_verse(prefix)) if prefix is not None else ()
    if prefix is not None and not lines:
        raise typer.BadParameter(f"the given lines {prefix!r} hold no characters", param_hint="--first-line/--prefix")
    return Controls(rhyme=rhyme, rhyme_group=rhyme_group, scheme=scheme, tones=tones, acrostic=acrostic, prefix=lines)


def _json_number(x: float, digits: int) -> float | None:
    """x rounded for JSON; None (null) when x is NaN or infinite (a model with broken weights)."""
    return round(x, digits) if math.isfinite(x) else None


def _emit(samples: list[Any], fmt: str, with_z: bool) -> None:
    """Write poet.Sample objects to stdout as they come, in the chosen format."""
    for poem in samples:
        if fmt == "json":
            record = {
                "lines": poem.lines,
                "text": poem.oneline(),
                "logprob": _json_number(poem.logprob, 4),
                "backoff": poem.backoff,
            }
            if with_z:
                record["z"] = [_json_number(v, 5) for v in poem.z]
            sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
        elif fmt == "oneline":
            sys.stdout.write(poem.oneline() + "\n")
        else:
            sys.stdout.write(poem.layout() + "\n\n")
    sys.stdout.flush()


@app.command()
def sample(
    model: RunDir,
    n: Annotated[int, typer.Option("-n", "--num", min=1, help="how many poems")] = 10,
    temp: Annotated[float, typer.Option("--temp", "-t", min=1e-3, callback=_finite, help="sampling temperature")] = 0.8,
    seed: Annotated[int | None, typer.Option("--seed", min=0, max=MAX_SEED, help="fixes z and the draws")] = None,
    top_k: Annotated[int, typer.Option("--top-k", min=0, help="sample from the k likeliest tokens (0: all)")] = 0,
    top_p: Annotated[
        float, typer.Option("--top-p", min=1e-6, max=1.0, callback=_finite, help="nucleus sampling mass")
    ] = 1.0,
    greedy: Annotated[bool, typer.Option("--greedy", help="most likely token at every step")] = False,
    fmt: Annotated[str, typer.Option("--format", "-f", help="text | oneline | json")] = "text",
    with_z: Annotated[bool, typer.Option("--with-z", help="include z in --format json")] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="poems decoded together")] = 2048,
    device: Device = "auto",
    rhyme: Rhyme = False,
    rhyme_group: RhymeGroup = None,
    scheme: Scheme = "pingshui",
    tones: Tones = False,
    acrostic: Annotated[
        str | None,
        typer.Option("--acrostic", help="藏头诗: 4 characters that start the lines", rich_help_panel="controls"),
    ] = None,
    first_line: Annotated[
        str | None, typer.Option("--first-line", help="a given first line of 5 characters", rich_help_panel="controls")
    ] = None,
    prefix: Annotated[
        str | None,
        typer.Option("--prefix", help="1 to 3 given lines, e.g. 白日依山尽，黄河入海流", rich_help_panel="controls"),
    ] = None,
    infer_z: Annotated[
        bool,
        typer.Option(
            "--infer-z", help="z from the encoder applied to the prefix, not the prior", rich_help_panel="controls"
        ),
    ] = False,
    beam: Beam = 1,
    rerank: Annotated[
        int,
        typer.Option(
            "--rerank", min=1, max=1024, help="candidates per z; keep the most likely", rich_help_panel="controls"
        ),
    ] = 1,
    prosody_weight: Annotated[
        float,
        typer.Option(
            "--prosody-weight",
            callback=_finite,
            help="with --rerank: weight of the rhyme/tone score",
            rich_help_panel="controls",
        ),
    ] = 0.0,
) -> None:
    """Draw z ~ N(0, I) and decode well-formed quatrains, streaming them as they are made.

    Example: [bold]poetvae sample -m runs/default -n 10 --temp 0.8 --seed 1 --rhyme --tones --acrostic 春夏秋冬[/]
    """
    from poetvae.decode import DecodeOptions
    from poetvae.poet import Poet

    if fmt not in ("text", "oneline", "json"):
        raise typer.BadParameter("--format must be text, oneline or json")
    if first_line and prefix:
        raise typer.BadParameter("give --first-line or --prefix, not both")
    with user_errors():
        controls = _controls(rhyme, rhyme_group, scheme, tones, acrostic, first_line or prefix)
        if infer_z and not controls.prefix:
            raise typer.BadParameter("--infer-z needs --first-line or --prefix")
        poet = Poet.load(model, device=device)
        options = DecodeOptions(
            temperature=temp,
            top_k=top_k,
            top_p=top_p,
            greedy=greedy,
            beam=beam,
            rerank=rerank,
            prosody_weight=prosody_weight,
            controls=controls,
            infer_z=infer_z,
            seed=seed,
            batch_size=batch_size,
        )
        for batch in poet.iter_sample(n, options, with_z=with_z):
            _emit(batch, fmt, with_z)


# ---- interpolate -------------------------------------------------------------------------
@app.command()
def interpolate(
    model: RunDir,
    poem_a: Annotated[str, typer.Argument(help="first poem, e.g. 床前明月光，疑是地上霜。举头望明月，低头思故乡。")],
    poem_b: Annotated[str, typer.Argument(help="second poem")],
    steps: Annotated[int, typer.Option("--steps", min=2, help="points on the path, both ends included")] = 8,
    method: Annotated[str, typer.Option("--method", help="linear | slerp")] = "linear",
    sample_: Annotated[bool, typer.Option("--sample", help="sample at each point instead of greedy decoding")] = False,
    temp: Annotated[
        float, typer.Option("--temp", "-t", min=1e-3, callback=_finite, help="temperature with --sample")
    ] = 0.8,
    seed: Annotated[int | None, typer.Option("--seed", min=0, max=MAX_SEED)] = None,
    allow_unk: Annotated[bool, typer.Option("--allow-unk", help="read unknown characters as <unk>")] = False,
    fmt: Annotated[str, typer.Option("--format", "-f", help="table | json")] = "table",
    device: Device = "auto",
    rhyme: Rhyme = False,
    rhyme_group: RhymeGroup = None,
    scheme: Scheme = "pingshui",
    tones: Tones = False,
    beam: Beam = 1,
) -> None:
    """Walk the latent space from poem A to poem B (posterior means), decoding each point.

    Example: [bold]poetvae interpolate -m runs/default
    床前明月光，疑是地上霜。举头望明月，低头思故乡。 白日依山尽，黄河入海流。欲穷千里目，更上一层楼。[/]
    """
    from poetvae.decode import DecodeOptions
    from poetvae.form import parse_poem
    from poetvae.poet import Poet

    if method not in ("linear", "slerp"):
        raise typer.BadParameter("--method must be linear or slerp")
    if fmt not in ("table", "json"):
        raise typer.BadParameter("--format must be table or json")
    with user_errors():
        a, b = parse_poem(poem_a), parse_poem(poem_b)
        poet = Poet.load(model, device=device)
        controls = _controls(rhyme, rhyme_group, scheme, tones, None, None)
        options = DecodeOptions(temperature=temp, greedy=not sample_, beam=beam, controls=controls, seed=seed)
        path = poet.interpolate(a, b, steps=steps, method=method, options=options, allow_unk=allow_unk)
    if fmt == "json":
        for i, point in enumerate(path):
            t = i / (len(path) - 1)
            sys.stdout.write(
                json.dumps(
                    {
                        "t": round(t, 4),
                        "lines": point.lines,
                        "text": point.oneline(),
                        "logprob": _json_number(point.logprob, 4),
                        "backoff": point.backoff,
                    },
                    ensure_ascii=False,
                )
                + "\n"
            )
        return
    table = Table(title=f"{method} path, {steps} steps", title_justify="left")
    table.add_column("t", justify="right")
    table.add_column("poem")
    table.add_column("log p", justify="right")
    table.add_row("A", a.oneline(), "")
    for i, point in enumerate(path):
        table.add_row(f"{i / (len(path) - 1):.2f}", point.oneline(), f"{point.logprob:.1f}")
    table.add_row("B", b.oneline(), "")
    out.print(table)


# ---- evaluate -----------------------------------------------------------------------------
def _print_report(report: Any, source: str) -> None:
    lk, lt, meta = report.likelihood, report.latent, report.meta
    table = Table(title=f"{meta.poems:,} held-out poems ({source})", show_header=False, title_justify="left")
    table.add_row(_styled("likelihood", "bold"), "")
    table.add_row(
        f"IW-NLL (K={lk.iw_samples})", f"{_number(lk.iw_nll, '.2f')} nats/poem   ppl {_number(lk.ppl, '.1f')} per token"
    )
    table.add_row("reconstruction", f"{lk.rec:.2f} nats/poem")
    table.add_row("KL", f"{lk.kl:.2f} nats/poem")
    table.add_row("negative ELBO", f"{lk.nelbo:.2f} nats/poem")
    table.add_row(_styled("latent", "bold"), "")
    table.add_row("active units", f"{lt.active_units} of {lt.latent_dim}")
    table.add_row("mutual information", f"{lt.mutual_information:.2f} nats")
    table.add_row("reconstruction accuracy", f"{lt.reconstruction_accuracy:.1%}")
    out.print(table)
    stats = Table(title=f"samples (temperature {meta.temperature}) vs the held-out poems", title_justify="left")
    stats.add_column("")
    stats.add_column("samples", justify="right")
    stats.add_column("held-out (human)", justify="right")
    s, r = report.samples, report.reference
    rows = [
        ("poems", "poems", "{:,}"),
        ("distinct poems", "distinct", "{:,}"),
        ("distinct-1", "distinct_1", "{:.3f}"),
        ("distinct-2", "distinct_2", "{:.3f}"),
        ("copied poems", "copied_poems", "{:.1%}"),
        ("copied lines", "copied_lines", "{:.1%}"),
        (f"rhyme rate ({meta.scheme})", "rhyme_rate", "{:.1%}"),
        ("二四异 rate", "tone_rate", "{:.1%}"),
        ("well formed", "well_formed", "{:.1%}"),
    ]
    for label, name, fmt in rows:
        stats.add_row(label, fmt.format(getattr(s, name)) if s.poems else "-", fmt.format(getattr(r, name)))
    out.print(stats)


@app.command()
def evaluate(
    model: RunDir,
    corpus: Annotated[
        list[Path] | None, typer.Argument(help="held-out corpus (default: the run's test split)", readable=False)
    ] = None,
    samples: Annotated[int, typer.Option("--samples", min=0, help="poems drawn from the prior")] = 1000,
    iw: Annotated[int, typer.Option("--iw", min=1, help="importance samples K for the IW-NLL")] = 100,
    temp: Annotated[float, typer.Option("--temp", "-t", min=1e-3, callback=_finite, help="sampling temperature")] = 1.0,
    seed: Annotated[int, typer.Option("--seed", min=0, max=MAX_SEED)] = 0,
    scheme: Scheme = "pingshui",
    as_json: Annotated[
        bool, typer.Option("--json", help="print the report as JSON (keys: poetvae.evaluate.evaluate_run)")
    ] = False,
    device: Device = "auto",
) -> None:
    """Measure a run: likelihood, latent use, and the statistics of its samples next to human verse.

    Example: [bold]poetvae evaluate -m runs/default --iw 500 --json[/]
    """
    from poetvae import rundir
    from poetvae.evaluate import evaluate_run
    from poetvae.poet import Poet

    with user_errors():
        run = rundir.RunDir(model)
        heldout = run.heldout(corpus)
        train_poems = run.train_poems()
        poet = Poet.load(model, device=device)
        report = evaluate_run(
            poet, heldout.poems, train_poems, samples=samples, iw_samples=iw, temperature=temp, seed=seed, scheme=scheme
        )
    if as_json:
        sys.stdout.write(json.dumps(report.to_dict(), ensure_ascii=False, indent=2) + "\n")
    else:
        _print_report(report, heldout.source)


# ---- plot ---------------------------------------------------------------------------------
@app.command()
def plot(
    model: Annotated[Path, typer.Argument(help="run directory", readable=False)],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="where to write the PNGs (default RUN/plots)")
    ] = None,
    device: Device = "auto",
) -> None:
    """Charts of a run: training curves, and a 2-D PCA of the test poems' posterior means.

    Example: [bold]poetvae plot runs/default[/]
    """
    from poetvae import rundir
    from poetvae.plot import plot_latent_of_run, plot_training

    with user_errors():
        paths = plot_training(model, output)
        heldout = rundir.RunDir(model).heldout()
        paths.append(plot_latent_of_run(model, heldout.poems, output, device))
    for path in paths:
        out.print(f"wrote {path}")


# ---- bench ---------------------------------------------------------------------------------
@app.command()
def bench(
    size: Annotated[
        list[str] | None, typer.Option("--size", help="default | reference (repeatable; default both)")
    ] = None,
    device: Device = "auto",
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", min=1, help="training batch (CPU 128, GPU 1024)")
    ] = None,
    sample_batch: Annotated[int | None, typer.Option("--sample-batch", min=1, help="poems decoded together")] = None,
    repeats: Annotated[int, typer.Option("--repeats", min=1, help="timed repeats; the median is reported")] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON (keys: poetvae.bench.run_bench)")] = False,
) -> None:
    """Training and sampling throughput, model FLOP/s, and the share of this machine's matmul rate.

    Example: [bold]poetvae bench --size reference[/]
    """
    from poetvae.bench import SIZES, run_bench

    for s in size or []:
        if s not in SIZES:
            raise typer.BadParameter(f"--size must be one of {', '.join(SIZES)}")
    with user_errors():
        report = run_bench(size, device, batch_size, sample_batch, repeats=repeats)
    if as_json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
        return
    m = report["machine"]
    # short columns and no vertical rules: the table fits 80 columns (a pipe or a log file)
    table = Table(
        title=f"{m['device']}, {m['threads']} threads, torch {m['torch']}: "
        f"matmul {m['matmul']} {m['matmul_flops_per_s'] / 1e9:.0f} GFLOP/s",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        caption="poems/s; % of the matmul rate; peak memory",
        caption_justify="left",
    )
    for col in ("size", "params", "train", "%", "sample", "%", "greedy", "memory"):
        table.add_column(col, justify="right", no_wrap=True)
    for r in report["results"]:
        table.add_row(
            r["size"],
            f"{r['parameters'] / 1e6:.1f}M",
            f"{r['train_poems_per_s']:,.0f}",
            f"{r['train_fraction_of_peak']:.0%}",
            f"{r['sample_poems_per_s']:,.0f}",
            f"{r['sample_fraction_of_peak']:.0%}",
            f"{r['greedy_poems_per_s']:,.0f}",
            f"{r['peak_memory_bytes'] / 2**30:.2f} GiB",
        )
    out.print(table)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
