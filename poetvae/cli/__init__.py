"""The `poetvae` command: a thin Typer layer over the library.

Each command parses its flags, resolves the config, calls one library function and
renders the result with rich. Every command ends with one of these exit codes, whatever
its output format:

    0    success
    1    an error a user can cause (PoetVAEError, an unreadable file): one line `error: …`
    2    a usage error (a bad flag or argument, named by Typer)
    130  interrupted (Ctrl-C): one line, from the first instant (imports included)
    141  stdout closed by its reader (`poetvae sample | head -1`), quietly

Importing this package loads no command: `app` (and `main`) load them at first use, and
the command modules import torch only inside the commands that need it, so `--help` and
a usage error answer without loading torch.
"""

from __future__ import annotations

__all__ = ["app", "main"]

INTERRUPTED = 130  # the shell's code for a command ended by SIGINT (Ctrl-C)
CLOSED_PIPE = 128 + 13  # the shell's code for a command ended by SIGPIPE
COMMAND_MODULES = ("training", "generation", "latent", "reports", "export", "serve")


def _load_app() -> object:
    """The Typer app with every command registered (each module registers its own)."""
    import importlib

    from poetvae.cli.common import app

    for name in COMMAND_MODULES:
        importlib.import_module(f"poetvae.cli.{name}")
    return app


def __getattr__(name: str) -> object:
    if name == "app":
        return _load_app()
    raise AttributeError(name)


def _closed_pipe_is_an_error() -> None:
    """rich ends the process with exit code 1 when stdout's reader has gone (Console.on_broken_pipe):
    in this process, raise BrokenPipeError instead, which the command group turns into 141
    like any other closed pipe (its own output and Typer's help alike)."""
    from rich.console import Console

    def on_broken_pipe(self: Console) -> None:
        raise BrokenPipeError(32, "stdout's reader has gone")

    Console.on_broken_pipe = on_broken_pipe  # type: ignore[method-assign]


def main() -> None:
    """The `poetvae` console script (and `python -m poetvae`). Nothing has been imported
    before this runs but this package and poetvae's (neither imports anything), so a
    Ctrl-C is answered with one line and 130 from the first instant."""
    try:
        _closed_pipe_is_an_error()
        app = _load_app()
        app()
    except KeyboardInterrupt:  # while the commands load, or between Typer's steps
        interrupted()
        raise SystemExit(INTERRUPTED) from None


def interrupted() -> None:
    """Ctrl-C: one line on stderr (the caller exits with INTERRUPTED)."""
    import sys

    try:
        sys.stderr.write("interrupted\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
