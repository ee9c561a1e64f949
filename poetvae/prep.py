"""`poetvae prep`: corpus files -> a prepared directory that training reads.

    PREP_DIR/
      train.txt valid.txt test.txt   the clean poems, one per line (`床前明月光，…。`)
      vocab.json                     vocabulary built on the training split
      embeddings.safetensors         word2vec matrix aligned to the vocabulary ("weight")
      word2vec.txt                   the same vectors in word2vec text format (gensim)
      manifest.json                  versions, arguments and counts

Each file is written atomically; manifest.json is written last, so a directory with a
manifest is a complete one.
"""

from __future__ import annotations

import dataclasses
import json
import platform
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch

from poetvae.checkpoint import load_tensors, save_tensors
from poetvae.config import PrepConfig
from poetvae.corpus import ReadReport, load_poems, read_corpus, split_corpus, write_poems
from poetvae.embeddings import train_word2vec
from poetvae.errors import CheckpointError
from poetvae.files import atomic_write
from poetvae.form import Poem
from poetvae.vocab import Vocab

SPLITS = ("train", "valid", "test")
MANIFEST = "manifest.json"
# every entry of a prep directory (what `prep --overwrite` may replace: poetvae.rundir)
PREP_FILES = frozenset(
    {*(f"{s}.txt" for s in SPLITS), "vocab.json", "embeddings.safetensors", "word2vec.txt", MANIFEST}
)


def split_file(prep_dir: str | Path, split: str) -> Path:
    """PREP_DIR/<split>.txt: one split's poems, one per line."""
    return Path(prep_dir) / f"{split}.txt"


@dataclass
class PrepResult:
    prep_dir: Path
    report: ReadReport
    split_sizes: dict[str, int]
    vocab_size: int
    unk_rate: dict[str, float]  # share of tokens that are <unk>, per split
    embed_dim: int
    unk_count: dict[str, int] = dataclasses.field(default_factory=dict)  # <unk> tokens, per split
    unknown: dict[str, int] = dataclasses.field(default_factory=dict)  # token -> times it became <unk>


