"""The run directory: its layout, and the one place that creates, refuses, opens and reads one.

    RUN_DIR/
      config.json        the resolved Config (prep, model, train sections)
      vocab.json         the vocabulary
      model.safetensors  the best weights by validation negative ELBO (what `sample` loads)
      last.safetensors   the latest weights + optimizer moments + RNG state; its metadata
                         holds the step, epoch and best score as JSON. One file, so a resume
                         point is written in one atomic rename and can never be half-updated.
      log.jsonl          one JSON object per logged step and per epoch
      prep/              the run's prepared corpus (see poetvae.prep): a run is self-contained,
                         so resume reads its data and evaluate its held-out split from here
      plots/             the charts of `poetvae plot`

    run = RunDir("runs/default")
    run.refuse_existing(overwrite=False)        # a new run never replaces an old one silently
    data = run.load_training_data(corpus, cfg)  # corpus files or a prep dir -> RUN_DIR/prep
    run.create(cfg, data.vocab)                 # config.json + vocab.json, a fresh log
    header = run.read_header()                  # RunHeader(config, vocab), checked

The file formats live elsewhere: safetensors and the train state in poetvae.checkpoint,
the vocabulary in poetvae.vocab, the prepared corpus in poetvae.prep.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from poetvae.checkpoint import load_tensors, model_state
from poetvae.config import Config, config_from_json
from poetvae.corpus import load_poems, read_corpus
from poetvae.distributed import env_rank, launched_by_torchrun
from poetvae.errors import CheckpointError, ConfigError, PoetVAEError
from poetvae.files import atomic_write
from poetvae.form import Poem
from poetvae.prep import PreparedData, is_prep_dir, load_prepared, prepare, split_file
from poetvae.vocab import Vocab

CONFIG = "config.json"
VOCAB = "vocab.json"
BEST = "model.safetensors"
LAST = "last.safetensors"
LOG = "log.jsonl"
PREP_SUBDIR = "prep"
PLOTS_SUBDIR = "plots"
DEFAULT_RUN = Path("runs/default")  # where `poetvae train` writes without --output

CorpusSource = str | Path | Sequence[str | Path] | None


@dataclass(frozen=True)
class RunHeader:
    """What a run says about itself: the config it was trained with and its vocabulary."""

    config: Config
    vocab: Vocab


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
        """Raise unless this directory is free for a new run (or `overwrite` allows replacing it)."""
        if self.exists() and not overwrite:
            raise PoetVAEError(
                f"{self.path} already holds a run: --resume {self.path} continues it, --overwrite replaces it"
            )

    def create(self, config: Config, vocab: Vocab) -> None:
        """Start a run here: write config.json and vocab.json, and begin an empty log."""
        atomic_write(self.config_file, json.dumps(config.to_dict(), indent=2, ensure_ascii=False))
        atomic_write(self.vocab_file, vocab.to_json())
        self.log.unlink(missing_ok=True)

    def prepare_data(self, source: CorpusSource, config: Config) -> Path:
        """The prep directory the run reads: RUN_DIR/prep, made from `source` (a prep
        directory, copied; corpus files, prepared into it; None, the corpus shipped in data/).
        Under torchrun, ranks other than 0 read a given prep directory where it is."""
        from poetvae.data_files import default_corpus

        target = self.prep
        if source is None:
            sources: list[Path] = [default_corpus()]
        else:
            sources = [Path(s) for s in ([source] if isinstance(source, (str, Path)) else source)]
        if len(sources) == 1 and sources[0].is_dir():
            if not is_prep_dir(sources[0]):
                raise CheckpointError(
                    f"{sources[0]} is a directory but not a prepared corpus; run `poetvae prep` on corpus files"
                )
            if launched_by_torchrun() and env_rank() != 0:
                return sources[0]  # rank 0 alone copies it into the run
            if sources[0].resolve() != target.resolve():
                shutil.copytree(sources[0], target, dirs_exist_ok=True)
        elif launched_by_torchrun():
            raise ConfigError(
                "multi-process training reads a prepared corpus: run `poetvae prep` first, "
                "or use `poetvae train --devices N`, which does"
            )
        else:
            prepare(sources, target, config.prep, config.model.embed_dim)
        return target

    def load_training_data(self, source: CorpusSource, config: Config) -> PreparedData:
        """prepare_data, then load what it prepared."""
        return load_prepared(self.prepare_data(source, config))

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
            config = config_from_json(self.config_file.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise CheckpointError(f"{self.config_file} is not UTF-8 text") from None
        except ConfigError as e:
            raise CheckpointError(f"{self.config_file}: {e}") from None
        return RunHeader(config, Vocab.load(self.vocab_file))

    def weights(self, which: str = "best") -> dict[str, torch.Tensor]:
        """The model's state dict: "best" (model.safetensors, lowest validation -ELBO) or
        "last" (the model part of the resume point)."""
        if which == "best":
            tensors, _ = load_tensors(self.best)
            return tensors
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
        if not split_file(self.prep, "train").is_file():
            raise CheckpointError(f"{self.path} has no prep/ directory with its training split")
        return self.prep

    def train_poems(self) -> list[Poem]:
        """The poems the run trained on."""
        return load_poems(split_file(self.checked_prep(), "train"))

    def heldout(self, corpus: Sequence[Path] | None = None) -> HeldOut:
        """The corpus given, else the run's test split (or its validation split when the
        test split is empty)."""
        prep_dir = self.checked_prep()
        if corpus:
            return HeldOut(read_corpus(corpus)[0], ", ".join(map(str, corpus)))
        for split in ("test", "valid"):
            poems = load_poems(split_file(prep_dir, split))
            if poems:
                return HeldOut(poems, f"the run's {split} split")
        raise CheckpointError(f"{self.path} has no held-out poems; pass a corpus to evaluate on")
