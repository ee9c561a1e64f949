"""poetvae: a text variational autoencoder for classical Chinese five-character quatrains.

The library is the product; the `poetvae` command is a thin layer over it:

    from poetvae import Poet
    from poetvae.decode import DecodeOptions
    poet = Poet.load("runs/default")
    print(poet.sample(1, DecodeOptions(temperature=0.8, seed=0))[0].layout())
"""

from poetvae.config import Config, ModelConfig, PrepConfig, TrainConfig, load_config
from poetvae.errors import CheckpointError, ConfigError, CorpusError, PoetVAEError, VocabError

__version__ = "0.1.0"

__all__ = [
    "Config",
    "ModelConfig",
    "PrepConfig",
    "TrainConfig",
    "load_config",
    "Poet",
    "PoetVAEError",
    "CorpusError",
    "ConfigError",
    "CheckpointError",
    "VocabError",
]


def __getattr__(name: str):  # Poet pulls in torch: import it only when asked for
    if name == "Poet":
        from poetvae.poet import Poet

        return Poet
    raise AttributeError(name)
