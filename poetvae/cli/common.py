"""What every `poetvae` command shares: the Typer app, the two consoles, the one-line error
handler, config settings as flags, and the option types that several commands take."""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from poetvae.cli import CLOSED_PIPE, INTERRUPTED, interrupted
from poetvae.config import MAX_BEAM, MAX_SEED, check_device, user_fields
from poetvae.errors import ConfigError, PoetVAEError
from poetvae.prosody import SCHEMES


def _quiet_stdout() -> None:
    """stdout's reader is gone: point stdout at /dev/null, so that nothing fails at exit."""
    with contextlib.suppress(OSError, ValueError):  # no real stdout under a test runner
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


class _Group(typer.core.TyperGroup):
    """The command group, plus the exit codes that no command should have to handle itself
    (see poetvae.cli): Ctrl-C ends any command with one line and 130, from the parsing of
    its flags on; a reader that closes the pipe early (`poetvae sample | head -1`) ends it
    quietly with 141, as it does `yes` or `cat`, whatever the command and its format,
    --help included."""

    def make_context(self, *args: Any, **kwargs: Any) -> Any:
        with _exit_codes():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx: Any) -> Any:
        with _exit_codes():
            result = super().invoke(ctx)
            sys.stdout.flush()  # a closed pipe shows here when the output was buffered
            return result


@contextlib.contextmanager
def _exit_codes() -> Iterator[None]:
    try:
        yield
    except KeyboardInterrupt:
        interrupted()
        raise typer.Exit(INTERRUPTED) from None
    except BrokenPipeError:
        _quiet_stdout()
        raise typer.Exit(CLOSED_PIPE) from None


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


def _one_of(*choices: str) -> Callable[[str], str]:
    """A Typer callback that accepts only `choices` (a bad value exits with 2, naming them)."""
    listed = ", ".join(choices[:-1]) + " or " + choices[-1]

    def check(value: str) -> str:
        if value not in choices:
            raise typer.BadParameter(f"must be {listed}")
        return value

    return check


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


# ---- the model a command reads --------------------------------------------------------------
RunDir = Annotated[
    Path | None,
    typer.Option(
        "--model",
        "-m",
        help="run directory written by `poetvae train`, or a bundle (default: the newest run in ./runs, "
        "else the bundled model)",
        readable=False,
        show_default=False,
    ),
]


# for the commands that need a run's own files (evaluate: its splits; plot: its log): no bundled model
TrainedRun = Annotated[
    Path | None,
    typer.Option(
        "--model",
        "-m",
        help="run directory written by `poetvae train`, or a bundled model: classical or latent "
        "(default: the newest run in ./runs, else the bundled model made for the command)",
        readable=False,
        show_default=False,
    ),
]


def use_model(
    model: Path | None, *, bundled: bool = True, hint: str = "pass -m RUN", purpose: str = "classical"
) -> Path:
    """The model directory a command reads (poetvae.models.resolve_model): -m as given (a
    directory, or a bundled model by name), else the newest run in ./runs, else (with
    `bundled`) the bundled model made for `purpose`. When it chose, it says which and why in
    one line on stderr, so that stdout holds the poems alone (`poetvae sample | head`).
    Call it inside user_errors(): with no model at all it raises a one-line error."""
    return use_resolved(model, bundled=bundled, hint=hint, purpose=purpose).path


def use_resolved(
    model: Path | None, *, bundled: bool = True, hint: str = "pass -m RUN", purpose: str = "classical"
) -> Any:
    """use_model's poetvae.models.ResolvedModel: the path and how it was chosen."""
    from poetvae.models import resolve_model

    resolved = resolve_model(model, bundled=bundled, hint=hint, purpose=purpose)
    if resolved.note:
        err.print(resolved.note)
    return resolved


