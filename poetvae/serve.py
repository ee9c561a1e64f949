"""`poetvae serve`: a local web page to write, steer and walk between poems, and the JSON API
it uses, over one loaded model (needs the `web` extra: FastAPI and uvicorn).

    app = create_app(Poet.load(resolve_model(None).path))   # an ASGI app
    serve(app, host="127.0.0.1", port=8000)                 # uvicorn, until Ctrl-C

The API speaks the library's and the CLI's names: POST /api/sample, /api/vary,
/api/reconstruct, /api/interpolate take a JSON object of the CLI's options ({"n": 5,
"temp": 0.8, "seed": 1, "rhyme": true}) and return the records of `--format json`
(poetvae.poem_json); GET /api/health and /api/model say that it runs and with which model.

What holds for every request:

- It is a pure function of its body. A request decodes with its own torch.Generator, seeded
  from its "seed" (Poet never reads torch's global random state), and requests run one at a
  time (`_Inference`), so a seed gives the same poems whatever else is sent meanwhile.
- The model is loaded once, before the server listens, and shared by all requests.
  Inference runs in a worker thread, never on the event loop, so the server keeps answering
  (health, the page, queued requests) while it decodes.
- Bad input is a 4xx with a one-line JSON {"error": "..."}, never a 500 or a traceback: the
  body's schema (types, ranges, unknown keys, NaN) is checked before any work with the
  limits below, and the library's own checks (parse_poem, Controls, DecodeOptions, the
  vocabulary) give their one-line messages as 400s.
"""

from __future__ import annotations

import json
import math
import socket
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from importlib import resources
from typing import Annotated, Any, Literal, TypeVar

import anyio.to_thread
import uvicorn
from fastapi import Body, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.exceptions import HTTPException

from poetvae import prosody
from poetvae.config import MAX_SEED
from poetvae.controls import Controls, given_lines
from poetvae.decode import DecodeOptions
from poetvae.errors import PoetVAEError
from poetvae.form import parse_poem
from poetvae.models import EVALUATION, MODEL_CARD
from poetvae.poem_json import path_records, reconstruction_record, sample_record
from poetvae.poet import Poet
from poetvae.rundir import PRIOR

# The limits of one request, so that no body can hold the server for long (README, `serve`).
# A candidate is one decoded row: n poems with beam B and rerank R decode n·B·R rows, about
# 4 ms each on a 2-core CPU with the bundled model, so MAX_CANDIDATES is a few seconds.
MAX_N = 100  # poems per sample / vary request
MAX_STEPS = 100  # points of an interpolation path
MAX_BEAM = 16
MAX_RERANK = 16
MAX_CANDIDATES = 1000  # n × beam × rerank (sample, vary); steps × beam (interpolate)
MAX_POEMS = 100  # poems per reconstruct request
MAX_TEXT = 200  # characters of a poem, an acrostic, a first line or a prefix as typed
MAX_BODY = 64 * 1024  # bytes of a request body

T = TypeVar("T")


# ---- request bodies: the CLI's option names, checked before any work ----------------------
class _Body(BaseModel):
    # strict: 5.0 or "5" is not an int, true is not a number; forbid: a misspelt option
    # ("temperature" for "temp") is an error, not silently the default
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


Text = Annotated[str, Field(max_length=MAX_TEXT)]
Seed = Annotated[int | None, Field(ge=0, le=MAX_SEED, description="fixes z and the draws")]
Temp = Annotated[float, Field(ge=1e-3, description="sampling temperature")]


class _ControlOptions(_Body):
    rhyme: bool = Field(False, description="lines 2 and 4 (and a 平 line 1) share a rhyme group")
    rhyme_group: Text | None = Field(None, description="rhyme in this group, e.g. 七阳 (implies rhyme)")
    scheme: Literal["pingshui", "xinyun"] = "pingshui"
    tones: bool = Field(False, description="二四异 and the 粘对 pattern of the regular 五绝")
    repetition_rule: bool = Field(True, description="forbid the repeats human verse avoids (poetvae.repetition)")
    bigram_correction: float = Field(
        1.0, ge=0, le=1, description="how far a temperature below 1 spares the corpus's bigrams (poetvae.bigrams)"
    )
    beam: int = Field(1, ge=1, le=MAX_BEAM, description="beam-search width (1: sample)")


