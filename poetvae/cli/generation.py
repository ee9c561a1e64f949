"""`poetvae sample` and `poetvae interpolate`: poems out of a trained run."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer
from rich.table import Table

from poetvae.cli.common import (
    Acrostic,
    AllowUnk,
    Beam,
    BigramCorrection,
    Device,
    Greedy,
    PoemFormat,
    Prior,
    RepetitionRule,
    Rhyme,
    RhymeGroup,
    RunDir,
    Scheme,
    Seed,
    TableFormat,
    Temperature,
    Tones,
    WithZ,
    _controls,
    _emit,
    _finite,
    _marked,
    _one_of,
    app,
    out,
    use_model,
    user_errors,
)
from poetvae.config import MAX_DECODE_BATCH, MAX_PATH_STEPS, MAX_POEMS, MAX_RERANK, MAX_SEED


@app.command()
def sample(
    model: RunDir = None,
    n: Annotated[int, typer.Option("-n", "--num", min=1, max=MAX_POEMS, help="how many poems")] = 10,
    temp: Temperature = 0.8,
    seed: Seed = None,
    top_k: Annotated[int, typer.Option("--top-k", min=0, help="sample from the k likeliest tokens (0: all)")] = 0,
    top_p: Annotated[
        float, typer.Option("--top-p", min=1e-6, max=1.0, callback=_finite, help="nucleus sampling mass")
    ] = 1.0,
    greedy: Greedy = False,
    fmt: PoemFormat = "text",
    with_z: WithZ = False,
    batch_size: Annotated[
        int, typer.Option("--batch-size", min=1, max=MAX_DECODE_BATCH, help="poems decoded together")
    ] = 2048,
    prior: Prior = "normal",
    device: Device = "auto",
    rhyme: Rhyme = False,
    rhyme_group: RhymeGroup = None,
    scheme: Scheme = "pingshui",
    tones: Tones = False,
    acrostic: Acrostic = None,
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
            "--rerank",
            min=1,
            max=MAX_RERANK,
            help="candidates per z; keep the best by --prosody-weight x prosody score + log-probability "
            "(greedy and beam search decode one)",
            rich_help_panel="controls",
        ),
    ] = 3,
    prosody_weight: Annotated[
        float,
        typer.Option(
            "--prosody-weight",
            callback=_finite,
            help="with --rerank: weight of the prosody score (lines 2 and 4 rhyme on two characters; 二四异), "
            "against the log-probability in nats (0: the most likely candidate)",
            rich_help_panel="controls",
        ),
    ] = 100.0,
    repetition_rule: RepetitionRule = True,
    bigram_correction: BigramCorrection = 1.0,
) -> None:
    """Draw z from the prior and decode well-formed quatrains, streaming them as they are made.

    The prior is N(0, I), or with --prior fitted a Gaussian fitted to the run's training poems
    (RUN/prior.safetensors: `poetvae fit-prior`). By default each poem is the best of 3
    candidates by prosody (--rerank 3 --prosody-weight 100: chosen by measurement,
    docs/experiments.md), decoded with the repetition rule and a temperature that leaves
    the corpus's stock bigrams unsharpened (--bigram-correction 1).

    Example: [bold]poetvae sample -n 10 --temp 0.8 --seed 1 --rhyme --tones --acrostic 春夏秋冬[/]
    (the newest run in ./runs, else the bundled model; -m RUN to choose)
    """
    from poetvae.config import check_decode_memory
    from poetvae.decode import DecodeOptions
    from poetvae.poet import Poet

    if first_line is not None and prefix is not None:
        raise typer.BadParameter("give --first-line or --prefix, not both")
    with user_errors():
        controls = _controls(rhyme, rhyme_group, scheme, tones, acrostic, first_line if prefix is None else prefix)
        if infer_z and not controls.prefix:
            raise typer.BadParameter("--infer-z needs --first-line or --prefix")
        if infer_z and prior != "normal":
            raise typer.BadParameter("--infer-z draws z from the encoder, not a prior: leave out --prior fitted")
        poet = Poet.load(use_model(model), device=device)
        flags = f"--batch-size {batch_size}, -n {n}, --beam {beam}, --rerank {rerank}"
        check_decode_memory(min(batch_size, n) * beam * rerank, len(poet.vocab), flags)
        options = DecodeOptions(
            temperature=temp,
            top_k=top_k,
            top_p=top_p,
            greedy=greedy,
            beam=beam,
            rerank=rerank,
            prosody_weight=prosody_weight,
            controls=controls,
            repetition_rule=repetition_rule,
            bigram_correction=bigram_correction,
            infer_z=infer_z,
            seed=seed,
            batch_size=batch_size,
        )
        for batch in poet.iter_sample(n, options, with_z=with_z, prior=prior):
            _emit(batch, fmt, with_z)


# ---- interpolate -------------------------------------------------------------------------
@app.command()
def interpolate(
    poem_a: Annotated[str, typer.Argument(help="first poem, e.g. 床前明月光，疑是地上霜。举头望明月，低头思故乡。")],
    poem_b: Annotated[str, typer.Argument(help="second poem")],
    model: RunDir = None,
    steps: Annotated[
        int, typer.Option("--steps", min=2, max=MAX_PATH_STEPS, help="points on the path, both ends included")
    ] = 8,
    method: Annotated[
        str, typer.Option("--method", callback=_one_of("linear", "slerp"), help="linear | slerp")
    ] = "linear",
    sample_: Annotated[bool, typer.Option("--sample", help="sample at each point instead of greedy decoding")] = False,
    temp: Annotated[
        float, typer.Option("--temp", "-t", min=1e-3, callback=_finite, help="temperature with --sample")
    ] = 0.8,
    seed: Annotated[int | None, typer.Option("--seed", min=0, max=MAX_SEED)] = None,
    allow_unk: AllowUnk = False,
    fmt: TableFormat = "table",
    device: Device = "auto",
    rhyme: Rhyme = False,
    rhyme_group: RhymeGroup = None,
    scheme: Scheme = "pingshui",
    tones: Tones = False,
    beam: Beam = 1,
    repetition_rule: RepetitionRule = True,
    bigram_correction: BigramCorrection = 1.0,
) -> None:
    """Walk the latent space from poem A to poem B (posterior means), decoding each point.

    The first and last points are the posterior means of A and B: greedy decoding makes them
    A's and B's reconstructions, shown with their accuracy (the share of characters equal to
    A's / B's) and ^^ under the characters that differ.

    Example: [bold]poetvae interpolate -m runs/tang
    床前明月光，疑是地上霜。举头望明月，低头思故乡。 白日依山尽，黄河入海流。欲穷千里目，更上一层楼。[/]
    """
    from poetvae.config import check_decode_memory
    from poetvae.decode import DecodeOptions
    from poetvae.form import parse_poem
    from poetvae.poet import Poet, Reconstruction

    with user_errors():
        a, b = parse_poem(poem_a), parse_poem(poem_b)
        poet = Poet.load(use_model(model, purpose="latent"), device=device)
        check_decode_memory(steps * beam, len(poet.vocab), f"--steps {steps}, --beam {beam}")
        controls = _controls(rhyme, rhyme_group, scheme, tones, None, None)
        options = DecodeOptions(
            temperature=temp,
            greedy=not sample_,
            beam=beam,
            controls=controls,
            repetition_rule=repetition_rule,
            bigram_correction=bigram_correction,
            seed=seed,
        )
        path = poet.interpolate(a, b, steps=steps, method=method, options=options, allow_unk=allow_unk)
    if fmt == "json":
        from poetvae.poem_json import path_records

        for record in path_records(a, b, path):
            sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
        return
    # the ends of the path next to the poems they were encoded from
    ends = {0: ("A", Reconstruction.of(a, path[0])), len(path) - 1: ("B", Reconstruction.of(b, path[-1]))}
    what = "samples at" if sample_ else "reconstructions of"
    table = Table(
        title=f"{method} path, {steps} steps",
        title_justify="left",
        caption=f"t = 0 and 1: {what} A and B; same: characters equal to A's / B's (^^ where they differ)",
        caption_justify="left",
    )
    table.add_column("t", justify="right")
    table.add_column("poem")
    table.add_column("log p", justify="right")
    table.add_column("same", justify="right")
    table.add_row("A", a.oneline(), "", "")
    for i, point in enumerate(path):
        t = f"{i / (len(path) - 1):.2f}"
        if i not in ends:
            table.add_row(t, point.oneline(), f"{point.logprob:.1f}", "")
            continue
        name, rec = ends[i]
        text, marks = _marked(rec)
        table.add_row(t, text, f"{point.logprob:.1f}", f"{rec.accuracy:.0%}")
        table.add_row(f"vs {name}" if sample_ else f"rec. {name}", marks, "", "")
    table.add_row("B", b.oneline(), "", "")
    out.print(table)
