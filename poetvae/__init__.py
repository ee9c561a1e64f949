"""poetvae: a text variational autoencoder for classical Chinese five-character quatrains.

The library is the product; the `poetvae` command is a thin layer over it:

    from poetvae import DecodeOptions, Poet
    poet = Poet.load("runs/quatrains")
    print(poet.sample(1, DecodeOptions(temperature=0.8, seed=0))[0].layout())
"""

__version__ = "0.1.0"

# Every name is imported when first asked for (`from poetvae import Poet` imports torch;
# `poetvae --help` imports none of it), so that the command starts in a few milliseconds
# and a Ctrl-C finds its handler already in place (poetvae.cli.main).
_WHERE = {
    "Config": "poetvae.config",
    "ModelConfig": "poetvae.config",
    "PrepConfig": "poetvae.config",
    "TrainConfig": "poetvae.config",
    "load_config": "poetvae.config",
    "Poet": "poetvae.poet",
    "DecodeOptions": "poetvae.decode",
    "Controls": "poetvae.controls",
    "FORM": "poetvae.form",
    "Poem": "poetvae.form",
    "parse_poem": "poetvae.form",
    "PoetVAEError": "poetvae.errors",
    "CorpusError": "poetvae.errors",
    "ConfigError": "poetvae.errors",
    "CheckpointError": "poetvae.errors",
    "VocabError": "poetvae.errors",
}
__all__ = list(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(name)
    import importlib

    return getattr(importlib.import_module(_WHERE[name]), name)