class SampleRequest(_ControlOptions):
    n: int = Field(10, ge=1, le=MAX_N, description="how many poems")
    temp: Temp = 0.8
    seed: Seed = None
    top_k: int = Field(0, ge=0, description="sample from the k likeliest tokens (0: all)")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling mass")
    greedy: bool = False
    with_z: bool = False
    prior: Literal["normal", "fitted"] = "normal"
    acrostic: Text | None = Field(None, description="藏头诗: 4 characters that start the lines")
    first_line: Text | None = Field(None, description="a given first line of 5 characters")
    prefix: Text | None = Field(None, description="1 to 3 given lines, e.g. 白日依山尽，黄河入海流")
    infer_z: bool = Field(False, description="z from the encoder applied to the prefix, not the prior")
    # the defaults of `poetvae sample`, chosen by measurement (docs/experiments.md)
    rerank: int = Field(3, ge=1, le=MAX_RERANK, description="candidates per z; keep the best by prosody_weight")
    prosody_weight: float = Field(100.0, description="with rerank: weight of the rhyme/tone score")

    @model_validator(mode="after")
    def _within_limits(self) -> SampleRequest:
        if self.first_line and self.prefix:  # as the CLI: an empty one is not given
            raise ValueError("give first_line or prefix, not both")
        _check_candidates(self.n * self.beam * self.rerank, "n × beam × rerank")
        return self


class VaryRequest(_ControlOptions):
    poem: Text
    n: int = Field(5, ge=1, le=MAX_N, description="how many variations")
    spread: float = Field(1.0, ge=0, le=100, description="z = mu + spread·sigma·eps: 1 draws z from q(z|x), 0 is mu")
    temp: Temp = 0.8
    greedy: bool = False
    seed: Seed = None
    with_z: bool = False
    allow_unk: bool = Field(False, description="read unknown characters as <unk>")
    acrostic: Text | None = None

    @model_validator(mode="after")
    def _within_limits(self) -> VaryRequest:
        _check_candidates(self.n * self.beam, "n × beam")
        return self


class ReconstructRequest(_Body):
    poems: list[Text] = Field(min_length=1, max_length=MAX_POEMS)
    allow_unk: bool = False
    repetition_rule: bool = Field(True, description="decode with the repetition rule, as interpolate's ends are")


class InterpolateRequest(_ControlOptions):
    poem_a: Text
    poem_b: Text
    steps: int = Field(8, ge=2, le=MAX_STEPS, description="points on the path, both ends included")
    method: Literal["linear", "slerp"] = "linear"
    sample: bool = Field(False, description="sample at each point instead of greedy decoding")
    temp: Temp = 0.8
    seed: Seed = None
    allow_unk: bool = False

    @model_validator(mode="after")
    def _within_limits(self) -> InterpolateRequest:
        _check_candidates(self.steps * self.beam, "steps × beam")
        return self


def _check_candidates(count: int, what: str) -> None:
    if count > MAX_CANDIDATES:
        raise ValueError(f"{what} is {count:,}; at most {MAX_CANDIDATES:,} poems are decoded for one request")


def _controls(body: _ControlOptions, acrostic: str | None = None, prefix: str | None = None) -> Controls:
    """The request's controls, checked by the library (ConfigError: a 400 with its message)."""
    return Controls(
        rhyme=body.rhyme,
        rhyme_group=body.rhyme_group,
        scheme=body.scheme,
        tones=body.tones,
        acrostic=acrostic,
        prefix=given_lines(prefix),
    )


# ---- errors: one line of JSON -------------------------------------------------------------
def _one_line(message: str) -> str:
    return " ".join(str(message).split())


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": _one_line(message)}, status_code=status)


def _validation_message(exc: RequestValidationError) -> str:
    """pydantic's errors in one line: `n: Input should be less than or equal to 100; ...`."""
    parts = []
    for e in exc.errors():
        loc = [str(x) for x in e.get("loc", ()) if x != "body"]
        kind, msg = e.get("type", ""), str(e.get("msg", "invalid"))
        if kind == "json_invalid":
            parts.append(f"the body is not valid JSON ({e.get('ctx', {}).get('error', msg)})")
        elif not loc and kind == "value_error":  # a check across options (_check_candidates, ...)
            parts.append(msg.removeprefix("Value error, "))
        elif not loc:  # the body itself: missing, a list, a string, bytes of another type
            parts.append("the body must be a JSON object of options ({} for the defaults)")
        else:
            parts.append(f"{'.'.join(loc)}: {msg.removeprefix('Value error, ')}")
    return "; ".join(dict.fromkeys(parts)) or "invalid request"


