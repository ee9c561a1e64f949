"""The run directory: its layout, and the one place that creates, refuses, opens and reads one.

    RUN_DIR/
      config.json        the resolved Config (prep, model, train sections)
      vocab.json         the vocabulary
      model.safetensors  the best weights by validation negative ELBO (what `sample` loads)
      last.safetensors   the latest weights + optimizer moments + RNG state; its metadata
                         holds the step, epoch and best score as JSON. One file, so a resume
                         point is written in one atomic rename and can never be half-updated.
      log.jsonl          one JSON object per logged step and per epoch
      prior.safetensors  a Gaussian fitted to the training poems' posteriors under the best
                         weights (poetvae.prior), for `sample --prior fitted`
      prep/              the run's prepared corpus (see poetvae.prep): a run is self-contained,
                         so resume reads its data and evaluate its held-out split from here
      plots/             the charts of `poetvae plot`

    run = RunDir("runs/tang")                   # without -o: with fresh_run("tang") as run (locked)
    with run.lock():                            # one training per run directory at a time
        run.refuse_existing(overwrite=False)    # a new run never replaces an old one silently
        with run.staging() as stage:            # built beside it, in .tang.staging-XXXX
            data = stage.run.load_training_data(corpus, cfg)  # corpus files or a prep dir -> prep/
            train(cfg, data, run.path, staging=stage)  # publishes it at its first resume point
    run.create(cfg, data.vocab)                 # (what train does) config.json + vocab.json, a fresh log
    header = run.read_header()                  # RunHeader(config, vocab, init_from), checked
    init = RunDir("runs/stanzas").open_for_init()  # to fine-tune: best weights + vocab + model

A new run is never seen half made: it is built in a hidden staging directory beside RUN
and becomes RUN in one rename once it has a resume point; replacing an old run
(--overwrite) swaps the two directories in one step, then deletes the old one. Killed
before that, RUN is as it was; the staging directory left behind is removed by the next
training into RUN.

The same rule, lock and staging serve every directory poetvae writes (refuse_target,
building): `prep` (write_prepared) and `export` (poetvae.models.export_bundle) build their
directory the way `train` builds a run, and never replace what is not of their kind.

The file formats live elsewhere: safetensors and the train state in poetvae.checkpoint,
the vocabulary in poetvae.vocab, the prepared corpus in poetvae.prep.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import itertools
import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from poetvae.checkpoint import as_float32, check_dtypes, file_sha256, load_tensors, model_state
from poetvae.config import INIT_FROM, Config, PrepConfig, config_from_json
from poetvae.corpus import load_poems, read_corpus
from poetvae.distributed import env_rank, launched_by_torchrun
from poetvae.errors import CheckpointError, ConfigError, PoetVAEError, RunLocked
from poetvae.files import atomic_write
from poetvae.form import Poem
from poetvae.model import PoetVAE
from poetvae.prep import MANIFEST, PREP_FILES, PreparedData, PrepResult, is_prep_dir, load_prepared, prepare, split_file
from poetvae.vocab import Vocab

CONFIG = "config.json"
VOCAB = "vocab.json"
BEST = "model.safetensors"
LAST = "last.safetensors"
LOG = "log.jsonl"
PRIOR = "prior.safetensors"
PREP_SUBDIR = "prep"
PLOTS_SUBDIR = "plots"
RUNS = Path("runs")  # where `poetvae train` writes a new run without --output: runs/<corpus name>
LAYOUT = frozenset({CONFIG, VOCAB, BEST, LAST, LOG, PRIOR, PREP_SUBDIR, PLOTS_SUBDIR})
# `train --devices N` holds the lock and the staging directory for its torchrun workers,
# and tells them so in these environment variables.
LOCK_HELD_ENV = "POETVAE_RUN_LOCK_HELD"
STAGING_ENV = "POETVAE_STAGING"

try:
    import fcntl
except ImportError:  # not POSIX: no run locking
    fcntl = None  # type: ignore[assignment]

CorpusSource = str | Path | Sequence[str | Path] | None


@dataclass(frozen=True)
class RunHeader:
    """What a run says about itself: the config it was trained with and its vocabulary."""

    config: Config
    vocab: Vocab
    init_from: dict | None = None  # a fine-tuning run's InitRun.record(); None: trained from scratch


@dataclass(frozen=True)
class InitRun:
    """A run that a new one starts from (`train --init`, pretrain then fine-tune): the new
    run takes its best weights, its vocabulary (the new corpus is prepared with it) and its
    model settings; everything else (the [train] schedule, the output) is its own."""

    path: Path
    config: Config
    vocab: Vocab
    weights: dict[str, torch.Tensor]  # model.safetensors, checked to fit config.model
    step: int | None  # the step those weights were saved at
    sha256: str  # of model.safetensors

    @property
    def embeddings(self) -> torch.Tensor:
        """The (V, embed_dim) embedding table of the weights (what word2vec would give)."""
        return self.weights["embedding.weight"]

    def fixed_settings(self) -> dict[str, object]:
        """The settings a run started from this one cannot change (load_config's `fixed`):
        the model (the weights fix it) and how tokens are cut (the vocabulary fixes it)."""
        model = dataclasses.asdict(self.config.model)
        for name in REFIT_SETTINGS:  # these may change: what they shape starts afresh
            model.pop(name)
        return {**model, "tokenizer": self.vocab.tokenizer, "min_count": self.vocab.min_count}

    def refit_settings(self) -> dict[str, object]:
        """Its settings that a run started from it may change (REFIT_SETTINGS): load_config's
        `inherited`, so that they stay as they were unless set."""
        return {name: getattr(self.config.model, name) for name in REFIT_SETTINGS}

    def record(self) -> dict[str, object]:
        """What config.json keeps of it, under INIT_FROM."""
        return {"run": os.path.abspath(self.path), "weights": BEST, "step": self.step, "sha256": self.sha256}


# Model settings a run started from another (--init) may set differently: they shape only the
# encoder, the skip connection from z and the width of z, and the weights that no longer fit
# are drawn afresh (the decoder's weights that read z are widened: poetvae.train), while the
# decoder's language model, which is what an init run is for, is kept. The latent recipe
# (configs/latent-h512/) starts its autoencoder from the bundled poet this way.
REFIT_SETTINGS = ("encoder_hidden_dim", "encoder_layers", "z_skip", "latent_dim")


@dataclass(frozen=True)
class HeldOut:
    """Poems a run did not train on, and where they came from (for a report's title)."""

    poems: list[Poem]
    source: str  # "the run's test split", or the corpus files given


@dataclass(frozen=True)
class ResumeInputs:
    """What continuing a run needs, all read from the run itself: no flag is repeated."""

    config: Config
    data: PreparedData


def _is_temporary(name: str) -> bool:
    """An atomic write's temporary file (poetvae.files) left by a crash."""
    return name.startswith(".") and name.endswith(".tmp")


class RunDir:
    """One run directory: the path of each of its files and what can be done with them."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # ---- layout --------------------------------------------------------------------------
    @property
    def config_file(self) -> Path:
        return self.path / CONFIG

    @property
    def vocab_file(self) -> Path:
        return self.path / VOCAB

    @property
    def best(self) -> Path:
        return self.path / BEST

    @property
    def last(self) -> Path:
        return self.path / LAST

    @property
    def log(self) -> Path:
        return self.path / LOG

    @property
    def prior(self) -> Path:
        return self.path / PRIOR

    @property
    def prep(self) -> Path:
        return self.path / PREP_SUBDIR

    @property
    def plots(self) -> Path:
        return self.path / PLOTS_SUBDIR

    # ---- creating one --------------------------------------------------------------------
    def exists(self) -> bool:
        """Whether a run lives here (its config and vocabulary are written)."""
        return self.config_file.is_file() and self.vocab_file.is_file()

    def refuse_existing(self, *, overwrite: bool) -> None:
        """Raise unless this directory is free for a new run (or `overwrite` allows replacing
        it): the rule of every directory poetvae writes, refuse_target with RUN_KIND."""
        refuse_target(self.path, RUN_KIND, overwrite=overwrite)

    # ---- one training at a time, and a new run in one step --------------------------------
    def _beside(self, suffix: str) -> Path:
        """A hidden name beside the run: .NAME.<suffix> in the same parent directory."""
        path = Path(os.path.abspath(self.path))
        if not path.name:
            raise PoetVAEError(f"{self.path} is the root of the file system, not a directory poetvae can write or lock")
        return path.with_name(f".{path.name}.{suffix}")

    @contextmanager
    def lock(self, *, resume: bool = False) -> Iterator[None]:
        """Hold the directory's lock for the duration: one training per run directory at a
        time, and no prep or export into a directory that one is writing.

        An exclusive flock on .NAME.lock beside the directory, removed when the holder lets
        go (a kill -9 leaves the file, but the kernel drops the lock, and the next holder
        takes it). RunLocked when another process holds it. The launcher of
        `train --devices N` holds it for its torchrun workers, and a torchrun worker other
        than rank 0 never takes it. With `resume`, a directory that is not there is not
        locked (opening it fails anyway) and nothing is created."""
        if fcntl is None or os.environ.get(LOCK_HELD_ENV) or env_rank() != 0 or (resume and not self.path.is_dir()):
            yield
            return
        path = self._beside("lock")
        path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise RunLocked(f"{self.path} is in use by another training; wait for it to end") from None
            # The holder before us removes the file as it lets go: the lock is ours only if
            # the file we locked is still the one at the path (else take the new one).
            try:
                if os.path.samestat(os.fstat(fd), os.stat(path)):
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)  # while held: no one else holds this file
            os.close(fd)  # releases the lock

    @contextmanager
    def staging(self) -> Iterator[Staging | None]:
        """A Staging for a new run here (call with the lock held), removed on the way out
        unless published; None on torchrun workers other than rank 0, which write nothing.
        Under `train --devices N`, rank 0 takes over the launcher's."""
        if env_rank() != 0:
            yield None
            return
        stage = Staging.begin(self)
        try:
            yield stage
        finally:
            stage.discard()

    def create(self, config: Config, vocab: Vocab, init_from: InitRun | None = None) -> None:
        """Start a run here: write config.json (with `init_from`'s record when the run starts
        from another) and vocab.json, and begin an empty log."""
        saved: dict[str, object] = dict(config.to_dict())
        if init_from is not None:
            saved[INIT_FROM] = init_from.record()
        atomic_write(self.config_file, json.dumps(saved, indent=2, ensure_ascii=False))
        atomic_write(self.vocab_file, vocab.to_json())
        self.log.unlink(missing_ok=True)

    def prepare_data(self, source: CorpusSource, config: Config, init: InitRun | None = None) -> Path:
        """The prep directory the run reads: RUN_DIR/prep, made from `source` (a prep
        directory, copied; corpus files, prepared into it; None, the shipped corpus that
        `poetvae train` reads by default, poetvae.data_files.DEFAULT_CORPUS).
        Under torchrun, ranks other than 0 read a given prep directory where it is.

        With `init`, corpus files are prepared with its vocabulary and embedding table (no
        new vocabulary, no word2vec), and a prep directory must hold that vocabulary."""
        from poetvae.data_files import shipped_corpus

        target = self.prep
        if source is None:
            sources: list[Path] = shipped_corpus()
        else:
            sources = [Path(s) for s in ([source] if isinstance(source, (str, Path)) else source)]
        if len(sources) == 1 and sources[0].is_dir():
            if not is_prep_dir(sources[0]):
                raise CheckpointError(
                    f"{sources[0]} is a directory but not a prepared corpus; run `poetvae prep` on corpus files"
                )
            if init is not None and Vocab.load(sources[0] / VOCAB).tokens != init.vocab.tokens:
                raise ConfigError(
                    f"{sources[0]} was prepared with its own vocabulary, not that of {init.path}: "
                    "give the corpus files, which are then prepared with the vocabulary of the run it starts from"
                )
            if launched_by_torchrun() and env_rank() != 0:
                return sources[0]  # rank 0 alone copies it into the run
            if sources[0].resolve() != target.resolve():
                target.mkdir(parents=True, exist_ok=True)
                # the prep directory's own files, never what a link points to; the manifest last
                for name in sorted(PREP_FILES, key=lambda name: (name == MANIFEST, name)):
                    if (source_file := own_file(sources[0] / name)) is not None:
                        shutil.copyfile(source_file, target / name)
        elif launched_by_torchrun():
            raise ConfigError(
                "multi-process training reads a prepared corpus: run `poetvae prep` first, "
                "or use `poetvae train --devices N`, which does"
            )
        elif init is not None:
            prepare(sources, target, config.prep, config.model.embed_dim, vocab=init.vocab, embeddings=init.embeddings)
        else:
            prepare(sources, target, config.prep, config.model.embed_dim)
        return target

    def load_training_data(self, source: CorpusSource, config: Config, init: InitRun | None = None) -> PreparedData:
        """prepare_data, then load what it prepared."""
        return load_prepared(self.prepare_data(source, config, init))

    # ---- opening one ---------------------------------------------------------------------
    def read_header(self) -> RunHeader:
        """The run's config and vocabulary; CheckpointError when this is not a run."""
        if not self.path.is_dir():
            raise CheckpointError(f"no such run directory: {self.path}")
        if not self.exists():
            raise CheckpointError(
                f"{self.path} is not a poetvae run (no {CONFIG} and {VOCAB}); train one with `poetvae train`"
            )
        try:
            text = self.config_file.read_text(encoding="utf-8")
            config = config_from_json(text)
        except UnicodeDecodeError:
            raise CheckpointError(f"{self.config_file} is not UTF-8 text") from None
        except ConfigError as e:
            raise CheckpointError(f"{self.config_file}: {e}") from None
        init_from = json.loads(text).get(INIT_FROM)
        return RunHeader(config, Vocab.load(self.vocab_file), init_from if isinstance(init_from, dict) else None)

    def open_for_init(self) -> InitRun:
        """This run as the start of a new one (InitRun): its config, vocabulary and best
        weights, checked to fit one another. CheckpointError when this is not a run or its
        weights are missing, damaged, not finite or not the model of its config."""
        header = self.read_header()
        if header.config.model.vocab_size != len(header.vocab):
            raise CheckpointError(
                f"{self.config_file} says {header.config.model.vocab_size} tokens, "
                f"{self.vocab_file} has {len(header.vocab)}"
            )
        weights, meta = load_tensors(self.best)
        weights = as_float32(weights)  # a bundle exported with --half can be fine-tuned too
        try:
            with torch.random.fork_rng(devices=[]):  # building the model draws; leave the caller's state alone
                model = PoetVAE(header.config.model)
            check_dtypes(weights, model, self.best)
            model.load_state_dict(weights)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0]
            raise CheckpointError(f"{self.best} does not fit the model of {self.config_file} ({first})") from None
        if not all(t.isfinite().all() for t in weights.values() if t.is_floating_point()):
            raise CheckpointError(f"{self.best} holds weights that are not finite")
        step = meta.get("step")
        return InitRun(
            path=self.path,
            config=header.config,
            vocab=header.vocab,
            weights=weights,
            step=step if isinstance(step, int) and not isinstance(step, bool) else None,
            sha256=file_sha256(self.best),
        )

    def weights(self, which: str = "best") -> dict[str, torch.Tensor]:
        """The model's state dict: "best" (model.safetensors, lowest validation
        rec + kl_max * KL: the -ELBO) or "last" (the model part of the resume point)."""
        if which == "best":
            tensors, _ = load_tensors(self.best)
            return as_float32(tensors)  # a bundle may store them in half precision
        if which == "last":
            tensors, _ = load_tensors(self.last)
            return model_state(tensors)
        raise ValueError(f"weights must be best or last, not {which!r}")

    def open_for_resume(self) -> ResumeInputs:
        """The run's own config and prepared data, to continue training it."""
        return ResumeInputs(self.read_header().config, load_prepared(self.prep))

    def checked_prep(self) -> Path:
        """RUN_DIR/prep, checked: a clear error if this is not a run with its training split."""
        self.read_header()
        if not self.has_training_split():
            raise CheckpointError(f"{self.path} has no prep/ directory with its training split")
        return self.prep

    def has_training_split(self) -> bool:
        """Whether this run keeps the poems it trained on (a bundle does not)."""
        return split_file(self.prep, "train").is_file()

    def train_poems(self) -> list[Poem]:
        """The poems the run trained on (its own training split)."""
        return load_poems(split_file(self.checked_prep(), "train"))

    def pretraining_poems(self) -> list[Poem]:
        """For a fine-tuning run, the training poems of the runs it started from, following
        init_from back (a sample that repeats a pretraining stanza is a copy too). A starting
        run that no longer exists on this machine, or has no prep/, ends the chain."""
        poems: list[Poem] = []
        seen, run = {self.path.resolve()}, self
        while (record := run.read_header().init_from) is not None:
            run = RunDir(Path(record.get("run", "")))
            if run.path.resolve() in seen or not run.config_file.is_file():
                break
            seen.add(run.path.resolve())
            try:
                poems += run.train_poems()
            except CheckpointError:
                break
        return poems

    def heldout(self, corpus: Sequence[Path] | None = None) -> HeldOut:
        """The corpus given, else the run's test split (or its validation split when the
        test split is empty)."""
        self.read_header()  # a clear error when this is no model at all
        if corpus:  # a bundle, which keeps no splits, can be evaluated on a corpus too
            return HeldOut(read_corpus(corpus)[0], ", ".join(map(str, corpus)))
        if not self.has_training_split():
            raise CheckpointError(
                f"{self.path} keeps no test split (a bundled or exported model): give a held-out corpus, "
                "e.g. `poetvae evaluate POEMS.txt`"
            )
        prep_dir = self.prep  # checked above: the header read, the training split there
        for split in ("test", "valid"):
            poems = load_poems(split_file(prep_dir, split))
            if poems:
                return HeldOut(poems, f"the run's {split} split")
        raise CheckpointError(f"{self.path} has no held-out poems; pass a corpus to evaluate on")


# ---- a new run's name when none is given -----------------------------------------------
def run_name(corpus: Sequence[str | Path]) -> str:
    """What a run trained on `corpus` is called when no --output is given: the first file's
    name without its extensions (tang_quatrains.txt, tang_quatrains.jsonl.gz ->
    tang_quatrains), a prepared directory's name (prep/ts -> ts), and `-and-N-more` when
    there are N more files."""
    first = Path(os.path.abspath(corpus[0]))  # abspath: `.` and `..` have names too
    name = first.name
    if not first.is_dir():
        name = name.removesuffix(".gz").removesuffix(".GZ")
        name = Path(name).stem if Path(name).suffix else name
    name = name.lstrip(".") or "run"  # a hidden run would be passed over by `poetvae sample`
    return name if len(corpus) == 1 else f"{name}-and-{len(corpus) - 1}-more"


@contextmanager
def fresh_run(name: str, parent: str | Path = RUNS) -> Iterator[RunDir]:
    """A run directory for a new training, locked while the body runs: parent/name, else
    name-2, name-3, ...: the first where nothing exists and no other training is at work. A
    training that has not published its run yet shows only in its lock (its run is still a
    hidden staging directory), so a name is taken by holding its lock, then checking that
    nothing appeared there meanwhile. Nothing that exists is ever replaced."""
    for k in itertools.count(1):
        run = RunDir(Path(parent) / (name if k == 1 else f"{name}-{k}"))
        if os.path.lexists(run.path):
            continue
        with ExitStack() as held:
            try:
                held.enter_context(run.lock())
            except RunLocked:
                continue  # another training is making a run here
            if os.path.lexists(run.path):
                continue  # published by a training that ended while we looked
            yield run
            return


# ---- the rule of every directory poetvae writes: a run, a prepared corpus, a bundle ------
@dataclass(frozen=True)
class DirKind:
    """A kind of directory that poetvae writes whole (a run, a prepared corpus, a bundle), for
    the rule that protects what is already where it would go (refuse_target)."""

    name: str  # "run", "prepared corpus", ...: what the messages call it
    names: frozenset[str]  # the entries such a directory may hold; anything else is the user's
    holds: Callable[[Path], bool]  # whether a directory already is one
    hint: str = ""  # what else to do with one that is there, "{path}" standing for its path


def _is_run(path: Path) -> bool:
    return RunDir(path).exists()


RUN_KIND = DirKind("run", LAYOUT, _is_run, hint="--resume {path} continues it, ")
PREP_KIND = DirKind("prepared corpus", PREP_FILES, is_prep_dir)


def refuse_target(path: str | Path, kind: DirKind, *, overwrite: bool) -> None:
    """Raise PoetVAEError (one line) unless `path` is free for a new directory of `kind`.
    The one rule for every directory poetvae writes, so that nothing a user owns is lost:

    - nothing there, or an empty directory: free;
    - a file, a symbolic link or the root of the file system: refused;
    - a directory inside a run (RUN/prep, RUN/x): refused, those are the run's;
    - a directory that is not a whole `kind`, or holds anything a `kind` does not (the
      user's own files, a `train.txt` of their own): refused, with --overwrite too;
    - a `kind`: refused unless `overwrite`, which replaces it whole.

    Call it with the target's lock held (RunDir.lock), then build the new directory in a
    Staging and publish it: the old one is then replaced in one step, or left as it was."""
    path = Path(path)
    if not Path(os.path.abspath(path)).name:
        raise PoetVAEError(f"{path} is the root of the file system; choose a directory to write")
    if os.path.islink(path):
        raise PoetVAEError(f"{path} is a symbolic link; give the directory itself, or another one")
    if os.path.lexists(path) and not path.is_dir():
        raise PoetVAEError(f"{path} is not a directory")
    parent = Path(os.path.abspath(path)).parent
    if _is_run(parent):
        raise PoetVAEError(
            f"{path} is inside the run {parent}, whose files are the run's; choose a directory outside it"
        )
    if not path.is_dir():
        return
    entries = sorted(e.name for e in path.iterdir() if not _is_temporary(e.name))
    if not entries:
        return
    foreign = [name for name in entries if name not in kind.names]
    if foreign:
        raise PoetVAEError(
            f"{path} holds files that are not a {kind.name}'s ({foreign[0]}, ...): nothing there is replaced; "
            "choose another directory"
        )
    if not kind.holds(path):
        raise PoetVAEError(
            f"{path} is not empty and not a whole {kind.name}: nothing there is replaced; choose another directory"
        )
    if not overwrite:
        raise PoetVAEError(f"{path} already holds a {kind.name}: {kind.hint.format(path=path)}--overwrite replaces it")


@contextmanager
def building(target: str | Path, kind: DirKind, *, overwrite: bool) -> Iterator[Staging]:
    """A new directory of `kind` at `target`, under the rule (refuse_target): with the
    target's lock held, what is there is checked, and the body builds the new directory in
    a Staging beside it and calls its publish() when it is whole, which makes it the target
    in one step (replacing an old one, with `overwrite`). Left unpublished (an error, a
    Ctrl-C), it is removed; killed, the next build into `target` removes it. `prep` and
    `export` build this way; `train` holds the same lock and rule (publishing at its
    first resume point)."""
    directory = RunDir(target)
    with directory.lock():
        refuse_target(directory.path, kind, overwrite=overwrite)
        stage = Staging.begin(directory)
        try:
            yield stage
        finally:
            stage.discard()


def own_file(path: str | Path) -> Path | None:
    """`path` when it is a regular file of its directory, None when there is none; a symbolic
    link (which could point anywhere on the machine) is refused, never followed: what poetvae
    copies out of a run or a prepared corpus (export, train) is that directory's own."""
    path = Path(path)
    if os.path.islink(path):
        raise PoetVAEError(f"{path} is a symbolic link; only a directory's own files are copied out of it")
    if not path.exists():
        return None
    if not path.is_file():
        raise PoetVAEError(f"{path} is not a file")
    return path


def write_prepared(
    corpus: Sequence[str | Path],
    prep_dir: str | Path,
    cfg: PrepConfig = PrepConfig(),
    embed_dim: int = 128,
    *,
    overwrite: bool = False,
) -> PrepResult:
    """`poetvae prep`: poetvae.prep.prepare into a new directory `prep_dir`, under the rule of
    every directory poetvae writes (building): an existing one is refused unless `overwrite`
    and it is a prepared corpus, the new one is built beside it and appears whole in one
    step, and nothing else is ever replaced."""
    with building(prep_dir, PREP_KIND, overwrite=overwrite) as stage:
        result = prepare(corpus, stage.path, cfg, embed_dim)
        stage.publish()
    return dataclasses.replace(result, prep_dir=Path(prep_dir))


# ---- staging: a new run becomes RUN in one step -----------------------------------------
def new_dir(prefix: Path) -> Path:
    """A fresh, empty directory named `prefix` + 8 random hex digits (a staged run, an export
    in the making), made with the mode of any directory (0o777 less the umask), unlike
    mkdtemp's 0o700."""
    while True:
        path = prefix.with_name(prefix.name + secrets.token_hex(4))
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path


class Staging:
    """A new run in the making: a hidden directory .NAME.staging-XXXX beside its target,
    written like a run directory (`.run`), that `publish` makes the target in one step."""

    def __init__(self, target: RunDir, path: Path):
        self.target = target
        self.path = path
        self.run = RunDir(path)
        self.published = False

    @classmethod
    def begin(cls, target: RunDir) -> Staging:
        """A fresh, empty staging directory for `target` (with its lock held), after removing
        what an earlier training into it left behind when killed. Under `train --devices N`,
        the one the launcher made (STAGING_ENV)."""
        inherited = os.environ.get(STAGING_ENV)
        if inherited:
            return cls(target, Path(inherited))
        prefix = target._beside("staging-")
        prefix.parent.mkdir(parents=True, exist_ok=True)
        for leftover in prefix.parent.iterdir():  # not glob: the name may hold [ or *
            if leftover.name.startswith(prefix.name):
                shutil.rmtree(leftover, ignore_errors=True)
        return cls(target, new_dir(prefix))

    def publish(self) -> None:
        """Make the staged run the target in one step: a rename when there is no target,
        else an exchange of the two directories; then delete the old one."""
        target = Path(os.path.abspath(self.target.path))
        if not target.exists():
            os.rename(self.path, target)
        elif not _exchange(self.path, target):
            # No renameat2 (not Linux, or a file system without RENAME_EXCHANGE): move the
            # old run aside, then the new one in. Not one step: killed between the two
            # renames, RUN is missing until the old run is moved back by hand.
            aside = self.path.with_name(self.path.name + "-old")
            os.rename(target, aside)
            os.rename(self.path, target)
            os.rename(aside, self.path)
        self.published = True
        _sync_directory(target.parent)
        shutil.rmtree(self.path, ignore_errors=True)  # the old run, now at the staging name

    def discard(self) -> None:
        """Remove the staging directory: the unpublished run, or after publish the old one."""
        shutil.rmtree(self.path, ignore_errors=True)


_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 with RENAME_EXCHANGE); False where the
    system or the file system cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _sync_directory(path: Path) -> None:
    """fsync a directory, so that a rename in it survives a crash of the machine."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
