"""`poetvae export`: a run's model as a bundle, the minimal directory that can be shipped."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from poetvae.cli.common import TrainedRun, app, out, use_model, user_errors


@app.command()
def export(
    dest: Annotated[Path, typer.Argument(help="the bundle directory to write", readable=False)],
    model: TrainedRun = None,
    half: Annotated[bool, typer.Option("--half", help="store the weights in float16: half the size")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace a bundle or run already at DEST")] = False,
) -> None:
    """Write a run's model as a bundle: config, vocabulary and best weights (no training state,
    log or data), plus its prior, evaluation report and model card when it has them.

    Example: [bold]poetvae export -m runs/quatrains --half poetvae/bundled/classical[/]
    """
    from poetvae.models import export_bundle

    with user_errors():
        result = export_bundle(use_model(model, bundled=False), dest, half=half, overwrite=overwrite)
    out.print(f"wrote {result.path}: {', '.join(result.files)} ({result.bytes / 1e6:.1f} MB, {result.dtype} weights)")