class _BodyLimit:
    """ASGI middleware: a request body over `max_bytes` gets 413 before the app reads it
    (by its Content-Length, or by counting as it arrives when it is chunked). The app then
    reads the body from the buffer, so nothing downstream ever holds more than the limit."""

    def __init__(self, app: Callable[..., Awaitable[None]], max_bytes: int = MAX_BODY):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: MutableMapping[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length", b"0")  # none: chunked, counted below
        if not length.isdigit():
            return await _error(400, "the Content-Length header is not a number")(scope, receive, send)
        if int(length) > self.max_bytes:
            return await self._too_large(scope, receive, send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await self._too_large(scope, receive, send)
            more = message.get("more_body", False)
        body, replayed = b"".join(chunks), False

        async def replay() -> MutableMapping[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for the disconnect, as a server would

        await self.app(scope, replay, send)

    async def _too_large(self, scope: MutableMapping[str, Any], receive: Callable, send: Callable) -> None:
        response = _error(413, f"the request body is over the limit of {self.max_bytes:,} bytes")
        await response(scope, receive, send)


# ---- inference: one at a time, in a worker thread -----------------------------------------
class _Inference:
    """Runs the model's work off the event loop, one request at a time.

    One at a time because torch already spreads one decode over all the CPU cores
    (intra-op threads), so two at once only contend for them; because Poet fills its caches
    (decode tables, control tables, the fitted prior) at first use without a lock of its own;
    and so that what a request returns never depends on what runs beside it. A lock rather
    than one worker thread: anyio's threads come and go with the event loop (a test client
    starts its own), a lock does not care which thread holds it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    async def __call__(self, work: Callable[[], T]) -> T:
        def locked() -> T:
            with self._lock:
                return work()

        return await anyio.to_thread.run_sync(locked)


# ---- the app -------------------------------------------------------------------------------
def model_info(poet: Poet, source: str | None = None) -> dict[str, Any]:
    """What GET /api/model says: the model's name, where it came from, its size and its card
    (MODEL_CARD.md and the figures of evaluation.json, when the model has them)."""
    run = poet.run_dir
    evaluation = card = None
    if run is not None:
        try:
            evaluation = json.loads((run / EVALUATION).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            evaluation = None  # a run not evaluated (or a damaged report): no figures to show
        try:
            card = (run / MODEL_CARD).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            card = None
    m = poet.config.model
    return {
        "name": run.name if run is not None else None,
        "source": source,
        "parameters": sum(p.numel() for p in poet.model.parameters()),
        "vocab_size": len(poet.vocab),
        "tokenizer": poet.vocab.tokenizer,
        "latent_dim": m.latent_dim if m.use_latent else 0,
        "form_features": m.form_features,
        "fitted_prior": run is not None and (run / PRIOR).is_file(),
        "device": str(poet.device),
        "evaluation": evaluation if isinstance(evaluation, dict) else None,
        "card": card,
        # the groups the page offers for rhyme_group: pingshui's 平 groups (a regular 五绝
        # rhymes in 平), all of xinyun's
        "rhyme_groups": {
            "pingshui": prosody.group_names("pingshui", prosody.Tone.PING),
            "xinyun": prosody.group_names("xinyun"),
        },
        "limits": {
            "n": MAX_N,
            "steps": MAX_STEPS,
            "beam": MAX_BEAM,
            "rerank": MAX_RERANK,
            "candidates": MAX_CANDIDATES,
            "poems": MAX_POEMS,
            "body_bytes": MAX_BODY,
        },
    }


def page() -> str:
    """The web page: one HTML file with its style and script inside (no CDN, no build step)."""
    return resources.files("poetvae").joinpath("web", "index.html").read_text(encoding="utf-8")


def create_app(poet: Poet, *, source: str | None = None, walker: Poet | None = None) -> FastAPI:
    """The ASGI app over a loaded model (`source`: how it was chosen, poetvae.models).
    `walker`: the model that vary, reconstruct and interpolate use instead (the bundled
    latent model beside the bundled poet); GET /api/model then describes it too, as
    "walker"."""
    app = FastAPI(
        title="poetvae",
        summary="Write, steer and walk between classical Chinese quatrains (五言绝句) with a text VAE.",
        version=_version(),
    )
    app.add_middleware(_BodyLimit, max_bytes=MAX_BODY)
    infer = _Inference()
    info = model_info(poet, source)
    if walker is not None:
        info["walker"] = model_info(walker, source)
    walks = walker or poet  # the model whose latent the walks, variations and reconstructions read
    html = page()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, _validation_message(exc))

    @app.exception_handler(HTTPException)
    async def _http(_request: Request, exc: HTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(PoetVAEError)
    @app.exception_handler(ValueError)
    async def _library(_request: Request, exc: Exception) -> JSONResponse:
        # what the library refuses (a poem of 3 lines, unknown characters, a bad rhyme
        # group, ...) is the user's input, with the message the CLI prints after `error:`
        return _error(400, str(exc))

    @app.exception_handler(Exception)
    async def _bug(_request: Request, exc: Exception) -> JSONResponse:
        # a bug, not the input: still one line for the client; Starlette then re-raises it,
        # so the traceback goes to the server's log (uvicorn's "Exception in ASGI application")
        return _error(500, f"internal error ({type(exc).__name__}); the server log has the details")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(html)

    @app.get("/api/health")
    async def health() -> dict[str, Any]:
        """The server runs and has its model."""
        return {"status": "ok", "model": info["name"]}

    @app.get("/api/model")
    async def model() -> dict[str, Any]:
        """Which model answers, its size, its card and evaluation figures, and the limits."""
        return info

    @app.post("/api/sample")
    async def sample(body: Annotated[SampleRequest, Body()]) -> dict[str, Any]:
        """Draw z from the prior and decode n well-formed quatrains (`poetvae sample`)."""

        def work() -> list[dict[str, Any]]:
            controls = _controls(body, body.acrostic, body.first_line or body.prefix)
            if body.infer_z and not controls.prefix:
                raise ValueError("infer_z needs first_line or prefix")
            options = DecodeOptions(
                temperature=body.temp,
                top_k=body.top_k,
                top_p=body.top_p,
                greedy=body.greedy,
                beam=body.beam,
                rerank=body.rerank,
                prosody_weight=body.prosody_weight,
                controls=controls,
                repetition_rule=body.repetition_rule,
                bigram_correction=body.bigram_correction,
                infer_z=body.infer_z,
                seed=body.seed,
            )
            poems = poet.sample(body.n, options, with_z=body.with_z, prior=body.prior)
            return [sample_record(p, with_z=body.with_z) for p in poems]

        return {"poems": await infer(work)}

    @app.post("/api/vary")
    async def vary(body: Annotated[VaryRequest, Body()]) -> dict[str, Any]:
        """Variations of a poem: z drawn around its posterior q(z|x), decoded (`poetvae vary`)."""

        def work() -> list[dict[str, Any]]:
            given = parse_poem(body.poem)
            options = DecodeOptions(
                temperature=body.temp,
                greedy=body.greedy,
                beam=body.beam,
                controls=_controls(body, body.acrostic),
                repetition_rule=body.repetition_rule,
                bigram_correction=body.bigram_correction,
                seed=body.seed,
            )
            poems = walks.vary(given, body.n, options, spread=body.spread, allow_unk=body.allow_unk, with_z=body.with_z)
            return [sample_record(p, with_z=body.with_z) for p in poems]

        return {"poems": await infer(work)}

    @app.post("/api/reconstruct")
    async def reconstruct(body: Annotated[ReconstructRequest, Body()]) -> dict[str, Any]:
        """Each poem's posterior mean decoded greedily, compared character by character."""

        def work() -> list[dict[str, Any]]:
            given = []
            for i, text in enumerate(body.poems, 1):
                try:
                    given.append(parse_poem(text))
                except PoetVAEError as e:  # which poem, as `poetvae reconstruct` says it
                    raise type(e)(f"poem {i}: {e}") from None
            done = walks.reconstruct(given, allow_unk=body.allow_unk, repetition_rule=body.repetition_rule)
            return [reconstruction_record(r) for r in done]

        records = await infer(work)
        return {"poems": records, "accuracy": round(math.fsum(r["accuracy"] for r in records) / len(records), 4)}

    @app.post("/api/interpolate")
    async def interpolate(body: Annotated[InterpolateRequest, Body()]) -> dict[str, Any]:
        """Walk from poem A's posterior mean to B's, decoding each point (`poetvae interpolate`);
        every point says which of its characters are A's and B's (same_a, same_b)."""

        def work() -> dict[str, Any]:
            a, b = parse_poem(body.poem_a), parse_poem(body.poem_b)
            options = DecodeOptions(
                temperature=body.temp,
                greedy=not body.sample,
                beam=body.beam,
                controls=_controls(body),
                repetition_rule=body.repetition_rule,
                bigram_correction=body.bigram_correction,
                seed=body.seed,
            )
            path = walks.interpolate(
                a, b, steps=body.steps, method=body.method, options=options, allow_unk=body.allow_unk
            )
            return {
                "a": {"text": a.oneline(), "lines": list(a.lines)},
                "b": {"text": b.oneline(), "lines": list(b.lines)},
                "path": path_records(a, b, path, compare=True),
            }

        return await infer(work)

    return app


def _version() -> str:
    from poetvae import __version__

    return __version__


# ---- serving ------------------------------------------------------------------------------
def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: a free port the system picks), bound here
    rather than by uvicorn so that the URL printed holds the real port, and a port in use is
    an OSError before anything starts."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restart at once after Ctrl-C
        sock.bind(address)
        sock.listen(2048)  # from here connections queue until uvicorn accepts them
    except OSError:
        sock.close()
        raise
    return sock


def url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def serve(app: FastAPI, sock: socket.socket) -> None:
    """Serve `app` on a socket from listen() until Ctrl-C (uvicorn; its own log quiet but for
    warnings and errors, one line a request would drown the terminal)."""
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5)
    uvicorn.Server(config).run(sockets=[sock])
