"""`poetvae serve`: the web page and its JSON API (poetvae.serve), on this machine by default."""

from __future__ import annotations

from typing import Annotated

import typer

from poetvae.cli.common import Device, RunDir, app, err, out, use_resolved, user_errors
from poetvae.errors import PoetVAEError

WEB_PACKAGES = frozenset({"fastapi", "starlette", "pydantic", "uvicorn", "anyio"})  # the `web` extra
INSTALL_WEB = 'poetvae serve needs the web extra: pip install -e ".[web]" (or pip install "poetvae[web]")'


@app.command()
def serve(
    model: RunDir = None,
    host: Annotated[
        str, typer.Option("--host", help="address to listen on; 0.0.0.0 opens the page to other machines")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="TCP port (0: any free port)")] = 8000,
    device: Device = "auto",
) -> None:
    """Serve a web page to write, steer and walk between poems, and its JSON API.

    The page and POST /api/sample, /api/vary, /api/reconstruct, /api/interpolate (bodies with
    this command line's option names, e.g. {"n": 5, "temp": 0.8, "seed": 1, "rhyme": true});
    GET /api/health, /api/model; the OpenAPI schema at /openapi.json, its page at /docs.
    Needs the web extra: pip install -e ".\\[web]".

    Example: [bold]poetvae serve[/] (then open http://127.0.0.1:8000)
    """
    with user_errors():
        try:
            from poetvae import serve as web
        except ImportError as e:
            if (e.name or "").split(".")[0] not in WEB_PACKAGES:
                raise  # not a missing extra: a real bug, shown as one
            raise PoetVAEError(INSTALL_WEB) from None
        from poetvae.models import BUNDLED, LATENT_MODEL, bundled_model
        from poetvae.poet import Poet

        resolved = use_resolved(model)
        poet = Poet.load(resolved.path, device=device)
        walker = None
        if model is None and resolved.source == BUNDLED and (latent := bundled_model(LATENT_MODEL)) is not None:
            # the bundled poet writes; the bundled latent model walks, varies and reconstructs
            err.print(f"using the bundled model {LATENT_MODEL} for vary, reconstruct and interpolate")
            walker = Poet.load(latent, device=device)
        try:
            sock = web.listen(host, port)
        except OSError as e:  # in use, not an address of this machine, a port below 1024 ...
            raise PoetVAEError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
        application = web.create_app(poet, source=resolved.source, walker=walker)
    where = web.url(sock)
    everywhere = " (every address of this machine)" if host in ("0.0.0.0", "::") else ""
    out.print(f"poetvae serve: {poet.run_dir.name} at {where}{everywhere} (Ctrl-C to stop)")
    try:
        web.serve(application, sock)  # uvicorn shuts down cleanly on Ctrl-C, then raises it again
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
    err.print("poetvae serve: stopped")
    raise typer.Exit(128 + 2)  # the shell's code for a command ended by Ctrl-C (SIGINT)
