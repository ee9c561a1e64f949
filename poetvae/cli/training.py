"""`poetvae prep` and `poetvae train` (with its torchrun launcher and progress display)."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from poetvae.cli.common import ConfigFile, _flag, _number, _styled, _with_config_flags, app, err, out, user_errors
from poetvae.config import MAX_DEVICE_INDEX, load_config, user_fields


def env_rank() -> int:
    """This process's rank under torchrun (0 when alone); poetvae.distributed loads torch,
    so it is imported only when a command runs."""
    from poetvae.distributed import env_rank as rank

    return rank()


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
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="replace a prepared corpus already in the output directory")
    ] = False,
    settings: dict[str, Any] | None = None,
) -> None:
    """Clean a corpus, split it, build the vocabulary and word2vec embeddings.

    The output directory appears whole or not at all; one that exists is refused
    (--overwrite replaces a prepared corpus, nothing else).

    Example: [bold]poetvae prep ../shared/data/tang_quatrains.txt -o prep/tang[/]
    """
    from poetvae.rundir import write_prepared

    with user_errors():
        cfg = load_config(config, settings)
        result = write_prepared(corpus, output, cfg.prep, cfg.model.embed_dim, overwrite=overwrite)
    _print_prep(result)


# ---- train ------------------------------------------------------------------------------
def _config_table(cfg: Any) -> Table:
    table = Table(title="config", show_header=False, title_justify="left")
    for section, values in cfg.to_dict().items():
        table.add_row(_styled(section, "bold"), "  ".join(f"{k}={v}" for k, v in values.items()))
    return table


def _precision(cfg: Any) -> str:
    """What the training header says of the arithmetic: bf16 autocast or fp32, and why."""
    from poetvae.hardware import autocast_choice, resolve_device

    return autocast_choice(resolve_device(cfg.train.device), cfg.train.amp)[1]


def _shipped_name(value: str | None) -> str | None:
    """Typer callback of --corpus: the name of a shipped corpus."""
    from poetvae.data_files import SHIPPED_CORPORA

    if value is not None and value not in SHIPPED_CORPORA:
        raise typer.BadParameter(f"{value!r} is not a shipped corpus: choose one of {', '.join(SHIPPED_CORPORA)}")
    return value


@app.command()
@_with_config_flags({"prep", "model", "train"})
def train(
    corpus: Annotated[
        list[Path] | None,
        typer.Argument(
            help="corpus files or a prep directory (default: the shipped quatrains, --corpus quatrains)",
            readable=False,
            show_default=False,
        ),
    ] = None,
    shipped: Annotated[
        str | None,
        typer.Option(
            "--corpus",
            callback=_shipped_name,
            help="a corpus shipped with poetvae, instead of files: quatrains (the Tang and Song quatrains, the "
            "default), stanzas (four-line stanzas of longer poems, to pretrain on), small (122 well-known quatrains)",
            show_default=False,
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="run directory (default: a new one, runs/<corpus name>)"),
    ] = None,
    config: ConfigFile = None,
    resume: Annotated[
        Path | None, typer.Option("--resume", help="continue the run in this directory", readable=False)
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="replace a run already in the output directory")
    ] = False,
    no_latent: Annotated[bool, typer.Option("--no-latent", help="train the decoder alone as a language model")] = False,
    devices: Annotated[
        int,
        typer.Option(
            "--devices", min=1, max=MAX_DEVICE_INDEX + 1, help="processes (GPUs) for DDP training; >1 launches torchrun"
        ),
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

    Example: [bold]poetvae train tang.txt --epochs 20[/] writes a new run, runs/tang
    (runs/tang-2 when that exists; -o RUN to choose). No corpus: the shipped quatrains.

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
    if shipped is not None and corpus:
        raise typer.BadParameter("give corpus files or --corpus NAME, not both")
    if shipped is not None and resume is not None:
        raise typer.BadParameter("--resume takes the run's own data and config; give no corpus or settings")
    if init is None and settings.get("init_reset", "none") != "none":
        raise typer.BadParameter("--init-reset says what to start afresh of the --init run: give --init RUN")
    _refuse_prep_flags(corpus, settings)
    if devices > 1:
        with user_errors():
            raise typer.Exit(
                _launch_torchrun(
                    devices,
                    corpus=corpus,
                    shipped=shipped,
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
            init_run = _open_init(init, settings)
            sources, name = _corpus(corpus, shipped)
            cfg = _new_run_config(config, settings, init_run)  # before a run directory is claimed for it
            # locked until training ends: one training per run directory
            run = held.enter_context(_claim_output(output, name, overwrite))
            run_dir = run.path
            stage = held.enter_context(run.staging())  # None on torchrun ranks > 0, which write nothing
            data = (stage.run if stage else run).load_training_data(sources, cfg, init_run)
        main_process = env_rank() == 0  # under torchrun only rank 0 speaks
        if main_process:
            out.print(_config_table(cfg))
            out.print(f"precision: {_precision(cfg)}")
            if init_run is not None:
                _print_init(init_run, data)
        result = _train_with_progress(cfg, data, run_dir, resume is not None, stage, init_run)
    if main_process:
        _print_train_result(result)
    if result.interrupted and main_process:
        err.print(f"interrupted at step {result.steps}; continue with: poetvae train --resume {run_dir}")
        raise typer.Exit(130)


def _corpus(corpus: list[Path] | None, shipped: str | None) -> tuple[list[Path], str]:
    """The corpus files (or prep directory) to train on, and the name a new run takes from them."""
    from poetvae import data_files, rundir
    from poetvae.errors import CorpusError

    if corpus:
        missing = next((p for p in corpus if not os.path.lexists(p)), None)
        if missing is not None:  # before a run directory is claimed for it
            raise CorpusError(f"no such file: {missing}")
        return list(corpus), rundir.run_name(corpus)
    name = shipped or data_files.DEFAULT_CORPUS
    return data_files.shipped_corpus(name), name


@contextlib.contextmanager
def _claim_output(output: Path | None, name: str, overwrite: bool) -> Any:
    """The run directory of a new training, locked while it trains. -o RUN as given (refused
    when it holds a run, unless --overwrite); without -o a new directory runs/<name>, or
    runs/<name>-2, -3, ... when that exists, so that a second training never replaces the
    first (with --overwrite: runs/<name> itself, replaced). Says on stdout which it chose."""
    from poetvae import rundir

    if output is None and not overwrite:
        with rundir.fresh_run(name) as run:
            if env_rank() == 0:
                out.print(f"new run: {run.path} (-o to choose the directory)")
            yield run
        return
    run = rundir.RunDir(output if output is not None else rundir.RUNS / name)
    with run.lock():
        run.refuse_existing(overwrite=overwrite)
        yield run


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


def _new_run_config(config: Path | None, settings: dict[str, Any], init_run: Any) -> Any:
    """The config of a new run: load_config, with what the --init run fixes; init_reset
    (from a --config file) without an --init run is an error, not ignored."""
    from poetvae.errors import ConfigError

    cfg = load_config(
        config,
        settings,
        fixed=init_run.fixed_settings() if init_run else None,
        inherited=init_run.refit_settings() if init_run else None,
    )
    if init_run is None and cfg.train.init_reset != "none":
        raise ConfigError(f"train.init_reset = {cfg.train.init_reset!r} in {config} needs an --init run to reset")
    return cfg


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
    shipped: str | None,
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
            init_run = _open_init(init, settings)
            sources, name = _corpus(corpus, shipped)
            cfg = _new_run_config(config, settings, init_run)
            run = held.enter_context(_claim_output(output, name, overwrite))
            run_dir = run.path  # the workers get it as -o
            stage = held.enter_context(run.staging())
            env[rundir.STAGING_ENV] = str(stage.path)
            # into the staged run's prep/ once here, which every process then reads
            source = stage.run.prepare_data(sources, cfg, init_run)
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
        return train_run(cfg, data, run_dir, resume=resume, on_log=on_log, staging=staging, init=init)


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
