"""`poetvae evaluate`, `poetvae plot` and `poetvae bench`: measuring runs and machines."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.table import Table

from poetvae.cli.common import (
    BigramCorrection,
    Device,
    Prior,
    RepetitionRule,
    Scheme,
    TrainedRun,
    _finite,
    _number,
    _styled,
    app,
    out,
    use_model,
    user_errors,
)
from poetvae.config import MAX_DECODE_BATCH, MAX_EVAL_SAMPLES, MAX_SEED, MAX_TRAIN_BATCH


# ---- evaluate -----------------------------------------------------------------------------
def _print_report(report: Any, source: str) -> None:
    lk, lt, meta = report.likelihood, report.latent, report.meta
    table = Table(title=f"{meta.poems:,} held-out poems ({source})", show_header=False, title_justify="left")
    table.add_row(_styled("likelihood", "bold"), "")
    table.add_row(
        f"IW-NLL (K={lk.iw_samples})", f"{_number(lk.iw_nll, '.2f')} nats/poem   ppl {_number(lk.ppl, '.1f')} per token"
    )
    table.add_row("reconstruction", f"{lk.rec:.2f} nats/poem")
    table.add_row("KL", f"{lk.kl:.2f} nats/poem")
    table.add_row("negative ELBO", f"{lk.nelbo:.2f} nats/poem")
    table.add_row(_styled("latent", "bold"), "")
    table.add_row("active units", f"{lt.active_units} of {lt.latent_dim}")
    table.add_row("mutual information", f"{lt.mutual_information:.2f} nats")
    table.add_row("reconstruction accuracy", f"{lt.reconstruction_accuracy:.1%}")
    table.add_row("  on training poems", _cell(lt.train_reconstruction_accuracy, "{:.1%}"))
    out.print(table)
    prior = "" if meta.prior == "normal" else f", {meta.prior} prior"
    prior += "" if meta.repetition_rule else ", no repetition rule"
    prior += f", best of {meta.rerank} (prosody weight {meta.prosody_weight:g})" if meta.rerank > 1 else ""
    if meta.temperature != 1.0:  # where the correction changes anything
        prior += f", bigram correction {meta.bigram_correction:g}"
    stats = Table(title=f"samples (temperature {meta.temperature}{prior}) vs the held-out poems", title_justify="left")
    stats.add_column("")
    stats.add_column("samples", justify="right")
    stats.add_column("held-out (human)", justify="right")
    s, r = report.samples, report.reference
    rows = [
        ("poems", "poems", "{:,}"),
        ("distinct poems", "distinct", "{:,}"),
        ("distinct-1", "distinct_1", "{:.3f}"),
        ("distinct-2", "distinct_2", "{:.3f}"),
        ("copied poems", "copied_poems", "{:.1%}"),
        ("copied lines", "copied_lines", "{:.1%}"),
        ("rhyme, 平水韵 (two different characters)", "rhyme_pingshui", "{:.1%}"),
        ("rhyme, 中华新韵 (two different characters)", "rhyme_xinyun", "{:.1%}"),
        ("重韵 (line 4 ends on line 2's character)", "same_char_rhyme", "{:.1%}"),
        ("二四异 rate", "tone_rate", "{:.1%}"),
        ("a character twice in a row", "doubled_char", "{:.1%}"),
        ("a character 3 times or more", "char_3_times", "{:.1%}"),
        ("well formed", "well_formed", "{:.1%}"),
    ]
    for label, name, fmt in rows:
        stats.add_row(label, _cell(getattr(s, name), fmt) if s.poems else "-", _cell(getattr(r, name), fmt))
    out.print(stats)
    if lt.train_reconstruction_accuracy is None:
        out.print(
            _styled(
                "n/a: figures that need the poems the model trained on (reconstruction of training poems, "
                "copies), which a bundled model does not keep",
                "dim",
            )
        )


def _cell(value: Any, fmt: str) -> str:
    """A figure of the report, or n/a for one left out (poetvae.evaluate.NEEDS_TRAINING_SPLIT)."""
    return "n/a" if value is None else fmt.format(value)


@app.command()
def evaluate(
    model: TrainedRun = None,
    corpus: Annotated[
        list[Path] | None, typer.Argument(help="held-out corpus (default: the run's test split)", readable=False)
    ] = None,
    samples: Annotated[
        int, typer.Option("--samples", min=0, max=MAX_EVAL_SAMPLES, help="poems drawn from the prior")
    ] = 1000,
    iw: Annotated[int, typer.Option("--iw", min=1, max=10**6, help="importance samples K for the IW-NLL")] = 100,
    temp: Annotated[float, typer.Option("--temp", "-t", min=1e-3, callback=_finite, help="sampling temperature")] = 1.0,
    seed: Annotated[int, typer.Option("--seed", min=0, max=MAX_SEED)] = 0,
    scheme: Scheme = "pingshui",
    prior: Prior = "normal",
    as_json: Annotated[
        bool, typer.Option("--json", help="print the report as JSON (keys: poetvae.evaluate.evaluate_run)")
    ] = False,
    device: Device = "auto",
    repetition_rule: RepetitionRule = True,
    rerank: Annotated[
        int, typer.Option("--rerank", min=1, max=1024, help="candidates per sample, the best kept (as sample)")
    ] = 1,
    prosody_weight: Annotated[
        float, typer.Option("--prosody-weight", callback=_finite, help="with --rerank: as sample's")
    ] = 0.0,
    bigram_correction: BigramCorrection = 1.0,
) -> None:
    """Measure a run: likelihood, latent use, and the statistics of its samples next to human verse.

    Example: [bold]poetvae evaluate -m runs/tang --iw 500 --json[/] (without -m: the newest run in ./runs)
    """
    from poetvae import rundir
    from poetvae.evaluate import evaluate_run
    from poetvae.poet import Poet

    with user_errors():
        # a run, or a bundled model with a held-out corpus (without its training split, the
        # figures that need it are left out: poetvae.evaluate.NEEDS_TRAINING_SPLIT)
        model = use_model(model)
        run = rundir.RunDir(model)
        heldout = run.heldout(corpus)
        trained = run.has_training_split()
        train_poems = run.train_poems() if trained else None
        poet = Poet.load(model, device=device)
        report = evaluate_run(
            poet,
            heldout.poems,
            train_poems,
            samples=samples,
            iw_samples=iw,
            temperature=temp,
            seed=seed,
            scheme=scheme,
            prior=prior,
            pretraining=run.pretraining_poems() if trained else (),
            repetition_rule=repetition_rule,
            rerank=rerank,
            prosody_weight=prosody_weight,
            bigram_correction=bigram_correction,
        )
    if as_json:
        sys.stdout.write(json.dumps(report.to_dict(), ensure_ascii=False, indent=2) + "\n")
    else:
        _print_report(report, heldout.source)


# ---- plot ---------------------------------------------------------------------------------
@app.command()
def plot(
    model: Annotated[
        Path | None,
        typer.Argument(help="run directory (default: the newest run in ./runs)", readable=False, show_default=False),
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="where to write the PNGs (default RUN/plots)")
    ] = None,
    device: Device = "auto",
) -> None:
    """Charts of a run: training curves, and a 2-D PCA of the test poems' posterior means.

    Example: [bold]poetvae plot runs/tang[/]
    """
    from poetvae import rundir
    from poetvae.plot import plot_latent_of_run, plot_training

    with user_errors():
        # a run, never the bundled model: the charts need the run's log and splits
        model = use_model(model, bundled=False, hint="give RUN")
        paths = plot_training(model, output)
        heldout = rundir.RunDir(model).heldout()
        paths.append(plot_latent_of_run(model, heldout.poems, output, device))
    for path in paths:
        out.print(f"wrote {path}")


# ---- bench ---------------------------------------------------------------------------------
@app.command()
def bench(
    size: Annotated[
        list[str] | None, typer.Option("--size", help="default | bundled | reference (repeatable; default all)")
    ] = None,
    device: Device = "auto",
    batch_size: Annotated[
        int | None,
        typer.Option("--batch-size", min=1, max=MAX_TRAIN_BATCH, help="training batch (CPU 128, GPU 1024)"),
    ] = None,
    sample_batch: Annotated[
        int | None, typer.Option("--sample-batch", min=1, max=MAX_DECODE_BATCH, help="poems decoded together")
    ] = None,
    repeats: Annotated[
        int, typer.Option("--repeats", min=1, max=1000, help="timed repeats; the median is reported")
    ] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON (keys: poetvae.bench.run_bench)")] = False,
) -> None:
    """Training and sampling throughput, model FLOP/s, and the share of this machine's matmul rate.

    Example: [bold]poetvae bench --size reference[/]
    """
    from poetvae.bench import SIZES, run_bench
    from poetvae.config import check_decode_memory, check_train_memory

    for s in size or []:
        if s not in SIZES:
            raise typer.BadParameter(f"--size must be one of {', '.join(SIZES)}")
    with user_errors():
        vocab_size = max(SIZES[s].vocab_size for s in size or SIZES)
        if batch_size is not None:
            check_train_memory(batch_size, vocab_size)
        if sample_batch is not None:
            check_decode_memory(sample_batch, vocab_size, f"--sample-batch {sample_batch}")
        report = run_bench(size, device, batch_size, sample_batch, repeats=repeats)
    if as_json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
        return
    m = report["machine"]
    bf16 = m["matmul_bf16_flops_per_s"]
    # short columns and no vertical rules: the table fits 80 columns (a pipe or a log file)
    table = Table(
        title=f"{m['device']}, {m['threads']} threads, torch {m['torch']}: matmul fp32 "
        f"{m['matmul_fp32_flops_per_s'] / 1e9:.0f}" + (f", bf16 {bf16 / 1e9:.0f}" if bf16 else "") + " GFLOP/s; "
        f"training in {m['training_precision']}",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        caption="poems/s; % of the matmul rate of the training precision; peak memory",
        caption_justify="left",
    )
    for col in ("size", "params", "train", "%", "sample", "greedy", "rhy+ton", "memory"):
        table.add_column(col, justify="right", no_wrap=True)
    for r in report["results"]:
        table.add_row(
            r["size"],
            f"{r['parameters'] / 1e6:.1f}M",
            f"{r['train_poems_per_s']:,.0f}",
            f"{r['train_fraction_of_peak']:.0%}",
            f"{r['sample_poems_per_s']:,.0f}",
            f"{r['greedy_poems_per_s']:,.0f}",
            f"{r['rhyme_tones_poems_per_s']:,.0f}",
            f"{r['peak_memory_bytes'] / 2**30:.2f} GiB",
        )
    out.print(table)
