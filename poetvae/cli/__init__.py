"""The `poetvae` command: a thin Typer layer over the library.

Each command parses its flags, resolves the config, calls one library function and
renders the result with rich. Library errors (PoetVAEError) become a one-line
`error: …` on stderr and exit code 1; Typer's own usage errors exit with 2.
"""

from poetvae.cli import export, generation, latent, reports, serve, training  # noqa: F401  (each registers its commands)
from poetvae.cli.common import app

__all__ = ["app", "main"]


def main() -> None:
    app()
