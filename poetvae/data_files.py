"""Files shipped with the package (the repository's data/ folder, installed as `poetvae.data`):
the corpora `poetvae train --corpus NAME` trains on. data/README.md says where each comes from.

    small      quatrains.jsonl: 122 well-known quatrains the project typed in (tests, a quick try)
    quatrains  tang_quatrains.jsonl.gz + song_quatrains.jsonl.gz: 15,458 Tang and Song quatrains
               from chinese-poetry; what `poetvae train` reads when given no corpus
    stanzas    stanzas.txt.gz: 247,277 four-line stanzas of longer five-character poems, for
               pretraining (then fine-tune on `quatrains` with --init)
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from poetvae.errors import CorpusError

SHIPPED_CORPORA: dict[str, tuple[str, ...]] = {
    "small": ("quatrains.jsonl",),
    "quatrains": ("tang_quatrains.jsonl.gz", "song_quatrains.jsonl.gz"),
    "stanzas": ("stanzas.txt.gz",),
}
DEFAULT_CORPUS = "quatrains"  # `poetvae train` with no corpus


def data_file(name: str) -> Path:
    """The path of a shipped data file."""
    # pyproject maps the repository's data/ folder to the package `poetvae.data`, so this
    # works from a checkout, an editable install and an installed wheel alike. That package
    # has no __init__.py: files() of it is a MultiplexedPath, whose str() is no path, so a
    # file is joined to it before it becomes a Path.
    try:
        return Path(str(resources.files("poetvae.data") / name))
    except ModuleNotFoundError:  # running from a checkout that is not installed
        return Path(__file__).resolve().parent.parent / "data" / name


def shipped_corpus(name: str = DEFAULT_CORPUS) -> list[Path]:
    """The files of a shipped corpus (`SHIPPED_CORPORA`), in the order they are read;
    CorpusError for a name that is not one, or files missing from a damaged install."""
    if name not in SHIPPED_CORPORA:
        raise CorpusError(f"no shipped corpus {name!r}: choose one of {', '.join(SHIPPED_CORPORA)}")
    paths = [data_file(f) for f in SHIPPED_CORPORA[name]]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise CorpusError(f"the shipped corpus {name!r} is missing {missing[0]}: reinstall poetvae")
    return paths


def small_corpus() -> Path:
    """data/quatrains.jsonl: 122 well-known public-domain 五言绝句, small enough to train on
    in seconds (the tests' corpus)."""
    return data_file(SHIPPED_CORPORA["small"][0])
