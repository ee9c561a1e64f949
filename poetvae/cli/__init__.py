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
    except SystemExit as done:  # how every Typer command ends
        if _launched_by_torchrun():
            _end_without_finalising(done.code)
        raise


def _launched_by_torchrun() -> bool:
    """Whether torchrun started this process as one of several (poetvae.distributed's test,
    without importing torch)."""
    import os

    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _end_without_finalising(code: object) -> None:
    """End a torchrun worker with `code` (SystemExit's), skipping the interpreter's
    finalisation. Why: a gloo worker thread releases the last collective's tensors a moment
    after the collective returns, and that release takes the GIL; when the main thread has
    begun finalising by then, the thread is killed mid-destructor and the process aborts
    ("terminate called without an active exception", exit -6: 3 runs in 110 of a tiny
    2-process training on 2 cores; pytorch/pytorch#179291). By now every file the command
    writes is written, closed and renamed into place, so only the streams need flushing."""
    import os
    import sys

    if code is not None and not isinstance(code, int):  # SystemExit("message") prints it
        sys.stderr.write(f"{code}\n")
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing left to say
            pass
    os._exit(1 if code is not None and not isinstance(code, int) else code or 0)


def interrupted() -> None:
    """Ctrl-C: one line on stderr (the caller exits with INTERRUPTED)."""
    import sys

    try:
        sys.stderr.write("interrupted\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
