"""`poetvae reconstruct`, `poetvae vary` and `poetvae fit-prior`: what the latent space holds
of a poem, poems near it, and the density that prior samples come from."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

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
    RepetitionRule,
    Rhyme,
    RhymeGroup,
    RunDir,
    Scheme,
    Seed,
    TableFormat,
    Temperature,
    Tones,
    TrainedRun,
    WithZ,
    _controls,
    _emit,
    _finite,
    _marked,
    app,
    out,
    use_model,
    user_errors,
)
from poetvae.config import MAX_COUNT, MAX_POEMS


# ---- reconstruct --------------------------------------------------------------------------
def _read_poems(poems: list[str], file: Path | None) -> list[Any]:
    """The poem arguments, then the poems of `file` (one per line, blank lines skipped), parsed;
    CorpusError naming the poem (or file and line) that is not a 五言绝句."""
    from poetvae.errors import CorpusError
    from poetvae.form import parse_poem

    texts = [(f"poem {i}", text) for i, text in enumerate(poems, 1)]
    if file is not None:
        try:
            lines = file.read_text(encoding="utf-8-sig").splitlines()
        except UnicodeDecodeError:
            raise CorpusError(f"{file} is not UTF-8 text") from None
        texts += [(f"{file} line {i}", line) for i, line in enumerate(lines, 1) if line.strip()]
    parsed = []
    for where, text in texts:
        try:
            parsed.append(parse_poem(text))
        except CorpusError as e:
            raise CorpusError(f"{where}: {e}") from None
    if not parsed:
        raise CorpusError(f"{file} holds no poem" if file is not None else "no poem given")
    return parsed


def _print_reconstructions(recs: list[Any]) -> None:
    table = Table(
        title="reconstructions: greedy decodes of the posterior means",
        title_justify="left",
        caption="same: characters equal to the given poem's (^^ where they differ)",
        caption_justify="left",
    )
    table.add_column("")
    table.add_column("poem")
    table.add_column("same", justify="right")
    for i, rec in enumerate(recs):
        last = i == len(recs) - 1
        text, marks = _marked(rec)
        table.add_row("given", rec.given.oneline(), "")
        table.add_row("decoded", text, f"{rec.accuracy:.0%}", end_section=not marks and not last)
        if marks:
            table.add_row("", marks, "", end_section=not last)
    out.print(table)
    if len(recs) > 1:
        mean = sum(r.accuracy for r in recs) / len(recs)
        out.print(f"mean accuracy over {len(recs):,} poems: {mean:.1%}")


@app.command()
def reconstruct(
    model: RunDir = None,
    poems: Annotated[
        list[str] | None, typer.Argument(help="poems, e.g. 床前明月光，疑是地上霜。举头望明月，低头思故乡。")
    ] = None,
    file: Annotated[Path | None, typer.Option("--file", help="a file of poems, one per line", readable=False)] = None,
    fmt: TableFormat = "table",
    allow_unk: AllowUnk = False,
    device: Device = "auto",
    repetition_rule: RepetitionRule = True,
) -> None:
    """Encode poems and decode their posterior means greedily: what the latent code keeps of each.

    Example: [bold]poetvae reconstruct -m runs/default 床前明月光，疑是地上霜。举头望明月，低头思故乡。[/]
    """
    from poetvae.poet import Poet

    if not poems and file is None:
        raise typer.BadParameter("give poems as arguments or with --file")
    with user_errors():
        given = _read_poems(poems or [], file)
        poet = Poet.load(use_model(model, purpose="latent"), device=device)
        recs = poet.reconstruct(given, allow_unk=allow_unk, repetition_rule=repetition_rule)
    if fmt == "table":
        _print_reconstructions(recs)
        return
    from poetvae.poem_json import reconstruction_record

    for rec in recs:
        sys.stdout.write(json.dumps(reconstruction_record(rec), ensure_ascii=False) + "\n")


# ---- vary ---------------------------------------------------------------------------------
@app.command()
def vary(
    poem: Annotated[str, typer.Argument(help="the poem, e.g. 床前明月光，疑是地上霜。举头望明月，低头思故乡。")],
    model: RunDir = None,
    n: Annotated[int, typer.Option("-n", "--num", min=1, max=MAX_POEMS, help="how many variations")] = 5,
    spread: Annotated[
        float,
        typer.Option(
            "--spread", min=0.0, callback=_finite, help="z = mu + spread·sigma·eps: 1 draws z from q(z|x), 0 is mu"
        ),
    ] = 1.0,
    temp: Temperature = 0.8,
    greedy: Greedy = False,
    seed: Seed = None,
    fmt: PoemFormat = "text",
    with_z: WithZ = False,
    allow_unk: AllowUnk = False,
    device: Device = "auto",
    rhyme: Rhyme = False,
    rhyme_group: RhymeGroup = None,
    scheme: Scheme = "pingshui",
    tones: Tones = False,
    acrostic: Acrostic = None,
    beam: Beam = 1,
    repetition_rule: RepetitionRule = True,
    bigram_correction: BigramCorrection = 1.0,
) -> None:
    """Variations of a poem: z drawn around its posterior q(z|x), decoded (controls as in sample).

    Example: [bold]poetvae vary -m runs/default 床前明月光，疑是地上霜。举头望明月，低头思故乡。 -n 5 --spread 0.5[/]
    """
    from poetvae.config import check_decode_memory
    from poetvae.decode import DecodeOptions
    from poetvae.form import parse_poem
    from poetvae.poet import Poet

    with user_errors():
        given = parse_poem(poem)
        controls = _controls(rhyme, rhyme_group, scheme, tones, acrostic, None)
        poet = Poet.load(use_model(model, purpose="latent"), device=device)
        options = DecodeOptions(
            temperature=temp,
            greedy=greedy,
            beam=beam,
            controls=controls,
            repetition_rule=repetition_rule,
            bigram_correction=bigram_correction,
            seed=seed,
        )
        check_decode_memory(min(options.batch_size, n) * beam, len(poet.vocab), f"-n {n}, --beam {beam}")
        for batch in poet.iter_vary(given, n, options, spread=spread, allow_unk=allow_unk, with_z=with_z):
            _emit(batch, fmt, with_z)  # streamed, as sample: a large -n holds one batch at a time


# ---- fit-prior ----------------------------------------------------------------------------
@app.command("fit-prior")
def fit_prior(
    model: TrainedRun = None,
    max_poems: Annotated[
        int,
        typer.Option("--max-poems", min=1, max=MAX_COUNT, help="training poems to fit on, chosen with the run's seed"),
    ] = 20_000,  # poetvae.prior.MAX_POEMS, not imported here: the CLI loads torch only when a command runs
    device: Device = "auto",
) -> None:
    """Fit a Gaussian to the posteriors of a run's training poems, for `sample --prior fitted`.

    `poetvae train` writes it at the end of training; this (re)writes RUN/prior.safetensors,
    e.g. for a run trained before there were fitted priors.

    Example: [bold]poetvae fit-prior -m runs/default[/]
    """
    from poetvae.prior import fit_run_prior
    from poetvae.rundir import RunDir as Run

    with user_errors():
        model = use_model(model, bundled=False)
        prior = fit_run_prior(model, device=device, max_poems=max_poems)
    s = prior.summary()
    table = Table(
        title=f"fitted prior → {Run(model).prior}",
        show_header=False,
        title_justify="left",
        caption="N(0, I) has mean norm 0 and std 1 in every dim",
        caption_justify="left",
    )
    table.add_row("poems", f"{prior.poems:,} training poems")
    table.add_row("latent dims", f"{prior.latent_dim}")
    table.add_row("mean norm", f"{s['mean_norm']:.3f}")
    table.add_row("std per dim", f"mean {s['std_mean']:.3f}, min {s['std_min']:.3f}, max {s['std_max']:.3f}")
    out.print(table)