# ---- sample -------------------------------------------------------------------------------
Rhyme = Annotated[
    bool,
    typer.Option("--rhyme", help="lines 2 and 4 (and a 平 line 1) share a rhyme group", rich_help_panel="controls"),
]
RhymeGroup = Annotated[
    str | None,
    typer.Option("--rhyme-group", help="rhyme in this group, e.g. 七阳 (implies --rhyme)", rich_help_panel="controls"),
]
Scheme = Annotated[
    str,
    typer.Option(
        "--scheme",
        callback=_one_of(*SCHEMES),
        help="pingshui (平水韵) or xinyun (中华新韵)",
        rich_help_panel="controls",
    ),
]
Tones = Annotated[
    bool, typer.Option("--tones", help="二四异 and the 粘对 pattern of the regular 五绝", rich_help_panel="controls")
]
Beam = Annotated[
    int, typer.Option("--beam", min=1, max=MAX_BEAM, help="beam-search width (1: sample)", rich_help_panel="controls")
]
Device = Annotated[str, typer.Option("--device", callback=_device, help="auto, cpu, cuda, cuda:N, mps")]
RepetitionRule = Annotated[
    bool,
    typer.Option(
        "--repetition-rule/--no-repetition-rule",
        help="forbid the repeats human verse avoids: a stutter that is no corpus 叠字, a character a third time, "
        "a word loop, two lines ending on one character (重韵)",
        rich_help_panel="controls",
    ),
]
BigramCorrection = Annotated[
    float,
    typer.Option(
        "--bigram-correction",
        min=0.0,
        max=1.0,
        callback=_finite,
        help="how far a temperature below 1 spares the corpus's stock bigrams (不知, 不见): 1 sharpens only what "
        "the poem adds beyond the previous character (p / b), 0 is plain temperature (poetvae.bigrams)",
        rich_help_panel="controls",
    ),
]
Acrostic = Annotated[
    str | None,
    typer.Option("--acrostic", help="藏头诗: 4 characters that start the lines", rich_help_panel="controls"),
]


# the decoding flags of the commands that write poems from z (sample, vary)
Temperature = Annotated[float, typer.Option("--temp", "-t", min=1e-3, callback=_finite, help="sampling temperature")]
Seed = Annotated[int | None, typer.Option("--seed", min=0, max=MAX_SEED, help="fixes z and the draws")]
Greedy = Annotated[bool, typer.Option("--greedy", help="most likely token at every step")]
PoemFormat = Annotated[
    str, typer.Option("--format", "-f", callback=_one_of("text", "oneline", "json"), help="text | oneline | json")
]
# the commands that compare poems with what they decode to (interpolate, reconstruct)
TableFormat = Annotated[str, typer.Option("--format", "-f", callback=_one_of("table", "json"), help="table | json")]
WithZ = Annotated[bool, typer.Option("--with-z", help="include z in --format json")]
AllowUnk = Annotated[bool, typer.Option("--allow-unk", help="read unknown characters as <unk>")]


Prior = Annotated[
    str,
    typer.Option(
        "--prior",
        callback=_one_of("normal", "fitted"),
        help="normal: z ~ N(0, I); fitted: the run's Gaussian fitted to its training poems (poetvae fit-prior)",
    ),
]


def _controls(
    rhyme: bool, rhyme_group: str | None, scheme: str, tones: bool, acrostic: str | None, prefix: str | None
) -> Any:
    """The decoding controls from the flags (a given prefix is parsed into its lines)."""
    from poetvae.controls import Controls, given_lines

    try:
        lines = given_lines(prefix)
    except ConfigError as e:  # a usage error (exit 2) like the flags' other checks
        raise typer.BadParameter(str(e), param_hint="--first-line/--prefix") from None
    return Controls(rhyme=rhyme, rhyme_group=rhyme_group, scheme=scheme, tones=tones, acrostic=acrostic, prefix=lines)


def _marked(rec: Any) -> tuple[Text, str]:
    """A poet.Reconstruction's decoded poem (one line) with the characters that differ from
    the given poem in red, and a line with ^^ under each of them, for output without colour
    (a Han character and the full-width punctuation are two columns wide; "" when all match)."""
    text, marks, position = Text(), [], 0
    for ch in rec.decoded.oneline():
        if ch in "，。":  # oneline's punctuation: no position of its own
            text.append(ch)
            marks.append("  ")
            continue
        differs = not rec.same[position]
        position += 1
        text.append(ch, style="red" if differs else "")
        marks.append("^^" if differs else "  ")
    return text, "".join(marks).rstrip()


def _emit(samples: list[Any], fmt: str, with_z: bool) -> None:
    """Write poet.Sample objects to stdout as they come, in the chosen format."""
    from poetvae.poem_json import sample_record

    for poem in samples:
        if fmt == "json":
            sys.stdout.write(json.dumps(sample_record(poem, with_z=with_z), ensure_ascii=False) + "\n")
        elif fmt == "oneline":
            sys.stdout.write(poem.oneline() + "\n")
        else:
            sys.stdout.write(poem.layout() + "\n\n")
    sys.stdout.flush()
