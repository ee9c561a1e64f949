"""Files shipped with the package: the small corpus typed in by the project (data/)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def default_corpus() -> Path:
    """data/quatrains.jsonl: well-known public-domain 五言绝句, the default training corpus."""
    # pyproject maps the repository's data/ folder to the package `poetvae.data`, so this
    # works from a checkout, an editable install and an installed wheel alike.
    try:
        return Path(str(resources.files("poetvae.data") / "quatrains.jsonl"))
    except ModuleNotFoundError:  # running from a checkout that is not installed
        return Path(__file__).resolve().parent.parent / "data" / "quatrains.jsonl"