@dataclass
class PreparedData:
    """What training needs, loaded from a prep directory."""

    vocab: Vocab
    splits: dict[str, list[Poem]]
    embeddings: torch.Tensor  # (V, E)
    # the settings it was prepared with (manifest.json): what a run trained on it records
    prep_config: PrepConfig | None = None

    def tokens(self, split: str) -> torch.Tensor:
        """(N, FORM.seq_len) id rows of one split."""
        return self.vocab.encode_batch([p.lines for p in self.splits[split]])


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("poetvae", "torch", "gensim", "jieba", "opencc"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def count_unknown(vocab: Vocab, poems: Sequence[Poem]) -> tuple[int, Counter[str]]:
    """The number of tokens of `poems`, and how often each one `vocab` lacks occurs (each
    occurrence becomes an <unk>)."""
    total, unknown = 0, Counter()
    for p in poems:
        for line in p.lines:
            tokens = vocab.tokenize_line(line)
            total += len(tokens)
            unknown.update(t for t in tokens if t not in vocab.index)
    return total, unknown


def split_poems(
    corpus: Sequence[str | Path], cfg: PrepConfig = PrepConfig()
) -> tuple[dict[str, list[Poem]], ReadReport]:
    """The train / valid / test poems that `prepare` makes of `corpus` with `cfg`, and what
    reading found, without writing anything (e.g. the splits the bundled models were trained
    on, for benchmarks: `split_poems(shipped_corpus("quatrains"))`)."""
    poems, report = read_corpus(corpus, t2s=cfg.t2s)
    return split_corpus(poems, cfg.valid_fraction, cfg.test_fraction, cfg.split_seed), report


def prepare(
    corpus: Sequence[str | Path],
    prep_dir: str | Path,
    cfg: PrepConfig = PrepConfig(),
    embed_dim: int = 128,
    *,
    vocab: Vocab | None = None,
    embeddings: torch.Tensor | None = None,
) -> PrepResult:
    """Read, clean, split, build the vocabulary and word2vec embeddings; write prep_dir.

    `vocab` (a run's, to fine-tune it: `train --init`) is used instead of one built from
    the training split: tokens it lacks become <unk>, counted in the result and the
    manifest. `embeddings` (a (len(vocab), embed_dim) matrix: that run's embedding table)
    are written instead of training word2vec."""
    prep_dir = Path(prep_dir)
    splits, report = split_poems(corpus, cfg)
    train_lines = [p.lines for p in splits["train"]]
    given_vocab = vocab is not None
    if vocab is None:
        vocab = Vocab.build(train_lines, cfg.tokenizer, cfg.min_count)
    if embeddings is not None and tuple(embeddings.shape) != (len(vocab), embed_dim):
        raise ValueError(f"embeddings must be ({len(vocab)}, {embed_dim}), got {tuple(embeddings.shape)}")
    prep_dir.mkdir(parents=True, exist_ok=True)
    (prep_dir / MANIFEST).unlink(missing_ok=True)  # the directory is incomplete until the end
    if embeddings is not None:
        matrix = embeddings.detach().to("cpu", torch.float32)
    else:
        # word2vec sees the poem as the tokenizer cuts it, one sentence per poem.
        sentences = [[t for line in lines for t in vocab.tokenize_line(line)] for lines in train_lines]
        matrix = train_word2vec(
            sentences,
            vocab,
            embed_dim,
            cfg.w2v_epochs,
            cfg.w2v_window,
            cfg.split_seed,
            save_to=prep_dir / "word2vec.txt",
        )
    for name in SPLITS:
        write_poems(split_file(prep_dir, name), splits[name])
    atomic_write(prep_dir / "vocab.json", vocab.to_json())
    save_tensors(prep_dir / "embeddings.safetensors", {"weight": matrix})
    counted = {k: count_unknown(vocab, v) for k, v in splits.items()}
    unknown = {k: c for k, (_, c) in counted.items()}
    result = PrepResult(
        prep_dir,
        report,
        {k: len(v) for k, v in splits.items()},
        len(vocab),
        {k: c.total() / max(n, 1) for k, (n, c) in counted.items()},  # as Vocab.unk_rate
        embed_dim,
        unk_count={k: c.total() for k, c in unknown.items()},
        unknown=dict(sum(unknown.values(), Counter()).most_common()),
    )
    manifest = {
        "versions": _versions(),
        "corpus": [str(p) for p in corpus],
        "config": dataclasses.asdict(cfg),
        "embed_dim": embed_dim,
        "read": report.read,
        "kept": report.kept,
        "duplicates": report.duplicates,
        "skipped": dict(report.skipped),
        "formats": report.formats,
        "splits": result.split_sizes,
        "vocab_size": len(vocab),
        "unk_rate": result.unk_rate,
        "unk_count": result.unk_count,
        "unknown": dict(list(result.unknown.items())[:100]),  # the most frequent ones
        "vocab_from": "given" if given_vocab else "train split",
        "embeddings_from": "given" if embeddings is not None else "word2vec",
    }
    atomic_write(prep_dir / MANIFEST, json.dumps(manifest, indent=2, ensure_ascii=False))
    return result


def is_prep_dir(path: Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def load_prepared(prep_dir: str | Path) -> PreparedData:
    prep_dir = Path(prep_dir)
    if not is_prep_dir(prep_dir):
        raise CheckpointError(f"{prep_dir} is not a prepared corpus (no {MANIFEST}); run `poetvae prep` first")
    vocab = Vocab.load(prep_dir / "vocab.json")
    splits = {
        name: load_poems(split_file(prep_dir, name)) if split_file(prep_dir, name).stat().st_size else []
        for name in SPLITS
    }
    path = prep_dir / "embeddings.safetensors"
    tensors, _ = load_tensors(path)
    weight = tensors.get("weight")
    if weight is None:
        raise CheckpointError(f"{path} has no tensor named 'weight' (it holds: {', '.join(tensors) or 'nothing'})")
    if weight.dim() != 2 or weight.size(0) != len(vocab) or not weight.is_floating_point():
        raise CheckpointError(
            f"{path}: 'weight' must be a float matrix of {len(vocab)} rows (one per token of vocab.json), "
            f"got {weight.dtype} of shape {tuple(weight.shape)}"
        )
    return PreparedData(vocab, splits, weight, _manifest_prep_config(prep_dir / MANIFEST))


def _manifest_prep_config(path: Path) -> PrepConfig | None:
    """The PrepConfig recorded in a manifest (None for a manifest that records none)."""
    try:
        recorded = json.loads(path.read_text(encoding="utf-8")).get("config")
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError) as e:
        raise CheckpointError(f"{path} is not a valid manifest ({e})") from None
    if not isinstance(recorded, dict):
        return None
    known = {f.name for f in dataclasses.fields(PrepConfig)}
    try:
        return PrepConfig(**{k: v for k, v in recorded.items() if k in known})
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: its prep settings do not read as a PrepConfig ({e})") from None
