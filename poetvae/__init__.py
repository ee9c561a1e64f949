"""poetvae: a text variational autoencoder for classical Chinese five-character quatrains.

The library is the product; the `poetvae` command is a thin layer over it:

    from poetvae import DecodeOptions, Poet
    poet = Poet.load("runs/quatrains")
    print(poet.sample(1, DecodeOptions(temperature=0.8, seed=0))[0].layout())
"""

from poetvae.config import Config, ModelConfig, PrepConfig, TrainConfig, load_config
from poetvae.errors import CheckpointError, ConfigError, CorpusError, PoetVAEError, VocabError
from poetvae.form import FORM, Poem, parse_poem

__version__ = "0.1.0"

__all__ = [
    "Config",
    "ModelConfig",
    "PrepConfig",
    "TrainConfig",
    "load_config",
    "Poet",
    "DecodeOptions",
    "Controls",
    "FORM",
    "Poem",
    "parse_poem",
    "PoetVAEError",
    "CorpusError",
    "ConfigError",
    "CheckpointError",
    "VocabError",
]


def __getattr__(name: str):  # these pull in torch: import them only when asked for
    if name == "Poet":
        from poetvae.poet import Poet

        return Poet
    if name == "DecodeOptions":
        from poetvae.decode import DecodeOptions

        return DecodeOptions
    if name == "Controls":
        from poetvae.controls import Controls

        return Controls
    raise AttributeError(name)
