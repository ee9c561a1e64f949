"""Which model a command uses, the model bundled with the package, and bundles made from runs.

    resolved = resolve_model(None)   # -m as given, else the newest run in ./runs, else the bundled model
    poet = Poet.load(resolved.path)
    export_bundle("runs/tang", "poetvae/bundled/classical", half=True)

A bundle is the smallest directory that Poet.load reads, a run without its training state,
log or data (so `evaluate`, `plot` and `train --resume` do not apply to it; `train --init`
does):

    BUNDLE/
      config.json        the run's
      vocab.json         the run's
      model.safetensors  the run's best weights; float16 with --half (half the size), widened
                         to float32 when loaded
      prior.safetensors  the run's fitted prior, when it has one
      evaluation.json    the run's evaluation report, when it has one
      MODEL_CARD.md      the run's, else one written from what the run records

The bundled model is such a directory inside the package, poetvae/bundled/<BUNDLED_MODEL>/:
putting one there (and building the package) is all it takes to ship one.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

from poetvae.checkpoint import file_sha256, save_tensors
from poetvae.errors import CheckpointError, PoetVAEError
from poetvae.files import atomic_write
from poetvae.rundir import BEST, CONFIG, LAYOUT, PRIOR, RUNS, VOCAB, DirKind, RunDir, building, own_file

# The models shipped in poetvae/bundled/: the poet, a VAE fitted for the likelihood and the
# verse of its samples, whose latent keeps little of a poem; and a model fitted for its latent
# (an autoencoder first), whose posterior mean keeps a poem and which the commands that walk
# the latent space use.
POET_MODEL = "classical"
LATENT_MODEL = "latent"
BUNDLED_MODELS = (POET_MODEL, LATENT_MODEL)
BUNDLED_MODEL = POET_MODEL  # the default of a command that does not say what it is for
# why a command uses the bundled model it does (the stderr line says it)
PURPOSE = {
    POET_MODEL: "the poet",
    LATENT_MODEL: "the model whose latent keeps a poem",
}
EVALUATION = "evaluation.json"
MODEL_CARD = "MODEL_CARD.md"
MODEL_FILES = (CONFIG, VOCAB, BEST)  # what Poet.load reads: a directory with these is a model
BUNDLE_FILES = frozenset({*MODEL_FILES, PRIOR, EVALUATION, MODEL_CARD})

# ResolvedModel.source
GIVEN = "given"  # -m RUN
NEWEST_RUN = "newest run"  # the newest run under ./runs
BUNDLED = "bundled"  # the model shipped in the package


@dataclass(frozen=True)
class ResolvedModel:
    """The model directory a command reads, and how it was chosen."""

    path: Path
    source: str  # GIVEN, NEWEST_RUN or BUNDLED
    note: str | None = None  # the line to tell the user when it was not GIVEN


def is_model_dir(path: str | Path) -> bool:
    """Whether `path` holds a model Poet.load can read (a run, or a bundle)."""
    return all((Path(path) / name).is_file() for name in MODEL_FILES)


def bundled_model(name: str = BUNDLED_MODEL) -> Path | None:
    """The model `name` shipped in the package (poetvae/bundled/<name>), or None when this
    install does not have it."""
    path = Path(__file__).resolve().parent / "bundled" / name
    return path if name in BUNDLED_MODELS and is_model_dir(path) else None


def newest_run(runs: str | Path) -> Path | None:
    """The run under `runs` (one level down) whose model.safetensors is the newest, or None.

    Newest by the weights' mtime, because that dates the model itself: training rewrites
    model.safetensors whenever validation improves (and a resume keeps doing so), while a
    directory's mtime also moves when plots are drawn into it and config.json dates only the
    start. Hidden entries are passed over: a training that has not published its run yet
    works in .RUN.staging-* (poetvae.rundir), and .RUN.lock is a lock. A published run still
    in training is a whole run (every file is written atomically) and counts."""
    runs = Path(runs)
    if not runs.is_dir():
        return None
    found = []
    for entry in runs.iterdir():
        if entry.name.startswith(".") or not is_model_dir(entry):
            continue
        try:
            found.append((entry.joinpath(BEST).stat().st_mtime_ns, entry.name, entry))
        except OSError:  # removed while we looked
            continue
    return max(found)[2] if found else None


def resolve_model(
    model: str | Path | None,
    cwd: str | Path | None = None,
    *,
    bundled: bool = True,
    hint: str = "pass -m RUN",
    purpose: str = BUNDLED_MODEL,
) -> ResolvedModel:
    """The model a command reads: `model` when given (a directory; or the name of a bundled
    model, classical or latent, when no such directory exists; checked later, by whoever
    opens it); else the newest run under ./runs of `cwd` (default: the current directory);
    else, with `bundled`, the bundled model made for `purpose` (BUNDLED_MODELS: sample and
    evaluate use the poet, interpolate, reconstruct and vary the latent model).
    CheckpointError, ending in `hint`, when there is none."""
    if model is not None:
        name = str(model)
        if name in BUNDLED_MODELS and not Path(cwd or ".", name).exists():
            shipped = bundled_model(name)
            if shipped is None:
                raise CheckpointError(f"this install has no bundled model {name}")
            return ResolvedModel(shipped, BUNDLED, f"using the bundled model {name} (-m {name})")
        return ResolvedModel(Path(model), GIVEN)
    runs = RUNS if cwd is None else Path(cwd) / RUNS
    where = f"./{RUNS}" if cwd is None else str(runs)
    run = newest_run(runs)
    if run is not None:
        return ResolvedModel(run, NEWEST_RUN, f"using {run} (the newest run in {where}; -m to choose)")
    shipped = bundled_model(purpose) if bundled else None
    if shipped is not None:
        why = PURPOSE.get(purpose, purpose)
        note = f"using the bundled model {purpose}, {why} (no run in {where}; -m to choose)"
        return ResolvedModel(shipped, BUNDLED, note)
    missing = f"no run in {where}" + (" and no bundled model in this install" if bundled else "")
    raise CheckpointError(f"no model to use: {missing}; train one with `poetvae train`, or {hint}")


# ---- export -----------------------------------------------------------------------------
@dataclass(frozen=True)
class ExportResult:
    path: Path
    files: list[str]
    bytes: int
    dtype: str  # of the stored weights: "float16" or "float32"


BUNDLE_KIND = DirKind("model", BUNDLE_FILES | LAYOUT, is_model_dir)  # --overwrite replaces a bundle or a run


def export_bundle(run: str | Path, dest: str | Path, *, half: bool = False, overwrite: bool = False) -> ExportResult:
    """Write the run's model as a bundle at `dest` (see the module's docstring): the run's
    config, vocabulary and best weights, float16 with `half`; its prior, evaluation report
    and model card when it has them (a card is written when it has none).

    `dest` follows the rule of every directory poetvae writes (poetvae.rundir.building): its
    lock is held (a run in training there is refused), an existing one is refused unless
    `overwrite` and it holds a model (a bundle or a run) and nothing else, and the bundle is
    built beside it and appears in one step. Only the run's own files are copied: a symbolic
    link among them is refused, never followed. CheckpointError when the run is not a sound
    model, or its weights do not fit in float16."""
    source, dest = RunDir(run), Path(dest)
    init = source.open_for_init()  # the config, vocabulary and weights, checked to fit and be finite
    if dest.exists() and source.path.exists() and dest.resolve() == source.path.resolve():
        raise PoetVAEError(f"{dest} is the run itself; export it to another directory")
    copied = [f for name in (CONFIG, VOCAB, PRIOR, EVALUATION, MODEL_CARD) if (f := own_file(source.path / name))]
    own_file(source.best)
    weights = init.weights
    if half:
        weights = {k: v.half() if v.is_floating_point() else v for k, v in weights.items()}
        overflow = [k for k, v in weights.items() if v.is_floating_point() and not v.isfinite().all()]
        if overflow:
            raise CheckpointError(
                f"{source.best}: {overflow[0]} has weights beyond float16's range (±65504); export without --half"
            )
    # the run by its name alone: a bundle travels, the path of the machine it was made on need not
    origin = {"run": Path(os.path.abspath(source.path)).name, "step": init.step, "sha256": init.sha256}
    meta = {"step": init.step, "dtype": "float16" if half else "float32", "exported_from": origin}

    with building(dest, BUNDLE_KIND, overwrite=overwrite) as stage:
        for path in copied:
            atomic_write(stage.path / path.name, path.read_bytes())
        save_tensors(stage.path / BEST, weights, meta)
        _rebind_prior(stage.path / PRIOR, init.sha256, stage.path / BEST)
        if not (stage.path / MODEL_CARD).is_file():
            name = Path(os.path.abspath(dest)).name
            card = model_card(source, name, meta, evaluated=(stage.path / EVALUATION).is_file())
            atomic_write(stage.path / MODEL_CARD, card)
        files = sorted(p.name for p in stage.path.iterdir())
        size = sum((stage.path / f).stat().st_size for f in files)
        stage.publish()  # a rename, or with overwrite an exchange with the old bundle, then its removal
    return ExportResult(dest, files, size, meta["dtype"])


def _rebind_prior(prior_file: Path, run_sha256: str, bundle_weights: Path) -> None:
    """A prior fitted to the run's weights belongs to the bundle's too (the same weights,
    perhaps rounded to float16): record the bundle's weights file as the one it was fitted
    to, or `--prior fitted` would refuse it as stale. A prior that was already stale stays so."""
    from poetvae.prior import FittedPrior

    if not prior_file.is_file():
        return
    prior = FittedPrior.load(prior_file)
    if prior.weights_sha256 == run_sha256:
        dataclasses.replace(prior, weights_sha256=file_sha256(bundle_weights)).save(prior_file)


def model_card(source: RunDir, name: str, meta: dict, evaluated: bool = False) -> str:
    """A MODEL_CARD.md written from what the run records: its corpus, model, training and
    weights. Facts only: what the model is for, and how good, are for a person to add."""
    header = source.read_header()
    m, tr = header.config.model, header.config.train
    manifest = _read_json(source.prep / "manifest.json")
    files, sizes = manifest.get("corpus"), manifest.get("splits")
    corpus = ", ".join(Path(str(p)).name for p in files) if isinstance(files, list) and files else "not recorded"
    splits = ", ".join(f"{k} {v}" for k, v in sizes.items()) if isinstance(sizes, dict) else ""
    model = f"embedding {m.embed_dim}, hidden {m.hidden_dim}, latent {m.latent_dim}, highway layers {m.highway_layers}"
    lines = [
        f"# {name}",
        "",
        "A poetvae model (a text VAE of 五言绝句), exported from a training run by `poetvae export`.",
        "",
        f"- corpus: {corpus}" + (f" (poems per split: {splits})" if splits else ""),
        f"- vocabulary: {len(header.vocab)} tokens ({header.vocab.tokenizer})",
        f"- model: {model}" + (", form features" if m.form_features else "") + ("" if m.use_latent else ", no latent"),
        f"- training: {tr.epochs} epochs at batch {tr.batch_size}, lr {tr.lr}, KL schedule {tr.kl_schedule}, "
        f"free bits {tr.free_bits}; these are the best weights by validation, from step {meta.get('step')}",
        f"- weights: {meta['dtype']} (loading widens them to float32); sha256 of the run's model.safetensors "
        f"{meta['exported_from']['sha256']}",
    ]
    if header.init_from:
        lines.append(f"- fine-tuned from the run {Path(str(header.init_from.get('run', '?'))).name}")
    if evaluated:
        lines.append(f"- evaluation: `{EVALUATION}` (the report of `poetvae evaluate --json`)")
    return "\n".join(lines) + "\n"


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}
